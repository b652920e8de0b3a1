"""Schemathesis against /openapi.json: whatever a client sends, never a 500."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import running_stack
from tests.support.twilio import new_sid, status_event

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


@pytest.mark.timeout(300)
async def test_no_server_errors_for_generated_requests(sqlite_url: str) -> None:
    if not SCHEMATHESIS.exists() and shutil.which("schemathesis") is None:
        pytest.skip("schemathesis is not installed")
    async with running_stack(sqlite_url) as stack:
        # Some data, so paths with ids reach real rows and not only 404s.
        event = status_event(
            "sent",
            sid=new_sid("SM"),
            account=stack.org.account_sid,
            from_=stack.org.lines[0],
            to="+14155550199",
        )
        assert (await stack.post_events([event])).status_code == 200
        command = [
            str(SCHEMATHESIS) if SCHEMATHESIS.exists() else "schemathesis",
            "run",
            f"{stack.url}/openapi.json",
            "-H",
            f"Authorization: Bearer {stack.org.api_token}",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "40",
            "--seed",
            "20261124",
            "--exclude-path",
            "/api/events",  # an endless stream; covered by its own tests
            "--no-color",
        ]
        result = await asyncio.to_thread(
            subprocess.run, command, capture_output=True, text=True, timeout=240
        )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
