"""Signed random deliveries — valid-ish and hostile events mixed — against the real server on
SQLite and PostgreSQL: never a 5xx, and a 2xx means every event of the delivery is stored."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from loquent.db import Database
from loquent.messaging.models import Message
from loquent.messaging.schemas import clean_text
from tests.conftest import Stack
from tests.support.twilio import inbound_event, signed_request, status_event

LINES = ["+14155550100", "+14155550101"]
STATUSES = ["queued", "sent", "delivered", "undelivered", "failed", "read"]

nasty_text = st.one_of(
    st.text(max_size=30),
    st.lists(
        st.sampled_from(["x", "\ud83d", "\ude00", "\x00", "\U0001f600", " ", "+", "é", "\n"]),
        max_size=12,
    ).map("".join),
)
json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    nasty_text,
)
address = st.one_of(
    st.sampled_from(["+14155550199", "+442071838750", "ACME", "+1 (415) 555-0177", "12345"]),
    nasty_text,
    st.text(min_size=15, max_size=80),
)
timestamp = st.one_of(
    st.none(),
    st.sampled_from(
        ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "2026-11-25T10:00:00Z", "x"]
    ),
    st.datetimes().map(lambda d: d.isoformat()),
)
# A field of an otherwise valid event replaced by something hostile.
mutation = st.one_of(
    st.none(),
    st.tuples(
        st.sampled_from(
            ["from", "to", "body", "errorCode", "numMedia", "timestamp", "messageSid", "accountSid"]
        ),
        st.one_of(json_scalar, address, timestamp, st.just("3" * 17), st.just(10**16)),
    ),
)


@st.composite
def events(draw: st.DrawFn, account: str) -> dict[str, Any]:
    sid = "SM" + secrets.token_hex(16)
    inbound = draw(st.booleans())
    if inbound:
        event = inbound_event(
            sid=sid,
            account=account,
            from_=draw(address),
            to=draw(st.sampled_from(LINES)),
            body=draw(nasty_text),
        )
    else:
        line, other = draw(st.sampled_from(LINES)), draw(address)
        from_, to = (line, other) if draw(st.booleans()) else (other, line)
        event = status_event(
            draw(st.sampled_from(STATUSES)), sid=sid, account=account, from_=from_, to=to
        )
        if draw(st.booleans()):
            event["data"]["body"] = draw(nasty_text)
        if draw(st.booleans()):
            event["data"]["errorCode"] = draw(st.one_of(st.integers(0, 99999), nasty_text))
    event["data"]["timestamp"] = draw(timestamp)
    change = draw(mutation)
    if change is not None:
        event["data"][change[0]] = change[1]
    if draw(st.integers(0, 9)) == 0:
        event["data"].pop("accountSid")  # the account is then named by `source` only
    return event


def _fuzz(stack: Stack, examples: int) -> dict[str, int]:
    seen = {"2xx": 0, "400": 0, "other": 0}
    http = httpx.Client(timeout=30)

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(st.lists(events(stack.org.account_sid), min_size=1, max_size=4))
    def delivery_is_stored_or_refused(delivery: list[dict[str, Any]]) -> None:
        url, body, headers = signed_request(stack.url, json.dumps(delivery), stack.org.auth_token)
        response = http.post(url, content=body, headers=headers)
        assert response.status_code < 500, (response.status_code, response.text, delivery)
        if response.status_code != 200:
            seen["400" if response.status_code == 400 else "other"] += 1
            return
        seen["2xx"] += 1
        results = response.json()["results"]
        assert len(results) == len(delivery)
        # "unmatched" (neither number is a line) is acknowledged by design, with nothing stored
        expected = {
            e["data"]["messageSid"]: e
            for e, result in zip(delivery, results, strict=True)
            if result != "unmatched"
        }
        stored = asyncio.run(_stored(stack.db.url, set(expected)))
        for sid, event in expected.items():
            assert sid in stored, (sid, event, response.json())
            body_sent = event["data"].get("body")
            if event["type"].endswith("inbound-message.received") and body_sent:
                assert stored[sid] == clean_text(body_sent)

    try:
        delivery_is_stored_or_refused()
    finally:
        http.close()
    return seen


async def _stored(url: str, sids: set[str]) -> dict[str, str | None]:
    db = Database(url)
    try:
        async with db.reader() as session:
            rows = await session.execute(
                select(Message.external_id, Message.body).where(Message.external_id.in_(sids))
            )
            return {sid: body for sid, body in rows.all() if sid is not None}
    finally:
        await db.dispose()


async def test_random_signed_deliveries_never_get_a_5xx(stack: Stack) -> None:
    seen = await asyncio.to_thread(_fuzz, stack, 120)
    # the strategies must exercise both answers, or the test proves little
    assert seen["2xx"] >= 10, seen
    assert seen["400"] >= 10, seen
    assert seen["other"] == 0, seen
