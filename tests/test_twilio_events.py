"""POST /twilio/events: authentication, parsing, capture, status ordering, races."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

import httpx
import pytest

from loquent.contacts.models import Contact, ContactPhone
from loquent.messaging.models import Message
from loquent.orgs.models import Organization
from loquent.realtime.models import EventLogEntry
from tests.conftest import Stack
from tests.support.twilio import inbound_event, new_sid, signed_request, status_event

LINE = "+14155550100"
CUSTOMER = "+14155550199"
FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "event-streams-batch.json"


def sent(stack: Stack, sid: str, status: str = "sent", **kw: str) -> dict:
    return status_event(
        status,
        sid=sid,
        account=stack.org.account_sid,
        from_=kw.get("from_", LINE),
        to=kw.get("to", CUSTOMER),
    )


async def nothing_written(stack: Stack) -> None:
    assert await stack.count(Message) == 0
    assert await stack.count(Contact) == 0
    assert await stack.count(EventLogEntry) == 0


async def test_fixture_batch_creates_external_and_inbound_messages(stack: Stack) -> None:
    text = (
        FIXTURE.read_text()
        if FIXTURE.exists()
        else json.dumps(
            [
                sent(stack, new_sid("SM")),
                inbound_event(
                    sid=new_sid("SM"),
                    account=stack.org.account_sid,
                    from_=CUSTOMER,
                    to=LINE,
                    body="Thanks, got it",
                ),
            ]
        )
    )
    batch = json.loads(text)
    for event in batch:
        fixture_account = event["data"]["accountSid"]
        event["data"]["accountSid"] = stack.org.account_sid
        # The CloudEvent's source names the account too, and must agree with data.
        event["source"] = event["source"].replace(fixture_account, stack.org.account_sid)
    response = await stack.post_events(batch)
    assert response.status_code == 200, response.text
    assert response.json()["results"] == ["created", "created"]

    outbound, inbound = await stack.rows(Message)
    assert (outbound.direction, outbound.source, outbound.body, outbound.body_state) == (
        "outbound",
        "external",
        None,
        "pending",
    )
    assert outbound.status == "sent"
    assert (inbound.direction, inbound.source, inbound.body, inbound.status) == (
        "inbound",
        "loquent",
        "Thanks, got it",
        "received",
    )
    assert outbound.contact_id == inbound.contact_id
    [phone] = await stack.rows(ContactPhone)
    assert phone.number == CUSTOMER
    [contact] = await stack.rows(Contact)
    assert contact.source == "external_sms"
    assert contact.last_contacted_at == inbound.created_at
    events = await stack.rows(EventLogEntry)
    assert [e.type for e in events] == ["messaging.message.new"] * 2


async def test_external_outbound_uses_the_org_line_as_sender(stack: Stack) -> None:
    sid = new_sid("SM")
    response = await stack.post_events([sent(stack, sid)])
    assert response.status_code == 200
    [message] = await stack.rows(Message)
    assert (message.direction, message.from_address, message.to_address) == (
        "outbound",
        LINE,
        CUSTOMER,
    )
    assert message.external_id == sid
    [phone] = await stack.rows(ContactPhone)
    assert phone.number == CUSTOMER
    assert phone.contact_id == message.contact_id


async def test_external_inbound_when_the_recipient_is_an_org_line(stack: Stack) -> None:
    response = await stack.post_events(
        [sent(stack, new_sid("SM"), "delivered", from_="+442071838750", to="+14155550101")]
    )
    assert response.status_code == 200
    [message] = await stack.rows(Message)
    assert (message.direction, message.status, message.source) == (
        "inbound",
        "delivered",
        "external",
    )
    [phone] = await stack.rows(ContactPhone)
    assert phone.number == "+442071838750"


async def test_neither_number_owned_is_acknowledged_counted_and_skipped(stack: Stack) -> None:
    response = await stack.post_events(
        [sent(stack, new_sid("SM"), from_="+12025550123", to="+12025550124")]
    )
    assert response.status_code == 200
    assert response.json()["results"] == ["unmatched"]
    await nothing_written(stack)
    [org] = await stack.rows(Organization)
    assert org.unmatched_events == 1


async def test_late_sent_never_regresses_delivered(stack: Stack) -> None:
    sid = new_sid("SM")
    assert (await stack.post_events([sent(stack, sid, "delivered")])).status_code == 200
    assert (await stack.post_events([sent(stack, sid, "sent")])).json()["results"] == ["unchanged"]
    assert (await stack.post_events([sent(stack, sid, "queued")])).status_code == 200
    [message] = await stack.rows(Message)
    assert message.status == "delivered"
    # one message.new and no status event: nothing changed after creation
    assert [e.type for e in await stack.rows(EventLogEntry)] == ["messaging.message.new"]


async def test_status_update_publishes_only_on_change(stack: Stack) -> None:
    sid = new_sid("SM")
    await stack.post_events([sent(stack, sid, "sent")])
    await stack.post_events([sent(stack, sid, "delivered")])
    await stack.post_events([sent(stack, sid, "delivered")])  # Twilio redelivery
    types = [e.type for e in await stack.rows(EventLogEntry)]
    assert types == ["messaging.message.new", "messaging.message.status"]
    [message] = await stack.rows(Message)
    assert message.status == "delivered"


async def test_failed_status_records_the_error_code(stack: Stack) -> None:
    sid = new_sid("SM")
    event = sent(stack, sid, "undelivered")
    event["data"]["errorCode"] = 30003
    await stack.post_events([event])
    [message] = await stack.rows(Message)
    assert (message.status, message.error_code) == ("undelivered", "30003")


async def test_fifty_concurrent_deliveries_of_one_new_sid_make_one_row(stack: Stack) -> None:
    sid = new_sid("SM")
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=50)) as http:
        responses = await asyncio.gather(
            *[
                stack.post_events([sent(stack, sid, "sent" if i % 2 else "delivered")], client=http)
                for i in range(50)
            ]
        )
    assert [r.status_code for r in responses] == [200] * 50
    assert sorted(r.json()["results"][0] for r in responses).count("created") == 1
    [message] = await stack.rows(Message)
    assert message.status == "delivered"
    assert await stack.count(Contact) == 1
    new_events = await stack.count(EventLogEntry, EventLogEntry.type == "messaging.message.new")
    assert new_events == 1


async def test_event_body_is_stored_and_enrichment_skipped(stack: Stack) -> None:
    event = sent(stack, new_sid("SM"))
    event["data"]["body"] = "hello from elsewhere"
    await stack.post_events([event])
    [message] = await stack.rows(Message)
    assert (message.body, message.body_state, message.body_next_attempt_at) == (
        "hello from elsewhere",
        "ready",
        None,
    )


async def test_data_may_arrive_as_a_json_string(stack: Stack) -> None:
    event = sent(stack, new_sid("SM"))
    event["data"] = json.dumps(event["data"])
    response = await stack.post_events(event)  # a single object, not an array
    assert response.status_code == 200
    assert await stack.count(Message) == 1


async def test_unhandled_types_are_acknowledged_and_ignored(stack: Stack) -> None:
    event = sent(stack, new_sid("SM"))
    event["type"] = "com.twilio.voice.insights.call-summary.complete"
    response = await stack.post_events([event])
    assert response.status_code == 200
    assert response.json()["results"] == ["ignored"]
    await nothing_written(stack)


async def test_sink_test_event_marks_the_sink_verified(stack: Stack) -> None:
    event = {
        "specversion": "1.0",
        "type": "com.twilio.eventstreams.test-event",
        "source": "Sink",
        "id": stack.org.account_sid,
        "dataschema": None,
        "datacontenttype": "application/json",
        "time": "2026-11-23T10:00:00.000Z",
        "data": {"test": "ok"},
    }
    response = await stack.post_events([event])
    assert response.status_code == 200, response.text
    [org] = await stack.rows(Organization)
    assert org.sink_verified_at is not None


# --- refusals: nothing written --------------------------------------------------------------


async def test_forged_signature_is_refused_and_counted(stack: Stack) -> None:
    response = await stack.post_events([sent(stack, new_sid("SM"))], token="not-the-token")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "invalid_signature"
    await nothing_written(stack)
    [org] = await stack.rows(Organization)
    assert org.signature_failures == 1
    assert org.last_signature_failure_at is not None


async def test_missing_signature_is_refused(stack: Stack) -> None:
    url, body, headers = signed_request(stack.url, [sent(stack, new_sid("SM"))], "x")
    headers.pop("X-Twilio-Signature")
    async with httpx.AsyncClient() as http:
        response = await http.post(url, content=body, headers=headers)
    assert response.status_code == 403
    await nothing_written(stack)


async def test_signature_of_another_account_is_refused(stack: Stack) -> None:
    other = await stack.add_org("Other", ["+14155550177"])
    response = await stack.post_events([sent(stack, new_sid("SM"))], token=other.auth_token)
    assert response.status_code == 403
    await nothing_written(stack)


async def test_url_without_body_hash_is_refused(stack: Stack) -> None:
    from twilio.request_validator import RequestValidator

    body = json.dumps([sent(stack, new_sid("SM"))])
    url = f"{stack.url}/twilio/events"
    signature = RequestValidator(stack.org.auth_token).compute_signature(url, {})
    async with httpx.AsyncClient() as http:
        response = await http.post(url, content=body, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 403
    await nothing_written(stack)


async def test_tampered_body_is_refused(stack: Stack) -> None:
    url, body, headers = signed_request(
        stack.url, [sent(stack, new_sid("SM"))], stack.org.auth_token
    )
    tampered = body.replace(CUSTOMER.encode(), b"+14155550198")
    async with httpx.AsyncClient() as http:
        response = await http.post(url, content=tampered, headers=headers)
    assert response.status_code == 403
    await nothing_written(stack)


async def test_unknown_account_is_refused(stack: Stack) -> None:
    event = status_event("sent", sid=new_sid("SM"), account=new_sid("AC"), from_=LINE, to=CUSTOMER)
    response = await stack.post_events([event])
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "invalid_signature"
    await nothing_written(stack)


async def test_events_of_two_accounts_in_one_delivery_are_refused(stack: Stack) -> None:
    other = status_event("sent", sid=new_sid("SM"), account=new_sid("AC"), from_=LINE, to=CUSTOMER)
    response = await stack.post_events([sent(stack, new_sid("SM")), other])
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "mixed_accounts"
    await nothing_written(stack)


def _broken_bodies(account: str) -> list[tuple[str, str]]:
    good = status_event("sent", sid=new_sid("SM"), account=account, from_=LINE, to=CUSTOMER)

    def variant(mutate: object) -> str:
        event = json.loads(json.dumps(good))
        mutate(event)  # type: ignore[operator]
        return json.dumps([event])

    return [
        ("not json", "{not json"),
        ("empty array", "[]"),
        ("a number", "42"),
        ("array of strings", '["a"]'),
        ("missing messageSid", variant(lambda e: e["data"].pop("messageSid"))),
        ("messageSid wrong type", variant(lambda e: e["data"].update(messageSid=123))),
        ("messageSid not a SID", variant(lambda e: e["data"].update(messageSid="SMxyz"))),
        ("missing from", variant(lambda e: e["data"].pop("from"))),
        ("to is a list", variant(lambda e: e["data"].update(to=["+1"]))),
        ("data is a list", variant(lambda e: e.update(data=[1]))),
        ("data is a broken string", variant(lambda e: e.update(data="{nope"))),
        ("missing type", variant(lambda e: e.pop("type"))),
        (
            "no accountSid and a source naming no account",
            variant(lambda e: (e["data"].pop("accountSid"), e.update(source="Sink"))),
        ),
        ("body wrong type", variant(lambda e: e["data"].update(body={"a": 1}))),
        ("numMedia negative", variant(lambda e: e["data"].update(numMedia=-1))),
    ]


@pytest.mark.parametrize("case", range(15))
async def test_malformed_deliveries_get_400_and_write_nothing(stack: Stack, case: int) -> None:
    name, body = _broken_bodies(stack.org.account_sid)[case]
    url = f"{stack.url}/twilio/events?bodySHA256={hashlib.sha256(body.encode()).hexdigest()}"
    from twilio.request_validator import RequestValidator

    signature = RequestValidator(stack.org.auth_token).compute_signature(url, {})
    async with httpx.AsyncClient() as http:
        response = await http.post(url, content=body, headers={"X-Twilio-Signature": signature})
    assert response.status_code == 400, (name, response.text)
    assert response.json()["error"]["message"], name
    await nothing_written(stack)


async def test_a_bad_event_rejects_the_whole_delivery(stack: Stack) -> None:
    good = sent(stack, new_sid("SM"))
    bad = sent(stack, new_sid("SM"))
    bad["data"].pop("to")
    response = await stack.post_events([good, bad])
    assert response.status_code == 400
    await nothing_written(stack)


async def test_concurrent_inbound_texts_to_a_new_number_register_one_line(stack: Stack) -> None:
    from loquent.orgs.models import PhoneNumber

    new_line = "+14155550155"
    async with httpx.AsyncClient(timeout=30) as http:
        responses = await asyncio.gather(
            *[
                stack.post_events(
                    [
                        inbound_event(
                            sid=new_sid("SM"),
                            account=stack.org.account_sid,
                            from_=f"+1202555{i:04d}",
                            to=new_line,
                            body=f"hello {i}",
                        )
                    ],
                    client=http,
                )
                for i in range(10)
            ]
        )
    assert [r.status_code for r in responses] == [200] * 10
    assert await stack.count(PhoneNumber, PhoneNumber.number == new_line) == 1
    assert await stack.count(Message, Message.to_address == new_line) == 10
