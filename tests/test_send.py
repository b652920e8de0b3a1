"""Replies sent from the inbox, over real HTTP to the app and from the app to the simulator:
the stored row and its events, validation before Twilio is called, Twilio's refusals and
outages, Idempotency-Key, and the send race (status events before the create answer)."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from loquent.contacts import service as contacts
from loquent.contacts.models import Contact
from loquent.messaging.models import Message, MessageSend
from loquent.orgs import service as orgs
from loquent.orgs.models import Organization, PhoneNumber
from loquent.realtime.models import EventLogEntry
from loquent.simulator.client import SimulatorClient as Sim
from tests import test_capture_flow
from tests.conftest import Org, Stack
from tests.test_capture_flow import eventually
from tests.test_realtime import sse

LINE = "+14155550100"
LINE_2 = "+14155550101"
CUSTOMER = "+14155550123"

pytestmark = pytest.mark.timeout(90)

# The simulator with the organization's account, both lines and a sink pointing at the app.
flow = test_capture_flow.flow


async def add_contact(stack: Stack, number: str | None, org: Org | None = None) -> int:
    org = org or stack.org
    async with stack.db.session() as session:
        if number is None:
            contact = Contact(organization_id=org.id, source="manual", first_name="No phone")
            session.add(contact)
            await session.flush()
        else:
            contact = await contacts.resolve_or_create(session, org.id, number, source="manual")
        await session.commit()
        return contact.id


async def post_send(
    stack: Stack,
    payload: dict[str, Any],
    *,
    key: str | None = None,
    org: Org | None = None,
    http: httpx.AsyncClient | None = None,
) -> httpx.Response:
    org = org or stack.org
    headers = {"Authorization": f"Bearer {org.api_token}"}
    if key is not None:
        headers["Idempotency-Key"] = key
    if http is not None:
        return await http.post(f"{stack.url}/api/messages/send", json=payload, headers=headers)
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(f"{stack.url}/api/messages/send", json=payload, headers=headers)


async def creates(sim: Sim) -> list[dict[str, Any]]:
    """The ``POST …/Messages.json`` calls the simulator received."""
    requests = await sim.call("GET", "/requests", path_contains="/Messages.json")
    return [r for r in requests if r["method"] == "POST"]


async def sim_messages(sim: Sim, stack: Stack) -> list[dict[str, Any]]:
    return list(await sim.call("GET", "/messages", account_sid=stack.org.account_sid))


def error(response: httpx.Response) -> tuple[str, str]:
    body = response.json()["error"]
    return body["code"], body["message"]


async def new_events(stack: Stack) -> list[dict[str, Any]]:
    rows = await stack.rows(EventLogEntry, EventLogEntry.type == "messaging.message.new")
    return [row.payload for row in rows]


async def test_a_reply_is_sent_stored_published_and_delivered(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    contact_id = await add_contact(stack, CUSTOMER)
    async with sse(stack, stack.org) as stream:
        response = await post_send(stack, {"contact_id": contact_id, "body": "See you at 3"})
        assert response.status_code == 201, response.text
        sent = response.json()
        assert sent["source"] == "loquent"
        assert sent["external_id"].startswith("SM")
        assert len(sent["external_id"]) == 34
        assert (sent["direction"], sent["from_address"], sent["to_address"]) == (
            "outbound",
            LINE,
            CUSTOMER,
        )
        assert (sent["body"], sent["body_state"], sent["status"]) == (
            "See you at 3",
            "ready",
            "queued",
        )
        first = await stream.next()
        assert first["event"] == "messaging.message.new"
        assert first["json"]["payload"]["id"] == sent["id"]
        while True:  # the status events of the simulator's delivery arrive through the sink
            frame = await stream.next()
            assert frame["event"] == "messaging.message.status"
            assert frame["json"]["payload"]["id"] == sent["id"]
            if frame["json"]["payload"]["status"] == "delivered":
                break

    rows = await stack.rows(Message)
    assert [(r.id, r.external_id, r.status, r.source) for r in rows] == [
        (sent["id"], sent["external_id"], "delivered", "loquent")
    ]
    at_twilio = await sim_messages(sim, stack)
    assert [(m["sid"], m["from"], m["to"], m["body"]) for m in at_twilio] == [
        (sent["external_id"], LINE, CUSTOMER, "See you at 3")
    ]
    contact = (await stack.rows(Contact, Contact.id == contact_id))[0]
    assert contact.last_contacted_at is not None
    assert len(await new_events(stack)) == 1
    # The in-flight slot is free again and the answer is kept for retries.
    send_row = (await stack.rows(MessageSend))[0]
    assert (send_row.inflight_line_id, send_row.response_status) == (None, 201)


async def test_the_default_line_is_the_contacts_latest_then_the_first(
    flow: tuple[Stack, Sim],
) -> None:
    stack, sim = flow
    # The customer last talked to the second line (an inbound text to it).
    await sim.call(
        "POST",
        f"/accounts/{stack.org.account_sid}/inbound-sms",
        {"from": CUSTOMER, "to": LINE_2, "body": "hi", "wait": True},
    )
    contact_id = (await stack.rows(Message))[0].contact_id
    response = await post_send(stack, {"contact_id": contact_id, "body": "answer"})
    assert response.status_code == 201, response.text
    assert response.json()["from_address"] == LINE_2

    async with stack.db.reader() as session:
        first_line = (
            await session.execute(select(PhoneNumber).where(PhoneNumber.number == LINE))
        ).scalar_one()
    chosen = await post_send(
        stack,
        {"contact_id": contact_id, "body": "from the front desk", "phone_number_id": first_line.id},
    )
    assert chosen.status_code == 201
    assert chosen.json()["from_address"] == LINE

    fresh = await add_contact(stack, "+14155550124")  # no history: the first line
    response = await post_send(stack, {"contact_id": fresh, "body": "hello"})
    assert response.json()["from_address"] == LINE


async def test_bad_requests_are_refused_before_twilio_is_called(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    contact_id = await add_contact(stack, CUSTOMER)
    no_phone = await add_contact(stack, None)
    other = await stack.add_org("Other", ["+14155550177"])
    other_contact = await add_contact(stack, "+14155550178", org=other)
    async with stack.db.reader() as session:
        other_line = (
            await session.execute(
                select(PhoneNumber).where(PhoneNumber.organization_id == other.id)
            )
        ).scalar_one()
    lineless = await stack.add_org("Lineless", [])
    lineless_contact = await add_contact(stack, "+14155550179", org=lineless)

    cases: list[tuple[dict[str, Any], Org | None, int, str]] = [
        ({"contact_id": contact_id, "body": ""}, None, 422, "empty_body"),
        ({"contact_id": contact_id, "body": " \n\t "}, None, 422, "empty_body"),
        ({"contact_id": contact_id, "body": "x" * 1601}, None, 422, "body_too_long"),
        ({"contact_id": contact_id}, None, 422, "invalid_request"),
        ({"contact_id": "seven", "body": "hi"}, None, 422, "invalid_request"),
        ({"contact_id": 999999, "body": "hi"}, None, 404, "not_found"),
        ({"contact_id": other_contact, "body": "hi"}, None, 404, "not_found"),
        (
            {"contact_id": contact_id, "body": "hi", "phone_number_id": other_line.id},
            None,
            404,
            "not_found",
        ),
        ({"contact_id": no_phone, "body": "hi"}, None, 422, "contact_has_no_phone"),
        ({"contact_id": lineless_contact, "body": "hi"}, lineless, 422, "no_line"),
    ]
    for payload, org, status, code in cases:
        response = await post_send(stack, payload, org=org)
        assert (response.status_code, error(response)[0]) == (status, code), payload
    bad_key = await post_send(stack, {"contact_id": contact_id, "body": "hi"}, key="x" * 256)
    assert (bad_key.status_code, error(bad_key)[0]) == (422, "invalid_idempotency_key")
    exactly_1600 = "y" * 1600
    ok = await post_send(stack, {"contact_id": contact_id, "body": exactly_1600})
    assert ok.status_code == 201, ok.text

    assert len(await creates(sim)) == 1  # only the valid one reached Twilio
    assert await stack.count(Message) == 1
    assert await stack.count(MessageSend) == 1


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (21211, "Invalid 'To' Phone Number: +14155550123"),
        (21610, "Attempt to send to unsubscribed recipient"),
        (
            21408,
            "Permission to send an SMS has not been enabled for the region indicated by the "
            "'To' number: +14155550123.",
        ),
    ],
)
async def test_twilio_refusals_reach_the_user_with_twilios_message(
    flow: tuple[Stack, Sim], code: int, message: str
) -> None:
    stack, sim = flow
    contact_id = await add_contact(stack, CUSTOMER)
    await sim.call(
        "POST", f"/accounts/{stack.org.account_sid}/send-rejections", {"to": CUSTOMER, "code": code}
    )
    response = await post_send(stack, {"contact_id": contact_id, "body": "are you there?"})
    assert response.status_code == 422
    assert error(response) == (f"twilio_{code}", message)
    failed = response.json()["error"]["failed_message"]
    assert (failed["status"], failed["error_code"], failed["external_id"]) == (
        "failed",
        str(code),
        None,
    )
    rows = await stack.rows(Message)
    assert [(r.id, r.status, r.error_code, r.body) for r in rows] == [
        (failed["id"], "failed", str(code), "are you there?")
    ]
    assert await sim_messages(sim, stack) == []


async def test_a_from_number_twilio_does_not_know_is_21606(flow: tuple[Stack, Sim]) -> None:
    stack, _sim = flow
    contact_id = await add_contact(stack, CUSTOMER)
    async with stack.db.session() as session:  # a line the Twilio account does not have
        line = await orgs.add_phone_number(session, stack.org.id, "+14155550155")
        await session.commit()
    response = await post_send(
        stack, {"contact_id": contact_id, "body": "hi", "phone_number_id": line.id}
    )
    assert response.status_code == 422
    code, message = error(response)
    assert code == "twilio_21606"
    assert "+14155550155" in message
    assert "not a valid message-capable" in message


async def test_rejected_credentials_flag_the_organization(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    contact_id = await add_contact(stack, CUSTOMER)
    await sim.call(
        "POST", f"/accounts/{stack.org.account_sid}/rotate-token", {"auth_token": "rotated"}
    )
    response = await post_send(stack, {"contact_id": contact_id, "body": "hello"})
    assert response.status_code == 502
    code, message = error(response)
    assert code == "twilio_credentials_rejected"
    assert "reconnect" in message
    org = (await stack.rows(Organization, Organization.id == stack.org.id))[0]
    assert org.twilio_credentials_valid is False
    assert org.twilio_credentials_error
    assert "401" in org.twilio_credentials_error
    assert [r.status for r in await stack.rows(Message)] == ["failed"]

    calls = len(await creates(sim))
    again = await post_send(stack, {"contact_id": contact_id, "body": "hello again"})
    assert (again.status_code, error(again)[0]) == (502, "twilio_credentials_rejected")
    assert len(await creates(sim)) == calls  # not even tried with credentials known bad
    assert await stack.count(Message) == 1


@pytest.mark.parametrize("fault", [{"status": 500}, {"status": 503}, {"delay_ms": 6000}])
async def test_twilio_down_or_too_slow_is_502_and_nothing_counts_as_sent(
    flow: tuple[Stack, Sim], fault: dict[str, Any]
) -> None:
    stack, sim = flow  # the app's Twilio timeout is 2 s in tests
    contact_id = await add_contact(stack, CUSTOMER)
    await sim.add_fault(path_regex=r"/Messages\.json$", method="POST", count=1, **fault)
    response = await post_send(stack, {"contact_id": contact_id, "body": "are you there?"})
    assert response.status_code == 502
    assert error(response)[0] == "twilio_unavailable"
    rows = await stack.rows(Message)
    assert [(r.status, r.external_id) for r in rows] == [("failed", None)]
    assert response.json()["error"]["failed_message"]["id"] == rows[0].id
    # The slot is free: the next text goes out.
    retry = await post_send(stack, {"contact_id": contact_id, "body": "are you there?"})
    assert retry.status_code == 201, retry.text


async def test_status_events_before_the_create_answer_update_the_same_row(
    flow: tuple[Stack, Sim],
) -> None:
    stack, sim = flow
    contact_id = await add_contact(stack, CUSTOMER)
    await sim.call("PATCH", "/config", {"early_status_events": True})
    response = await post_send(stack, {"contact_id": contact_id, "body": "raced"})
    assert response.status_code == 201, response.text
    sent = response.json()
    sid = sent["external_id"]
    # Twilio answered "queued", but "sent" had already arrived: status never goes back.
    assert sent["status"] == "sent"
    deliveries = await sim.call("GET", "/deliveries")
    early = [d for d in deliveries if sid in d["message_sids"]]
    assert [d["status_code"] for d in early[:2]] == [200, 200]
    assert [d["types"][0].rsplit(".", 1)[-1] for d in early[:2]] == ["queued", "sent"]

    async def delivered() -> bool:
        rows = await stack.rows(Message)
        return len(rows) == 1 and rows[0].status == "delivered"

    await eventually(delivered)
    assert (await sim.call("POST", "/drain", {"timeout_s": 5}))["pending"] == 0
    rows = await stack.rows(Message)
    assert [(r.id, r.external_id, r.source, r.status, r.body) for r in rows] == [
        (sent["id"], sid, "loquent", "delivered", "raced")
    ]
    assert [e["id"] for e in await new_events(stack)] == [sent["id"]]
    assert await stack.count(Contact) == 1


async def test_a_retry_with_the_same_key_gets_the_first_answer(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    contact_id = await add_contact(stack, CUSTOMER)
    key = secrets.token_hex(8)
    payload = {"contact_id": contact_id, "body": "only once"}
    first = await post_send(stack, payload, key=key)
    second = await post_send(stack, payload, key=key)
    assert first.status_code == second.status_code == 201
    assert second.json() == first.json()
    assert second.headers.get("idempotent-replayed") == "true"
    assert len(await creates(sim)) == 1
    assert len(await sim_messages(sim, stack)) == 1
    assert await stack.count(Message) == 1

    reused = await post_send(stack, {**payload, "body": "something else"}, key=key)
    assert (reused.status_code, error(reused)[0]) == (422, "idempotency_key_reused")
    # Keys belong to one organization: another may use the same string.
    other = await stack.add_org("Other", [])
    other_contact = await add_contact(stack, CUSTOMER, org=other)
    elsewhere = await post_send(
        stack, {"contact_id": other_contact, "body": "x"}, key=key, org=other
    )
    assert error(elsewhere)[0] == "no_line"

    # A refusal is an answer too: the retry gets it back without a second attempt.
    await sim.call(
        "POST",
        f"/accounts/{stack.org.account_sid}/send-rejections",
        {"to": CUSTOMER, "code": 21610},
    )
    refused_key = secrets.token_hex(8)
    refused = await post_send(stack, {**payload, "body": "stop?"}, key=refused_key)
    replayed = await post_send(stack, {**payload, "body": "stop?"}, key=refused_key)
    assert refused.status_code == replayed.status_code == 422
    assert replayed.json() == refused.json()
    assert len(await creates(sim)) == 2


async def test_concurrent_requests_with_one_key_send_once(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    contact_id = await add_contact(stack, CUSTOMER)
    # Twilio answers slowly, so every request arrives while the first is in flight.
    await sim.add_fault(path_regex=r"/Messages\.json$", method="POST", delay_ms=500)
    key = secrets.token_hex(8)
    async with httpx.AsyncClient(timeout=30) as http:
        responses = await asyncio.gather(
            *(
                post_send(stack, {"contact_id": contact_id, "body": "once"}, key=key, http=http)
                for _ in range(6)
            )
        )
    assert [r.status_code for r in responses] == [201] * 6
    assert len({r.json()["id"] for r in responses}) == 1
    assert len({r.json()["external_id"] for r in responses}) == 1
    assert len(await creates(sim)) == 1
    assert await stack.count(Message) == 1


async def test_texts_to_one_recipient_from_one_line_go_out_one_at_a_time(
    flow: tuple[Stack, Sim],
) -> None:
    stack, sim = flow
    contact_id = await add_contact(stack, CUSTOMER)
    await sim.add_fault(path_regex=r"/Messages\.json$", method="POST", delay_ms=300)
    await sim.call("PATCH", "/config", {"early_status_events": True})
    async with httpx.AsyncClient(timeout=30) as http:
        responses = await asyncio.gather(
            *(
                post_send(stack, {"contact_id": contact_id, "body": f"part {i}"}, http=http)
                for i in range(3)
            )
        )
    assert [r.status_code for r in responses] == [201] * 3
    assert await sim.call("POST", "/drain", {"timeout_s": 10}) == {"pending": 0}
    rows = await stack.rows(Message)
    by_sid = {m["sid"]: m["body"] for m in await sim_messages(sim, stack)}
    # Each row carries the SID Twilio gave its own text, and nothing was captured as external.
    assert sorted((r.body, by_sid[r.external_id or ""]) for r in rows) == [
        (f"part {i}", f"part {i}") for i in range(3)
    ]
    assert {r.source for r in rows} == {"loquent"}
    assert len(await new_events(stack)) == 3


async def test_a_browser_session_needs_the_csrf_token(flow: tuple[Stack, Sim]) -> None:
    stack, sim = flow
    contact_id = await add_contact(stack, CUSTOMER)
    async with stack.db.session() as session:
        org_row = await session.get(Organization, stack.org.id)
        assert org_row is not None
        member = await orgs.get_or_create_user(session, "member@example.com")
        await orgs.ensure_member(session, member, stack.org.id, "member")
        raw, user_session = await orgs.create_session(session, member.id, stack.org.id, 3600)
        csrf = user_session.csrf_token
        await session.commit()
    cookies = {"loquent_session": raw}
    async with httpx.AsyncClient(timeout=30, cookies=cookies) as http:
        url = f"{stack.url}/api/messages/send"
        payload = {"contact_id": contact_id, "body": "from a member"}
        refused = await http.post(url, json=payload)
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "csrf_failed")
        sent = await http.post(url, json=payload, headers={"X-CSRF-Token": csrf})
        assert sent.status_code == 201, sent.text
    assert len(await creates(sim)) == 1


async def _in_flight(stack: Stack) -> MessageSend:
    async def started() -> MessageSend | None:
        rows = await stack.rows(MessageSend, MessageSend.inflight_line_id.is_not(None))
        return rows[0] if rows else None

    row: MessageSend = await eventually(started)
    return row


async def test_a_console_text_during_a_send_stays_its_own_message(
    flow: tuple[Stack, Sim],
) -> None:
    """A text from the Console to the same number from the same line while our send waits
    for Twilio's answer: its events claim our row first; the answer gives it back."""
    stack, sim = flow
    contact_id = await add_contact(stack, CUSTOMER)
    await sim.add_fault(path_regex=r"/Messages\.json$", method="POST", delay_ms=1500, count=1)
    sending = asyncio.create_task(post_send(stack, {"contact_id": contact_id, "body": "ours"}))
    await _in_flight(stack)
    console = await sim.console_sms(
        stack.org.account_sid, **{"from": LINE, "to": CUSTOMER, "body": "from the console"}
    )
    response = await sending
    assert response.status_code == 201, response.text
    ours = response.json()
    assert ours["external_id"] != console["sid"]

    async def settled_rows() -> list[Message] | None:
        rows = await stack.rows(Message)
        done = len(rows) == 2 and all(r.body_state == "ready" for r in rows)
        return rows if done else None

    rows = await eventually(settled_rows)
    assert sorted((r.external_id, r.source, r.body) for r in rows) == sorted(
        [
            (ours["external_id"], "loquent", "ours"),
            (console["sid"], "external", "from the console"),
        ]
    )


async def test_a_send_whose_slot_was_lost_still_ends_as_one_row(flow: tuple[Stack, Sim]) -> None:
    """If the early events find no send in flight (its slot was taken over as dead), they
    capture the SID as an external message; the create answer folds that copy into ours."""
    stack, sim = flow
    contact_id = await add_contact(stack, CUSTOMER)
    await sim.call("PATCH", "/config", {"early_status_events": True})
    await sim.add_fault(path_regex=r"/Messages\.json$", method="POST", delay_ms=1000, count=1)
    sending = asyncio.create_task(post_send(stack, {"contact_id": contact_id, "body": "ours"}))
    slot = await _in_flight(stack)
    async with stack.db.session() as session:
        row = await session.get(MessageSend, slot.id)
        assert row is not None
        row.inflight_line_id = None
        row.inflight_to = None
        await session.commit()
    response = await sending
    assert response.status_code == 201, response.text
    ours = response.json()
    assert ours["status"] == "sent"  # the captured copy had got that far

    async def delivered() -> bool:
        rows = await stack.rows(Message)
        return len(rows) == 1 and rows[0].status == "delivered"

    await eventually(delivered)
    rows = await stack.rows(Message)
    assert [(r.id, r.external_id, r.source, r.body) for r in rows] == [
        (ours["id"], ours["external_id"], "loquent", "ours")
    ]


async def _session_cookie(stack: Stack, org: Org) -> dict[str, str]:
    async with stack.db.session() as session:
        user = await orgs.get_or_create_user(session, f"{secrets.token_hex(4)}@example.com")
        await orgs.ensure_member(session, user, org.id, "member")
        raw, _ = await orgs.create_session(session, user.id, org.id, 3600)
        await session.commit()
    return {"loquent_session": raw}


async def _conversation_page(stack: Stack, org: Org, contact_id: int) -> str:
    cookies = await _session_cookie(stack, org)
    async with httpx.AsyncClient(timeout=30, cookies=cookies) as http:
        response = await http.get(f"{stack.url}/messaging/{contact_id}")
    assert response.status_code == 200
    return response.text


async def test_the_compose_box_says_why_it_cannot_send(stack: Stack) -> None:
    contact_id = await add_contact(stack, CUSTOMER)
    page = await _conversation_page(stack, stack.org, contact_id)
    assert 'id="compose-disabled"' not in page
    assert '<select id="compose-line"' in page  # two lines: a picker
    assert "selected>+14155550100</option>" in page

    lineless = await stack.add_org("Lineless", [])
    page = await _conversation_page(stack, lineless, await add_contact(stack, CUSTOMER, lineless))
    assert 'id="compose-disabled"' in page
    assert "no phone line to send from" in page
    assert '<select id="compose-line"' not in page

    async with stack.db.session() as session:
        await orgs.mark_credentials_invalid(session, stack.org.id, "HTTP 401")
        await session.commit()
    page = await _conversation_page(stack, stack.org, contact_id)
    assert 'id="compose-disabled"' in page
    assert "must reconnect" in page
    assert "disabled></textarea>" in page
