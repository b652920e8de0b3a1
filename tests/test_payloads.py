"""The Event Streams parser never fails with anything but a PayloadError (a 400)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from loquent.messaging.statuses import should_advance
from loquent.twilio.payloads import PayloadError, is_handled, message_data, parse_delivery

ACCOUNT = "AC" + "a" * 32
SID = "SM" + "b" * 32

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=20,
)


def _valid_event() -> dict:
    return {
        "specversion": "1.0",
        "type": "com.twilio.messaging.message.sent",
        "id": "EZ1",
        "source": "x",
        "data": {
            "messageSid": SID,
            "accountSid": ACCOUNT,
            "from": "+14155550100",
            "to": "+14155550199",
        },
    }


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes(raw: bytes) -> None:
    try:
        parse_delivery(raw)
    except PayloadError:
        pass


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_arbitrary_json_documents(document: object) -> None:
    try:
        parse_delivery(json.dumps(document).encode())
    except PayloadError:
        pass


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["type", "id", "data", "time"]) | st.text(max_size=8),
    json_values,
    st.sampled_from(
        ["messageSid", "accountSid", "from", "to", "body", "errorCode", "numMedia", "timestamp"]
    ),
    json_values,
)
def test_mutated_valid_events(
    top_key: str, top_value: object, data_key: str, data_value: object
) -> None:
    event = _valid_event()
    event[top_key] = top_value
    if isinstance(event.get("data"), dict):
        event["data"][data_key] = data_value
    try:
        for parsed in parse_delivery(json.dumps([event]).encode()):
            if is_handled(parsed.type):
                message_data(parsed)
    except PayloadError:
        pass


def test_a_valid_event_parses() -> None:
    [event] = parse_delivery(json.dumps(_valid_event()).encode())
    data = message_data(event)
    assert (event.account_sid, data.message_sid, data.from_address) == (
        ACCOUNT,
        SID,
        "+14155550100",
    )


def test_status_order_never_regresses() -> None:
    assert should_advance("queued", "sent")
    assert should_advance("sent", "delivered")
    assert should_advance("delivered", "read")
    assert not should_advance("delivered", "sent")
    assert not should_advance("delivered", "delivered")
    assert not should_advance("failed", "delivered")  # terminal answers are final
    assert not should_advance("read", "delivered")
    assert not should_advance("sent", "bogus")


hostile_text = st.text(
    alphabet=st.characters(codec=None, categories=None, exclude_characters=()), max_size=40
) | st.sampled_from(["x\ud83d", "\x00", "+1415555\udc00", "SM" + "b" * 32 + "\n", "9" * 30])


@settings(max_examples=400, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["messageSid", "from", "to", "body", "errorCode", "numMedia", "timestamp"]),
        hostile_text | json_values,
    ),
    st.booleans(),
)
def test_what_parses_fits_the_columns(fields: dict, inbound: bool) -> None:
    """Whatever the parser accepts can be stored on PostgreSQL: within the column lengths,
    no NUL, no lone surrogate (it must encode as UTF-8)."""
    from loquent.messaging import schemas
    from loquent.messaging.capture import normalize_address

    event = _valid_event()
    if inbound:
        event["type"] = "com.twilio.messaging.inbound-message.received"
    event["data"].update(fields)
    try:
        [parsed] = parse_delivery(json.dumps([event]).encode())
        data = message_data(parsed)
    except PayloadError:
        return
    assert len(data.message_sid) <= schemas.MESSAGE_SID_MAX
    limit_to = schemas.LINE_NUMBER_MAX if inbound else schemas.ADDRESS_MAX
    assert len(normalize_address(data.to_address)) <= limit_to
    assert len(normalize_address(data.from_address)) <= schemas.ADDRESS_MAX
    assert data.error_code is None or len(data.error_code) <= schemas.ERROR_CODE_MAX
    for text in (
        data.message_sid,
        data.from_address,
        data.to_address,
        data.body or "",
        data.error_code or "",
    ):
        assert "\x00" not in text
        text.encode("utf-8")
    if data.occurred_at is not None:
        assert 1970 <= data.occurred_at.year <= 9998
