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
