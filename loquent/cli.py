"""The ``loquent`` command line: serve, worker, migrate, demo, org/number/user/token, simulate.

Every management command prints JSON with ``--json`` so scripts and tests can rely on it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import typer

from loquent.config import get_settings
from loquent.simulator.cli import simulate_app

app = typer.Typer(help="Loquent — an SMS inbox for your own Twilio account.", no_args_is_help=True)
org_app = typer.Typer(help="Organizations.", no_args_is_help=True)
number_app = typer.Typer(help="An organization's own phone lines.", no_args_is_help=True)
user_app = typer.Typer(help="Users who log in to the inbox.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens for scripts.", no_args_is_help=True)
app.add_typer(org_app, name="org")
app.add_typer(number_app, name="number")
app.add_typer(user_app, name="user")
app.add_typer(token_app, name="token")

T = TypeVar("T")
JsonOpt = typer.Option(False, "--json", help="Print the result as JSON.")


def _emit(result: dict[str, Any], as_json: bool, human: str) -> None:
    typer.echo(json.dumps(result) if as_json else human)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _require_secret_key(settings: Any) -> None:
    """Refuse to run a server with the built-in key: it would encrypt customers' tokens."""
    from loquent.config import GENERATE_KEY_HINT

    if settings.uses_default_secret_key:
        _fail(
            "LOQUENT_SECRET_KEY is not set (or starts with the built-in development key, "
            "which anyone can read in the source). It encrypts your customers' Twilio auth "
            "tokens. Generate a key with\n\n"
            f"    {GENERATE_KEY_HINT}\n\n"
            "and set LOQUENT_SECRET_KEY to it in every web and worker process; keep it safe, "
            "stored tokens cannot be read without it. (`loquent demo` makes its own.)"
        )


def _with_session(work: Callable[[Any, Any], Awaitable[T]]) -> T:
    """Run ``work(session, ctx)`` in one committed transaction on the configured database."""
    from loquent.context import AppContext

    async def main() -> T:
        ctx = AppContext.from_settings(get_settings())
        try:
            async with ctx.db.session() as session:
                result = await work(session, ctx)
                await session.commit()
                return result
        finally:
            await ctx.close()

    return asyncio.run(main())


@app.command()
def migrate(revision: str = typer.Argument("head")) -> None:
    """Upgrade the database schema (to the newest revision by default)."""
    from loquent.migrate import upgrade

    upgrade(get_settings().database_url, revision)
    typer.echo(f"database at {revision}")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1"),
    port: int = typer.Option(8000),
    workers: int = typer.Option(1, help="Web processes. Use Redis to fan out events across them."),
    keep_alive: int = typer.Option(
        75, "--keep-alive", help="Seconds an idle client connection is kept open."
    ),
) -> None:
    """Start the web server (and, by default, the in-process job worker)."""
    import os
    import shutil
    import tempfile

    from loquent.logging import configure_logging
    from loquent.metrics import MULTIPROC_ENV
    from loquent.servers import serve as serve_app

    settings = get_settings()
    _require_secret_key(settings)
    configure_logging(json_logs=settings.log_json, level=settings.log_level, sql=settings.log_sql)
    metrics_dir: str | None = None
    if workers > 1 and not os.environ.get(MULTIPROC_ENV):
        # Each worker process counts in files here and /metrics adds them all up. Fresh per
        # run: counters from an earlier run must not be added to this one's.
        metrics_dir = tempfile.mkdtemp(prefix="loquent-metrics-")
        os.environ[MULTIPROC_ENV] = metrics_dir
    if workers > 1 and not settings.redis_url:
        typer.echo(
            "warning: several processes without LOQUENT_REDIS_URL: live updates between "
            "processes fall back to polling",
            err=True,
        )
    try:
        serve_app(
            "loquent.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            # Longer than the idle timeout of common proxies and load balancers (60 s), so the
            # server never closes a kept-alive connection just as the client reuses it.
            keep_alive_s=keep_alive,
            log_level=settings.log_level,
            log_json=settings.log_json,
        )
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@app.command()
def demo(
    host: str = typer.Option("127.0.0.1", help="Interface for the app; keep it on loopback."),
    port: int = typer.Option(8000, help="Port of the app."),
    sim_port: int = typer.Option(8899, "--sim-port", help="Port of the Twilio simulator."),
    fresh: bool = typer.Option(False, "--fresh", help="Start from an empty SQLite database."),
    scenario: bool = typer.Option(True, "--scenario/--no-scenario", help="Play the scenario."),
    wait_for_viewer: float = typer.Option(
        15.0,
        "--wait-for-viewer",
        min=0,
        help="Seconds to wait for a browser to open the inbox before the scenario (0: none).",
    ),
) -> None:
    """Run the app next to the bundled Twilio simulator, seeded, and play a short scenario."""
    from loquent.demo import DemoOptions, run_demo

    run_demo(
        DemoOptions(
            host=host,
            port=port,
            sim_port=sim_port,
            fresh=fresh,
            play_scenario=scenario,
            wait_for_viewer_seconds=wait_for_viewer,
        )
    )


@app.command()
def worker() -> None:
    """Run the background job worker on its own (production: as many as needed)."""
    from loquent.jobs.worker import run_forever
    from loquent.logging import configure_logging

    settings = get_settings()
    _require_secret_key(settings)
    configure_logging(json_logs=settings.log_json, level=settings.log_level, sql=settings.log_sql)
    asyncio.run(run_forever(settings))


# --- organizations --------------------------------------------------------------------------


@org_app.command("create")
def org_create(
    name: str = typer.Option(..., "--name"),
    twilio_account_sid: str = typer.Option(None, "--twilio-account-sid"),
    twilio_auth_token: str = typer.Option(
        None, "--twilio-auth-token", help="Prefer LOQUENT_TWILIO_AUTH_TOKEN: argv is visible."
    ),
    as_json: bool = JsonOpt,
) -> None:
    """Create an organization, optionally connected to a Twilio account."""
    import os
    import re

    from loquent.orgs import service

    token = twilio_auth_token or os.environ.get("LOQUENT_TWILIO_AUTH_TOKEN")
    if not name.strip():
        _fail("--name must not be empty")
    if twilio_account_sid and not re.fullmatch(r"AC[0-9a-fA-F]{32}", twilio_account_sid):
        _fail("--twilio-account-sid must look like AC followed by 32 hex characters")
    if bool(twilio_account_sid) != bool(token):
        _fail("give both --twilio-account-sid and an auth token, or neither")

    async def work(session: Any, ctx: Any) -> int:
        if twilio_account_sid and await service.find_org_by_account_sid(
            session, twilio_account_sid
        ):
            _fail("that Twilio account is already connected to another organization")
        org = await service.create_organization(
            session,
            ctx.box,
            name=name.strip(),
            twilio_account_sid=twilio_account_sid,
            twilio_auth_token=token,
        )
        return org.id

    org_id = _with_session(work)
    _emit({"id": org_id}, as_json, f"organization {org_id} created")


@org_app.command("set-webhook-key")
def org_set_webhook_key(
    org: int = typer.Option(..., "--org"),
    clear: bool = typer.Option(False, "--clear", help="Remove the key."),
    as_json: bool = JsonOpt,
) -> None:
    """Set the Twilio webhook SharedKey secret (read from standard input, never from argv)."""
    from loquent.orgs import service
    from loquent.orgs.models import Organization

    key = None if clear else sys.stdin.readline().strip()
    if not clear and not key:
        _fail("pipe the SharedKey secret on standard input, or pass --clear")

    async def work(session: Any, ctx: Any) -> None:
        row = await session.get(Organization, org)
        if row is None:
            _fail(f"no organization {org}")
        await service.set_webhook_shared_key(session, ctx.box, row, key)

    _with_session(work)
    _emit({"id": org, "webhook_shared_key": not clear}, as_json, "webhook key updated")


@number_app.command("add")
def number_add(
    number: str = typer.Argument(..., help="E.164, e.g. +14155550100"),
    org: int = typer.Option(..., "--org"),
    friendly_name: str = typer.Option("", "--friendly-name"),
    twilio_sid: str = typer.Option(None, "--twilio-sid"),
    as_json: bool = JsonOpt,
) -> None:
    """Register one of the organization's own lines."""
    from loquent.contacts.phones import InvalidPhoneNumber, normalize_e164
    from loquent.orgs import service
    from loquent.orgs.models import Organization

    try:
        e164 = normalize_e164(number)
    except InvalidPhoneNumber as exc:
        _fail(str(exc))
        return

    async def work(session: Any, ctx: Any) -> int:
        if await session.get(Organization, org) is None:
            _fail(f"no organization {org}")
        line = await service.add_phone_number(
            session, org, e164, twilio_sid=twilio_sid, friendly_name=friendly_name
        )
        return line.id

    line_id = _with_session(work)
    _emit({"id": line_id, "number": e164}, as_json, f"line {e164} added ({line_id})")


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < 8:
        _fail("the password must have at least 8 characters")
    return password


@user_app.command("create")
def user_create(
    org: int = typer.Option(..., "--org"),
    email: str = typer.Option(..., "--email"),
    role: str = typer.Option("owner", "--role", help="owner | member"),
    password_stdin: bool = typer.Option(False, "--password-stdin"),
    as_json: bool = JsonOpt,
) -> None:
    """Create a user who can log in, as a member of the organization."""
    from loquent.orgs import service
    from loquent.orgs.models import Organization

    if role not in service.ROLES:
        _fail("--role must be owner or member")
    if "@" not in email or len(email) > 320:
        _fail("--email must be an email address")
    password = _read_password(password_stdin)

    async def work(session: Any, ctx: Any) -> int:
        if await session.get(Organization, org) is None:
            _fail(f"no organization {org}")
        user = await service.get_or_create_user(session, email, password)
        await service.ensure_member(session, user, org, role)
        return user.id

    user_id = _with_session(work)
    _emit({"id": user_id, "email": email.strip().lower()}, as_json, f"user {email} ready")


@token_app.command("create")
def token_create(
    org: int = typer.Option(..., "--org"),
    email: str = typer.Option(..., "--email"),
    name: str = typer.Option("", "--name"),
    role: str = typer.Option("owner", "--role", help="role if the member is created now"),
    as_json: bool = JsonOpt,
) -> None:
    """Create an API token (the user and membership are created if needed). Shown once."""
    from loquent.orgs import service
    from loquent.orgs.models import Organization

    if "@" not in email or len(email) > 320:
        _fail("--email must be an email address")
    if role not in service.ROLES:
        _fail("--role must be owner or member")

    async def work(session: Any, ctx: Any) -> str:
        if await session.get(Organization, org) is None:
            _fail(f"no organization {org}")
        user = await service.get_or_create_user(session, email)
        await service.ensure_member(session, user, org, role)
        return await service.create_api_token(session, user, org, name)

    token = _with_session(work)
    _emit({"token": token}, as_json, token)


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def _token_json(token: Any) -> dict[str, Any]:
    # Never the token or its digest: only what identifies it and when it was used.
    return {
        "id": token.id,
        "name": token.name,
        "organization_id": token.organization_id,
        "email": token.email,
        "created_at": _iso(token.created_at),
        "last_used_at": _iso(token.last_used_at),
        "revoked_at": _iso(token.revoked_at),
    }


@token_app.command("list")
def token_list(org: int = typer.Option(..., "--org"), as_json: bool = JsonOpt) -> None:
    """The organization's API tokens: id, name, owner, created, last used, revoked."""
    from loquent.orgs import service
    from loquent.orgs.models import Organization

    async def work(session: Any, ctx: Any) -> list[Any]:
        if await session.get(Organization, org) is None:
            _fail(f"no organization {org}")
        return await service.list_api_tokens(session, org)

    tokens = [_token_json(t) for t in _with_session(work)]
    if as_json:
        typer.echo(json.dumps(tokens))
        return
    for t in tokens:
        state = f"revoked {t['revoked_at']}" if t["revoked_at"] else "active"
        typer.echo(
            f"{t['id']}\t{t['name'] or '-'}\t{t['email']}\tcreated {t['created_at']}"
            f"\tlast used {t['last_used_at'] or 'never'}\t{state}"
        )


@token_app.command("revoke")
def token_revoke(token_id: int = typer.Argument(..., min=1), as_json: bool = JsonOpt) -> None:
    """Revoke an API token: it answers 401 from now on. Revoking twice changes nothing."""
    from loquent.orgs import service

    async def work(session: Any, ctx: Any) -> Any:
        return await service.revoke_api_token(session, token_id)

    token = _with_session(work)
    if token is None:
        _fail(f"no API token {token_id}")
    shown = _token_json(token)
    _emit(shown, as_json, f"token {token_id} revoked at {shown['revoked_at']}")


app.add_typer(simulate_app, name="simulate", help="The bundled Twilio simulator.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
