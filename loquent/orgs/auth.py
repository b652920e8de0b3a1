"""Who is calling: a bearer API token (scripts) or a browser session cookie.

Every authenticated request is scoped to exactly one organization. State-changing
requests made with a session cookie must also carry the session's CSRF token (header
``X-CSRF-Token`` or form field ``csrf_token``); bearer tokens are not sent by browsers on
their own, so they need none.
"""

from __future__ import annotations

import hmac
from typing import Annotated

import structlog
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyCookie, HTTPAuthorizationCredentials, HTTPBearer

from loquent.context import AppContext, Ctx
from loquent.errors import ApiError
from loquent.orgs import service
from loquent.orgs.models import Role
from loquent.orgs.service import Principal

log = structlog.get_logger(__name__)

SESSION_COOKIE = "loquent_session"
CSRF_HEADER = "x-csrf-token"
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
_MAX_CREDENTIAL_CHARS = 200  # ours are ~45; anything longer is not worth a database lookup

# Declared for the OpenAPI document (either scheme is enough); the credentials themselves are
# read from the request below, so a missing or malformed one is our 401, not FastAPI's.
BEARER = HTTPBearer(
    scheme_name="bearerToken", description="an API token (`loquent token create`)", auto_error=False
)
SESSION = APIKeyCookie(
    name=SESSION_COOKIE,
    scheme_name="sessionCookie",
    description="a browser session from /login; state changes also need X-CSRF-Token",
    auto_error=False,
)


def session_cookie(request: Request) -> str | None:
    """The raw session cookie, if it is plausibly one of ours."""
    raw = request.cookies.get(SESSION_COOKIE)
    return raw if raw and len(raw) <= _MAX_CREDENTIAL_CHARS else None


async def session_principal(request: Request, ctx: AppContext) -> Principal | None:
    """Who the session cookie belongs to, if it names a live session."""
    raw = session_cookie(request)
    if raw is None:
        return None
    async with ctx.db.reader() as session:
        return await service.authenticate_session(session, raw)


async def principal_from_request(request: Request, ctx: AppContext) -> Principal | None:
    header = request.headers.get("authorization")
    if header is None:
        return await session_principal(request, ctx)
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or len(token) > _MAX_CREDENTIAL_CHARS:
        return None
    async with ctx.db.reader() as session:
        principal = await service.authenticate_token(session, token.strip())
    if principal is not None and service.token_use_is_stale(principal):
        await _record_token_use(ctx, principal)
    return principal


async def _record_token_use(ctx: AppContext, principal: Principal) -> None:
    """At most once a minute per token (the stored time says when it was last written)."""
    if principal.credential_id is None:  # only token principals are recorded
        return
    try:
        async with ctx.db.session() as session:
            await service.record_token_use(session, principal.credential_id)
            await session.commit()
    except Exception as exc:  # bookkeeping: never fail the request over it
        log.warning("auth.token_use_not_recorded", token_id=principal.credential_id, error=str(exc))


async def require_principal(
    request: Request,
    ctx: Ctx,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
    _session: Annotated[str | None, Security(SESSION)],
) -> Principal:
    principal = await principal_from_request(request, ctx)
    if principal is None:
        raise ApiError(
            401,
            "unauthorized",
            "authentication required: a session or a bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if principal.via == "session" and request.method not in _SAFE_METHODS:
        sent = request.headers.get(CSRF_HEADER)
        if sent is None and request.headers.get("content-type", "").startswith(
            ("application/x-www-form-urlencoded", "multipart/form-data")
        ):
            form = await request.form()
            value = form.get("csrf_token")
            sent = value if isinstance(value, str) else None
        if not sent or not hmac.compare_digest(sent, principal.csrf_token or ""):
            raise ApiError(403, "csrf_failed", "missing or wrong CSRF token")
    return principal


CurrentPrincipal = Annotated[Principal, Depends(require_principal)]


async def require_owner(principal: CurrentPrincipal) -> Principal:
    if principal.role != Role.OWNER:
        raise ApiError(403, "forbidden", "only an organization owner can do this")
    return principal


# What a route declares to know who calls: ``principal: CurrentPrincipal`` (any member) or
# ``principal: OwnerPrincipal`` (owners only).
OwnerPrincipal = Annotated[Principal, Depends(require_owner)]
