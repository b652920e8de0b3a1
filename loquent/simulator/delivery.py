"""Event Streams webhook delivery, signed exactly as Twilio signs it.

A delivery is one HTTP request whose body is ``json.dumps`` of the events (an array when the sink
batches events, else a single event). Twilio appends ``bodySHA256=<hex SHA-256 of the body>`` to
the sink URL's query string and puts the ``RequestValidator`` signature of that whole URL (with no
form parameters) in ``X-Twilio-Signature``; the receiver validates with the raw body string.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
from twilio.request_validator import HMAC_SHA1, RequestValidator

from loquent.simulator.config import SimulatorConfig
from loquent.simulator.events import message_sid_of, with_schema_version
from loquent.simulator.state import Account, SimStore, Sink, iso_millis, utcnow

logger = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
SIGNATURE_HEADER = "X-Twilio-Signature"
SIGNATURE_SETTINGS_HEADER = "X-Twilio-Webhooks-Signature-Settings"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
USER_AGENT = "TwilioSimulator/1.0 (loquent)"
MAX_RESPONSE_BODY = 4096


def with_body_hash(destination: str, body_hash: str) -> str:
    """``destination`` with ``bodySHA256=...`` appended to its query string."""
    parts = urlsplit(destination)
    extra = f"bodySHA256={body_hash}"
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


def sha256_hex(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Signer:
    """Signs webhooks for an account: its auth token (HMAC-SHA1), or a SharedKey it configured.

    A SharedKey signature is announced with ``X-Twilio-Webhooks-Signature-Settings:
    key=<key sid>,algorithm=<algorithm>`` so the receiver knows which secret to check with.
    """

    secret: str
    algorithm: str = HMAC_SHA1
    key_sid: str | None = None

    @classmethod
    def for_account(cls, account: Account) -> Signer:
        key = account.signing_key
        if key is None:
            return cls(account.auth_token)
        return cls(key.secret, key.algorithm, key.key_sid)

    def signature(self, url: str, params: dict[str, str] | None = None) -> str:
        signed: str = RequestValidator(self.secret).compute_signature(
            url, params or {}, self.algorithm
        )
        return signed

    def headers(self) -> dict[str, str]:
        if self.key_sid is None:
            return {}
        return {SIGNATURE_SETTINGS_HEADER: f"key={self.key_sid},algorithm={self.algorithm}"}


@dataclass(frozen=True)
class DeliveryOptions:
    """How a set of events is turned into HTTP requests (to exercise the receiver's robustness)."""

    duplicate: int = 1  # deliver every event this many times (a redelivery keeps the event id)
    shuffle: bool = False  # deliver in random order
    batch: bool = False  # all events in one request, rather than one request per event
    concurrent: bool = False  # send the requests at once, rather than one after another
    delay_s: float = 0.0  # pause between requests when not concurrent
    seed: int | None = None  # makes shuffle reproducible


@dataclass
class Attempt:
    status_code: int | None
    error: str | None
    duration_ms: float
    at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "status_code": self.status_code,
            "error": self.error,
            "duration_ms": round(self.duration_ms, 2),
            "at": iso_millis(self.at),
        }


@dataclass
class DeliveryRecord:
    id: int
    kind: str  # "events" | "raw" | "status_callback"
    account_sid: str | None
    sink_sid: str | None
    destination: str
    url: str  # what was requested, including bodySHA256
    method: str
    signature: str | None
    event_types: list[str]
    event_ids: list[str]
    message_sids: list[str]
    body: str
    started_at: datetime = field(default_factory=utcnow)
    attempts: list[Attempt] = field(default_factory=list)
    response_body: str | None = None
    done: bool = False

    @property
    def status_code(self) -> int | None:
        return self.attempts[-1].status_code if self.attempts else None

    @property
    def ok(self) -> bool:
        code = self.status_code
        return code is not None and 200 <= code < 300

    def to_json(self, include_body: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "account_sid": self.account_sid,
            "sink_sid": self.sink_sid,
            "destination": self.destination,
            "url": self.url,
            "method": self.method,
            "signature": self.signature,
            "status_code": self.status_code,
            "ok": self.ok,
            "done": self.done,
            "types": self.event_types,
            "event_ids": self.event_ids,
            "message_sids": self.message_sids,
            "attempts": [attempt.to_json() for attempt in self.attempts],
            "error": self.attempts[-1].error if self.attempts else None,
            "duration_ms": round(sum(a.duration_ms for a in self.attempts), 2),
            "started_at": iso_millis(self.started_at),
            "response_body": self.response_body,
        }
        if include_body:
            data["body"] = self.body
        return data


def _is_retryable(status_code: int) -> bool:
    return status_code == 429 or status_code >= 500


class Deliverer:
    """Sends webhooks through one shared HTTP client and keeps a record of every delivery."""

    def __init__(
        self,
        store: SimStore,
        config: Callable[[], SimulatorConfig],
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._client = http_client
        self._owns_client = http_client is None
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.records: deque[DeliveryRecord] = deque(maxlen=config().log_limit)

    @property
    def client(self) -> httpx.AsyncClient:
        # Created lazily: an app driven without lifespan events (an in-process ASGI transport)
        # still gets a client, and it lives on the loop that uses it.
        if self._client is None:
            self._client = httpx.AsyncClient(
                headers={"User-Agent": USER_AGENT},
                limits=httpx.Limits(max_connections=200, max_keepalive_connections=50),
            )
        return self._client

    # Background work

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, keeping a reference until it is done."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background delivery failed", exc_info=task.exception())

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout_s: float) -> int:
        """Wait until background deliveries (and any they start) finish; returns how many remain."""
        deadline = time.monotonic() + timeout_s
        while self._tasks:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await asyncio.wait(set(self._tasks), timeout=remaining)
        return len(self._tasks)

    async def cancel_all(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def aclose(self) -> None:
        await self.cancel_all()
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None

    # Event Streams

    async def deliver_events(
        self,
        account_sid: str,
        events: Sequence[dict[str, Any]],
        options: DeliveryOptions = DeliveryOptions(),
        *,
        sinks: Sequence[Sink] | None = None,
        require_subscription: bool = True,
    ) -> list[DeliveryRecord]:
        """Deliver ``events`` to the account's sinks that subscribe to their types."""
        account = self._store.accounts.get(account_sid)
        if account is None:
            return []
        targets = list(sinks) if sinks is not None else self._store.sinks_for(account_sid)
        subscribed = {sink.sid: self._store.subscribed_versions(sink.sid) for sink in targets}

        expanded = [event for event in events for _ in range(max(options.duplicate, 1))]
        if options.shuffle:
            random.Random(options.seed).shuffle(expanded)  # noqa: S311 - a test shuffle
        groups = [expanded] if options.batch else [[event] for event in expanded]

        jobs: list[tuple[Sink, list[dict[str, Any]]]] = []
        for group in groups:
            for sink in targets:
                versions = subscribed[sink.sid]
                selected = [
                    with_schema_version(event, versions.get(event["type"]))
                    for event in group
                    if not require_subscription or event["type"] in versions
                ]
                if not selected:
                    continue
                if sink.batch_events:
                    jobs.append((sink, selected))
                else:
                    # A sink without batching receives every event on its own, as an object.
                    jobs.extend((sink, [event]) for event in selected)

        def send(sink: Sink, selected: list[dict[str, Any]]) -> Coroutine[Any, Any, DeliveryRecord]:
            payload: Any = selected if sink.batch_events else selected[0]
            return self.post_json(
                kind="events",
                account_sid=account_sid,
                sink_sid=sink.sid,
                destination=sink.destination,
                method=sink.method,
                body=json.dumps(payload),
                signer=Signer.for_account(account),
                events=selected,
            )

        if options.concurrent:
            return list(await asyncio.gather(*(send(sink, batch) for sink, batch in jobs)))
        records = []
        for index, (sink, batch) in enumerate(jobs):
            if index and options.delay_s > 0:
                await asyncio.sleep(options.delay_s)
            records.append(await send(sink, batch))
        return records

    async def post_json(
        self,
        *,
        kind: str,
        account_sid: str | None,
        sink_sid: str | None,
        destination: str,
        body: str,
        signer: Signer | None,
        events: Sequence[dict[str, Any]] = (),
        method: str = "POST",
        retry: bool = True,
        sign_request: bool = True,
        signature_override: str | None = None,
        signed_body: str | None = None,
        include_body_sha256: bool = True,
        content_type: str = JSON_CONTENT_TYPE,
        extra_headers: dict[str, str] | None = None,
    ) -> DeliveryRecord:
        """POST a JSON body the way Event Streams does.

        ``signed_body`` hashes and signs a different body than the one sent (a tampered request);
        ``signature_override`` replaces the signature; both exist to test the receiver.
        """
        hashed = body if signed_body is None else signed_body
        url = destination
        if include_body_sha256:
            url = with_body_hash(destination, sha256_hex(hashed))
        headers = {"Content-Type": content_type}
        signature: str | None = None
        if signature_override is not None:
            signature = signature_override
        elif sign_request and signer is not None:
            signature = signer.signature(url)
            headers.update(signer.headers())
        if signature is not None:
            headers[SIGNATURE_HEADER] = signature
        headers.update(extra_headers or {})
        record = self._new_record(
            kind=kind,
            account_sid=account_sid,
            sink_sid=sink_sid,
            destination=destination,
            url=url,
            method=method,
            signature=signature,
            body=body,
            events=events,
        )
        await self._send(record, headers, retry=retry)
        return record

    async def post_status_callback(
        self, *, account_sid: str, url: str, params: dict[str, str], signer: Signer
    ) -> DeliveryRecord:
        """A classic form-encoded status callback, signed over the URL and sorted parameters."""
        signature = signer.signature(url, params)
        record = self._new_record(
            kind="status_callback",
            account_sid=account_sid,
            sink_sid=None,
            destination=url,
            url=url,
            method="POST",
            signature=signature,
            body=urlencode(params),
            events=(),
        )
        record.message_sids = [params["MessageSid"]]
        record.event_types = [f"status-callback.{params['MessageStatus']}"]
        headers = {
            "Content-Type": FORM_CONTENT_TYPE,
            SIGNATURE_HEADER: signature,
            **signer.headers(),
        }
        await self._send(record, headers, retry=True)
        return record

    def _new_record(
        self,
        *,
        kind: str,
        account_sid: str | None,
        sink_sid: str | None,
        destination: str,
        url: str,
        method: str,
        signature: str | None,
        body: str,
        events: Sequence[dict[str, Any]],
    ) -> DeliveryRecord:
        record = DeliveryRecord(
            id=next(self._ids),
            kind=kind,
            account_sid=account_sid,
            sink_sid=sink_sid,
            destination=destination,
            url=url,
            method=method,
            signature=signature,
            event_types=[str(event.get("type")) for event in events],
            event_ids=[str(event.get("id")) for event in events],
            message_sids=[sid for event in events if (sid := message_sid_of(event))],
            body=body,
        )
        self.records.append(record)
        return record

    async def _send(self, record: DeliveryRecord, headers: dict[str, str], *, retry: bool) -> None:
        config = self._config()
        delays = list(config.retry_backoff_s) if retry else []
        content = record.body.encode("utf-8")
        try:
            for attempt_number in range(len(delays) + 1):
                if attempt_number:
                    await asyncio.sleep(delays[attempt_number - 1])
                started = time.perf_counter()
                at = utcnow()
                try:
                    response = await self.client.request(
                        record.method,
                        record.url,
                        content=content,
                        headers=headers,
                        timeout=config.delivery_timeout_s,
                    )
                except httpx.InvalidURL as exc:
                    record.attempts.append(Attempt(None, f"InvalidURL: {exc}", 0.0, at))
                    return
                except httpx.HTTPError as exc:
                    elapsed = (time.perf_counter() - started) * 1000
                    error = f"{type(exc).__name__}: {exc}".rstrip(": ")
                    record.attempts.append(Attempt(None, error, elapsed, at))
                    continue
                elapsed = (time.perf_counter() - started) * 1000
                record.attempts.append(Attempt(response.status_code, None, elapsed, at))
                record.response_body = response.text[:MAX_RESPONSE_BODY]
                if not _is_retryable(response.status_code):
                    return
        finally:
            record.done = True
