"""MMS media: the attachments the enrichment job recorded, and their bytes on demand.

The inbox keeps only each media item's SID and content type (``message_media``). The bytes
stay at Twilio and are fetched when a browser asks for them, with the organization's own
credentials: the browser never talks to Twilio and never sees a Twilio URL or credential.

The Twilio URL is built from stored SIDs only (the account's, the message's and the media's),
never from anything in the request, and ``TwilioClient.stream_media_content`` sends the
credentials to the API host alone, dropping them on the redirect to Twilio's media CDN.

Files are relayed as they arrive, never held whole: memory per download is a chunk, the
size cap (``LOQUENT_MEDIA_MAX_BYTES``) is checked against a declared Content-Length before
the first byte and by counting bytes after, and each organization has a bounded number of
downloads in flight per process (``LOQUENT_MEDIA_PER_ORG_CONCURRENCY``).
"""

from __future__ import annotations

import contextlib
import mimetypes
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import anyio
import httpx
import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from loquent.config import Settings
from loquent.db import Database
from loquent.messaging.models import Message, MessageMedia
from loquent.orgs import service as orgs
from loquent.orgs.crypto import SecretBox
from loquent.orgs.models import Organization
from loquent.twilio.client import (
    API_VERSION,
    MediaStream,
    MediaTooLargeError,
    TwilioAuthError,
    TwilioBadRequest,
    TwilioClient,
    TwilioError,
    TwilioNotFound,
    TwilioRateLimited,
)

log = structlog.get_logger(__name__)

# When an organization has no free download slot, the browser may try again this soon.
BUSY_RETRY_AFTER_SECONDS = 1.0

FALLBACK_CONTENT_TYPE = "application/octet-stream"

# Types a browser may render inline from our origin. Everything else (HTML, SVG, XML, PDF,
# anything unknown) could run script or be sniffed into something that does, so it is only
# ever offered as a download.
_INLINE_TYPES = frozenset(
    {
        "image/png",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/avif",
        "image/bmp",
        "text/plain",
    }
)
_INLINE_PREFIXES = ("audio/", "video/")

_TOKEN = r"[a-z0-9!#$&^_.+-]+"  # noqa: S105 - an RFC 7230 token pattern
_MEDIA_TYPE = re.compile(rf"^{_TOKEN}/{_TOKEN}$")


# --- what the API shows ---------------------------------------------------------------------


@dataclass(frozen=True)
class MediaItem:
    sid: str
    content_type: str


def normalize_content_type(raw: str | None) -> str:
    """The bare media type (``image/png``), lowercased; parameters and junk are dropped.

    The stored value came from Twilio's API, but it is echoed into a response header, so
    it is held to the media-type grammar rather than trusted.
    """
    essence = (raw or "").split(";", 1)[0].strip().lower()
    return essence if _MEDIA_TYPE.match(essence) else FALLBACK_CONTENT_TYPE


def is_inline_safe(content_type: str) -> bool:
    content_type = normalize_content_type(content_type)
    return content_type in _INLINE_TYPES or content_type.startswith(_INLINE_PREFIXES)


def _extension(content_type: str) -> str | None:
    if content_type == FALLBACK_CONTENT_TYPE:
        return None
    return mimetypes.guess_extension(content_type, strict=False)


# --- errors: each one is a distinct answer at the HTTP edge -----------------------------------


class MediaError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class MediaNotFound(MediaError):
    """No such message or media in this organization, or Twilio no longer has the file."""


class TwilioNotConnected(MediaError):
    """The organization has no usable Twilio credentials."""


class CredentialsRejected(MediaError):
    """Twilio answered 401/403: the credentials are marked invalid (shown in settings)."""


class MediaTooLarge(MediaError):
    pass


class MediaBusy(MediaError):
    """The organization already has as many downloads in flight as it may."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class MediaUnavailable(MediaError):
    """Twilio could not be reached, timed out, or answered with an error."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# --- reading --------------------------------------------------------------------------------


async def list_media(session: AsyncSession, org_id: int, message_id: int) -> list[MediaItem]:
    """The message's media in Twilio's order; MediaNotFound if the message is not the org's."""
    message_exists = await session.scalar(
        select(Message.id).where(Message.id == message_id, Message.organization_id == org_id)
    )
    if message_exists is None:
        raise MediaNotFound("no such message")
    rows = await session.execute(
        select(MessageMedia.media_sid, MessageMedia.content_type)
        .where(MessageMedia.message_id == message_id)
        .order_by(MessageMedia.id)
    )
    return [MediaItem(sid=sid, content_type=normalize_content_type(ct)) for sid, ct in rows]


@dataclass(frozen=True)
class _Source:
    """What a download needs, read in one short transaction before Twilio is called."""

    message_sid: str
    media_sid: str
    content_type: str
    account_sid: str | None
    token_ciphertext: str | None
    credentials_valid: bool


async def _find_source(
    session: AsyncSession, org_id: int, message_id: int, media_sid: str
) -> _Source:
    row = (
        await session.execute(
            select(
                Message.external_id,
                MessageMedia.media_sid,
                MessageMedia.content_type,
                Organization.twilio_account_sid,
                Organization.twilio_auth_token,
                Organization.twilio_credentials_valid,
            )
            .join(Message, Message.id == MessageMedia.message_id)
            .join(Organization, Organization.id == Message.organization_id)
            .where(
                MessageMedia.message_id == message_id,
                MessageMedia.media_sid == media_sid,
                Message.organization_id == org_id,
            )
        )
    ).one_or_none()
    if row is None or not row.external_id:
        raise MediaNotFound("no such media")
    return _Source(
        message_sid=row.external_id,
        media_sid=row.media_sid,
        content_type=normalize_content_type(row.content_type),
        account_sid=row.twilio_account_sid,
        token_ciphertext=row.twilio_auth_token,
        credentials_valid=row.twilio_credentials_valid,
    )


def media_content_path(account_sid: str, message_sid: str, media_sid: str) -> str:
    """Twilio's media resource without ``.json``: it answers with a redirect to the bytes."""
    parts = (quote(account_sid, safe=""), quote(message_sid, safe=""), quote(media_sid, safe=""))
    return f"/{API_VERSION}/Accounts/{parts[0]}/Messages/{parts[1]}/Media/{parts[2]}"


# --- downloading ----------------------------------------------------------------------------


class FetchSlots:
    """Media downloads in flight per organization, in this process.

    A relay holds a connection to Twilio and one to the browser for as long as the file
    takes; one organization opening many at once must not use up the process for others.
    Not waiting for a slot is deliberate: a waiting request would hold its browser
    connection anyway, and the caller is told when to come back (429 + Retry-After).
    """

    def __init__(self, per_org: int) -> None:
        self.per_org = per_org
        self._in_use: dict[int, int] = {}

    def try_take(self, org_id: int) -> bool:
        taken = self._in_use.get(org_id, 0)
        if taken >= self.per_org:
            return False
        self._in_use[org_id] = taken + 1
        return True

    def give_back(self, org_id: int) -> None:
        left = self._in_use.get(org_id, 0) - 1
        if left > 0:
            self._in_use[org_id] = left
        else:
            self._in_use.pop(org_id, None)

    def in_use(self, org_id: int) -> int:
        return self._in_use.get(org_id, 0)


class MediaDownload:
    """One media file on its way from Twilio to the browser, a chunk at a time.

    ``aclose()`` must be called once the response is over (finished, failed or abandoned by
    the browser): it returns the organization's slot and closes the Twilio connection.
    """

    def __init__(
        self,
        *,
        sid: str,
        content_type: str,
        content_length: int | None,
        chunks: AsyncIterator[bytes],
        upstream: contextlib.AsyncExitStack,
        release: Callable[[], None],
        bound: Any,
    ) -> None:
        self.sid = sid
        self.content_type = content_type
        self.content_length = content_length
        self._chunks = chunks
        self._upstream = upstream
        self._release: Callable[[], None] | None = release
        self._log = bound

    @property
    def inline(self) -> bool:
        return is_inline_safe(self.content_type)

    @property
    def filename(self) -> str:
        return self.sid + (_extension(self.content_type) or "")

    async def body(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._chunks:
                yield chunk
        except MediaTooLargeError as exc:
            # The status line is already sent: all that is left is to cut the response
            # short, so the browser sees a broken download rather than a truncated file.
            self._log.warning("media.too_large_while_streaming", reason=exc.message)
            raise MediaTooLarge(exc.message) from None
        except TwilioError as exc:
            self._log.info("media.interrupted", error=str(exc))
            raise MediaUnavailable(f"the download from Twilio broke off: {exc}") from None

    async def aclose(self) -> None:
        release, self._release = self._release, None
        if release is None:
            return
        release()  # first, and synchronously: nothing below may keep the slot taken
        with anyio.CancelScope(shield=True):
            await self._upstream.aclose()


async def open_media(
    *,
    db: Database,
    box: SecretBox,
    http: httpx.AsyncClient,
    settings: Settings,
    slots: FetchSlots,
    org_id: int,
    message_id: int,
    media_sid: str,
    max_bytes: int | None = None,
) -> MediaDownload:
    """Start relaying one media item of one of the organization's messages from Twilio.

    Everything that can be answered with an error status (not found, credentials,
    rate limits, a declared size over the cap, no free slot) is raised here, before the
    first byte; the bytes then come from ``MediaDownload.body``. Served with the content
    type stored at enrichment, not the one the CDN answers with: that is the type the feed
    was told about and decided how to show.
    """
    max_bytes = max_bytes if max_bytes is not None else settings.media_max_bytes
    async with db.reader() as session:
        source = await _find_source(session, org_id, message_id, media_sid)
    if not source.account_sid or not source.token_ciphertext:
        raise TwilioNotConnected("Twilio is not connected for this organization")
    if not source.credentials_valid:
        # Enrichment pauses on rejected credentials too; asking again with the same
        # credentials would only add to the account's failed logins at Twilio.
        raise CredentialsRejected(
            "Twilio rejected this organization's credentials; reconnect Twilio in settings"
        )
    try:
        auth_token = box.decrypt(source.token_ciphertext)
    except ValueError as exc:  # the secret key changed without keeping the old one
        raise TwilioNotConnected(str(exc)) from None

    if not slots.try_take(org_id):
        raise MediaBusy(
            f"this organization already has {slots.per_org} media downloads in progress",
            retry_after=BUSY_RETRY_AFTER_SECONDS,
        )
    upstream = contextlib.AsyncExitStack()
    bound = log.bind(org_id=org_id, message_id=message_id, media_sid=source.media_sid)
    try:
        client = TwilioClient(
            settings.twilio_api_base,
            source.account_sid,
            auth_token,
            timeout=settings.twilio_timeout_seconds,
            http=http,
        )
        path = media_content_path(source.account_sid, source.message_sid, source.media_sid)
        stream = await _open_upstream(
            db, client, upstream, path, max_bytes, source, org_id=org_id, bound=bound
        )
    except BaseException:
        slots.give_back(org_id)
        with anyio.CancelScope(shield=True):
            await upstream.aclose()
        raise
    content_type = source.content_type
    if content_type == FALLBACK_CONTENT_TYPE:
        # Nothing usable was stored; the CDN's answer is the next best guess. It still goes
        # through the same inline/attachment rule.
        content_type = normalize_content_type(stream.content_type)
    return MediaDownload(
        sid=source.media_sid,
        content_type=content_type,
        content_length=stream.content_length,
        chunks=stream.chunks,
        upstream=upstream,
        release=lambda: slots.give_back(org_id),
        bound=bound,
    )


async def _open_upstream(
    db: Database,
    client: TwilioClient,
    upstream: contextlib.AsyncExitStack,
    path: str,
    max_bytes: int,
    source: _Source,
    *,
    org_id: int,
    bound: Any,
) -> MediaStream:
    if source.token_ciphertext is None:  # callers check the connection first
        raise RuntimeError("media fetched for an organization without credentials")
    try:
        return await upstream.enter_async_context(
            client.stream_media_content(path, max_bytes=max_bytes)
        )
    except TwilioAuthError as exc:
        bound.warning("media.credentials_rejected", status=exc.status, code=exc.code)
        await _flag_credentials(db, org_id, source.token_ciphertext, f"Twilio rejected: {exc}")
        raise CredentialsRejected(
            "Twilio rejected this organization's credentials; reconnect Twilio in settings"
        ) from None
    except TwilioNotFound:
        raise MediaNotFound("Twilio no longer has this media") from None
    except TwilioRateLimited as exc:
        raise MediaUnavailable(
            "Twilio is rate limiting this account; try again shortly",
            retry_after=exc.retry_after,
        ) from None
    except MediaTooLargeError:
        raise MediaTooLarge(f"media is larger than {max_bytes} bytes") from None
    except TwilioBadRequest as exc:
        bound.warning("media.refused", status=exc.status, code=exc.code)
        raise MediaUnavailable(f"Twilio refused the media request: {exc}") from None
    except TwilioError as exc:  # 5xx, timeouts, connection errors, too many redirects
        bound.info("media.unavailable", error=str(exc))
        raise MediaUnavailable(f"could not fetch the media from Twilio: {exc}") from None


async def _flag_credentials(db: Database, org_id: int, token_ciphertext: str, reason: str) -> None:
    """Mark the org's credentials invalid, unless it reconnected while we were asking."""
    async with db.session() as session:
        current = await session.scalar(
            select(Organization.twilio_auth_token).where(Organization.id == org_id)
        )
        if current == token_ciphertext:
            await orgs.mark_credentials_invalid(session, org_id, reason[:500])
        await session.commit()
