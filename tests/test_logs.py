"""Logs of a real ``loquent serve`` at DEBUG with JSON logs: every line — uvicorn's access and
error lines included — is JSON, request lines carry a request id (a caller's X-Request-ID is
kept), and no auth token, password, API token, session cookie, CSRF token, SQL parameter or
message body appears anywhere, with and without LOQUENT_LOG_SQL."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loquent.servers import ServerThread, free_port
from loquent.simulator.client import SimulatorClient as Sim
from loquent.simulator.server import simulator_thread
from tests.support.app_process import LoquentProcess, base_env

pytestmark = pytest.mark.timeout(180)

LINE = "+14155550100"


@pytest.fixture
def sim_server() -> Iterator[ServerThread]:
    server = simulator_thread().start()
    yield server
    server.stop()


def _login(client: httpx.Client, email: str, password: str) -> str:
    page = client.get("/login")
    match = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert match
    done = client.post(
        "/login", data={"email": email, "password": password, "csrf_token": match.group(1)}
    )
    assert done.status_code in (302, 303), done.text
    return match.group(1)


@pytest.mark.parametrize("log_sql", [False, True], ids=["default", "log_sql"])
async def test_a_full_run_logs_json_with_request_ids_and_no_secrets(
    tmp_path: Path, sim_server: ServerThread, log_sql: bool
) -> None:
    sim = Sim(sim_server.url)
    port = free_port()
    env = base_env(
        tmp_path,
        port,
        LOQUENT_LOG_JSON="true",
        LOQUENT_LOG_LEVEL="DEBUG",
        LOQUENT_LOG_SQL="true" if log_sql else "false",
        LOQUENT_TWILIO_API_BASE=sim_server.url,
        LOQUENT_TWILIO_EVENTS_API_BASE=sim_server.url,
        LOQUENT_WORKER_POLL_SECONDS="0.5",
    )
    app = LoquentProcess(env, port, tmp_path / "app.log")
    account = "AC" + secrets.token_hex(16)
    auth_token = secrets.token_hex(16)
    password = "pw-" + secrets.token_urlsafe(12)
    email = "owner@example.com"
    body = "Body text that is customer data " + secrets.token_hex(4)

    await asyncio.to_thread(app.cli, "migrate")
    org = await asyncio.to_thread(
        app.cli_json,
        "org",
        "create",
        "--name",
        "Logs",
        "--twilio-account-sid",
        account,
        LOQUENT_TWILIO_AUTH_TOKEN=auth_token,
    )
    org_id = str(org["id"])
    await asyncio.to_thread(app.cli, "number", "add", "--org", org_id, LINE)
    await asyncio.to_thread(
        app.cli, "user", "create", "--org", org_id, "--email", email, "--password-stdin",
        stdin=password + "\n",
    )  # fmt: skip
    api_token = (
        await asyncio.to_thread(app.cli_json, "token", "create", "--org", org_id, "--email", email)
    )["token"]
    await sim.call("POST", "/accounts", {"sid": account, "auth_token": auth_token})
    await sim.call("POST", f"/accounts/{account}/numbers", {"phone_number": LINE})
    await sim.call(
        "POST", f"/accounts/{account}/sinks", {"destination": f"{app.url}/twilio/events"}
    )

    await asyncio.to_thread(app.serve)
    try:
        proxied = httpx.get(f"{app.url}/healthz", headers={"X-Request-ID": "lb-req-0042"})
        assert proxied.headers["x-request-id"] == "lb-req-0042"
        forged = httpx.get(f"{app.url}/healthz", headers={"X-Request-ID": 'bad id {"x": 1}'})
        assert re.fullmatch(r"[0-9a-f]{16}", forged.headers["x-request-id"])

        with httpx.Client(base_url=app.url, timeout=20) as browser:
            login_form_token = _login(browser, email, password)
            session_cookie = browser.cookies["loquent_session"]
            assert browser.get("/api/contacts").status_code == 200
            assert browser.get("/messaging").status_code == 200
        bearer = {"Authorization": f"Bearer {api_token}"}
        assert httpx.get(f"{app.url}/api/contacts", headers=bearer).status_code == 200
        # A token in a query string ends up in the access line: it must be masked there.
        httpx.get(f"{app.url}/api/contacts", params={"access_token": api_token})

        sent = await sim.console_sms(account, **{"from": LINE, "to": "+14155550177", "body": body})
        for _ in range(200):
            listed = httpx.get(f"{app.url}/api/contacts", headers=bearer).json()["items"]
            last = listed[0]["last_message"] if listed else None
            if last and last["body"] == body:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"body of {sent['sid']} never fetched")
        assert httpx.get(f"{app.url}/metrics").status_code == 200
    finally:
        await asyncio.to_thread(app.stop)

    lines = app.lines()
    records: list[dict[str, Any]] = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None

    access = [r for r in records if r.get("logger") == "uvicorn.access"]
    assert len(access) >= 8, "uvicorn's access lines pass through the same handler"
    assert all(r.get("request_id") for r in access), [r for r in access if not r.get("request_id")]
    assert any(r["request_id"] == "lb-req-0042" for r in access)
    assert any(r.get("logger") == "uvicorn.error" for r in records)  # startup/shutdown lines
    assert any(r.get("event") == "capture.created" for r in records)

    text = "\n".join(lines)
    for secret in (auth_token, password, api_token, session_cookie, login_form_token):
        assert secret not in text
    assert api_token.removeprefix("lq_") not in text
    assert body not in text  # message bodies are customer data; SQL parameters never logged

    sql = [r for r in records if str(r.get("logger", "")).startswith("sqlalchemy.engine")]
    if log_sql:
        assert any("SELECT" in r["event"] for r in sql)
        assert any("[parameters redacted]" in r["event"] for r in sql)
    else:
        assert sql == []
    assert not [r for r in records if str(r.get("logger", "")).startswith("aiosqlite")]
