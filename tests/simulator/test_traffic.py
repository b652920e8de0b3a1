"""Simulator: bulk traffic "while the app is down" (no webhooks), Messages.json paging and
DateSent filters as Twilio pages them, and faults that start after N requests."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from loquent.servers import ServerThread
from loquent.simulator.server import simulator_thread

LINES = ["+14155550100", "+14155550101"]


@pytest.fixture
def sim() -> Iterator[tuple[httpx.Client, str, str]]:
    server: ServerThread = simulator_thread().start()
    http = httpx.Client(base_url=server.url, timeout=60)
    account = http.post("/_sim/accounts", json={}).json()
    for line in LINES:
        http.post(f"/_sim/accounts/{account['sid']}/numbers", json={"phone_number": line})
    http.post(
        f"/_sim/accounts/{account['sid']}/sinks", json={"destination": "http://127.0.0.1:9/x"}
    )
    try:
        yield http, account["sid"], account["auth_token"]
    finally:
        http.close()
        server.stop()


def test_traffic_creates_messages_without_webhooks_and_pages_like_twilio(
    sim: tuple[httpx.Client, str, str],
) -> None:
    http, sid, token = sim
    start = datetime(2026, 11, 20, 23, 0, tzinfo=UTC)
    made = http.post(
        f"/_sim/accounts/{sid}/traffic",
        json={
            "count": 250,
            "inbound_share": 0.4,
            "counterparts": 7,
            "start": start.isoformat(),
            "spacing_ms": 60_000,
            "return_sids": True,
        },
    ).json()
    assert made["created"] == 250
    assert len(made["sids"]) == 250
    assert http.get("/_sim/deliveries").json() == []  # nothing was delivered

    listed, pages, uri = [], 0, f"/2010-04-01/Accounts/{sid}/Messages.json?PageSize=100"
    while uri:
        page = http.get(uri, auth=(sid, token)).json()
        listed += page["messages"]
        pages += 1
        uri = page["next_page_uri"]
    assert pages == 3
    assert [m["sid"] for m in listed] == list(reversed(made["sids"]))  # newest first
    inbound = [m for m in listed if m["direction"] == "inbound"]
    assert len(inbound) == 100
    assert {m["to"] for m in inbound} <= set(LINES)
    assert all(m["status"] == "received" for m in inbound)
    outbound = [m for m in listed if m["direction"] == "outbound-api"]
    assert {m["from"] for m in outbound} <= set(LINES)
    assert len({m["to"] for m in outbound} | {m["from"] for m in inbound}) == 7

    # DateSent> is "on or after midnight" of that day: 60 messages on the 20th are left out.
    after = http.get(
        f"/2010-04-01/Accounts/{sid}/Messages.json",
        params={"PageSize": 1000, "DateSent>": "2026-11-21"},
        auth=(sid, token),
    ).json()
    assert len(after["messages"]) == 250 - 60
    oldest = min(
        datetime.strptime(m["date_sent"], "%a, %d %b %Y %H:%M:%S %z") for m in after["messages"]
    )
    assert oldest == start + timedelta(hours=1)


def test_a_fault_can_start_after_some_requests(sim: tuple[httpx.Client, str, str]) -> None:
    http, sid, token = sim
    http.post(f"/_sim/accounts/{sid}/traffic", json={"count": 30})
    rule = http.post(
        "/_sim/faults",
        json={"path_regex": r"/Messages\.json$", "status": 500, "after": 2, "count": 1},
    ).json()
    assert rule["after"] == 2
    uri: str | None = f"/2010-04-01/Accounts/{sid}/Messages.json?PageSize=10"
    codes = []
    while uri and len(codes) < 10:
        response = http.get(uri, auth=(sid, token))
        codes.append(response.status_code)
        if response.status_code == 200:
            uri = response.json()["next_page_uri"]
            assert uri is None or parse_qs(urlsplit(uri).query)["PageToken"][0].startswith("PA")
    assert codes == [200, 200, 500, 200]
    assert http.get("/_sim/faults").json()[0]["hits"] == 1
