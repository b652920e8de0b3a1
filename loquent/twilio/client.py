"""A small async client for the parts of Twilio's REST API the inbox uses.

Security rules this module enforces, because the credentials are a customer's:

- The org's SID and token are sent only to the configured ``api_base`` origin. Paths taken
  from Twilio's answers (``next_page_uri``) are resolved against it and refused if they
  point anywhere else; redirects are never followed with credentials attached.
- The token is held only inside an ``httpx.BasicAuth``; it never appears in a repr, a log
  line or an exception message.

This module knows nothing about messages in the inbox: it speaks Twilio's JSON and raises
one exception class per kind of failure, and callers decide what each means for them.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, Self
from urllib.parse import quote

import httpx
import structlog

log = structlog.get_logger(__name__)

API_VERSION = "2010-04-01"
MAX_PAGE_SIZE = 1000
# A media file larger than this is not something the inbox should hold in memory.
DEFAULT_MAX_MEDIA_BYTES = 20 * 1024 * 1024
_MAX_REDIRECTS = 5


# --- errors -------------------------------------------------------------------------------


class TwilioError(Exception):
    """Twilio answered with an error, or could not be reached.

    ``status`` is the HTTP status (None when there was no answer), ``code`` Twilio's numeric
    error code where it sent one (20404, 20003, …), ``message`` a human-readable reason.
    """

    def __init__(self, message: str, *, status: int | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code

    def __str__(self) -> str:
        parts = [f"HTTP {self.status}" if self.status is not None else "no answer"]
        if self.code is not None:
            parts.append(f"code {self.code}")
        return f"{self.message} ({', '.join(parts)})"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, status={self.status!r}, "
            f"code={self.code!r})"
        )


class TwilioAuthError(TwilioError):
    """401/403: the account SID or auth token is wrong, or the account is suspended."""


class TwilioNotFound(TwilioError):
    """404: no such resource (Twilio can briefly say this right after a message is created)."""


class TwilioRateLimited(TwilioError):
    """429: slow down; ``retry_after`` is how long Twilio asked us to wait, in seconds."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = 429,
        code: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after


class TwilioUnavailable(TwilioError):
    """5xx, a timeout or a connection error: worth retrying later."""


class TwilioBadRequest(TwilioError):
    """Any other 4xx: the request itself is wrong and will not succeed if repeated."""


class MediaTooLargeError(TwilioError):
    """A media file is larger than the caller's cap (declared up front, or counted)."""


# --- parsing helpers ----------------------------------------------------------------------


def parse_twilio_date(value: str | None) -> datetime | None:
    """Twilio's RFC 2822 timestamps ("Mon, 23 Nov 2026 10:00:00 +0000") as aware UTC.

    Returns None for a missing or unparseable value: a malformed timestamp must not cost us
    the rest of a message.
    """
    if not value or not isinstance(value, str):
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:  # "-0000" means "UTC, origin unknown" and parses as naive
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Retry-After as seconds to wait: either delta-seconds or an HTTP-date (RFC 9110)."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        when = parse_twilio_date(value)
        if when is None:
            return None
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _error_from_response(response: httpx.Response) -> TwilioError:
    status = response.status_code
    code: int | None = None
    message = response.reason_phrase or "error"
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, Mapping):
        raw_code = payload.get("code")
        if isinstance(raw_code, int) or (isinstance(raw_code, str) and raw_code.isdigit()):
            code = int(raw_code)
        if isinstance(payload.get("message"), str) and payload["message"]:
            # Twilio's message names the resource, never the credentials; cap it anyway.
            message = payload["message"][:300]

    if status in (401, 403):
        return TwilioAuthError(message, status=status, code=code)
    if status == 404:
        return TwilioNotFound(message, status=status, code=code)
    if status == 429:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return TwilioRateLimited(message, status=status, code=code, retry_after=retry_after)
    if status >= 500:
        return TwilioUnavailable(message, status=status, code=code)
    if 400 <= status < 500:
        return TwilioBadRequest(message, status=status, code=code)
    # 1xx/3xx: we never follow redirects with credentials, so a redirect here is unexpected.
    return TwilioError(f"unexpected answer: {message}", status=status, code=code)


# --- HTTP ---------------------------------------------------------------------------------


def build_http_client(*, timeout: float, max_connections: int = 100) -> httpx.AsyncClient:
    """An AsyncClient suitable for sharing between organizations.

    It keeps no cookies (one tenant's session cookie must never ride along on another
    tenant's request) and follows no redirects (credentials stay on the API host).
    """
    no_cookies = CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout),
        follow_redirects=False,
        cookies=no_cookies,
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=20),
        headers={"User-Agent": "loquent"},
    )


@dataclass(frozen=True)
class MediaContent:
    content_type: str
    content: bytes


@dataclass(frozen=True)
class MediaStream:
    """A media file being downloaded: its type, its size if the host declared it, and its
    bytes as they arrive (``MediaTooLargeError`` from ``chunks`` once past the cap)."""

    content_type: str
    content_length: int | None
    chunks: AsyncIterator[bytes]


def _declared_length(response: httpx.Response) -> int | None:
    """The body's size, when the host declared it and it is what we will read (an encoded
    body is decoded by httpx, so its Content-Length says nothing about the bytes we get)."""
    raw = response.headers.get("content-length", "")
    if not raw.isdigit() or response.headers.get("content-encoding", "identity") != "identity":
        return None
    return int(raw)


async def _capped_chunks(response: httpx.Response, max_bytes: int) -> AsyncIterator[bytes]:
    received = 0
    try:
        async for chunk in response.aiter_bytes():
            received += len(chunk)
            if received > max_bytes:
                raise MediaTooLargeError(f"media larger than {max_bytes} bytes")
            yield chunk
    except httpx.TimeoutException:
        raise TwilioUnavailable("timed out reading media from Twilio") from None
    except httpx.TransportError as exc:
        raise TwilioUnavailable(f"connection lost reading media from Twilio: {exc}") from None


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return (url.scheme, url.host, url.port)


class TwilioClient:
    """One Twilio account's view of the REST API (``api_base`` is Twilio or the simulator)."""

    def __init__(
        self,
        api_base: str,
        account_sid: str,
        auth_token: str,
        *,
        timeout: float,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        base = httpx.URL(api_base.rstrip("/") + "/")
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError("twilio api_base must be an absolute http(s) URL")
        if not account_sid:
            raise ValueError("account_sid is required")
        self._base = base
        self.account_sid = account_sid
        self._auth = httpx.BasicAuth(account_sid, auth_token)  # the only place the token lives
        self._timeout = httpx.Timeout(timeout)
        self._owns_http = http is None
        self._http = http or build_http_client(timeout=timeout)

    def __repr__(self) -> str:
        return f"TwilioClient(api_base={str(self._base)!r}, account_sid={self.account_sid!r})"

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    # --- resources ---

    async def fetch_account(self) -> dict[str, Any]:
        """``GET /Accounts/{sid}.json``: the cheapest call that proves the credentials work."""
        return await self._get_json(f"/{API_VERSION}/Accounts/{self._sid_path()}.json")

    async def fetch_message(self, sid: str) -> dict[str, Any]:
        return await self._get_json(self._account_path(f"Messages/{_segment(sid)}.json"))

    async def list_media(self, message_sid: str) -> list[dict[str, Any]]:
        path = self._account_path(f"Messages/{_segment(message_sid)}/Media.json")
        return [item async for item in self._iter_pages(path, "media_list", {"PageSize": 100})]

    async def iter_messages(
        self, *, page_size: int = MAX_PAGE_SIZE, date_sent_after: date | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every message on the account, newest first, one page at a time.

        ``date_sent_after`` is Twilio's ``DateSent>`` filter (messages sent on or after that
        day, UTC).
        """
        params: dict[str, str | int] = {"PageSize": max(1, min(page_size, MAX_PAGE_SIZE))}
        if date_sent_after is not None:
            params["DateSent>"] = date_sent_after.isoformat()
        async for item in self._iter_pages(self._account_path("Messages.json"), "messages", params):
            yield item

    async def messages_page(
        self,
        next_page_uri: str | None = None,
        *,
        page_size: int = MAX_PAGE_SIZE,
        date_sent_after: date | None = None,
        date_sent_before: date | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of ``Messages.json`` (newest first) and its ``next_page_uri``.

        Without ``next_page_uri`` the first page, filtered with ``DateSent>`` (on or after
        that day, UTC) and ``DateSent<`` (on or before that day); with it, exactly that
        page — it carries every parameter, page token included — so a caller that stored it
        can resume paging later, in another process.
        """
        if next_page_uri is None:
            params: dict[str, str | int] = {"PageSize": max(1, min(page_size, MAX_PAGE_SIZE))}
            if date_sent_after is not None:
                params["DateSent>"] = date_sent_after.isoformat()
            if date_sent_before is not None:
                params["DateSent<"] = date_sent_before.isoformat()
            page = await self._get_json(self._account_path("Messages.json"), params)
        else:
            page = await self._get_json(next_page_uri)
        items = page.get("messages") or []
        if not isinstance(items, list):
            raise TwilioError("unexpected page shape: 'messages' is not a list")
        next_uri = page.get("next_page_uri")
        return (
            [item for item in items if isinstance(item, dict)],
            next_uri if isinstance(next_uri, str) and next_uri else None,
        )

    async def list_incoming_numbers(self) -> list[dict[str, Any]]:
        path = self._account_path("IncomingPhoneNumbers.json")
        params = {"PageSize": MAX_PAGE_SIZE}
        return [item async for item in self._iter_pages(path, "incoming_phone_numbers", params)]

    # --- Event Streams (a client built on the Events API base) ---

    async def iter_sinks(self) -> AsyncIterator[dict[str, Any]]:
        """``GET /v1/Sinks``, every page (v1 lists page with ``meta.next_page_url``)."""
        async for item in self._iter_v1_pages("/v1/Sinks", "sinks"):
            yield item

    async def create_sink(
        self, *, description: str, destination: str, batch_events: bool = True
    ) -> dict[str, Any]:
        configuration = {"destination": destination, "method": "POST", "batch_events": batch_events}
        form = {
            "Description": description,
            "SinkType": "webhook",
            "SinkConfiguration": json.dumps(configuration),
        }
        return _json_object(await self._send("POST", "/v1/Sinks", data=form))

    async def delete_sink(self, sink_sid: str) -> None:
        await self._send("DELETE", f"/v1/Sinks/{_segment(sink_sid)}")

    async def test_sink(self, sink_sid: str) -> dict[str, Any]:
        """Ask Twilio to send its test event to the sink (``POST /v1/Sinks/{sid}/Test``)."""
        return _json_object(await self._send("POST", f"/v1/Sinks/{_segment(sink_sid)}/Test"))

    async def iter_subscriptions(
        self, *, sink_sid: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        params = {"SinkSid": sink_sid} if sink_sid else {}
        async for item in self._iter_v1_pages("/v1/Subscriptions", "subscriptions", params):
            yield item

    async def create_subscription(
        self, *, description: str, sink_sid: str, types: Mapping[str, int]
    ) -> dict[str, Any]:
        """One subscription to ``types`` (event type → schema version) on the sink."""
        form: dict[str, Any] = {
            "Description": description,
            "SinkSid": sink_sid,
            "Types": [
                json.dumps({"type": event_type, "schema_version": version})
                for event_type, version in types.items()
            ],
        }
        return _json_object(await self._send("POST", "/v1/Subscriptions", data=form))

    async def iter_subscribed_events(self, subscription_sid: str) -> AsyncIterator[dict[str, Any]]:
        """The ``{type, schema_version}`` entries of one subscription."""
        path = f"/v1/Subscriptions/{_segment(subscription_sid)}/SubscribedEvents"
        async for item in self._iter_v1_pages(path, "types"):
            yield item

    async def delete_subscription(self, subscription_sid: str) -> None:
        await self._send("DELETE", f"/v1/Subscriptions/{_segment(subscription_sid)}")

    async def create_message(
        self, *, from_: str, to: str, body: str, status_callback: str | None = None
    ) -> dict[str, Any]:
        form = {"From": from_, "To": to, "Body": body}
        if status_callback:
            form["StatusCallback"] = status_callback
        response = await self._send("POST", self._account_path("Messages.json"), data=form)
        return _json_object(response)

    async def fetch_media_content(
        self, uri: str, *, max_bytes: int = DEFAULT_MAX_MEDIA_BYTES
    ) -> MediaContent:
        """Download a media file whole (see ``stream_media_content`` to relay it)."""
        async with self.stream_media_content(uri, max_bytes=max_bytes) as stream:
            content = bytearray()
            async for chunk in stream.chunks:
                content.extend(chunk)
            return MediaContent(content_type=stream.content_type, content=bytes(content))

    @asynccontextmanager
    async def stream_media_content(
        self, uri: str, *, max_bytes: int = DEFAULT_MAX_MEDIA_BYTES
    ) -> AsyncIterator[MediaStream]:
        """Open a media file for streaming. ``uri`` is a path on the API host (a Media
        resource's ``uri`` without ``.json``).

        Twilio answers with a redirect to its CDN; we follow it ourselves so that the
        credentials go to the API host only and are dropped on the hop to any other host.
        The size cap holds twice: a declared Content-Length over it fails before any byte is
        read, and the bytes are counted as they arrive (a host may not declare a length).
        """
        url = self._resolve(uri.removesuffix(".json"))
        with_credentials = True
        for _ in range(_MAX_REDIRECTS + 1):
            request = self._http.build_request("GET", url, timeout=self._timeout)
            response = await self._dispatch(
                request, auth=self._auth if with_credentials else None, stream=True
            )
            try:
                if response.is_redirect and "location" in response.headers:
                    url = url.join(response.headers["location"])
                    # Once we have left the API origin we never go back to sending credentials.
                    with_credentials = with_credentials and _origin(url) == _origin(self._base)
                    continue
                if response.status_code >= 400:
                    await response.aread()
                    raise _error_from_response(response)
                length = _declared_length(response)
                if length is not None and length > max_bytes:
                    raise MediaTooLargeError(f"media larger than {max_bytes} bytes ({length})")
                yield MediaStream(
                    content_type=response.headers.get("content-type", "application/octet-stream"),
                    content_length=length,
                    chunks=_capped_chunks(response, max_bytes),
                )
                return
            finally:
                await response.aclose()
        raise TwilioError("too many redirects fetching media")

    # --- plumbing ---

    def _sid_path(self) -> str:
        return _segment(self.account_sid)

    def _account_path(self, rest: str) -> str:
        return f"/{API_VERSION}/Accounts/{self._sid_path()}/{rest}"

    def _resolve(self, path_or_url: str) -> httpx.URL:
        """A path (Twilio's ``uri``/``next_page_uri`` are paths from the API root) is taken
        relative to api_base, keeping any prefix it has; an absolute URL must be on the API
        origin, or it is refused before any credentials are attached."""
        if "://" in path_or_url or path_or_url.startswith("//"):
            url = httpx.URL(path_or_url)
        else:
            url = httpx.URL(str(self._base).rstrip("/") + "/" + path_or_url.lstrip("/"))
        if _origin(url) != _origin(self._base):
            raise TwilioError(
                f"refusing to send credentials to {url.scheme}://{url.host}: "
                "not the Twilio API host"
            )
        return url

    async def _get_json(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return _json_object(await self._send("GET", path, params=params))

    async def _iter_pages(
        self, path: str, key: str, params: Mapping[str, Any]
    ) -> AsyncIterator[dict[str, Any]]:
        next_path: str | None = path
        next_params: Mapping[str, Any] | None = params
        seen: set[str] = set()
        while next_path:
            page = await self._get_json(next_path, next_params)
            items = page.get(key) or []
            if not isinstance(items, list):
                raise TwilioError(f"unexpected page shape: {key!r} is not a list")
            for item in items:
                if isinstance(item, dict):
                    yield item
            next_uri = page.get("next_page_uri")
            # next_page_uri already carries every query parameter, including the page token.
            next_path = next_uri if isinstance(next_uri, str) and next_uri else None
            next_params = None
            if next_path is not None:
                if next_path in seen:  # a server that loops must not keep us paging forever
                    raise TwilioError("paging loop: next_page_uri repeated")
                seen.add(next_path)

    async def _iter_v1_pages(
        self, path: str, key: str, params: Mapping[str, Any] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """The v1 APIs page with ``meta.next_page_url`` (an absolute URL on the same host)."""
        next_path: str | None = path
        next_params: Mapping[str, Any] | None = {"PageSize": 50, **(params or {})}
        seen: set[str] = set()
        while next_path:
            page = await self._get_json(next_path, next_params)
            items = page.get(key) or []
            if not isinstance(items, list):
                raise TwilioError(f"unexpected page shape: {key!r} is not a list")
            for item in items:
                if isinstance(item, dict):
                    yield item
            meta = page.get("meta")
            next_url = meta.get("next_page_url") if isinstance(meta, dict) else None
            next_path = next_url if isinstance(next_url, str) and next_url else None
            next_params = None
            if next_path is not None:
                if next_path in seen:
                    raise TwilioError("paging loop: next_page_url repeated")
                seen.add(next_path)

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        request = self._http.build_request(
            method, self._resolve(path), params=params, data=data, timeout=self._timeout
        )
        response = await self._dispatch(request, auth=self._auth, stream=False)
        if response.status_code >= 300:
            raise _error_from_response(response)
        return response

    async def _dispatch(
        self, request: httpx.Request, *, auth: httpx.Auth | None, stream: bool
    ) -> httpx.Response:
        try:
            response = await self._http.send(
                request, auth=auth, follow_redirects=False, stream=stream
            )
        except httpx.TimeoutException:
            # ``from None``: the httpx exception holds the request, Authorization header and all.
            raise TwilioUnavailable(f"timed out calling {request.url.path}") from None
        except httpx.TransportError as exc:
            raise TwilioUnavailable(
                f"could not reach Twilio ({type(exc).__name__}) calling {request.url.path}"
            ) from None
        log.debug(
            "twilio.request",
            method=request.method,
            path=request.url.path,
            status=response.status_code,
        )
        return response


def _segment(value: str) -> str:
    """One URL path segment: a SID taken from a payload must not be able to climb paths."""
    return quote(value, safe="")


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        payload = response.json()
    except ValueError:
        raise TwilioUnavailable(
            "Twilio answered with invalid JSON", status=response.status_code
        ) from None
    if not isinstance(payload, dict):
        raise TwilioUnavailable(
            "Twilio answered with a non-object JSON", status=response.status_code
        )
    return payload
