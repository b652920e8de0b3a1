"""A real ``loquent`` command as a subprocess on loopback: the CLI, ``serve`` and ``worker``,
with their output in a log file the tests can read."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

TEST_SECRET_KEY = "process-test-secret-key"


def base_env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    """A clean environment for one app: its own SQLite file and key, nothing inherited that
    would change its behaviour (a developer's LOQUENT_* variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOQUENT_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(
        {
            "LOQUENT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'app.db'}",
            "LOQUENT_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "LOQUENT_SECRET_KEY": TEST_SECRET_KEY,
            "LOQUENT_TWILIO_API_BASE": "http://127.0.0.1:9",
            "LOQUENT_TWILIO_EVENTS_API_BASE": "http://127.0.0.1:9",
        }
    )
    env.update(extra)
    return env


class LoquentProcess:
    def __init__(self, env: dict[str, str], port: int, log: Path) -> None:
        self.env, self.port, self.log = env, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str, stdin: str | None = None, **extra_env: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "loquent.cli", *args],
            env={**self.env, **extra_env},
            input=stdin,
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def cli_json(self, *args: str, stdin: str | None = None, **extra_env: str) -> Any:
        return json.loads(self.cli(*args, "--json", stdin=stdin, **extra_env))

    def serve(self, *args: str, ready_path: str = "/healthz", timeout: float = 60) -> None:
        with self.log.open("ab") as sink:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "loquent.cli", "serve", "--port", str(self.port), *args],
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + ready_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(self.log.read_text())
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("app did not start:\n" + self.log.read_text())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def lines(self) -> list[str]:
        return [line for line in self.log.read_text().splitlines() if line.strip()]
