"""MMS media: the attachments the enrichment job recorded, and their bytes on demand.

The inbox keeps only each media item's SID and content type (``message_media``). The bytes
stay at Twilio and are fetched when a browser asks for them, with the organization's own
credentials: the browser never talks to Twilio and never sees a Twilio URL or credential.

The Twilio URL is built from stored SIDs only (the account's, the message's and the media's),
never from anything in the request, and ``TwilioClient.fetch_media_content`` sends the
credentials to the API host alone, dropping them on the redirect to Twilio's media CDN.
"""

from __future__ import annotations

import mimetypes
import re
from dataclasses import dataclass
from urllib.parse import quote

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
    TwilioAuthError,
    TwilioBadRequest,
    TwilioClient,
    TwilioError,
    TwilioNotFound,
    TwilioRateLimited,
)

log = structlog.get_logger(__name__)

# Twilio caps an MMS at 5 MB; anything much larger is not a message attachment, and it is
# held in memory while it is relayed.
MAX_MEDIA_BYTES = 10 * 1024 * 1024

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

_TOKEN = r"[a-z0-9!#$&^_.+-]+"
_MEDIA_TYPE = re.compile(rf"^{_TOKEN}/{_TOKEN}$")


# --- what the API shows ---------------------------------------------------------------------


@dataclass(frozen=True)
class MediaItem:
    sid: str
    content_type: str


@dataclass(frozen=True)
class MediaFile:
    sid: str
    content_type: str
    content: bytes

    @property
    def inline(self) -> bool:
        return is_inline_safe(self.content_type)

    @property
    def filename(self) -> str:
        return self.sid + (_extension(self.content_type) or "")


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


async def fetch_media(
    *,
    db: Database,
    box: SecretBox,
    http: httpx.AsyncClient,
    settings: Settings,
    org_id: int,
    message_id: int,
    media_sid: str,
    max_bytes: int = MAX_MEDIA_BYTES,
) -> MediaFile:
    """The bytes of one media item of one of the organization's messages, from Twilio.

    Served with the content type stored at enrichment, not the one the CDN answers with:
    that is the type the feed was told about and decided how to show.
    """
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

    client = TwilioClient(
        settings.twilio_api_base,
        source.account_sid,
        auth_token,
        timeout=settings.twilio_timeout_seconds,
        http=http,
    )
    path = media_content_path(source.account_sid, source.message_sid, source.media_sid)
    bound = log.bind(org_id=org_id, message_id=message_id, media_sid=source.media_sid)
    try:
        fetched = await client.fetch_media_content(path, max_bytes=max_bytes)
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
    except TwilioBadRequest as exc:
        if exc.status is not None and exc.status < 400:  # the client's size cap, not Twilio
            raise MediaTooLarge(f"media is larger than {max_bytes} bytes") from None
        bound.warning("media.refused", status=exc.status, code=exc.code)
        raise MediaUnavailable(f"Twilio refused the media request: {exc}") from None
    except TwilioError as exc:  # 5xx, timeouts, connection errors, too many redirects
        bound.info("media.unavailable", error=str(exc))
        raise MediaUnavailable(f"could not fetch the media from Twilio: {exc}") from None
    content_type = source.content_type
    if content_type == FALLBACK_CONTENT_TYPE:
        # Nothing usable was stored; the CDN's answer is the next best guess. It still goes
        # through the same inline/attachment rule.
        content_type = normalize_content_type(fetched.content_type)
    return MediaFile(sid=source.media_sid, content_type=content_type, content=fetched.content)


async def _flag_credentials(db: Database, org_id: int, token_ciphertext: str, reason: str) -> None:
    """Mark the org's credentials invalid, unless it reconnected while we were asking."""
    async with db.session() as session:
        current = await session.scalar(
            select(Organization.twilio_auth_token).where(Organization.id == org_id)
        )
        if current == token_ciphertext:
            await orgs.mark_credentials_invalid(session, org_id, reason[:500])
        await session.commit()
