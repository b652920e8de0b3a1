"""The one client for a running simulator's ``/_sim`` control API: used by ``loquent demo``,
``loquent simulate`` and the tests.

Async, because its callers are: the demo and the tests drive the simulator from their event
loop (the CLI wraps a call in ``asyncio.run``). Each call opens its own short-lived HTTP
client, so one handle can be kept in a fixture and used from any event loop, and nothing needs
closing. The simulator does not import the app, so this module has its own small factory with
the app's rules for a shared client (no cookies, no redirects).
"""

from __future__ import annotations

import os
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8899"
URL_ENV = "LOQUENT_SIMULATOR_URL"
DEFAULT_TIMEOUT_S = 60.0


def default_url() -> str:
    return os.environ.get(URL_ENV) or DEFAULT_URL


class SimulatorError(RuntimeError):
    """The simulator refused a control request, or could not be reached."""


def _http_client(base_url: str, timeout_s: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=httpx.Timeout(timeout_s),
        follow_redirects=False,
        cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])),
        headers={"User-Agent": "loquent"},
    )


class SimulatorClient:
    def __init__(self, base_url: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = (base_url or default_url()).rstrip("/")
        self.timeout_s = timeout_s

    async def call(self, method: str, path: str, json: Any = None, **params: Any) -> Any:
        """``method /_sim{path}`` with a JSON body and query parameters (``None`` ones left
        out); the decoded answer, or ``SimulatorError`` on a 4xx/5xx or no connection."""
        try:
            async with _http_client(self.url, self.timeout_s) as http:
                response = await http.request(
                    method,
                    f"/_sim{path}",
                    json=json,
                    params={k: v for k, v in params.items() if v is not None} or None,
                )
        except httpx.HTTPError as exc:
            raise SimulatorError(f"cannot reach the simulator at {self.url}: {exc}") from exc
        if response.status_code >= 400:
            raise SimulatorError(
                f"{method} /_sim{path} answered {response.status_code}: {response.text}"
            )
        return response.json() if response.content else None

    # --- the simulator ---------------------------------------------------------------------

    async def healthz(self) -> dict[str, Any]:
        answer: dict[str, Any] = await self.call("GET", "/healthz")
        return answer

    async def reset(self) -> None:
        await self.call("POST", "/reset")

    async def drain(self, timeout_s: float = 10.0) -> int:
        return int((await self.call("POST", "/drain", {"timeout_s": timeout_s}))["pending"])

    # --- accounts, numbers, sinks ----------------------------------------------------------

    async def accounts(self) -> list[dict[str, Any]]:
        return list(await self.call("GET", "/accounts"))

    async def create_account(self, **fields: Any) -> dict[str, Any]:
        return dict(await self.call("POST", "/accounts", fields))

    async def default_account(self) -> str:
        """The only (or first) account, for commands that do not name one."""
        accounts = await self.accounts()
        if not accounts:
            raise SimulatorError("the simulator has no accounts; create one first")
        return str(accounts[0]["sid"])

    async def add_number(
        self, account_sid: str, phone_number: str, **fields: Any
    ) -> dict[str, Any]:
        return dict(
            await self.call(
                "POST", f"/accounts/{account_sid}/numbers", {"phone_number": phone_number, **fields}
            )
        )

    async def add_sink(self, account_sid: str, destination: str, **fields: Any) -> dict[str, Any]:
        return dict(
            await self.call(
                "POST", f"/accounts/{account_sid}/sinks", {"destination": destination, **fields}
            )
        )

    # --- traffic (waits for its webhook deliveries unless ``wait=False``) -------------------

    async def console_sms(self, account_sid: str, **fields: Any) -> dict[str, Any]:
        path = f"/accounts/{account_sid}/console-sms"
        return dict(await self.call("POST", path, {"wait": True, **fields}))

    async def inbound_sms(self, account_sid: str, **fields: Any) -> dict[str, Any]:
        path = f"/accounts/{account_sid}/inbound-sms"
        return dict(await self.call("POST", path, {"wait": True, **fields}))

    async def message_events(
        self, account_sid: str, message_sid: str, **fields: Any
    ) -> dict[str, Any]:
        path = f"/accounts/{account_sid}/messages/{message_sid}/events"
        return dict(await self.call("POST", path, {"wait": True, **fields}))

    # --- faults and what the simulator saw -------------------------------------------------

    async def add_fault(self, **fields: Any) -> dict[str, Any]:
        return dict(await self.call("POST", "/faults", fields))

    async def clear_faults(self) -> None:
        await self.call("DELETE", "/faults")

    async def requests(self, path_contains: str | None = None) -> list[dict[str, Any]]:
        return list(await self.call("GET", "/requests", path_contains=path_contains))

    async def fetches(self, message_sid: str) -> list[dict[str, Any]]:
        """The app's fetches of one message (``GET …/Messages/{sid}.json``)."""
        requests = await self.requests(path_contains=f"/Messages/{message_sid}.json")
        return [r for r in requests if r["method"] == "GET"]

    async def deliveries(self, **filters: Any) -> list[dict[str, Any]]:
        return list(await self.call("GET", "/deliveries", **filters))
