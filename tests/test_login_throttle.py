"""Sign-in attempts are throttled per email and per client, counted before the password is
checked, in the process or across processes through Redis."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from loquent.app import create_app
from loquent.orgs import service
from loquent.servers import ServerThread, free_port
from loquent.web.throttle import KEY_PREFIX, LoginThrottle, redis_storage_uri
from tests.conftest import Stack, make_settings, running_stack

REDIS_ENV = "LOQUENT_TEST_REDIS_URL"
PASSWORD = "correct horse"


def _redis_url() -> str:
    url = os.environ.get(REDIS_ENV)
    if not url:
        pytest.skip(f"{REDIS_ENV} is not set: shared (Redis) sign-in throttle test skipped")
    return url


@pytest.fixture(params=["memory", "redis"])
def throttle_redis(request: pytest.FixtureRequest) -> str | None:
    return _redis_url() if request.param == "redis" else None


@asynccontextmanager
async def forgetting_client(redis_url: str | None) -> AsyncIterator[None]:
    """Every test signs in from 127.0.0.1: drop that client's shared count afterwards, so
    runs against the same Redis do not add up."""
    try:
        yield
    finally:
        if redis_url:
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(redis_url)
            try:
                async for key in client.scan_iter(match=f"{KEY_PREFIX}:*"):
                    await client.delete(key)
            finally:
                await client.aclose()


async def add_user(stack: Stack) -> str:
    email = f"ops-{secrets.token_hex(4)}@example.com"
    async with stack.db.session() as session:
        user = await service.get_or_create_user(session, email, PASSWORD)
        await service.ensure_member(session, user, stack.org.id, "owner")
        await session.commit()
    return email


async def form_token(http: httpx.AsyncClient) -> str:
    page = await http.get("/login")
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found is not None
    return found.group(1)


async def attempt(http: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    token = await form_token(http)
    return await http.post(
        "/login", data={"email": email, "password": password, "csrf_token": token}
    )


# --- the throttle itself -----------------------------------------------------------------


async def test_limit_then_release_after_the_window() -> None:
    throttle = LoginThrottle(per_email=3, per_client=100, window_seconds=1)
    assert [await throttle.attempt("a@example.com", "c") for _ in range(3)] == [0, 0, 0]
    assert await throttle.attempt("A@Example.com ", "c") >= 1  # case and spaces do not matter
    assert await throttle.attempt("b@example.com", "c") == 0  # other emails are unaffected
    await asyncio.sleep(1.1)
    assert await throttle.attempt("a@example.com", "c") == 0


async def test_success_clears_the_email_but_not_the_client() -> None:
    throttle = LoginThrottle(per_email=2, per_client=3, window_seconds=60)
    assert await throttle.attempt("a@example.com", "10.0.0.1") == 0
    assert await throttle.attempt("a@example.com", "10.0.0.1") == 0
    assert await throttle.attempt("a@example.com", "10.0.0.2") > 0
    await throttle.succeeded("a@example.com")
    assert await throttle.attempt("a@example.com", "10.0.0.1") == 0  # third for the client
    assert await throttle.attempt("c@example.com", "10.0.0.1") > 0  # the client hit its limit
    assert await throttle.attempt("c@example.com", "10.0.0.2") == 0


async def test_redis_down_falls_back_to_the_process_count() -> None:
    # Nothing listens on port 9: every Redis call fails, the process still bounds guesses.
    throttle = LoginThrottle(per_email=2, per_client=10, redis_url="redis://127.0.0.1:9/0")
    try:
        waits = [await throttle.attempt("a@example.com", "c") for _ in range(3)]
        assert waits[:2] == [0, 0]
        assert waits[2] > 0
    finally:
        await throttle.aclose()


def test_redis_urls_become_async_storage_uris() -> None:
    assert redis_storage_uri("redis://h:6379/0") == "async+redis://h:6379/0"
    assert redis_storage_uri("rediss://h/1") == "async+rediss://h/1"


# --- over HTTP -----------------------------------------------------------------------------


async def test_repeated_wrong_passwords_get_429_over_http(sqlite_url: str) -> None:
    async with running_stack(sqlite_url) as stack:
        email = await add_user(stack)
        async with httpx.AsyncClient(base_url=stack.url) as http:
            codes = [(await attempt(http, email, "wrong")).status_code for _ in range(10)]
            assert codes == [401] * 10
            blocked = await attempt(http, email, PASSWORD)  # even the right password must wait
            assert blocked.status_code == 429
            assert "Too many failed sign-ins" in blocked.text
            assert int(blocked.headers["retry-after"]) > 0


async def test_a_success_clears_the_email_count(sqlite_url: str) -> None:
    async with running_stack(sqlite_url) as stack:
        email = await add_user(stack)
        async with httpx.AsyncClient(base_url=stack.url) as http:
            for _ in range(9):
                assert (await attempt(http, email, "wrong")).status_code == 401
            assert (await attempt(http, email, PASSWORD)).status_code == 303
            http.cookies.clear()
            for _ in range(10):
                assert (await attempt(http, email, "wrong")).status_code == 401


async def test_concurrent_guesses_reach_the_password_check_at_most_limit_times(
    sqlite_url: str, throttle_redis: str | None
) -> None:
    """60 wrong passwords for one email sent at once: 10 are checked, 50 are refused."""
    overrides = {"redis_url": throttle_redis} if throttle_redis else {}
    async with forgetting_client(throttle_redis), running_stack(sqlite_url, **overrides) as stack:
        email = await add_user(stack)
        limits = httpx.Limits(max_connections=60, max_keepalive_connections=60)
        async with httpx.AsyncClient(base_url=stack.url, timeout=60, limits=limits) as http:
            token = await form_token(http)

            async def guess(i: int) -> httpx.Response:
                return await http.post(
                    "/login",
                    data={"email": email, "password": f"wrong-{i}", "csrf_token": token},
                )

            answers = await asyncio.gather(*(guess(i) for i in range(60)))
        codes = Counter(a.status_code for a in answers)
        assert codes == {401: 10, 429: 50}, codes
        for answer in answers:
            if answer.status_code == 429:
                assert int(answer.headers["retry-after"]) >= 1


async def test_the_limit_holds_across_two_app_processes_sharing_redis(sqlite_url: str) -> None:
    """Two app instances (as with --workers or several hosts) share one count."""
    redis_url = _redis_url()
    async with (
        forgetting_client(redis_url),
        running_stack(sqlite_url, redis_url=redis_url) as first,
    ):
        port = free_port()
        second = ServerThread(
            create_app(make_settings(sqlite_url, port, redis_url=redis_url)), port=port
        )
        await asyncio.to_thread(second.start)
        try:
            email = await add_user(first)
            async with (
                httpx.AsyncClient(base_url=first.url) as one,
                httpx.AsyncClient(base_url=second.url) as two,
            ):
                codes = [
                    (await attempt(one if i % 2 else two, email, "wrong")).status_code
                    for i in range(10)
                ]
                assert codes == [401] * 10
                for http in (one, two):
                    blocked = await attempt(http, email, PASSWORD)
                    assert blocked.status_code == 429, http.base_url
                    assert int(blocked.headers["retry-after"]) > 0
        finally:
            await asyncio.to_thread(second.stop)
