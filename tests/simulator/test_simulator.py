"""The Twilio simulator, driven over real HTTP on loopback like the app and the demo drive it."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import pytest_asyncio
from twilio.request_validator import RequestValidator, get_signature_algorithm
from typer.testing import CliRunner

from loquent.servers import ServerThread
from loquent.simulator import SimulatorConfig, create_simulator_app
from loquent.simulator.cli import simulate_app

LINE = "+14155550100"
CONTACT = "+14155550199"
ALL_MESSAGE_TYPES = {
    "com.twilio.messaging.message.queued",
    "com.twilio.messaging.message.sent",
    "com.twilio.messaging.message.delivered",
    "com.twilio.messaging.message.undelivered",
    "com.twilio.messaging.message.failed",
    "com.twilio.messaging.message.read",
    "com.twilio.messaging.inbound-message.received",
}
ENVELOPE_KEYS = {
    "specversion",
    "type",
    "source",
    "id",
    "dataschema",
    "datacontenttype",
    "time",
    "data",
}
STATUS_DATA_KEYS = {
    "messageSid",
    "timestamp",
    "accountSid",
    "eventName",
    "apiVersion",
    "from",
    "to",
    "messageStatus",
    "numberOfSegments",
}
INBOUND_DATA_KEYS = {
    "messageSid",
    "timestamp",
    "accountSid",
    "eventName",
    "from",
    "to",
    "body",
    "numMedia",
    "numSegments",
}
MESSAGE_KEYS = {
    "sid",
    "account_sid",
    "api_version",
    "body",
    "date_created",
    "date_sent",
    "date_updated",
    "direction",
    "error_code",
    "error_message",
    "from",
    "to",
    "messaging_service_sid",
    "num_media",
    "num_segments",
    "price",
    "price_unit",
    "status",
    "subresource_uris",
    "uri",
}
RFC2822 = re.compile(r"^[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} \+0000$")
ISO_MILLIS = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


# A webhook receiver standing in for the app's /twilio/events endpoint


@dataclass
class Received:
    method: str
    url: str  # as requested, including the query string
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """A raw ASGI app recording every request; answers 200 unless told otherwise."""

    def __init__(self) -> None:
        self.base_url = ""
        self._lock = threading.Lock()
        self._requests: list[Received] = []
        self._answers: deque[int] = deque()

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self._answers.clear()

    def answer_next(self, *statuses: int) -> None:
        with self._lock:
            self._answers.extend(statuses)

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._requests)

    def to(self, path: str) -> list[Received]:
        return [request for request in self.requests if request.path == path]

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        query = scope["query_string"].decode()
        url = f"{self.base_url}{scope['path']}" + (f"?{query}" if query else "")
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        with self._lock:
            self._requests.append(Received(scope["method"], url, headers, body))
            status = self._answers.popleft() if self._answers else 200
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"ok": true}'})


def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


# Fixtures


@dataclass
class SimAccount:
    sid: str
    token: str
    sink_sid: str
    destination: str

    @property
    def auth(self) -> tuple[str, str]:
        return (self.sid, self.token)

    @property
    def api(self) -> str:
        return f"/2010-04-01/Accounts/{self.sid}"


@pytest.fixture(scope="module")
def sim_server() -> Iterator[ServerThread]:
    config = SimulatorConfig(
        outbound_status_delay_s=0.01, retry_backoff_s=(0.02, 0.05, 0.1), delivery_timeout_s=2.0
    )
    with ServerThread(create_simulator_app(config)) as server:
        yield server


@pytest.fixture(scope="module")
def receiver_server() -> Iterator[Receiver]:
    receiver = Receiver()
    with ServerThread(receiver) as server:
        receiver.base_url = server.url
        yield receiver


@pytest.fixture
def receiver(receiver_server: Receiver) -> Receiver:
    receiver_server.reset()
    return receiver_server


@pytest_asyncio.fixture
async def sim(sim_server: ServerThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sim_server.url, timeout=10) as client:
        (await client.post("/_sim/reset")).raise_for_status()
        yield client


@pytest_asyncio.fixture
async def account(sim: httpx.AsyncClient, receiver: Receiver) -> SimAccount:
    created = (await sim.post("/_sim/accounts", json={"friendly_name": "Acme"})).json()
    (await sim.post(f"/_sim/accounts/{created['sid']}/numbers", json={"phone_number": LINE}))
    # A destination with a query string: bodySHA256 must be appended with "&".
    destination = f"{receiver.base_url}/twilio/events?org=1"
    sink = await sim.post(
        f"/_sim/accounts/{created['sid']}/sinks", json={"destination": destination}
    )
    assert sink.status_code == 201
    return SimAccount(created["sid"], created["auth_token"], sink.json()["sink_sid"], destination)


async def console_sms(sim: httpx.AsyncClient, account: SimAccount, **fields: Any) -> dict:
    payload = {"from": LINE, "to": CONTACT, "body": "hello", "wait": True, **fields}
    response = await sim.post(f"/_sim/accounts/{account.sid}/console-sms", json=payload)
    assert response.status_code == 201, response.text
    return response.json()


def assert_signed(request: Received, token: str) -> None:
    assert "bodySHA256=" in request.url
    validator = RequestValidator(token)
    assert validator.validate(request.url, request.text, request.headers["x-twilio-signature"])


# Event delivery


@pytest.mark.asyncio
async def test_console_sms_batch_is_signed_like_twilio(
    sim: httpx.AsyncClient, account: SimAccount, receiver: Receiver
) -> None:
    result = await console_sms(sim, account, batch=True)

    assert result["message"]["direction"] == "outbound-api"
    assert result["message"]["status"] == "delivered"
    [delivery] = result["deliveries"]
    assert delivery["status_code"] == 200
    assert delivery["types"] == [
        "com.twilio.messaging.message.queued",
        "com.twilio.messaging.message.sent",
        "com.twilio.messaging.message.delivered",
    ]

    [request] = receiver.requests
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json; charset=utf-8"
    assert request.path == "/twilio/events"
    query = parse_qs(urlsplit(request.url).query)
    assert query["org"] == ["1"]
    assert request.url.startswith(f"{account.destination}&bodySHA256=")
    assert_signed(request, account.token)

    validator = RequestValidator(account.token)
    signature = request.headers["x-twilio-signature"]
    tampered = request.text.replace('"DELIVERED"', '"FAILED"')
    assert tampered != request.text
    assert not validator.validate(request.url, tampered, signature)
    assert not RequestValidator("0" * 32).validate(request.url, request.text, signature)

    events = request.json()
    assert [e["data"]["messageStatus"] for e in events] == ["QUEUED", "SENT", "DELIVERED"]
    sid = result["sid"]
    for event in events:
        assert set(event) == ENVELOPE_KEYS
        assert event["specversion"] == "1.0"
        assert event["source"] == f"/2010-04-01/Accounts/{account.sid}/Messages/{sid}.json"
        assert re.fullmatch(r"EZ[0-9a-f]{32}", event["id"])
        assert event["dataschema"] == "https://events-schemas.twilio.com/Messaging.MessageStatus/4"
        assert event["datacontenttype"] == "application/json"
        assert ISO_MILLIS.match(event["time"])
        data = event["data"]
        assert set(data) == STATUS_DATA_KEYS
        assert data["messageSid"] == sid
        assert data["accountSid"] == account.sid
        assert data["eventName"] == event["type"]
        assert data["apiVersion"] == "2010-04-01"
        assert (data["from"], data["to"]) == (LINE, CONTACT)
        assert data["numberOfSegments"] == 1
    assert len({e["id"] for e in events}) == 3


@pytest.mark.asyncio
async def test_one_request_per_event_and_duplicates_keep_ids(
    sim: httpx.AsyncClient, account: SimAccount, receiver: Receiver
) -> None:
    result = await console_sms(sim, account, duplicate=2, shuffle=True, seed=7)

    assert len(result["deliveries"]) == 6
    requests = receiver.requests
    assert len(requests) == 6
    ids = []
    for request in requests:
        assert_signed(request, account.token)
        [event] = request.json()
        ids.append(event["id"])
    assert sorted(ids.count(i) for i in set(ids)) == [2, 2, 2]


@pytest.mark.asyncio
async def test_only_subscribed_types_are_delivered(
    sim: httpx.AsyncClient, account: SimAccount, receiver: Receiver
) -> None:
    only = await sim.post(
        f"/_sim/accounts/{account.sid}/sinks",
        json={
            "destination": f"{receiver.base_url}/only-delivered",
            "types": ["com.twilio.messaging.message.delivered"],
        },
    )
    assert only.status_code == 201

    await console_sms(sim, account, batch=True)
    inbound = await sim.post(
        f"/_sim/accounts/{account.sid}/inbound-sms",
        json={"from": CONTACT, "to": LINE, "body": "hi", "wait": True},
    )
    assert inbound.status_code == 201

    [narrow] = receiver.to("/only-delivered")
    assert [e["type"] for e in narrow.json()] == ["com.twilio.messaging.message.delivered"]
    assert_signed(narrow, account.token)
    everything = receiver.to("/twilio/events")
    assert [len(r.json()) for r in everything] == [3, 1]


@pytest.mark.asyncio
async def test_sink_without_batching_receives_single_objects(
    sim: httpx.AsyncClient, account: SimAccount, receiver: Receiver
) -> None:
    await sim.delete(f"/v1/Sinks/{account.sink_sid}", auth=account.auth)
    await sim.post(
        f"/_sim/accounts/{account.sid}/sinks",
        json={"destination": f"{receiver.base_url}/single", "batch_events": False},
    )
    await console_sms(sim, account, batch=True, statuses=["sent", "delivered"])

    requests = receiver.to("/single")
    assert [r.json()["type"] for r in requests] == [
        "com.twilio.messaging.message.sent",
        "com.twilio.messaging.message.delivered",
    ]
    for request in requests:
        assert_signed(request, account.token)


@pytest.mark.asyncio
async def test_inbound_sms_event(
    sim: httpx.AsyncClient, account: SimAccount, receiver: Receiver
) -> None:
    response = await sim.post(
        f"/_sim/accounts/{account.sid}/inbound-sms",
        json={
            "from": CONTACT,
            "to": LINE,
            "body": "Thanks, got it",
            "media_urls": ["https://example.com/a.png"],
            "wait": True,
        },
    )
    result = response.json()
    assert result["message"]["direction"] == "inbound"
    assert result["message"]["status"] == "received"

    [request] = receiver.requests
    assert_signed(request, account.token)
    [event] = request.json()
    assert event["type"] == "com.twilio.messaging.inbound-message.received"
    assert event["dataschema"] == "https://events-schemas.twilio.com/Messaging.InboundMessageV1/6"
    assert set(event["data"]) == INBOUND_DATA_KEYS
    assert event["data"]["body"] == "Thanks, got it"
    assert event["data"]["numMedia"] == 1
    assert (event["data"]["from"], event["data"]["to"]) == (CONTACT, LINE)


@pytest.mark.asyncio
async def test_delivery_retries_on_429_and_5xx(
    sim: httpx.AsyncClient, account: SimAccount, receiver: Receiver
) -> None:
    receiver.answer_next(503, 429)
    result = await console_sms(sim, account, statuses=["delivered"])

    [delivery] = result["deliveries"]
    assert [a["status_code"] for a in delivery["attempts"]] == [503, 429, 200]
    assert delivery["status_code"] == 200
    bodies = {r.body for r in receiver.requests}
    assert len(receiver.requests) == 3
    assert len(bodies) == 1

    receiver.answer_next(400)
    result = await console_sms(sim, account, statuses=["delivered"])
    assert [a["status_code"] for a in result["deliveries"][0]["attempts"]] == [400]


@pytest.mark.asyncio
async def test_message_events_redeliver_and_update_status(
    sim: httpx.AsyncClient, account: SimAccount, receiver: Receiver
) -> None:
    result = await console_sms(sim, account, statuses=["queued", "sent"])
    sid = result["sid"]
    fetched = (await sim.get(f"{account.api}/Messages/{sid}.json", auth=account.auth)).json()
    assert fetched["status"] == "sent"

    response = await sim.post(
        f"/_sim/accounts/{account.sid}/messages/{sid}/events",
        json={"statuses": ["undelivered"], "error_code": 30007, "concurrent": True, "wait": True},
    )
    assert response.json()["status"] == "undelivered"
    event = receiver.requests[-1].json()[0]
    assert event["data"]["messageStatus"] == "UNDELIVERED"
    assert event["data"]["errorCode"] == 30007

    fetched = (await sim.get(f"{account.api}/Messages/{sid}.json", auth=account.auth)).json()
    assert fetched["status"] == "undelivered"
    assert fetched["error_code"] == 30007

    # A late, lower status is delivered but does not move the stored status back.
    await sim.post(
        f"/_sim/accounts/{account.sid}/messages/{sid}/events",
        json={"statuses": ["sent"], "wait": True},
    )
    fetched = (await sim.get(f"{account.api}/Messages/{sid}.json", auth=account.auth)).json()
    assert fetched["status"] == "undelivered"


@pytest.mark.asyncio
async def test_deliver_raw_signs_or_breaks_signatures_on_request(
    sim: httpx.AsyncClient, account: SimAccount, receiver: Receiver
) -> None:
    body = '{"specversion": "1.0", "type": "com.example.odd"}'
    response = await sim.post("/_sim/deliver-raw", json={"account_sid": account.sid, "body": body})
    [result] = response.json()["results"]
    assert result["status_code"] == 200
    assert result["body"] == '{"ok": true}'
    signed = receiver.requests[-1]
    assert signed.text == body
    assert_signed(signed, account.token)

    await sim.post(
        "/_sim/deliver-raw",
        json={"account_sid": account.sid, "body": body, "signed_body": body + " "},
    )
    tampered = receiver.requests[-1]
    assert not RequestValidator(account.token).validate(
        tampered.url, tampered.text, tampered.headers["x-twilio-signature"]
    )

    await sim.post(
        "/_sim/deliver-raw",
        json={
            "account_sid": account.sid,
            "destination": f"{receiver.base_url}/raw",
            "body": [{"any": "json"}],
            "signature_override": "bogus",
            "include_body_sha256": False,
        },
    )
    bogus = receiver.requests[-1]
    assert bogus.url == f"{receiver.base_url}/raw"
    assert bogus.headers["x-twilio-signature"] == "bogus"
    assert bogus.json() == [{"any": "json"}]


# REST API


@pytest.mark.asyncio
async def test_account_and_message_fetch_shapes(
    sim: httpx.AsyncClient, account: SimAccount
) -> None:
    fetched = await sim.get(f"{account.api}.json", auth=account.auth)
    assert fetched.status_code == 200
    body = fetched.json()
    assert body["sid"] == account.sid
    assert body["friendly_name"] == "Acme"
    assert (body["status"], body["type"]) == ("active", "Full")
    assert RFC2822.match(body["date_created"])
    assert RFC2822.match(body["date_updated"])
    assert account.token not in fetched.text

    sid = (await console_sms(sim, account, body="x" * 161))["sid"]
    message = (await sim.get(f"{account.api}/Messages/{sid}.json", auth=account.auth)).json()
    assert set(message) == MESSAGE_KEYS
    assert message["sid"] == sid
    assert sid.startswith("SM")
    assert len(sid) == 34
    assert message["account_sid"] == account.sid
    assert message["api_version"] == "2010-04-01"
    assert message["direction"] == "outbound-api"
    assert message["num_media"] == "0"
    assert message["num_segments"] == "2"
    assert message["error_code"] is None
    assert RFC2822.match(message["date_sent"])
    assert message["subresource_uris"]["media"] == f"{account.api}/Messages/{sid}/Media.json"
    assert message["uri"] == f"{account.api}/Messages/{sid}.json"


@pytest.mark.asyncio
async def test_auth_and_not_found_errors_are_twilio_json(
    sim: httpx.AsyncClient, account: SimAccount
) -> None:
    sid = (await console_sms(sim, account))["sid"]
    url = f"{account.api}/Messages/{sid}.json"
    authenticate = {
        "code": 20003,
        "message": "Authenticate",
        "more_info": "https://www.twilio.com/docs/errors/20003",
        "status": 401,
    }

    for auth in (None, (account.sid, "wrong-token")):
        response = await sim.get(url, auth=auth)
        assert response.status_code == 401
        assert response.json() == authenticate

    other = (await sim.post("/_sim/accounts", json={})).json()
    response = await sim.get(url, auth=(other["sid"], other["auth_token"]))
    assert response.status_code == 401

    missing = f"{account.api}/Messages/SM{'0' * 32}.json"
    response = await sim.get(missing, auth=account.auth)
    assert response.status_code == 404
    assert response.json() == {
        "code": 20404,
        "message": f"The requested resource {missing} was not found",
        "more_info": "https://www.twilio.com/docs/errors/20404",
        "status": 404,
    }
    assert (await sim.get(f"{account.api}/Calls.json", auth=account.auth)).status_code == 404

    rotated = (await sim.post(f"/_sim/accounts/{account.sid}/rotate-token", json={})).json()
    assert (await sim.get(url, auth=account.auth)).status_code == 401
    assert (await sim.get(url, auth=(account.sid, rotated["auth_token"]))).status_code == 200


@pytest.mark.asyncio
async def test_send_through_the_api_reports_status_events(
    sim: httpx.AsyncClient, account: SimAccount, receiver: Receiver
) -> None:
    response = await sim.post(
        f"{account.api}/Messages.json",
        data={
            "To": CONTACT,
            "From": LINE,
            "Body": "from the app",
            "StatusCallback": f"{receiver.base_url}/status-callback?org=1",
        },
        auth=account.auth,
    )
    assert response.status_code == 201
    sent = response.json()
    assert sent["status"] == "queued"
    assert sent["date_sent"] is None

    assert (await sim.post("/_sim/drain", json={"timeout_s": 5})).json() == {"pending": 0}
    events = receiver.to("/twilio/events")
    assert [r.json()[0]["data"]["messageStatus"] for r in events] == ["QUEUED", "SENT", "DELIVERED"]
    for request in events:
        assert_signed(request, account.token)
    # Classic status callbacks are form posts, signed over the URL and the sorted parameters.
    callbacks = receiver.to("/status-callback")
    validator = RequestValidator(account.token)
    for request in callbacks:
        params = {k: v[0] for k, v in parse_qs(request.text).items()}
        assert params["MessageSid"] == sent["sid"]
        assert validator.validate(request.url, params, request.headers["x-twilio-signature"])
    statuses = [parse_qs(r.text)["MessageStatus"][0] for r in callbacks]
    assert statuses == ["queued", "sent", "delivered"]
    fetched = await sim.get(f"{account.api}/Messages/{sent['sid']}.json", auth=account.auth)
    assert fetched.json()["status"] == "delivered"
    assert fetched.json()["body"] == "from the app"

    missing_to = await sim.post(
        f"{account.api}/Messages.json", data={"From": LINE, "Body": "x"}, auth=account.auth
    )
    assert missing_to.status_code == 400
    assert missing_to.json()["code"] == 21604
    missing_body = await sim.post(
        f"{account.api}/Messages.json", data={"From": LINE, "To": CONTACT}, auth=account.auth
    )
    assert missing_body.json()["code"] == 21602


@pytest.mark.asyncio
async def test_send_refusals_answer_like_twilio(
    sim: httpx.AsyncClient, account: SimAccount
) -> None:
    rule = await sim.post(
        f"/_sim/accounts/{account.sid}/send-rejections", json={"to": CONTACT, "code": 21610}
    )
    assert rule.status_code == 201
    refused = await sim.post(
        f"{account.api}/Messages.json",
        data={"From": LINE, "To": CONTACT, "Body": "hi"},
        auth=account.auth,
    )
    assert refused.status_code == 400
    assert refused.json() == {
        "code": 21610,
        "message": "Attempt to send to unsubscribed recipient",
        "more_info": "https://www.twilio.com/docs/errors/21610",
        "status": 400,
    }
    not_ours = await sim.post(
        f"{account.api}/Messages.json",
        data={"From": "+14155550999", "To": "+14155550198", "Body": "hi"},
        auth=account.auth,
    )
    assert (not_ours.status_code, not_ours.json()["code"]) == (400, 21606)
    assert "+14155550999" in not_ours.json()["message"]
    cleared = await sim.delete(f"/_sim/accounts/{account.sid}/send-rejections")
    assert cleared.status_code == 204
    sent = await sim.post(
        f"{account.api}/Messages.json",
        data={"From": LINE, "To": CONTACT, "Body": "hi"},
        auth=account.auth,
    )
    assert sent.status_code == 201
    stored = (await sim.get("/_sim/messages", params={"account_sid": account.sid})).json()
    assert [m["sid"] for m in stored] == [sent.json()["sid"]]


@pytest.mark.asyncio
async def test_early_status_events_reach_the_sink_before_the_create_answer(
    sim: httpx.AsyncClient, account: SimAccount, receiver: Receiver
) -> None:
    patched = await sim.patch("/_sim/config", json={"early_status_events": True})
    assert patched.json()["early_status_events"] is True
    response = await sim.post(
        f"{account.api}/Messages.json",
        data={"From": LINE, "To": CONTACT, "Body": "raced"},
        auth=account.auth,
    )
    assert response.status_code == 201
    assert response.json()["status"] == "queued"  # the answer as Twilio formed it
    # Already at the sink when the answer came back (delivered follows 10 ms later here).
    early = receiver.to("/twilio/events")[:2]
    assert [r.json()[0]["data"]["messageStatus"] for r in early] == ["QUEUED", "SENT"]
    assert {r.json()[0]["data"]["messageSid"] for r in early} == {response.json()["sid"]}
    for request in early:
        assert_signed(request, account.token)
    assert (await sim.post("/_sim/drain", json={"timeout_s": 5})).json() == {"pending": 0}
    statuses = [r.json()[0]["data"]["messageStatus"] for r in receiver.to("/twilio/events")]
    assert statuses == ["QUEUED", "SENT", "DELIVERED"]


@pytest.mark.asyncio
async def test_messages_list_pages_newest_first_and_filters(
    sim: httpx.AsyncClient, account: SimAccount
) -> None:
    seeded = [
        {
            "from": LINE,
            "to": CONTACT,
            "body": f"m{day}",
            "date_created": f"2026-11-{day:02d}T12:00:00Z",
        }
        for day in range(1, 8)
    ]
    response = await sim.post(f"/_sim/accounts/{account.sid}/messages", json={"messages": seeded})
    sids = response.json()["sids"]

    collected: list[str] = []
    pages = 0
    uri: str | None = f"{account.api}/Messages.json?PageSize=3"
    while uri:
        page = (await sim.get(uri, auth=account.auth)).json()
        assert page["page"] == pages
        assert page["page_size"] == 3
        collected += [m["sid"] for m in page["messages"]]
        uri = page["next_page_uri"]
        pages += 1
    assert pages == 3
    assert collected == list(reversed(sids))

    since = await sim.get(
        f"{account.api}/Messages.json",
        params={"DateSent>": "2026-11-05", "PageSize": 2},
        auth=account.auth,
    )
    first = since.json()
    assert [m["body"] for m in first["messages"]] == ["m7", "m6"]
    assert "DateSent%3E=2026-11-05" in first["next_page_uri"]
    second = (await sim.get(first["next_page_uri"], auth=account.auth)).json()
    assert [m["body"] for m in second["messages"]] == ["m5"]
    assert second["next_page_uri"] is None

    to_nobody = await sim.get(
        f"{account.api}/Messages.json", params={"To": "+15550000000"}, auth=account.auth
    )
    assert to_nobody.json()["messages"] == []


@pytest.mark.asyncio
async def test_incoming_phone_numbers_pages(sim: httpx.AsyncClient, account: SimAccount) -> None:
    for n in range(1, 6):
        await sim.post(
            f"/_sim/accounts/{account.sid}/numbers", json={"phone_number": f"+1415555020{n}"}
        )
    numbers: list[dict[str, Any]] = []
    uri: str | None = f"{account.api}/IncomingPhoneNumbers.json?PageSize=4"
    while uri:
        page = (await sim.get(uri, auth=account.auth)).json()
        numbers += page["incoming_phone_numbers"]
        uri = page["next_page_uri"]
    assert [n["phone_number"] for n in numbers] == [LINE] + [f"+1415555020{n}" for n in range(1, 6)]
    first = numbers[0]
    assert first["sid"].startswith("PN")
    assert first["account_sid"] == account.sid
    assert first["friendly_name"] == "(415) 555-0100"
    assert first["capabilities"]["sms"] is True
    assert first["capabilities"]["mms"] is True


@pytest.mark.asyncio
async def test_fault_429_with_retry_after_then_success(
    sim: httpx.AsyncClient, account: SimAccount
) -> None:
    sid = (await console_sms(sim, account))["sid"]
    fault = await sim.post(
        "/_sim/faults",
        json={
            "method": "GET",
            "path_regex": rf"/Messages/{sid}\.json$",
            "status": 429,
            "count": 1,
            "retry_after": 2,
        },
    )
    assert fault.status_code == 201
    url = f"{account.api}/Messages/{sid}.json"

    limited = await sim.get(url, auth=account.auth)
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "2"
    assert limited.json()["code"] == 20429
    assert limited.json()["message"] == "Too Many Requests"
    assert (await sim.get(url, auth=account.auth)).status_code == 200

    log = (await sim.get("/_sim/requests", params={"path_contains": sid})).json()
    assert [(e["status"], e["fault_id"]) for e in log] == [(429, fault.json()["id"]), (200, None)]
    assert all(e["auth_user"] == account.sid for e in log)
    assert account.token not in json.dumps(log)
    rules = (await sim.get("/_sim/faults")).json()
    assert rules[0]["hits"] == 1
    assert rules[0]["remaining"] == 0


@pytest.mark.asyncio
async def test_fault_delay_and_unlimited_5xx(sim: httpx.AsyncClient, account: SimAccount) -> None:
    await sim.post("/_sim/faults", json={"path_regex": r"\.json$", "delay_ms": 250, "count": 1})
    started = time.monotonic()
    slow = await sim.get(f"{account.api}.json", auth=account.auth)
    assert slow.status_code == 200
    assert time.monotonic() - started >= 0.25

    await sim.post("/_sim/faults", json={"path_regex": "IncomingPhoneNumbers", "status": 503})
    for _ in range(3):
        response = await sim.get(f"{account.api}/IncomingPhoneNumbers.json", auth=account.auth)
        assert response.status_code == 503
        assert response.json()["code"] == 20503
    assert (await sim.get("/_sim/healthz")).json() == {"ok": True}  # control is never faulted

    assert (await sim.delete("/_sim/faults")).status_code == 204
    response = await sim.get(f"{account.api}/IncomingPhoneNumbers.json", auth=account.auth)
    assert response.status_code == 200


@pytest.mark.asyncio
async def test_media_redirects_to_the_media_host_without_credentials(
    sim: httpx.AsyncClient, sim_server: ServerThread, account: SimAccount
) -> None:
    media_host = f"http://localhost:{sim_server.port}"
    await sim.patch("/_sim/config", json={"media_base_url": media_host})
    sid = (
        await console_sms(
            sim, account, media_urls=["https://example.com/cat.png", "https://example.com/n.txt"]
        )
    )["sid"]
    message = (await sim.get(f"{account.api}/Messages/{sid}.json", auth=account.auth)).json()
    assert message["num_media"] == "2"

    listing = (await sim.get(f"{account.api}/Messages/{sid}/Media.json", auth=account.auth)).json()
    assert listing["next_page_uri"] is None
    assert listing["page_size"] == 50
    media = listing["media_list"]
    assert [m["content_type"] for m in media] == ["image/png", "text/plain"]
    first = media[0]
    assert first["sid"].startswith("ME")
    assert first["parent_sid"] == sid
    assert first["uri"] == f"{account.api}/Messages/{sid}/Media/{first['sid']}.json"

    content_url = f"{account.api}/Messages/{sid}/Media/{first['sid']}"
    redirect = await sim.get(content_url, auth=account.auth)
    assert redirect.status_code == 307
    assert redirect.headers["location"] == f"{media_host}/_sim/media-content/{first['sid']}"

    async with httpx.AsyncClient(base_url=sim_server.url, follow_redirects=True) as client:
        content = await client.get(content_url, auth=account.auth)
    assert content.status_code == 200
    assert content.headers["content-type"] == "image/png"
    assert content.content.startswith(b"\x89PNG\r\n\x1a\n")
    # The media host is another origin, so the client dropped the credentials on the way.
    fetches = (await sim.get("/_sim/media-fetches")).json()
    assert fetches[-1] == {**fetches[-1], "media_sid": first["sid"], "had_authorization": False}


# Event Streams API


@pytest.mark.asyncio
async def test_sinks_and_subscriptions_api(
    sim: httpx.AsyncClient, account: SimAccount, receiver: Receiver
) -> None:
    destination = f"{receiver.base_url}/via-api"
    created = await sim.post(
        "/v1/Sinks",
        data={
            "Description": "Loquent",
            "SinkConfiguration": json.dumps(
                {"destination": destination, "method": "POST", "batch_events": True}
            ),
            "SinkType": "webhook",
        },
        auth=account.auth,
    )
    assert created.status_code == 201
    sink = created.json()
    assert sink["sid"].startswith("DG")
    assert "account_sid" not in sink  # Twilio's Sink resource names no account
    assert sink["sink_configuration"]["destination"] == destination
    assert (sink["sink_type"], sink["status"], sink["description"]) == (
        "webhook",
        "active",
        "Loquent",
    )
    assert sink["url"].endswith(f"/v1/Sinks/{sink['sid']}")

    listed = (await sim.get("/v1/Sinks", auth=account.auth)).json()
    assert listed["meta"]["key"] == "sinks"
    assert {s["sid"] for s in listed["sinks"]} == {account.sink_sid, sink["sid"]}
    assert (await sim.get(f"/v1/Sinks/{sink['sid']}", auth=account.auth)).json() == sink

    subscription = await sim.post(
        "/v1/Subscriptions",
        data={
            "Description": "Loquent messages",
            "SinkSid": sink["sid"],
            "Types": [
                json.dumps({"type": "com.twilio.messaging.message.delivered", "schema_version": 3}),
                "com.twilio.messaging.inbound-message.received",
            ],
        },
        auth=account.auth,
    )
    assert subscription.status_code == 201
    sub = subscription.json()
    assert sub["sid"].startswith("DF")
    assert sub["sink_sid"] == sink["sid"]

    by_sink = await sim.get("/v1/Subscriptions", params={"SinkSid": sink["sid"]}, auth=account.auth)
    assert [s["sid"] for s in by_sink.json()["subscriptions"]] == [sub["sid"]]
    assert by_sink.json()["meta"]["key"] == "subscriptions"
    types = await sim.get(f"/v1/Subscriptions/{sub['sid']}/SubscribedEvents", auth=account.auth)
    assert {(t["type"], t["schema_version"]) for t in types.json()["types"]} == {
        ("com.twilio.messaging.message.delivered", 3),
        # No version named: the type's current one.
        ("com.twilio.messaging.inbound-message.received", 6),
    }

    await console_sms(sim, account, batch=True)
    [via_api] = receiver.to("/via-api")
    assert [e["type"] for e in via_api.json()] == ["com.twilio.messaging.message.delivered"]
    # The event is written in the schema version the subscription asked for.
    [event] = via_api.json()
    assert event["dataschema"] == "https://events-schemas.twilio.com/Messaging.MessageStatus/3"

    bad = await sim.post(
        "/v1/Subscriptions",
        data={"Description": "x", "SinkSid": sink["sid"], "Types": "not-a-type"},
        auth=account.auth,
    )
    assert bad.status_code == 400
    assert bad.json()["status"] == 400

    assert (await sim.delete(f"/v1/Sinks/{sink['sid']}", auth=account.auth)).status_code == 204
    gone = await sim.get(f"/v1/Sinks/{sink['sid']}", auth=account.auth)
    assert gone.status_code == 404
    assert gone.json()["code"] == 20404
    remaining = await sim.get(
        "/v1/Subscriptions", params={"SinkSid": sink["sid"]}, auth=account.auth
    )
    assert remaining.json()["subscriptions"] == []
    assert (await sim.get(f"/v1/Subscriptions/{sub['sid']}", auth=account.auth)).status_code == 404
    assert (await sim.get("/v1/Sinks")).status_code == 401


@pytest.mark.asyncio
async def test_sink_test_event(
    sim: httpx.AsyncClient, account: SimAccount, receiver: Receiver
) -> None:
    response = await sim.post(f"/v1/Sinks/{account.sink_sid}/Test", auth=account.auth)
    assert response.json() == {"result": "submitted"}
    await sim.post("/_sim/drain", json={"timeout_s": 5})

    [request] = receiver.requests
    assert_signed(request, account.token)
    [event] = request.json()
    assert event["type"] == "com.twilio.eventstreams.test-event"
    assert event["source"] == "Sink"
    assert event["id"] == account.sid
    assert event["dataschema"] == "https://events-schemas.twilio.com/EventStreams.TestSink/1"
    test_id = event["data"]["test_id"]
    assert len(test_id) == 34
    validate = f"/v1/Sinks/{account.sink_sid}/Validate"
    wrong = await sim.post(validate, data={"TestId": "TE" + "0" * 32}, auth=account.auth)
    assert wrong.status_code == 400
    valid = await sim.post(validate, data={"TestId": test_id}, auth=account.auth)
    assert valid.json() == {"result": "valid"}
    assert event["specversion"] == "1.0"
    assert ISO_MILLIS.match(event["time"])


@pytest.mark.asyncio
async def test_shared_key_signatures_are_announced(
    sim: httpx.AsyncClient, account: SimAccount, receiver: Receiver
) -> None:
    key = await sim.put(
        f"/_sim/accounts/{account.sid}/signing-key",
        json={"key_sid": "webhooks_sharedkey_test", "secret": "sh4red"},
    )
    assert key.json() == {
        "key_sid": "webhooks_sharedkey_test",
        "secret": "sh4red",
        "algorithm": "HMAC_SHA256",
    }
    await console_sms(sim, account, batch=True)
    signed = receiver.requests[-1]
    settings = signed.headers["x-twilio-webhooks-signature-settings"]
    assert settings == "key=webhooks_sharedkey_test,algorithm=HMAC_SHA256"
    signature = signed.headers["x-twilio-signature"]
    assert RequestValidator("sh4red").validate(
        signed.url, signed.text, signature, get_signature_algorithm(settings)
    )
    assert not RequestValidator(account.token).validate(signed.url, signed.text, signature)

    removed = await sim.delete(f"/_sim/accounts/{account.sid}/signing-key")
    assert removed.status_code == 204
    await console_sms(sim, account, batch=True)
    assert "x-twilio-webhooks-signature-settings" not in receiver.requests[-1].headers
    assert_signed(receiver.requests[-1], account.token)


# Control API and CLI


@pytest.mark.asyncio
async def test_control_listings_and_reset(
    sim: httpx.AsyncClient, account: SimAccount, receiver: Receiver
) -> None:
    await console_sms(sim, account)
    [listed] = (await sim.get("/_sim/accounts")).json()
    assert listed["sid"] == account.sid
    assert listed["auth_token"] == account.token
    assert listed["numbers"][0]["phone_number"] == LINE
    assert set(listed["sinks"][0]["types"]) == ALL_MESSAGE_TYPES

    deliveries = (await sim.get("/_sim/deliveries", params={"include_body": True})).json()
    assert len(deliveries) == 3
    assert all(d["ok"] and d["done"] for d in deliveries)
    assert json.loads(deliveries[0]["body"])[0]["type"].endswith(".queued")
    assert len((await sim.get("/_sim/messages")).json()) == 1

    assert (await sim.post("/_sim/reset")).json() == {"ok": True}
    assert (await sim.get("/_sim/accounts")).json() == []
    assert (await sim.get("/_sim/deliveries")).json() == []
    assert (await sim.get(f"{account.api}.json", auth=account.auth)).status_code == 401


@pytest.mark.asyncio
async def test_control_api_validates_input_and_answers_loopback_only() -> None:
    app = create_simulator_app()
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://sim"
    ) as local:
        created = (await local.post("/_sim/accounts", json={})).json()
        response = await local.post(
            f"/_sim/accounts/{created['sid']}/console-sms",
            json={"from": LINE, "to": CONTACT, "body": "x", "statuses": ["teleported"]},
        )
        assert response.status_code == 422
        response = await local.post("/_sim/accounts", json={"sid": "AC123"})
        assert response.status_code == 422
        response = await local.post("/_sim/faults", json={"path_regex": "("})
        assert response.status_code == 422

    remote = httpx.ASGITransport(app=app, client=("192.0.2.10", 40000))
    async with httpx.AsyncClient(transport=remote, base_url="http://sim") as client:
        assert (await client.get("/_sim/accounts")).status_code == 403
        assert (await client.get("/_sim/healthz")).status_code == 200
        api = await client.get(
            f"/2010-04-01/Accounts/{created['sid']}.json",
            auth=(created["sid"], created["auth_token"]),
        )
        assert api.status_code == 200


def test_cli_external_and_inbound_sms(
    sim_server: ServerThread, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    with httpx.Client(base_url=sim_server.url) as client:
        client.post("/_sim/reset").raise_for_status()
        created = client.post("/_sim/accounts", json={}).json()
        client.post(
            f"/_sim/accounts/{created['sid']}/sinks",
            json={"destination": f"{receiver.base_url}/cli"},
        ).raise_for_status()
    monkeypatch.setenv("LOQUENT_SIMULATOR_URL", sim_server.url)
    runner = CliRunner()

    result = runner.invoke(
        simulate_app, ["external-sms", "--from", LINE, "--to", CONTACT, "--body", "from the CLI"]
    )
    assert result.exit_code == 0, result.output
    output = json.loads(result.output)
    assert output["message"]["body"] == "from the CLI"
    assert [d["status_code"] for d in output["deliveries"]] == [200, 200, 200]

    result = runner.invoke(
        simulate_app, ["inbound-sms", "--from", CONTACT, "--to", LINE, "--body", "reply"]
    )
    assert result.exit_code == 0, result.output
    wait_until(lambda: len(receiver.to("/cli")) == 4)
    assert receiver.to("/cli")[-1].json()[0]["data"]["body"] == "reply"
