"""Schemathesis against /openapi.json of a running app, with every check.

Responses must match the documented schema, status codes and content types; valid input
must be accepted and invalid input refused with a 4xx; authentication must be enforced.
The app runs on a real SQLite file with a connected organization and a captured message,
and is called with a bearer token (and, in a second pass, a browser session with its CSRF
token). Twilio is unreachable (a closed port), so routes that call it answer 502.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from loquent.orgs import service as orgs
from loquent.orgs.auth import CSRF_HEADER, SESSION_COOKIE
from tests.conftest import Stack, running_stack
from tests.support.twilio import new_sid, status_event

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CONFIG = Path(__file__).parent / "schemathesis.toml"


async def _seed(stack: Stack) -> None:
    """A captured message, so paths with ids reach real rows and not only 404s."""
    event = status_event(
        "sent",
        sid=new_sid("SM"),
        account=stack.org.account_sid,
        from_=stack.org.lines[0],
        to="+14155550199",
    )
    assert (await stack.post_events([event])).status_code == 200


async def _member_session(stack: Stack) -> tuple[str, str]:
    """A browser session of a member (not an owner): its cookie value and CSRF token."""
    async with stack.db.session() as session:
        user = await orgs.get_or_create_user(session, "member@example.com")
        await orgs.ensure_member(session, user, stack.org.id, "member")
        raw, row = await orgs.create_session(session, user.id, stack.org.id, 3600)
        await session.commit()
    return raw, row.csrf_token


def _run(
    stack: Stack, *headers: str, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{stack.url}/openapi.json",
        "--checks",
        "all",
        "--seed",
        "20261125",
        "--workers",
        "1",  # hypothesis' lambda descriptions are not thread-safe
        "--request-timeout",
        "10",
        *[arg for header in headers for arg in ("-H", header)],
        *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=150)


@pytest.mark.timeout(240)
async def test_api_conforms_to_its_openapi_document(sqlite_url: str) -> None:
    if not SCHEMATHESIS.exists():
        pytest.skip("schemathesis is not installed")
    async with running_stack(sqlite_url, sse_max_stream_seconds=1.0) as stack:
        await _seed(stack)
        cookie, csrf = await _member_session(stack)
        # A script with an owner's API token: every operation, every phase.
        scripted = await asyncio.to_thread(
            _run, stack, f"Authorization: Bearer {stack.org.api_token}"
        )
        # A member's browser session with its CSRF token: fewer examples; owner-only
        # operations must answer the documented 403.
        browser = await asyncio.to_thread(
            _run,
            stack,
            f"Cookie: {SESSION_COOKIE}={cookie}",
            f"{CSRF_HEADER}: {csrf}",
            extra=("--phases", "examples,fuzzing", "--max-examples", "3"),
        )
    for result in (scripted, browser):
        output = result.stdout[-8000:] + result.stderr[-2000:]
        assert result.returncode == 0, output
        assert "passed" in result.stdout, output
