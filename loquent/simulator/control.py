"""The ``/_sim`` control API: seed accounts, play external traffic, inject faults, inspect logs.

JSON in and out, no authentication (it is a local test tool, answered on loopback only by
default). Account listings include auth tokens for the same reason: tests and the demo need them
to configure the app. The request bodies and their checks are in ``control_schemas``.
"""

from __future__ import annotations

import asyncio
import json
import math
import secrets
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse

from loquent.simulator.control_schemas import (
    AccountIn,
    ConfigPatch,
    ConsoleSmsIn,
    DeliverRawIn,
    DrainIn,
    FaultIn,
    InboundSmsIn,
    MessageEventsIn,
    NumberIn,
    RotateTokenIn,
    SeedMessagesIn,
    SendRejectionIn,
    SigningKeyIn,
    SinkIn,
    TrafficIn,
)
from loquent.simulator.core import Simulator, highest_status
from loquent.simulator.delivery import DeliveryRecord, Signer
from loquent.simulator.events import MESSAGE_EVENT_TYPES, SCHEMA_VERSIONS
from loquent.simulator.representations import message_json
from loquent.simulator.state import Account, Message, SigningKey, utcnow

router = APIRouter(prefix="/_sim", tags=["simulator control"])


def simulator(request: Request) -> Simulator:
    sim: Simulator = request.app.state.simulator
    return sim


def _account(sim: Simulator, sid: str) -> Account:
    account = sim.store.accounts.get(sid)
    if account is None:
        raise HTTPException(404, f"unknown account {sid}")
    return account


def _records(records: list[DeliveryRecord] | None) -> list[dict[str, Any]] | None:
    return None if records is None else [record.to_json() for record in records]


@router.get("/healthz")
async def healthz() -> dict[str, bool]:
    return {"ok": True}


def _config_json(sim: Simulator) -> dict[str, Any]:
    config = sim.config
    return {
        "media_base_url": config.media_base_url,
        "media_size_bytes": config.media_size_bytes,
        "media_chunk_delay_ms": round(config.media_chunk_delay_s * 1000),
        "media_content_length": config.media_content_length,
        "outbound_statuses": list(config.outbound_statuses),
        "outbound_status_delay_ms": round(config.outbound_status_delay_s * 1000),
        "early_status_events": config.early_status_events,
        "retry_backoff_ms": [round(delay * 1000) for delay in config.retry_backoff_s],
        "delivery_timeout_ms": round(config.delivery_timeout_s * 1000),
        "max_page_size": config.max_page_size,
    }


@router.get("/config")
async def get_config(request: Request) -> dict[str, Any]:
    return _config_json(simulator(request))


@router.patch("/config")
async def patch_config(patch: ConfigPatch, request: Request) -> dict[str, Any]:
    """Change settings until the next reset; fields left out keep their value."""
    sim = simulator(request)
    config = sim.config
    given = patch.model_fields_set
    if "media_base_url" in given:
        config.media_base_url = patch.media_base_url
    if "media_size_bytes" in given:
        config.media_size_bytes = patch.media_size_bytes
    if patch.media_chunk_delay_ms is not None:
        config.media_chunk_delay_s = patch.media_chunk_delay_ms / 1000
    if patch.media_content_length is not None:
        config.media_content_length = patch.media_content_length
    if patch.outbound_statuses is not None:
        config.outbound_statuses = tuple(patch.outbound_statuses)
    if patch.early_status_events is not None:
        config.early_status_events = patch.early_status_events
    if patch.outbound_status_delay_ms is not None:
        config.outbound_status_delay_s = patch.outbound_status_delay_ms / 1000
    if patch.retry_backoff_ms is not None:
        config.retry_backoff_s = tuple(ms / 1000 for ms in patch.retry_backoff_ms)
    if patch.delivery_timeout_ms is not None:
        config.delivery_timeout_s = patch.delivery_timeout_ms / 1000
    if patch.max_page_size is not None:
        config.max_page_size = patch.max_page_size
    return _config_json(sim)


@router.post("/reset")
async def reset(request: Request) -> dict[str, bool]:
    await simulator(request).reset()
    return {"ok": True}


@router.post("/drain")
async def drain(request: Request, payload: DrainIn | None = None) -> dict[str, int]:
    """Wait for background deliveries (API sends, sink tests, ``wait: false`` plays) to finish."""
    timeout = payload.timeout_s if payload else DrainIn().timeout_s
    return {"pending": await simulator(request).deliverer.drain(timeout)}


# Accounts, numbers, sinks


def _signing_key_json(key: SigningKey | None) -> dict[str, str] | None:
    if key is None:
        return None
    return {"key_sid": key.key_sid, "secret": key.secret, "algorithm": key.algorithm}


def _account_json(sim: Simulator, account: Account) -> dict[str, Any]:
    return {
        "sid": account.sid,
        "auth_token": account.auth_token,
        "friendly_name": account.friendly_name,
        "status": account.status,
        "signing_key": _signing_key_json(account.signing_key),
        "numbers": [
            {"sid": n.sid, "phone_number": n.phone_number, "friendly_name": n.friendly_name}
            for n in sim.store.numbers_for(account.sid)
        ],
        "sinks": [
            {
                "sid": sink.sid,
                "destination": sink.destination,
                "batch_events": sink.batch_events,
                "types": sorted(sim.store.subscribed_types(sink.sid)),
            }
            for sink in sim.store.sinks_for(account.sid)
        ],
    }


@router.post("/accounts")
async def create_account(
    request: Request, response: Response, payload: AccountIn | None = None
) -> dict[str, str]:
    """Create an account (random SID/token if omitted); for an existing SID, update it."""
    sim = simulator(request)
    payload = payload or AccountIn()
    account, created = sim.store.upsert_account(
        payload.sid, payload.auth_token, payload.friendly_name
    )
    response.status_code = 201 if created else 200
    return {
        "sid": account.sid,
        "auth_token": account.auth_token,
        "friendly_name": account.friendly_name,
    }


@router.get("/accounts")
async def list_accounts(request: Request) -> list[dict[str, Any]]:
    sim = simulator(request)
    return [_account_json(sim, account) for account in sim.store.accounts.values()]


@router.get("/accounts/{account_sid}")
async def get_account(account_sid: str, request: Request) -> dict[str, Any]:
    sim = simulator(request)
    return _account_json(sim, _account(sim, account_sid))


@router.post("/accounts/{account_sid}/rotate-token")
async def rotate_token(
    account_sid: str, request: Request, payload: RotateTokenIn | None = None
) -> dict[str, str]:
    """Replace the auth token; requests and signatures with the old one stop working."""
    sim = simulator(request)
    account = _account(sim, account_sid)
    token = sim.store.rotate_token(account, payload.auth_token if payload else None)
    return {"auth_token": token}


@router.put("/accounts/{account_sid}/signing-key")
async def set_signing_key(
    account_sid: str, request: Request, payload: SigningKeyIn | None = None
) -> dict[str, str] | None:
    """Sign this account's webhooks with a SharedKey, announced in a signature-settings header.

    Until it is removed, deliveries carry ``X-Twilio-Webhooks-Signature-Settings:
    key=<key_sid>,algorithm=<algorithm>`` and a signature made with the key's secret.
    """
    sim = simulator(request)
    account = _account(sim, account_sid)
    payload = payload or SigningKeyIn()
    account.signing_key = SigningKey(
        key_sid=payload.key_sid or f"webhooks_sharedkey_{secrets.token_hex(8)}",
        secret=payload.secret or secrets.token_urlsafe(24),
        algorithm=payload.algorithm,
    )
    return _signing_key_json(account.signing_key)


@router.delete("/accounts/{account_sid}/signing-key", status_code=204)
async def remove_signing_key(account_sid: str, request: Request) -> None:
    """Back to signing with the auth token (HMAC-SHA1, no settings header)."""
    _account(simulator(request), account_sid).signing_key = None


@router.post("/accounts/{account_sid}/numbers", status_code=201)
async def add_number(account_sid: str, payload: NumberIn, request: Request) -> dict[str, str]:
    sim = simulator(request)
    account = _account(sim, account_sid)
    number = sim.store.upsert_number(account.sid, payload.phone_number, payload.friendly_name)
    return {
        "sid": number.sid,
        "phone_number": number.phone_number,
        "friendly_name": number.friendly_name,
    }


@router.post("/accounts/{account_sid}/sinks", status_code=201)
async def add_sink(account_sid: str, payload: SinkIn, request: Request) -> dict[str, Any]:
    """A webhook sink plus one subscription (all seven message types unless ``types`` given)."""
    sim = simulator(request)
    account = _account(sim, account_sid)
    sink = sim.store.add_sink(
        account.sid,
        destination=payload.destination,
        description=payload.description or "Simulator sink",
        batch_events=payload.batch_events,
    )
    types = payload.types or list(MESSAGE_EVENT_TYPES)
    subscription = sim.store.add_subscription(
        account.sid, sink.sid, "Simulator subscription", {t: SCHEMA_VERSIONS[t] for t in types}
    )
    return {"sink_sid": sink.sid, "subscription_sid": subscription.sid, "types": types}


# Traffic


@router.post("/accounts/{account_sid}/send-rejections", status_code=201)
async def add_send_rejection(
    account_sid: str, payload: SendRejectionIn, request: Request
) -> dict[str, Any]:
    """Make ``POST .../Messages.json`` to ``to`` fail with Twilio's error ``code`` (HTTP 400),
    as Twilio refuses a text to an unsubscribed (21610) or unreachable number."""
    sim = simulator(request)
    account = _account(sim, account_sid)
    sim.send_rejections[(account.sid, payload.to)] = (payload.code, payload.message)
    return {"to": payload.to, "code": payload.code, "message": payload.message}


@router.delete("/accounts/{account_sid}/send-rejections", status_code=204)
async def clear_send_rejections(account_sid: str, request: Request) -> None:
    sim = simulator(request)
    for key in [key for key in sim.send_rejections if key[0] == account_sid]:
        del sim.send_rejections[key]


@router.post("/accounts/{account_sid}/console-sms", status_code=201)
async def console_sms(account_sid: str, payload: ConsoleSmsIn, request: Request) -> dict[str, Any]:
    """A message sent from the Twilio Console (or any other tool): the app did not send it."""
    sim = simulator(request)
    account = _account(sim, account_sid)
    message = sim.create_message(
        account,
        from_=payload.from_,
        to=payload.to,
        body=payload.body,
        direction="outbound-api",
        status=highest_status(payload.statuses),
        media_urls=payload.media_urls,
        date_created=payload.date_created,
        error_code=payload.error_code,
    )
    records = None
    if payload.deliver:
        events = sim.events_for(
            message,
            payload.statuses,
            error_code=payload.error_code,
            include_body=payload.include_body,
        )
        records = await sim.deliver(account.sid, events, payload.options(), wait=payload.wait)
    return {"sid": message.sid, "message": message_json(message), "deliveries": _records(records)}


@router.post("/accounts/{account_sid}/inbound-sms", status_code=201)
async def inbound_sms(account_sid: str, payload: InboundSmsIn, request: Request) -> dict[str, Any]:
    """A text from a phone to one of the account's numbers."""
    sim = simulator(request)
    account = _account(sim, account_sid)
    message = sim.create_message(
        account,
        from_=payload.from_,
        to=payload.to,
        body=payload.body,
        direction="inbound",
        status="received",
        media_urls=payload.media_urls,
        date_created=payload.date_created,
    )
    records = None
    if payload.deliver:
        events = sim.events_for(message, ["received"])
        records = await sim.deliver(account.sid, events, payload.options(), wait=payload.wait)
    return {"sid": message.sid, "message": message_json(message), "deliveries": _records(records)}


@router.post("/accounts/{account_sid}/messages", status_code=201)
async def seed_messages(
    account_sid: str, payload: SeedMessagesIn, request: Request
) -> dict[str, Any]:
    """Create message history without sending any events (for imports and paging)."""
    sim = simulator(request)
    account = _account(sim, account_sid)
    sids = []
    for item in payload.messages:
        status = item.status or ("received" if item.direction == "inbound" else "delivered")
        message = sim.create_message(
            account,
            from_=item.from_,
            to=item.to,
            body=item.body,
            direction=item.direction,
            status=status,
            media_urls=item.media_urls,
            date_created=item.date_created,
            error_code=item.error_code,
        )
        sids.append(message.sid)
    return {"sids": sids}


@router.post("/accounts/{account_sid}/traffic", status_code=201)
async def traffic(account_sid: str, payload: TrafficIn, request: Request) -> dict[str, Any]:
    """Console sends and inbound texts in bulk without any webhook: what happens on the
    account while the app is down. Outbound from a line to a counterpart (delivered),
    inbound from a counterpart to a line (received), oldest first, ``spacing_ms`` apart."""
    sim = simulator(request)
    account = _account(sim, account_sid)
    lines = payload.lines or [n.phone_number for n in sim.store.numbers_for(account.sid)]
    if not lines:
        raise HTTPException(400, "the account has no numbers: add one or pass lines")
    start = payload.start or utcnow()
    share = payload.inbound_share
    # Counterparts are 11-digit numbers (NANP with the default prefix): prefix + zero-padded i.
    width = max(1, 11 - (len(payload.counterpart_prefix) - 1))
    sids: list[str] = []
    for i in range(payload.count):
        line = lines[i % len(lines)]
        other = payload.counterpart_prefix + str(i % payload.counterparts).zfill(width)
        # Spread evenly: exactly round-down(count × share) inbound texts, interleaved.
        inbound = math.floor((i + 1) * share) > math.floor(i * share)
        media = (
            ["https://media.example/cat.jpg"]
            if (payload.media_every and i % payload.media_every == payload.media_every - 1)
            else []
        )
        message = sim.create_message(
            account,
            from_=other if inbound else line,
            to=line if inbound else other,
            body=f"{payload.body_prefix} {i}",
            direction="inbound" if inbound else "outbound-api",
            status="received" if inbound else "delivered",
            media_urls=media,
            date_created=start + timedelta(milliseconds=i * payload.spacing_ms),
        )
        sids.append(message.sid)
    last = start + timedelta(milliseconds=(payload.count - 1) * payload.spacing_ms)
    return {
        "created": payload.count,
        "oldest": start.isoformat(),
        "newest": last.isoformat(),
        "sids": sids if payload.return_sids else None,
    }


def _message(sim: Simulator, account: Account, message_sid: str) -> Message:
    message = sim.store.messages.get(message_sid)
    if message is None or message.account_sid != account.sid:
        raise HTTPException(404, f"unknown message {message_sid} for account {account.sid}")
    return message


@router.post("/accounts/{account_sid}/messages/{message_sid}/events")
async def message_events(
    account_sid: str, message_sid: str, payload: MessageEventsIn, request: Request
) -> dict[str, Any]:
    """(Re)deliver events for an existing message; its stored status follows the furthest one."""
    sim = simulator(request)
    account = _account(sim, account_sid)
    message = _message(sim, account, message_sid)
    inbound = message.direction == "inbound"
    if any((status == "received") != inbound for status in payload.statuses):
        raise HTTPException(
            400, "inbound messages take only 'received'; outbound ones only status events"
        )
    if not inbound:
        message.apply_status(highest_status(payload.statuses), payload.error_code)
    events = sim.events_for(
        message, payload.statuses, error_code=payload.error_code, include_body=payload.include_body
    )
    records = await sim.deliver(account.sid, events, payload.options(), wait=payload.wait)
    return {"sid": message.sid, "status": message.status, "deliveries": _records(records)}


@router.post("/deliver-raw")
async def deliver_raw(payload: DeliverRawIn, request: Request) -> dict[str, Any]:
    """POST an arbitrary body to the account's sinks (or a destination), signed as Twilio would."""
    sim = simulator(request)
    account = sim.store.accounts.get(payload.account_sid) if payload.account_sid else None
    if payload.account_sid and account is None and payload.destination is None:
        raise HTTPException(404, f"unknown account {payload.account_sid}")
    signer = None
    if payload.auth_token:
        signer = Signer(payload.auth_token)
    elif account is not None:
        signer = Signer.for_account(account)
    if payload.sign and signer is None and payload.signature_override is None:
        raise HTTPException(400, "signing needs an account_sid or an auth_token")
    targets: list[tuple[str | None, str]]
    if payload.destination:
        targets = [(None, payload.destination)]
    elif account is not None:
        targets = [(sink.sid, sink.destination) for sink in sim.store.sinks_for(account.sid)]
    else:
        targets = []
    if not targets:
        raise HTTPException(400, "no destination given and the account has no sinks")

    body = payload.body if isinstance(payload.body, str) else json.dumps(payload.body)
    events: list[dict[str, Any]] = []
    try:
        parsed = json.loads(body)
        candidates = parsed if isinstance(parsed, list) else [parsed]
        events = [event for event in candidates if isinstance(event, dict)]
    except json.JSONDecodeError:
        pass

    results = []
    for sink_sid, destination in targets:
        record = await sim.deliverer.post_json(
            kind="raw",
            account_sid=payload.account_sid,
            sink_sid=sink_sid,
            destination=destination,
            body=body,
            signer=signer,
            events=events,
            retry=False,
            sign_request=payload.sign,
            signature_override=payload.signature_override,
            signed_body=payload.signed_body,
            include_body_sha256=payload.include_body_sha256,
            content_type=payload.content_type,
            extra_headers=payload.headers,
        )
        results.append(
            {
                "url": record.url,
                "signature": record.signature,
                "status_code": record.status_code,
                "body": record.response_body,
                "error": record.attempts[-1].error if record.attempts else None,
                "duration_ms": record.to_json()["duration_ms"],
            }
        )
    return {"results": results}


# Faults


@router.post("/faults", status_code=201)
async def add_fault(payload: FaultIn, request: Request) -> dict[str, Any]:
    """Fault matching Twilio API requests (``/2010-04-01``, ``/v1``); ``/_sim`` is never faulted."""
    rule = simulator(request).faults.add(
        path_regex=payload.path_regex,
        method=payload.method,
        status=payload.status,
        count=payload.count,
        after=payload.after,
        retry_after=payload.retry_after,
        delay_ms=payload.delay_ms,
        set_cookie=payload.set_cookie,
    )
    return rule.to_json()


@router.get("/faults")
async def list_faults(request: Request) -> list[dict[str, Any]]:
    return [rule.to_json() for rule in simulator(request).faults.rules()]


@router.delete("/faults", status_code=204)
async def clear_faults(request: Request) -> None:
    simulator(request).faults.clear()


@router.delete("/faults/{fault_id}", status_code=204)
async def delete_fault(fault_id: int, request: Request) -> None:
    if not simulator(request).faults.remove(fault_id):
        raise HTTPException(404, f"unknown fault {fault_id}")


# Logs and inspection


@router.get("/requests")
async def list_requests(
    request: Request,
    path_contains: str | None = None,
    method: str | None = None,
) -> list[dict[str, Any]]:
    """Twilio API requests received, oldest first (the auth user is logged, never the token)."""
    return [
        entry
        for entry in simulator(request).request_log
        if (path_contains is None or path_contains in entry["path"])
        and (method is None or entry["method"] == method.upper())
    ]


@router.delete("/requests", status_code=204)
async def clear_requests(request: Request) -> None:
    simulator(request).request_log.clear()


@router.get("/deliveries")
async def list_deliveries(
    request: Request,
    account_sid: str | None = None,
    message_sid: str | None = None,
    type: str | None = Query(None, description="only deliveries carrying this event type"),
    include_body: bool = False,
) -> list[dict[str, Any]]:
    return [
        record.to_json(include_body=include_body)
        for record in simulator(request).deliverer.records
        if (account_sid is None or record.account_sid == account_sid)
        and (message_sid is None or message_sid in record.message_sids)
        and (type is None or type in record.event_types)
    ]


@router.delete("/deliveries", status_code=204)
async def clear_deliveries(request: Request) -> None:
    simulator(request).deliverer.records.clear()


@router.get("/messages")
async def list_messages(request: Request, account_sid: str | None = None) -> list[dict[str, Any]]:
    """Every stored message, newest first, in Twilio's JSON shape."""
    return [message_json(m) for m in simulator(request).store.messages_for(account_sid)]


@router.get("/media-fetches")
async def list_media_fetches(request: Request) -> list[dict[str, Any]]:
    """Downloads from ``/_sim/media-content``, noting whether credentials were sent along."""
    return list(simulator(request).media_fetches)


@router.delete("/media-fetches", status_code=204)
async def clear_media_fetches(request: Request) -> None:
    simulator(request).media_fetches.clear()


@router.get("/media-content/{media_sid}")
async def media_content(media_sid: str, request: Request) -> Response:
    """The bytes behind a media redirect; plays the media host, which needs no credentials."""
    sim = simulator(request)
    media = sim.store.media.get(media_sid)
    had_authorization = "authorization" in request.headers
    if media is None:
        sim.log_media_fetch(media_sid, had_authorization=had_authorization, status=404)
        raise HTTPException(404, f"unknown media {media_sid}")
    sim.log_media_fetch(media_sid, had_authorization=had_authorization, status=200)
    config = sim.config
    content = media.content
    delay = config.media_chunk_delay_s

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(content), _MEDIA_CHUNK_BYTES):
            if start and delay:
                await asyncio.sleep(delay)
            yield content[start : start + _MEDIA_CHUNK_BYTES]

    headers = {"Content-Length": str(len(content))} if config.media_content_length else None
    return StreamingResponse(chunks(), media_type=media.content_type, headers=headers)


_MEDIA_CHUNK_BYTES = 64 * 1024
