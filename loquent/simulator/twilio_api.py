"""The 2010-04-01 REST API routes the app uses: Accounts, Messages, Media, IncomingPhoneNumbers."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.datastructures import FormData

from loquent.simulator.auth import authenticate, authenticate_for
from loquent.simulator.core import Simulator
from loquent.simulator.errors import bad_request, not_found, send_error_message
from loquent.simulator.paging import page_links, paginate, parse_page_request
from loquent.simulator.representations import (
    account_json,
    account_path,
    media_json,
    message_json,
    message_path,
    phone_number_json,
)
from loquent.simulator.state import Account, Message

router = APIRouter(prefix="/2010-04-01", include_in_schema=False)

# E.164, or a channel address such as ``whatsapp:+14155550100``.
_ADDRESS = re.compile(r"^(?:[a-z]+:)?\+?[1-9]\d{1,14}$")
MAX_BODY_LENGTH = 1600


def simulator(request: Request) -> Simulator:
    sim: Simulator = request.app.state.simulator
    return sim


def _form_text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    return value if isinstance(value, str) and value != "" else None


def _message_for(sim: Simulator, account: Account, message_sid: str, request: Request) -> Message:
    message = sim.store.messages.get(message_sid)
    if message is None or message.account_sid != account.sid:
        raise not_found(request.url.path)
    return message


@router.get("/Accounts/{account_sid}.json")
async def fetch_account(account_sid: str, request: Request) -> dict[str, Any]:
    account = authenticate_for(simulator(request).store, request, account_sid)
    return account_json(account)


# Messages


def _date_bound(raw: str, name: str) -> tuple[datetime, bool]:
    """``(instant, is_whole_day)`` for a ``DateSent`` filter value (a date or an ISO datetime)."""
    try:
        day = date.fromisoformat(raw)
        return datetime.combine(day, time.min, tzinfo=UTC), True
    except ValueError:
        pass
    try:
        instant = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError:
        raise bad_request(20001, f"Invalid {name}: {raw!r}, expected YYYY-MM-DD") from None
    return (instant if instant.tzinfo else instant.replace(tzinfo=UTC)), False


def _date_sent_matches(message: Message, filters: dict[str, str]) -> bool:
    sent = message.date_sent
    if sent is None:
        return False
    if "DateSent" in filters:
        start, whole_day = _date_bound(filters["DateSent"], "DateSent")
        end = start + timedelta(days=1) if whole_day else start + timedelta(seconds=1)
        if not start <= sent < end:
            return False
    if "DateSent>" in filters:  # on or after
        start, _ = _date_bound(filters["DateSent>"], "DateSent>")
        if sent < start:
            return False
    if "DateSent<" in filters:  # on or before
        end, whole_day = _date_bound(filters["DateSent<"], "DateSent<")
        if whole_day:
            if sent >= end + timedelta(days=1):
                return False
        elif sent > end:
            return False
    return True


@router.get("/Accounts/{account_sid}/Messages.json")
async def list_messages(account_sid: str, request: Request) -> dict[str, Any]:
    sim = simulator(request)
    account = authenticate_for(sim.store, request, account_sid)
    query = request.query_params
    page_request = parse_page_request(query, sim.config.max_page_size)
    filters = [
        (name, query[name])
        for name in ("To", "From", "DateSent", "DateSent>", "DateSent<")
        if query.get(name)
    ]
    wanted = dict(filters)
    messages = [
        message
        for message in sim.store.messages_for(account.sid)
        if wanted.get("To", message.to) == message.to
        and wanted.get("From", message.from_) == message.from_
        and (
            not {"DateSent", "DateSent>", "DateSent<"} & wanted.keys()
            or _date_sent_matches(message, wanted)
        )
    ]
    page = paginate(messages, page_request, lambda m: m.sid)
    links = page_links(f"{account_path(account.sid)}/Messages.json", filters, page, lambda m: m.sid)
    return {
        "messages": [message_json(m) for m in page.items],
        "page": page_request.page,
        "page_size": page_request.page_size,
        "start": page.start,
        "end": page.start + max(len(page.items) - 1, 0),
        **links,
    }


@router.post("/Accounts/{account_sid}/Messages.json", status_code=201)
async def create_message(account_sid: str, request: Request) -> dict[str, Any]:
    sim = simulator(request)
    account = authenticate_for(sim.store, request, account_sid)
    form = await request.form()
    to = _form_text(form, "To")
    from_ = _form_text(form, "From")
    body = _form_text(form, "Body") or ""
    media_urls = [url for url in form.getlist("MediaUrl") if isinstance(url, str) and url]
    service_sid = _form_text(form, "MessagingServiceSid")

    if to is None:
        raise bad_request(21604, "A 'To' phone number is required.")
    if from_ is None and service_sid is None:
        raise bad_request(21603, "A 'From' phone number is required.")
    if not body and not media_urls:
        raise bad_request(21602, "Message body is required.")
    if not _ADDRESS.match(to):
        raise bad_request(21211, f"Invalid 'To' Phone Number: {to}")
    if from_ is not None and not _ADDRESS.match(from_):
        raise bad_request(21212, f"Invalid From Number (caller ID): {from_}")
    if len(body) > MAX_BODY_LENGTH:
        raise bad_request(21617, "The concatenated message body exceeds the 1600 character limit.")
    rejection = sim.send_rejections.get((account.sid, to))
    if rejection is not None:  # a refusal a test asked for (21610 unsubscribed, 21408 …)
        code, text = rejection
        raise bad_request(code, text or send_error_message(code, to=to, from_=from_ or ""))
    if from_ is not None and from_ not in {
        n.phone_number for n in sim.store.numbers_for(account.sid)
    }:
        raise bad_request(21606, send_error_message(21606, to=to, from_=from_))
    if from_ is None:
        # A Messaging Service picks a sender from its pool; here, the account's first number.
        numbers = sim.store.numbers_for(account.sid)
        if not numbers:
            raise bad_request(21606, "The Messaging Service has no phone numbers to send from.")
        from_ = numbers[0].phone_number

    message = sim.create_message(
        account,
        from_=from_,
        to=to,
        body=body,
        direction="outbound-api",
        status="queued",
        media_urls=media_urls,
        status_callback=_form_text(form, "StatusCallback"),
        messaging_service_sid=service_sid,
    )
    answer = message_json(message)  # what Twilio answers: the message as it was created
    early = await sim.report_before_answer(message) if sim.config.early_status_events else 0
    sim.start_outbound_lifecycle(message, skip=early)
    return answer


@router.get("/Accounts/{account_sid}/Messages/{message_sid}.json")
async def fetch_message(account_sid: str, message_sid: str, request: Request) -> dict[str, Any]:
    sim = simulator(request)
    account = authenticate_for(sim.store, request, account_sid)
    return message_json(_message_for(sim, account, message_sid, request))


@router.delete("/Accounts/{account_sid}/Messages/{message_sid}.json")
async def delete_message(account_sid: str, message_sid: str, request: Request) -> Response:
    sim = simulator(request)
    account = authenticate_for(sim.store, request, account_sid)
    sim.store.delete_message(_message_for(sim, account, message_sid, request))
    return Response(status_code=204)


@router.get("/Accounts/{account_sid}/Messages/{message_sid}/Media.json")
async def list_media(account_sid: str, message_sid: str, request: Request) -> dict[str, Any]:
    sim = simulator(request)
    account = authenticate_for(sim.store, request, account_sid)
    message = _message_for(sim, account, message_sid, request)
    page_request = parse_page_request(request.query_params, sim.config.max_page_size)
    page = paginate(message.media, page_request, lambda m: m.sid)
    path = f"{message_path(account.sid, message.sid)}/Media.json"
    return {
        "media_list": [media_json(media) for media in page.items],
        "page": page_request.page,
        "page_size": page_request.page_size,
        "start": page.start,
        "end": page.start + max(len(page.items) - 1, 0),
        **page_links(path, [], page, lambda m: m.sid),
    }


@router.get("/Accounts/{account_sid}/Messages/{message_sid}/Media/{media_ref}")
async def fetch_media(
    account_sid: str, message_sid: str, media_ref: str, request: Request
) -> Response:
    """``…/Media/ME….json`` describes the media; ``…/Media/ME…`` redirects to its content.

    Twilio serves the bytes from another host, so the redirect target is configurable and a
    client must not carry the account credentials along.
    """
    sim = simulator(request)
    account = authenticate_for(sim.store, request, account_sid)
    message = _message_for(sim, account, message_sid, request)
    media_sid = media_ref.removesuffix(".json")
    media = next((m for m in message.media if m.sid == media_sid), None)
    if media is None:
        raise not_found(request.url.path)
    if media_ref.endswith(".json"):
        return JSONResponse(media_json(media))
    base = (sim.config.media_base_url or str(request.base_url)).rstrip("/")
    return RedirectResponse(f"{base}/_sim/media-content/{media.sid}", status_code=307)


# Phone numbers


@router.get("/Accounts/{account_sid}/IncomingPhoneNumbers.json")
async def list_numbers(account_sid: str, request: Request) -> dict[str, Any]:
    sim = simulator(request)
    account = authenticate_for(sim.store, request, account_sid)
    page_request = parse_page_request(request.query_params, sim.config.max_page_size)
    wanted = request.query_params.get("PhoneNumber")
    numbers = [
        number
        for number in sim.store.numbers_for(account.sid)
        if not wanted or wanted in number.phone_number
    ]
    page = paginate(numbers, page_request, lambda n: n.sid)
    filters = [("PhoneNumber", wanted)] if wanted else []
    path = f"{account_path(account.sid)}/IncomingPhoneNumbers.json"
    return {
        "incoming_phone_numbers": [phone_number_json(n) for n in page.items],
        "page": page_request.page,
        "page_size": page_request.page_size,
        "start": page.start,
        "end": page.start + max(len(page.items) - 1, 0),
        **page_links(path, filters, page, lambda n: n.sid),
    }


@router.get("/Accounts/{account_sid}/IncomingPhoneNumbers/{number_sid}.json")
async def fetch_number(account_sid: str, number_sid: str, request: Request) -> dict[str, Any]:
    sim = simulator(request)
    account = authenticate_for(sim.store, request, account_sid)
    number = sim.store.numbers.get(number_sid)
    if number is None or number.account_sid != account.sid:
        raise not_found(request.url.path)
    return phone_number_json(number)


@router.api_route("/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
async def unknown_resource(rest: str, request: Request) -> Response:
    """Anything else: authenticate first, like Twilio, then 404 with Twilio's error JSON."""
    authenticate(simulator(request).store, request)
    raise not_found(request.url.path)
