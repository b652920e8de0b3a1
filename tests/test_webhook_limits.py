"""Data storage cannot hold: cleaned (a body) or refused with 400 (identifiers), never a 500,
and never a delivery half written. Every case runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import json

import pytest

from loquent.contacts.models import ContactPhone
from loquent.messaging import schemas
from loquent.messaging.models import Message
from loquent.orgs.models import PhoneNumber
from loquent.realtime.models import EventLogEntry
from tests.conftest import Stack
from tests.support.twilio import inbound_event, new_sid, status_event

LINE = "+14155550100"
CUSTOMER = "+14155550199"
BIG = "<a number of 5,000 digits>"  # Python's json refuses to parse it: a ValueError


def inbound(stack: Stack, body: str = "hi", **data: object) -> dict:
    event = inbound_event(
        sid=new_sid("SM"), account=stack.org.account_sid, from_=CUSTOMER, to=LINE, body=body
    )
    event["data"].update(data)
    return event


def sent(stack: Stack, **data: object) -> dict:
    event = status_event(
        "sent", sid=new_sid("SM"), account=stack.org.account_sid, from_=LINE, to=CUSTOMER
    )
    event["data"].update(data)
    return event


def test_parser_limits_are_the_column_lengths() -> None:
    assert Message.__table__.c.external_id.type.length == schemas.MESSAGE_SID_MAX
    assert schemas.ERROR_CODE_MAX == Message.__table__.c.error_code.type.length == 16
    assert schemas.LINE_NUMBER_MAX == PhoneNumber.__table__.c.number.type.length == 20
    assert schemas.ADDRESS_MAX == ContactPhone.__table__.c.number.type.length == 64


@pytest.mark.parametrize(
    ("body", "stored"),
    [
        ("x\ud83d", "x\ufffd"),  # a multi-part SMS cut inside an emoji
        ("\udc00 tail", "\ufffd tail"),
        ("nul\x00in\x00body", "nulinbody"),
        ("emoji \U0001f600 intact", "emoji \U0001f600 intact"),
    ],
)
async def test_a_body_is_cleaned_not_lost(stack: Stack, body: str, stored: str) -> None:
    first, second = inbound(stack, body), sent(stack, body=body)
    response = await stack.post_events([first, second])
    assert response.status_code == 200, response.text
    messages = await stack.rows(Message)
    assert [m.body for m in messages] == [stored, stored]
    assert [m.body_state for m in messages] == ["ready", "ready"]


@pytest.mark.parametrize(
    "timestamp",
    [
        "0001-01-01T00:00:00+01:00",
        "9999-12-31T23:59:59-01:00",
        "9999-12-31T23:59:59Z",
        "0001-01-01",
    ],
)
async def test_timestamps_at_the_edge_of_the_calendar_are_ignored(
    stack: Stack, timestamp: str
) -> None:
    event = sent(stack, timestamp=timestamp)
    event["time"] = timestamp
    response = await stack.post_events([event, inbound(stack, timestamp=timestamp)])
    assert response.status_code == 200, response.text
    for message in await stack.rows(Message):
        assert 2026 <= message.created_at.year <= 2100  # the time it arrived instead


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("errorCode longer than its column", lambda s: sent(s, errorCode="3" * 17)),
        ("errorCode number too long", lambda s: sent(s, errorCode=10**16)),
        ("errorCode with NUL", lambda s: sent(s, errorCode="300\x0003")),
        ("inbound to longer than a line", lambda s: inbound(s, to="+1415555010012345678901")),
        ("to longer than its column", lambda s: sent(s, to="x" * 65)),
        ("from with NUL", lambda s: sent(s, **{"from": "+1415\x005550100"})),
        ("to with a lone surrogate", lambda s: sent(s, to="+1415555\ud83d")),
        ("messageSid with a trailing newline", lambda s: sent(s, messageSid=new_sid("SM") + "\n")),
        ("numMedia in other digits", lambda s: inbound(s, numMedia="\u0663")),
        ("a 5,000-digit number", lambda s: sent(s, numberOfSegments=BIG)),
    ],
)
async def test_what_storage_cannot_hold_is_a_400_and_nothing_is_written(
    stack: Stack, name: str, make: object
) -> None:
    """[ok, bad, ok]: before, the first was stored, the bad one was a 500 and Twilio retried
    the delivery for hours; now the whole delivery is refused before anything is written."""
    bad = make(stack)  # type: ignore[operator]
    delivery = json.dumps([sent(stack), bad, inbound(stack)])
    response = await stack.post_events(delivery.replace(json.dumps(BIG), "9" * 5000))
    assert response.status_code == 400, (name, response.text)
    assert response.json()["error"]["code"] == "invalid_payload"
    assert await stack.count(Message) == 0, name
    assert await stack.count(EventLogEntry) == 0, name


async def test_a_long_but_storable_recipient_is_accepted(stack: Stack) -> None:
    at_limit = "+" + "1" * 19  # 20 characters: exactly what phone_number.number holds
    response = await stack.post_events([inbound(stack, to=at_limit), sent(stack, to="y" * 64)])
    assert response.status_code == 200, response.text
    assert await stack.count(Message) == 2
    assert await stack.count(PhoneNumber, PhoneNumber.number == at_limit) == 1
