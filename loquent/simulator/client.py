"""A small synchronous client for the ``/_sim`` control API (used by the CLI and scripts)."""

from __future__ import annotations

import os
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8899"
URL_ENV = "LOQUENT_SIMULATOR_URL"


def default_url() -> str:
    return os.environ.get(URL_ENV) or DEFAULT_URL


class SimulatorError(RuntimeError):
    """The simulator refused a control request, or could not be reached."""


class SimulatorClient:
    def __init__(self, base_url: str | None = None, timeout_s: float = 30.0) -> None:
        self.base_url = (base_url or default_url()).rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> SimulatorClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, json: Any = None, **params: Any) -> Any:
        try:
            response = self._http.request(
                method,
                f"/_sim{path}",
                json=json,
                params={k: v for k, v in params.items() if v is not None} or None,
            )
        except httpx.HTTPError as exc:
            raise SimulatorError(f"cannot reach the simulator at {self.base_url}: {exc}") from exc
        if response.status_code >= 400:
            raise SimulatorError(
                f"{method} /_sim{path} answered {response.status_code}: {response.text}"
            )
        return response.json() if response.content else None

    def healthz(self) -> dict[str, Any]:
        return self._call("GET", "/healthz")

    def reset(self) -> None:
        self._call("POST", "/reset")

    def drain(self, timeout_s: float = 10.0) -> int:
        return self._call("POST", "/drain", {"timeout_s": timeout_s})["pending"]

    def accounts(self) -> list[dict[str, Any]]:
        return self._call("GET", "/accounts")

    def create_account(self, **fields: Any) -> dict[str, Any]:
        return self._call("POST", "/accounts", fields)

    def default_account(self) -> str:
        """The only (or first) account, for commands that do not name one."""
        accounts = self.accounts()
        if not accounts:
            raise SimulatorError("the simulator has no accounts; create one first")
        return accounts[0]["sid"]

    def add_number(self, account_sid: str, phone_number: str, **fields: Any) -> dict[str, Any]:
        return self._call(
            "POST", f"/accounts/{account_sid}/numbers", {"phone_number": phone_number, **fields}
        )

    def add_sink(self, account_sid: str, destination: str, **fields: Any) -> dict[str, Any]:
        return self._call(
            "POST", f"/accounts/{account_sid}/sinks", {"destination": destination, **fields}
        )

    def console_sms(self, account_sid: str, **fields: Any) -> dict[str, Any]:
        return self._call("POST", f"/accounts/{account_sid}/console-sms", fields)

    def inbound_sms(self, account_sid: str, **fields: Any) -> dict[str, Any]:
        return self._call("POST", f"/accounts/{account_sid}/inbound-sms", fields)

    def message_events(self, account_sid: str, message_sid: str, **fields: Any) -> dict[str, Any]:
        return self._call("POST", f"/accounts/{account_sid}/messages/{message_sid}/events", fields)

    def add_fault(self, **fields: Any) -> dict[str, Any]:
        return self._call("POST", "/faults", fields)

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def requests(self, path_contains: str | None = None) -> list[dict[str, Any]]:
        return self._call("GET", "/requests", path_contains=path_contains)

    def deliveries(self, **filters: Any) -> list[dict[str, Any]]:
        return self._call("GET", "/deliveries", **filters)
