"""Browser sessions and API tokens over their whole life: expired sessions are pruned by the
worker, tokens record their last use (once a minute at most), are listed and revoked from
the command line, and an open SSE stream ends soon after its session or token stops
authenticating."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from loquent.db import utcnow
from loquent.orgs import service
from loquent.orgs.crypto import token_digest
from loquent.orgs.models import ApiToken, UserSession
from tests.conftest import SECRET, Stack, running_stack

pytestmark = pytest.mark.timeout(90)

RECHECK = 1.0


async def loquent_cli(database_url: str, *args: str) -> tuple[int, str, str]:
    """Run ``loquent …`` as its own process against the test database."""
    env = {**os.environ, "LOQUENT_DATABASE_URL": database_url, "LOQUENT_SECRET_KEY": SECRET}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "loquent.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def new_session(stack: Stack, *, expires_in: timedelta) -> tuple[str, UserSession]:
    async with stack.db.session() as session:
        user_id = await session.scalar(
            select(ApiToken.user_id).where(ApiToken.token_hash == token_digest(stack.org.api_token))
        )
        assert user_id is not None
        raw, row = await service.create_session(session, user_id, stack.org.id, 3600)
        row.expires_at = utcnow() + expires_in
        await session.commit()
    return raw, row


async def token_row(stack: Stack, token: str) -> ApiToken:
    rows = await stack.rows(ApiToken, ApiToken.token_hash == token_digest(token))
    return rows[0]


class OpenStream:
    """A real SSE connection; ``ended`` resolves when the server closes it."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        self.url, self.headers = url, headers
        self.status: int | None = None
        self.opened = asyncio.Event()
        self.ended_at: float | None = None
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        async with (
            httpx.AsyncClient(timeout=httpx.Timeout(10, read=60)) as http,
            http.stream("GET", self.url, headers=self.headers) as response,
        ):
            self.status = response.status_code
            self.opened.set()
            async for _ in response.aiter_lines():
                pass
        self.ended_at = time.monotonic()

    async def __aenter__(self) -> OpenStream:
        self.task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.opened.wait(), 10)
        assert self.status == 200
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task

    async def ends_within(self, seconds: float) -> float:
        assert self.task is not None
        started = time.monotonic()
        await asyncio.wait_for(asyncio.shield(self.task), seconds)
        return time.monotonic() - started


# --- sessions --------------------------------------------------------------------------------


async def test_the_worker_prunes_expired_sessions(database_url: str) -> None:
    async with running_stack(database_url) as stack:  # the worker is off here
        await new_session(stack, expires_in=timedelta(seconds=-1))
        live, _ = await new_session(stack, expires_in=timedelta(hours=1))
        assert await stack.count(UserSession) == 2
    # The worker prunes when it starts and then periodically, beside the event log.
    async with running_stack(database_url, run_worker=True) as stack:
        deadline = time.monotonic() + 15
        while await stack.count(UserSession) > 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        left = await stack.rows(UserSession)
        assert [row.session_hash for row in left] == [token_digest(live)]


async def test_prune_expired_sessions_service(stack: Stack) -> None:
    await new_session(stack, expires_in=timedelta(seconds=-5))
    await new_session(stack, expires_in=timedelta(seconds=30))
    async with stack.db.session() as session:
        assert await service.prune_expired_sessions(session) == 1
        await session.commit()
    async with stack.db.session() as session:
        assert await service.prune_expired_sessions(session, utcnow() + timedelta(minutes=1)) == 1
        await session.commit()
    assert await stack.count(UserSession) == 0


# --- tokens ----------------------------------------------------------------------------------


async def test_a_token_records_its_last_use_at_most_once_a_minute(stack: Stack) -> None:
    assert (await token_row(stack, stack.org.api_token)).last_used_at is None
    before = utcnow()
    assert (await stack.get("/api/contacts")).status_code == 200
    first = (await token_row(stack, stack.org.api_token)).last_used_at
    assert first is not None
    assert first >= before - timedelta(seconds=1)

    for _ in range(5):  # within the minute: not written again
        assert (await stack.get("/api/contacts")).status_code == 200
    assert (await token_row(stack, stack.org.api_token)).last_used_at == first

    long_ago = utcnow() - timedelta(minutes=2)
    async with stack.db.session() as session:
        await session.execute(
            update(ApiToken)
            .where(ApiToken.token_hash == token_digest(stack.org.api_token))
            .values(last_used_at=long_ago)
        )
        await session.commit()
    assert (await stack.get("/api/contacts")).status_code == 200
    latest = (await token_row(stack, stack.org.api_token)).last_used_at
    assert latest is not None
    assert latest > long_ago + timedelta(minutes=1)


async def test_racing_requests_write_the_last_use_once(stack: Stack) -> None:
    row = await token_row(stack, stack.org.api_token)
    now = utcnow()
    written = []
    for _ in range(3):
        async with stack.db.session() as session:
            written.append(await service.record_token_use(session, row.id, now))
            await session.commit()
    assert written == [True, False, False]


async def test_token_list_and_revoke_from_the_command_line(stack: Stack) -> None:
    db_url = stack.settings.database_url
    code, out, err = await loquent_cli(
        db_url, "token", "create", "--org", str(stack.org.id), "--email", "ci@example.com",
        "--name", "deploy script", "--json",
    )  # fmt: skip
    assert code == 0, err
    script_token = json.loads(out)["token"]
    assert (await stack.get("/api/contacts")).status_code == 200  # the fixture's token, used

    listing = ("token", "list", "--org", str(stack.org.id), "--json")
    code, out, err = await loquent_cli(db_url, *listing)
    assert code == 0, err
    listed = json.loads(out)
    assert [(t["name"], t["email"]) for t in listed][-1] == ("deploy script", "ci@example.com")
    assert set(listed[0]) == {
        "id", "name", "organization_id", "email", "created_at", "last_used_at", "revoked_at",
    }  # fmt: skip
    assert listed[0]["last_used_at"] is not None
    assert listed[-1]["last_used_at"] is None
    assert all(t["revoked_at"] is None for t in listed)
    for secret in (script_token, token_digest(script_token), stack.org.api_token):
        assert secret not in out
    ours = listed[-1]["id"]

    headers = {"Authorization": f"Bearer {script_token}"}
    async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
        assert (await http.get("/api/contacts", headers=headers)).status_code == 200

        code, out, err = await loquent_cli(db_url, "token", "revoke", str(ours), "--json")
        assert code == 0, err
        revoked = json.loads(out)
        assert revoked["id"] == ours
        assert revoked["revoked_at"] is not None
        assert script_token not in out

        refused = await http.get("/api/contacts", headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"

    # Revoking again keeps the first time; the other tokens are untouched.
    code, out, _ = await loquent_cli(db_url, "token", "revoke", str(ours), "--json")
    assert code == 0
    assert json.loads(out)["revoked_at"] == revoked["revoked_at"]
    assert (await stack.get("/api/contacts")).status_code == 200
    code, out, _ = await loquent_cli(db_url, *listing)
    assert [t["revoked_at"] is not None for t in json.loads(out)] == [False, True]


async def test_token_commands_refuse_unknown_ids(stack: Stack) -> None:
    db_url = stack.settings.database_url
    code, _, err = await loquent_cli(db_url, "token", "revoke", "999999")
    assert code == 2
    assert "no API token 999999" in err
    code, _, err = await loquent_cli(db_url, "token", "list", "--org", "999999", "--json")
    assert code == 2
    assert "no organization 999999" in err
    code, _, _ = await loquent_cli(db_url, "token", "revoke", "abc")
    assert code == 2


# --- open streams end when their credential does ---------------------------------------------


@pytest.fixture
async def rechecking(database_url: str) -> Any:
    async with running_stack(database_url, sse_auth_recheck_seconds=RECHECK) as stack:
        yield stack


async def test_a_stream_ends_soon_after_logout(rechecking: Stack) -> None:
    stack = rechecking
    raw, row = await new_session(stack, expires_in=timedelta(hours=1))
    cookie = {"Cookie": f"loquent_session={raw}"}
    async with OpenStream(f"{stack.url}/api/events", cookie) as stream:
        await asyncio.sleep(RECHECK * 1.5)  # past a first re-check that finds it live
        assert stream.ended_at is None
        async with httpx.AsyncClient(base_url=stack.url, timeout=10) as http:
            out = await http.post("/logout", headers={**cookie, "X-CSRF-Token": row.csrf_token})
        assert out.status_code == 303
        assert await stack.count(UserSession) == 0
        # Within the re-check interval plus one poll of the log (1 s in tests), not 300 s.
        took = await stream.ends_within(RECHECK + stack.settings.sse_poll_seconds + 2)
        assert took <= RECHECK + stack.settings.sse_poll_seconds + 2


async def test_a_stream_ends_when_its_session_expires(rechecking: Stack) -> None:
    stack = rechecking
    raw, _ = await new_session(stack, expires_in=timedelta(seconds=2))
    async with OpenStream(f"{stack.url}/api/events", {"Cookie": f"loquent_session={raw}"}) as s:
        await s.ends_within(2 + RECHECK + stack.settings.sse_poll_seconds + 2)


async def test_a_stream_ends_soon_after_its_token_is_revoked(rechecking: Stack) -> None:
    stack = rechecking
    headers = {"Authorization": f"Bearer {stack.org.api_token}"}
    row = await token_row(stack, stack.org.api_token)
    async with OpenStream(f"{stack.url}/api/events", headers) as stream:
        await asyncio.sleep(RECHECK * 1.5)
        assert stream.ended_at is None
        async with stack.db.session() as session:
            assert await service.revoke_api_token(session, row.id) is not None
            await session.commit()
        await stream.ends_within(RECHECK + stack.settings.sse_poll_seconds + 2)


async def test_a_live_stream_is_not_ended_by_the_recheck(rechecking: Stack) -> None:
    stack = rechecking
    headers = {"Authorization": f"Bearer {stack.org.api_token}"}
    async with OpenStream(f"{stack.url}/api/events", headers) as stream:
        await asyncio.sleep(RECHECK * 3.5)
        assert stream.ended_at is None
