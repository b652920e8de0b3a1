"""The built-in secret key never encrypts a customer's Twilio token: ``serve`` and ``worker``
refuse to start with it and say how to make a key; the demo makes its own once and keeps it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from loquent import demo
from loquent.config import DEFAULT_SECRET_KEY
from loquent.servers import free_port
from tests.support.app_process import base_env

pytestmark = pytest.mark.timeout(120)


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "loquent.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "key",
    [None, "", DEFAULT_SECRET_KEY, f"{DEFAULT_SECRET_KEY},another-key"],
    ids=["unset", "empty", "built-in", "built-in-first"],
)
@pytest.mark.parametrize("command", ["serve", "worker"])
def test_serve_and_worker_refuse_the_built_in_key(
    tmp_path: Path, command: str, key: str | None
) -> None:
    port = free_port()
    env = base_env(tmp_path, port)
    if key is None:
        del env["LOQUENT_SECRET_KEY"]
    else:
        env["LOQUENT_SECRET_KEY"] = key
    args = ["serve", "--port", str(port)] if command == "serve" else ["worker"]
    result = _run(args, env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "LOQUENT_SECRET_KEY" in result.stderr
    assert 'python -c "import secrets; print(secrets.token_urlsafe(32))"' in result.stderr
    assert "Traceback" not in result.stderr


def test_the_demo_makes_its_key_once_and_reuses_it(tmp_path: Path) -> None:
    data_dir = tmp_path / ".demo"
    first = demo.demo_secret_key(data_dir)
    key_file = data_dir / demo.SECRET_KEY_FILE
    assert len(first) >= 32
    assert first != DEFAULT_SECRET_KEY
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert demo.demo_secret_key(data_dir) == first  # the next run reads the same key


def test_the_demo_environment_uses_the_kept_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOQUENT_SECRET_KEY", raising=False)
    monkeypatch.setenv("LOQUENT_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/demo/loquent.db")
    for name in (
        "LOQUENT_PUBLIC_URL",
        "LOQUENT_TWILIO_API_BASE",
        "LOQUENT_TWILIO_EVENTS_API_BASE",
        "LOQUENT_LOG_LEVEL",
        "LOQUENT_SIMULATOR_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    demo.configure_environment("http://127.0.0.1:1", "http://127.0.0.1:2")
    key = os.environ["LOQUENT_SECRET_KEY"]
    assert (tmp_path / "demo" / demo.SECRET_KEY_FILE).read_text().strip() == key
    monkeypatch.delenv("LOQUENT_SECRET_KEY")
    demo.configure_environment("http://127.0.0.1:1", "http://127.0.0.1:2")
    assert os.environ["LOQUENT_SECRET_KEY"] == key
