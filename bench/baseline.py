"""The bare baseline the ingest figures are compared with, measured in the same run.

A Starlette endpoint doing the least any correct receiver must do: Twilio's signature check
(the vendor's RequestValidator, raw body string, URL rebuilt from the public URL), JSON
parsing, and one ``INSERT … ON CONFLICT DO NOTHING`` per event in one transaction per
delivery, on the same kind of database with the same driver as the app. What the app
spends beyond this is the cost of the product (contacts, messages, statuses, event log).

    BENCH_AUTH_TOKEN=… python -m bench.baseline --database-url URL --port P --public-url URL
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from twilio.request_validator import RequestValidator

TABLE = "bench_baseline_event"


def _engine(url: str) -> AsyncEngine:
    if not url.startswith("sqlite"):
        return create_async_engine(url, pool_size=10, max_overflow=10)
    engine = create_async_engine(url, connect_args={"timeout": 10})

    @event.listens_for(engine.sync_engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:  # as the app sets them
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    return engine


def build_app(database_url: str, public_url: str, auth_token: str) -> Starlette:
    engine = _engine(database_url)
    validator = RequestValidator(auth_token)
    # SQLite takes one writer at a time; queue in-process like the app does.
    write_lock = asyncio.Lock() if database_url.startswith("sqlite") else None
    insert = text(  # TABLE is a constant
        f"INSERT INTO {TABLE} (sid, status, payload) VALUES (:sid, :status, :payload) "  # noqa: S608
        "ON CONFLICT (sid) DO NOTHING"
    )

    async def events(request: Request) -> Response:
        raw = (await request.body()).decode()
        query = request.url.query
        url = f"{public_url}{request.url.path}" + (f"?{query}" if query else "")
        signature = request.headers.get("x-twilio-signature", "")
        if "bodySHA256=" not in query or not validator.validate(url, raw, signature):
            return JSONResponse({"error": "forbidden"}, status_code=403)
        try:
            batch = json.loads(raw)
            rows = [
                {
                    "sid": e["data"]["messageSid"],
                    "status": e["data"]["messageStatus"],
                    "payload": json.dumps(e["data"]),
                }
                for e in (batch if isinstance(batch, list) else [batch])
            ]
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": "bad request"}, status_code=400)
        if write_lock is not None:
            await write_lock.acquire()
        try:
            async with engine.begin() as conn:
                for row in rows:  # one statement per event, as a per-event service would
                    await conn.execute(insert, row)
        finally:
            if write_lock is not None:
                write_lock.release()
        return Response(status_code=200)

    async def healthz(_request: Request) -> Response:
        return Response("ok")

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    f"CREATE TABLE IF NOT EXISTS {TABLE} "
                    "(sid VARCHAR(64) PRIMARY KEY, status VARCHAR(32), payload TEXT)"
                )
            )
        yield
        await engine.dispose()

    return Starlette(
        routes=[Route("/twilio/events", events, methods=["POST"]), Route("/healthz", healthz)],
        lifespan=lifespan,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--public-url", required=True)
    args = parser.parse_args()
    app = build_app(args.database_url, args.public_url, os.environ["BENCH_AUTH_TOKEN"])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", timeout_keep_alive=75)


if __name__ == "__main__":
    main()
