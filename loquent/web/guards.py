"""What pages need before they render: a logged-in browser session, and safe form input.

API routes answer 401 through ``require_principal``; pages instead send the browser to
``/login?next=<where it was going>``, and only ever back to a path on this site.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, quote, urlsplit

from fastapi import Request
from fastapi.responses import RedirectResponse

from loquent.context import Ctx
from loquent.orgs.auth import principal_from_request
from loquent.orgs.service import Principal

DEFAULT_NEXT = "/messaging"
_MAX_NEXT_CHARS = 2000
_NO_RETURN_PATHS = ("/login", "/logout")

# Login and logout forms are a few short fields; anything much larger is not a browser form.
MAX_FORM_BYTES = 16 * 1024
_MAX_FORM_FIELDS = 20
_FORM_TYPE = "application/x-www-form-urlencoded"


class LoginRequired(Exception):
    """Raised by page dependencies; answered with a 303 to the login page."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class FormError(Exception):
    """A form that cannot be read at all (too large, wrong encoding, repeated fields)."""


def login_redirect(next_path: str) -> RedirectResponse:
    target = "/login"
    if next_path and next_path != DEFAULT_NEXT:
        target += "?next=" + quote(next_path, safe="/")
    return RedirectResponse(target, status_code=303)


def safe_next(value: str | None) -> str:
    """A same-site path to return to after login, or the inbox.

    Only plain absolute paths pass: no scheme or host, no ``//host`` or ``/\\host`` (which
    browsers treat as another site), no control characters, and not the login page itself.
    """
    if not value or len(value) > _MAX_NEXT_CHARS:
        return DEFAULT_NEXT
    if not value.startswith("/") or value.startswith(("//", "/\\")):
        return DEFAULT_NEXT
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F or ch == "\\" for ch in value):
        return DEFAULT_NEXT
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return DEFAULT_NEXT
    if parts.path.rstrip("/") in _NO_RETURN_PATHS:
        return DEFAULT_NEXT
    return value


def _requested_path(request: Request) -> str:
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


async def page_principal(request: Request, ctx: Ctx) -> Principal:
    """The browser session behind a page request; bearer tokens are for the API, not pages."""
    principal = await principal_from_request(request, ctx)
    if principal is None or principal.via != "session":
        raise LoginRequired(safe_next(_requested_path(request)))
    return principal


async def read_small_form(request: Request) -> dict[str, str]:
    """A URL-encoded form of at most ``MAX_FORM_BYTES``, each field given at most once.

    Read by hand rather than with ``request.form()`` so that the size limit holds even
    without a Content-Length header and every malformed input ends in a ``FormError``.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != _FORM_TYPE:
        raise FormError("the form must be sent as application/x-www-form-urlencoded")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_FORM_BYTES:
        raise FormError("the form is too large")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > MAX_FORM_BYTES:
            raise FormError("the form is too large")
    try:
        pairs = parse_qsl(
            body.decode("utf-8"),
            keep_blank_values=True,
            strict_parsing=False,
            max_num_fields=_MAX_FORM_FIELDS,
        )
    except (UnicodeDecodeError, ValueError):
        raise FormError("the form could not be read") from None
    fields: dict[str, str] = {}
    for key, value in pairs:
        if key in fields:
            raise FormError(f"the field {key!r} was sent more than once")
        fields[key] = value
    return fields
