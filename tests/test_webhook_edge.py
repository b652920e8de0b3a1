"""The webhook edge against unauthenticated abuse and Twilio's own variations: the account
named by `source`, a body cap enforced while reading, deep nesting, one 403 for outsiders,
and a signature-failure counter that forgeries cannot inflate."""

from __future__ import annotations

import select
import socket
import time
from datetime import timedelta

import httpx

from loquent.db import utcnow
from loquent.messaging.models import Message
from loquent.orgs import service as orgs
from loquent.orgs.models import Organization
from tests.conftest import Stack
from tests.support.twilio import inbound_event, new_sid, signed_request, status_event

LINE = "+14155550100"
CUSTOMER = "+14155550199"
MiB = 1024 * 1024


# --- the account named by `source` -----------------------------------------------------------


async def test_an_inbound_event_without_data_account_takes_it_from_source(stack: Stack) -> None:
    event = inbound_event(
        sid=new_sid("SM"), account=stack.org.account_sid, from_=CUSTOMER, to=LINE, body="hello"
    )
    del event["data"]["accountSid"]
    response = await stack.post_events([event])
    assert response.status_code == 200, response.text
    [message] = await stack.rows(Message)
    assert (message.body, message.direction) == ("hello", "inbound")


async def test_data_and_source_naming_different_accounts_is_a_400(stack: Stack) -> None:
    event = inbound_event(
        sid=new_sid("SM"), account=stack.org.account_sid, from_=CUSTOMER, to=LINE, body="x"
    )
    event["source"] = f"/2010-04-01/Accounts/{new_sid('AC')}/Messages/{new_sid('SM')}.json"
    response = await stack.post_events([event])
    assert response.status_code == 400
    assert await stack.count(Message) == 0


# --- size: refused before it is buffered -----------------------------------------------------


def _raw_post(url: str, head: bytes, body_chunks: int, chunk: bytes) -> tuple[bytes, int]:
    """Send ``head`` then up to ``body_chunks`` chunks (chunked encoding), stopping as soon as
    the server answers. Returns (first bytes of the answer, body bytes sent)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(head)
    sock.setblocking(False)
    sent, pending, answer = 0, b"", b""
    frame = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            want_write = [sock] if (pending or body_chunks) else []
            readable, writable, _ = select.select([sock], want_write, [], 5)
            if readable:
                try:
                    answer = sock.recv(65536)
                except ConnectionError:
                    answer = b""
                break
            if writable:
                if not pending:
                    pending, body_chunks = frame, body_chunks - 1
                    if body_chunks == 0:
                        pending += b"0\r\n\r\n"
                try:
                    n = sock.send(pending)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionError:
                    break
                sent += n
                pending = pending[n:]
    finally:
        sock.close()
    return answer, sent


async def test_a_chunked_upload_is_cut_at_the_cap_with_413(stack: Stack) -> None:
    head = (
        b"POST /twilio/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b" " * (256 * 1024)
    answer, sent = _raw_post(stack.url, head, body_chunks=1024, chunk=chunk)  # 256 MiB
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    # 5 MiB read, plus what the loopback socket buffers hold: nowhere near 256 MiB
    assert sent < 48 * MiB, sent


async def test_a_declared_length_over_the_cap_is_refused_before_reading(stack: Stack) -> None:
    head = (
        b"POST /twilio/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 268435456\r\n\r\n"
    )
    started = time.monotonic()
    answer, sent = _raw_post(stack.url, head, body_chunks=0, chunk=b"")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent == 0
    assert time.monotonic() - started < 5


async def test_a_delivery_just_under_the_cap_is_read_whole(stack: Stack) -> None:
    event = status_event(
        "sent", sid=new_sid("SM"), account=stack.org.account_sid, from_=LINE, to=CUSTOMER
    )
    event["data"]["padding"] = "x" * (4 * MiB)
    response = await stack.post_events([event])
    assert response.status_code == 200, response.text
    assert await stack.count(Message) == 1


# --- nesting ---------------------------------------------------------------------------------


async def test_deeply_nested_json_is_a_400_not_a_500(stack: Stack) -> None:
    for body in ("[" * 100_000 + "]" * 100_000, "[" * 40 + "]" * 40):
        async with httpx.AsyncClient(timeout=30) as http:
            response = await http.post(f"{stack.url}/twilio/events?bodySHA256=x", content=body)
        assert response.status_code == 400, response.text[:300]
        assert "nested too deeply" in response.json()["error"]["message"]


async def test_deeply_nested_data_string_is_a_400(stack: Stack) -> None:
    event = status_event(
        "sent", sid=new_sid("SM"), account=stack.org.account_sid, from_=LINE, to=CUSTOMER
    )
    event["data"] = "[" * 50_000 + "]" * 50_000
    response = await stack.post_events([event])
    assert response.status_code == 400, response.text[:300]
    assert await stack.count(Message) == 0


# --- one 403, and a counter forgeries cannot inflate ----------------------------------------


async def test_unknown_account_and_bad_signature_look_the_same(stack: Stack) -> None:
    unknown = status_event(
        "sent", sid=new_sid("SM"), account=new_sid("AC"), from_=LINE, to=CUSTOMER
    )
    known = status_event(
        "sent", sid=new_sid("SM"), account=stack.org.account_sid, from_=LINE, to=CUSTOMER
    )
    first = await stack.post_events([unknown], token="forged")
    second = await stack.post_events([known], token="forged")
    assert first.status_code == second.status_code == 403
    assert first.content == second.content
    assert first.json()["error"]["code"] == "invalid_signature"


async def test_a_flood_of_forgeries_counts_once_a_minute(stack: Stack) -> None:
    known = status_event(
        "sent", sid=new_sid("SM"), account=stack.org.account_sid, from_=LINE, to=CUSTOMER
    )
    async with httpx.AsyncClient(timeout=30) as http:
        for _ in range(30):
            response = await stack.post_events([known], token="forged", client=http)
            assert response.status_code == 403
    [org] = await stack.rows(Organization)
    assert org.signature_failures == 1
    assert org.last_signature_failure_at is not None


async def test_signatures_of_the_wrong_shape_are_not_counted(stack: Stack) -> None:
    known = status_event(
        "sent", sid=new_sid("SM"), account=stack.org.account_sid, from_=LINE, to=CUSTOMER
    )
    url, body, _ = signed_request(stack.url, [known], stack.org.auth_token)
    async with httpx.AsyncClient(timeout=30) as http:
        for bogus in ("x", "not base64 at all!", "A" * 200, "AAAA"):
            response = await http.post(url, content=body, headers={"X-Twilio-Signature": bogus})
            assert response.status_code == 403
    [org] = await stack.rows(Organization)
    assert org.signature_failures == 0


async def test_the_counter_counts_again_in_a_later_minute(stack: Stack) -> None:
    async with stack.db.session() as session:
        await orgs.record_signature_failure(session, stack.org.id)
        await orgs.record_signature_failure(session, stack.org.id)  # same minute: once
        await session.commit()
    [org] = await stack.rows(Organization)
    assert org.signature_failures == 1
    async with stack.db.session() as session:
        row = await session.get(Organization, stack.org.id)
        assert row is not None
        row.last_signature_failure_at = utcnow() - timedelta(minutes=2)
        await session.commit()
    async with stack.db.session() as session:
        await orgs.record_signature_failure(session, stack.org.id)
        await session.commit()
    [org] = await stack.rows(Organization)
    assert org.signature_failures == 2
