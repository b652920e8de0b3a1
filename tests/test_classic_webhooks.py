"""POST /twilio/status and POST /twilio/sms: Twilio's classic form-encoded webhooks, signed
over URL + sorted params, feeding the same service as Event Streams."""

from __future__ import annotations

import asyncio
from urllib.parse import urlencode

import httpx
import pytest
from twilio.request_validator import RequestValidator

from loquent.contacts.models import Contact
from loquent.messaging.models import Message
from loquent.orgs.models import PhoneNumber
from loquent.realtime.models import EventLogEntry
from loquent.simulator.client import SimulatorClient as Sim
from loquent.simulator.server import simulator_thread
from tests.conftest import Stack, running_stack
from tests.support.twilio import new_sid

LINE = "+14155550100"
CUSTOMER = "+14155550199"
TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response/>'


async def post_form(
    stack: Stack,
    path: str,
    params: dict[str, str],
    *,
    token: str | None = None,
    query: str = "",
    body: bytes | None = None,
) -> httpx.Response:
    """Sign as Twilio does: HMAC-SHA1 over the URL it called + the sorted form params."""
    url = f"{stack.url}{path}" + (f"?{query}" if query else "")
    signature = RequestValidator(token or stack.org.auth_token).compute_signature(url, params)
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(
            url,
            content=body if body is not None else urlencode(params).encode(),
            headers={
                "X-Twilio-Signature": signature,
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )


def status_callback(stack: Stack, sid: str, status: str, **extra: str) -> dict[str, str]:
    return {
        "MessageSid": sid,
        "SmsSid": sid,
        "MessageStatus": status,
        "SmsStatus": status,
        "AccountSid": stack.org.account_sid,
        "From": LINE,
        "To": CUSTOMER,
        "ApiVersion": "2010-04-01",
        **extra,
    }


def inbound_sms(stack: Stack, sid: str, body: str, **extra: str) -> dict[str, str]:
    return {
        "MessageSid": sid,
        "SmsMessageSid": sid,
        "SmsSid": sid,
        "AccountSid": stack.org.account_sid,
        "MessagingServiceSid": new_sid("MG"),
        "From": CUSTOMER,
        "To": LINE,
        "Body": body,
        "NumMedia": "0",
        "NumSegments": "1",
        "SmsStatus": "received",
        "ApiVersion": "2010-04-01",
        "FromCountry": "US",
        **extra,
    }


async def test_status_callbacks_capture_an_external_message(stack: Stack) -> None:
    sid = new_sid("SM")
    response = await post_form(stack, "/twilio/status", status_callback(stack, sid, "sent"))
    assert response.status_code == 200, response.text
    assert response.json() == {"result": "created"}
    [message] = await stack.rows(Message)
    assert (message.external_id, message.source, message.direction) == (
        sid,
        "external",
        "outbound",
    )
    assert (message.body, message.body_state, message.status) == (None, "pending", "sent")
    [event] = await stack.rows(EventLogEntry)
    assert event.type == "messaging.message.new"

    failed = status_callback(stack, sid, "undelivered", ErrorCode="30003")
    response = await post_form(stack, "/twilio/status", failed)
    assert response.json() == {"result": "updated"}
    [message] = await stack.rows(Message)
    assert (message.status, message.error_code) == ("undelivered", "30003")
    types = [e.type for e in await stack.rows(EventLogEntry)]
    assert types == ["messaging.message.new", "messaging.message.status"]


async def test_older_accounts_send_sms_status_only(stack: Stack) -> None:
    sid = new_sid("SM")
    params = status_callback(stack, sid, "delivered")
    del params["MessageStatus"], params["MessageSid"]
    response = await post_form(stack, "/twilio/status", params, query="tag=a%20b")
    assert response.status_code == 200, response.text
    [message] = await stack.rows(Message)
    assert (message.external_id, message.status) == (sid, "delivered")


async def test_an_unknown_status_is_acknowledged_and_ignored(stack: Stack) -> None:
    params = status_callback(stack, new_sid("SM"), "teleported")
    response = await post_form(stack, "/twilio/status", params)
    assert response.status_code == 200
    assert response.json() == {"result": "ignored"}
    assert await stack.count(Message) == 0


async def test_an_inbound_text_is_stored_and_answered_with_empty_twiml(stack: Stack) -> None:
    sid = new_sid("SM")
    params = inbound_sms(stack, sid, "Running late \U0001f600")
    response = await post_form(stack, "/twilio/sms", params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/xml")
    assert response.text == TWIML
    [message] = await stack.rows(Message)
    assert (message.direction, message.status, message.source, message.body) == (
        "inbound",
        "received",
        "loquent",
        "Running late \U0001f600",
    )
    [contact] = await stack.rows(Contact)
    assert contact.source == "inbound_sms"
    # Twilio's redelivery of the same webhook changes nothing
    again = await post_form(stack, "/twilio/sms", params)
    assert again.status_code == 200
    assert await stack.count(Message) == 1


async def test_an_inbound_text_to_a_new_number_registers_the_line(stack: Stack) -> None:
    params = inbound_sms(stack, new_sid("SM"), "hi", To="+14155550155")
    assert (await post_form(stack, "/twilio/sms", params)).status_code == 200
    assert await stack.count(PhoneNumber, PhoneNumber.number == "+14155550155") == 1


@pytest.mark.parametrize("path", ["/twilio/status", "/twilio/sms"])
async def test_a_bad_signature_is_403_and_writes_nothing(stack: Stack, path: str) -> None:
    sid = new_sid("SM")
    params = (
        status_callback(stack, sid, "sent")
        if path == "/twilio/status"
        else inbound_sms(stack, sid, "x")
    )
    forged = await post_form(stack, path, params, token="0" * 32)
    unknown = await post_form(stack, path, {**params, "AccountSid": new_sid("AC")})
    assert forged.status_code == unknown.status_code == 403
    assert forged.content == unknown.content  # an outsider cannot tell which accounts exist
    assert forged.json()["error"]["code"] == "invalid_signature"
    tampered = await post_form(
        stack, path, params, body=urlencode({**params, "To": "+1415555"}).encode()
    )
    assert tampered.status_code == 403
    assert await stack.count(Message) == 0


@pytest.mark.parametrize(
    ("path", "change"),
    [
        ("/twilio/status", {"MessageSid": "SMnope", "SmsSid": "SMnope"}),
        ("/twilio/status", {"MessageStatus": "", "SmsStatus": ""}),
        ("/twilio/status", {"AccountSid": "ACshort"}),
        ("/twilio/status", {"ErrorCode": "3" * 17}),
        ("/twilio/status", {"From": "+1415\x005550100"}),
        ("/twilio/status", {"To": "x" * 65}),
        ("/twilio/sms", {"To": "+1415555010012345678901"}),
        ("/twilio/sms", {"NumMedia": "lots"}),
        ("/twilio/sms", {"From": ""}),
    ],
)
async def test_malformed_callbacks_are_400_and_write_nothing(
    stack: Stack, path: str, change: dict[str, str]
) -> None:
    sid = new_sid("SM")
    base = (
        status_callback(stack, sid, "sent")
        if path == "/twilio/status"
        else inbound_sms(stack, sid, "x")
    )
    response = await post_form(stack, path, {**base, **change})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_payload"
    assert await stack.count(Message) == 0


async def test_a_body_that_is_not_a_utf8_form_is_400(stack: Stack) -> None:
    params = inbound_sms(stack, new_sid("SM"), "x")
    raw = urlencode(params).encode() + b"&Extra=%FF%FE"
    response = await post_form(stack, "/twilio/sms", params, body=raw)
    assert response.status_code == 400
    assert await stack.count(Message) == 0


async def test_a_nul_in_an_inbound_body_is_dropped_not_refused(stack: Stack) -> None:
    params = inbound_sms(stack, new_sid("SM"), "cut \x00here")
    response = await post_form(stack, "/twilio/sms", params)
    assert response.status_code == 200, response.text
    [message] = await stack.rows(Message)
    assert message.body == "cut here"


async def test_an_oversized_form_is_413(stack: Stack) -> None:
    params = inbound_sms(stack, new_sid("SM"), "x" * (300 * 1024))
    response = await post_form(stack, "/twilio/sms", params)
    assert response.status_code == 413
    assert await stack.count(Message) == 0


async def test_simulator_status_callbacks_capture_a_message_sent_elsewhere(
    database_url: str,
) -> None:
    """Another platform sends through Twilio with its StatusCallback pointing here; no Event
    Streams sink exists. The simulator posts signed form callbacks (queued, sent, delivered),
    the message is captured, and the worker fetches its body."""
    sim_server = await asyncio.to_thread(simulator_thread().start)
    sim = Sim(sim_server.url)
    try:
        async with running_stack(
            database_url,
            run_worker=True,
            twilio_api_base=sim_server.url,
            twilio_events_api_base=sim_server.url,
        ) as stack:
            account, token = stack.org.account_sid, stack.org.auth_token
            await sim.call("POST", "/accounts", {"sid": account, "auth_token": token})
            await sim.call("POST", f"/accounts/{account}/numbers", {"phone_number": LINE})
            async with httpx.AsyncClient(timeout=30, auth=(account, token)) as http:
                created = await http.post(
                    f"{sim_server.url}/2010-04-01/Accounts/{account}/Messages.json",
                    data={
                        "From": LINE,
                        "To": CUSTOMER,
                        "Body": "Sent from another CRM",
                        "StatusCallback": f"{stack.url}/twilio/status",
                    },
                )
            assert created.status_code == 201, created.text
            sid = created.json()["sid"]

            async def settled() -> Message | None:
                rows = await stack.rows(Message, Message.external_id == sid)
                done = rows and rows[0].status == "delivered" and rows[0].body_state == "ready"
                return rows[0] if done else None

            deadline = asyncio.get_running_loop().time() + 20
            while (found := await settled()) is None:
                assert asyncio.get_running_loop().time() < deadline, "not captured in time"
                await asyncio.sleep(0.1)
            assert (found.source, found.direction, found.body) == (
                "external",
                "outbound",
                "Sent from another CRM",
            )
            news = await stack.count(EventLogEntry, EventLogEntry.type == "messaging.message.new")
            assert news == 1
    finally:
        await asyncio.to_thread(sim_server.stop)
