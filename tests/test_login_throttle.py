"""Failed sign-ins are throttled per email and per client, with a sliding window."""

from __future__ import annotations

from loquent.web.throttle import FailureWindow, LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_limit_then_release_after_the_window() -> None:
    clock = Clock()
    window = FailureWindow(3, 60, clock=clock)
    for _ in range(3):
        assert window.retry_after("a") == 0
        window.record_failure("a")
        clock.now += 1
    assert 55 < window.retry_after("a") <= 58
    assert window.retry_after("b") == 0  # other keys are unaffected
    clock.now += 58
    assert window.retry_after("a") == 0


def test_success_clears_the_email_but_not_the_client() -> None:
    throttle = LoginThrottle(per_email=2, per_client=3, window_seconds=60)
    throttle.failed("A@example.com", "10.0.0.1")
    throttle.failed("a@example.com", "10.0.0.1")
    assert throttle.retry_after("a@example.com", "10.0.0.2") > 0  # case-insensitive email
    throttle.succeeded("a@example.com")
    assert throttle.retry_after("a@example.com", "10.0.0.1") == 0
    throttle.failed("b@example.com", "10.0.0.1")
    assert throttle.retry_after("c@example.com", "10.0.0.1") > 0  # the client hit its limit


def test_the_table_stays_bounded() -> None:
    clock = Clock()
    window = FailureWindow(1, 60, clock=clock, max_keys=10)
    for i in range(100):
        window.record_failure(f"k{i}")
    assert len(window._failures) <= 10


async def test_repeated_wrong_passwords_get_429_over_http(sqlite_url: str) -> None:
    import re

    import httpx

    from loquent.orgs import service
    from tests.conftest import running_stack

    async with running_stack(sqlite_url) as stack:
        async with stack.db.session() as session:
            user = await service.get_or_create_user(session, "ops@example.com", "correct horse")
            await service.ensure_member(session, user, stack.org.id, "owner")
            await session.commit()
        async with httpx.AsyncClient(base_url=stack.url) as http:

            async def attempt(password: str) -> httpx.Response:
                page = await http.get("/login")
                token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
                assert token is not None
                return await http.post(
                    "/login",
                    data={
                        "email": "ops@example.com",
                        "password": password,
                        "csrf_token": token.group(1),
                    },
                )

            codes = [(await attempt("wrong")).status_code for _ in range(10)]
            assert codes == [401] * 10
            blocked = await attempt("correct horse")  # even the right password must wait
            assert blocked.status_code == 429
            assert "Too many failed sign-ins" in blocked.text
            assert int(blocked.headers["retry-after"]) > 0
