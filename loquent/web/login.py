"""GET/POST /login and POST /logout: browser sessions.

A session is a server-side row (so logout really ends it) named by a random value in the
``loquent_session`` cookie: HttpOnly (scripts cannot read it), SameSite=Lax (other sites'
forms do not carry it), Secure when the deployment says it is served over HTTPS.
"""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from loquent.context import AppContext, Ctx
from loquent.orgs import service
from loquent.orgs.auth import SESSION_COOKIE, session_cookie, session_principal
from loquent.web.guards import FormError, read_small_form, safe_next
from loquent.web.login_token import LOGIN_COOKIE, LoginFormTokens
from loquent.web.templating import render
from loquent.web.throttle import LoginThrottle

router = APIRouter(include_in_schema=False)

MAX_EMAIL_CHARS = 320
# Password hashing is deliberately slow; hashing megabytes on request would be a cheap DoS.
MAX_PASSWORD_CHARS = 1024
_COOKIE_PATH = "/"


def _throttle(request: Request) -> LoginThrottle:
    throttle: LoginThrottle = request.app.state.login_throttle
    return throttle


def _tokens(ctx: AppContext) -> LoginFormTokens:
    return LoginFormTokens(ctx.settings.secret_keys)


def _login_page(
    request: Request,
    ctx: AppContext,
    *,
    next_path: str,
    email: str = "",
    error: str | None = None,
    status_code: int = 200,
) -> Response:
    nonce, form_token = _tokens(ctx).issue(request.cookies.get(LOGIN_COOKIE))
    response = render(
        request,
        "login.html",
        {"next": next_path, "email": email, "error": error, "form_token": form_token},
        status_code=status_code,
    )
    response.set_cookie(
        LOGIN_COOKIE,
        nonce,
        max_age=_tokens(ctx).max_age_seconds,
        httponly=True,
        samesite="lax",
        secure=ctx.settings.cookie_secure,
        path="/login",
    )
    return response


@router.get("/login")
async def login_form(request: Request, ctx: Ctx) -> Response:
    next_path = safe_next(request.query_params.get("next"))
    if await session_principal(request, ctx) is not None:
        return RedirectResponse(next_path, status_code=303)
    return _login_page(request, ctx, next_path=next_path)


@router.post("/login")
async def login_submit(request: Request, ctx: Ctx) -> Response:
    next_path = safe_next(request.query_params.get("next"))
    try:
        form = await read_small_form(request)
    except FormError as exc:
        return _login_page(request, ctx, next_path=next_path, error=f"{exc}.", status_code=400)

    next_path = safe_next(form.get("next") or next_path)
    email = form.get("email", "").strip()
    password = form.get("password", "")
    shown_email = email[:MAX_EMAIL_CHARS]

    def again(error: str, status_code: int) -> Response:
        return _login_page(
            request,
            ctx,
            next_path=next_path,
            email=shown_email,
            error=error,
            status_code=status_code,
        )

    if not _tokens(ctx).check(request.cookies.get(LOGIN_COOKIE), form.get("csrf_token")):
        return again("The login form expired. Please sign in again.", 400)
    if not email or not password:
        return again("Enter your email address and your password.", 400)
    if len(email) > MAX_EMAIL_CHARS or "@" not in email:
        return again("Enter a valid email address.", 400)
    if len(password) > MAX_PASSWORD_CHARS:
        return again(f"Passwords are at most {MAX_PASSWORD_CHARS} characters long.", 400)

    client = request.client.host if request.client else "unknown"
    # Counted before the password is checked: concurrent guesses cannot all get through
    # while earlier ones are still being verified.
    wait = await _throttle(request).attempt(email, client)
    if wait > 0:
        minutes = max(1, round(wait / 60))
        response = again(
            f"Too many failed sign-ins. Try again in about {minutes} minute"
            f"{'s' if minutes != 1 else ''}.",
            429,
        )
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response

    async with ctx.db.reader() as session:
        found = await service.authenticate_password(session, email, password)
    if found is None:
        return again("Email or password is incorrect.", 401)
    await _throttle(request).succeeded(email)
    user, member = found

    settings = ctx.settings
    async with ctx.db.session() as session:
        # A new session on every login, and the old one gone: no session fixation.
        previous = session_cookie(request)
        if previous is not None:
            await service.end_session(session, previous)
        raw, _ = await service.create_session(
            session, user.id, member.organization_id, settings.session_max_age_seconds
        )
        await session.commit()

    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        raw,
        max_age=settings.session_max_age_seconds,
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure,
        path=_COOKIE_PATH,
    )
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@router.get("/logout")
async def logout_confirm(request: Request, ctx: Ctx) -> Response:
    """Someone typed /logout: ask, because signing out must be a POST carrying the token."""
    principal = await session_principal(request, ctx)
    if principal is None:
        return RedirectResponse("/login", status_code=303)
    return render(request, "logout.html", {"logout_token": principal.csrf_token})


@router.post("/logout")
async def logout(request: Request, ctx: Ctx) -> Response:
    raw = session_cookie(request)
    principal = await session_principal(request, ctx)
    if principal is not None and raw is not None:
        try:
            form = await read_small_form(request)
        except FormError:
            form = {}
        sent = form.get("csrf_token") or request.headers.get("x-csrf-token") or ""
        if not hmac.compare_digest(sent, principal.csrf_token or ""):
            return render(
                request,
                "error.html",
                {
                    "title": "Sign-out was not confirmed",
                    "message": "The sign-out request did not come from this site. "
                    "Use the Sign out button to sign out.",
                },
                status_code=403,
            )
        async with ctx.db.session() as session:
            await service.end_session(session, raw)
            await session.commit()
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(
        SESSION_COOKIE,
        path=_COOKIE_PATH,
        httponly=True,
        samesite="lax",
        secure=ctx.settings.cookie_secure,
    )
    return response
