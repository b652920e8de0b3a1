"""An async handle on a running simulator's /_sim control API, for tests."""

from __future__ import annotations

from typing import Any

import httpx


class Sim:
    def __init__(self, url: str) -> None:
        self.url = url

    async def call(self, method: str, path: str, json: Any = None, **params: Any) -> Any:
        async with httpx.AsyncClient(base_url=self.url, timeout=60) as http:
            response = await http.request(
                method,
                f"/_sim{path}",
                json=json,
                params={k: v for k, v in params.items() if v is not None},
            )
        response.raise_for_status()
        return response.json() if response.content else None

    async def console_sms(self, account: str, **fields: Any) -> dict[str, Any]:
        return await self.call("POST", f"/accounts/{account}/console-sms", {"wait": True, **fields})

    async def events(self, account: str, sid: str, **fields: Any) -> dict[str, Any]:
        return await self.call(
            "POST", f"/accounts/{account}/messages/{sid}/events", {"wait": True, **fields}
        )

    async def fault(self, **fields: Any) -> dict[str, Any]:
        return await self.call("POST", "/faults", fields)

    async def fetches(self, sid: str) -> list[dict[str, Any]]:
        requests = await self.call("GET", "/requests", path_contains=f"/Messages/{sid}.json")
        return [r for r in requests if r["method"] == "GET"]
