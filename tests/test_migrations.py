"""Schema revisions: the message.source column arrives on its own and keeps old rows."""

from __future__ import annotations

import asyncio
import os
import secrets
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from loquent.migrate import downgrade, upgrade
from tests.conftest import PG_ENV, _in_thread, _pg_exec, _pg_url_for

BEFORE_SOURCE = "m20260301_000000"


async def _seed_old_rows(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO organization (id, name, created_at, twilio_credentials_valid, "
                "sms_events_active, signature_failures, unmatched_events) "
                "VALUES (1, 'Old', CURRENT_TIMESTAMP, true, false, 0, 0)"
            )
        )
        await conn.execute(
            text(
                "INSERT INTO contact (id, organization_id, first_name, last_name, source, "
                "created_at, updated_at) "
                "VALUES (1, 1, 'Ada', '', 'manual', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP)"
            )
        )
        for i in (1, 2):
            await conn.execute(
                text(
                    "INSERT INTO message (id, organization_id, contact_id, channel, direction, "
                    "from_address, to_address, body, status, external_id, num_media, "
                    "created_at, updated_at, body_state, body_attempts) "
                    "VALUES (:id, 1, 1, 'sms', 'inbound', '+14155550199', '+14155550100', "
                    ":body, 'received', :sid, 0, CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, 'ready', 0)"
                ),
                {"id": i, "body": f"old {i}", "sid": f"SM{i:032d}"},
            )
    await engine.dispose()


async def _messages(url: str) -> list[Any]:
    engine = create_async_engine(url)
    async with engine.connect() as conn:
        rows = (await conn.execute(text("SELECT id, body, source FROM message ORDER BY id"))).all()
    await engine.dispose()
    return [tuple(r) for r in rows]


def _check_upgrade_keeps_rows(url: str) -> None:
    upgrade(url, BEFORE_SOURCE)
    asyncio.run(_seed_old_rows(url))
    upgrade(url, "head")
    assert asyncio.run(_messages(url)) == [(1, "old 1", None), (2, "old 2", None)]
    downgrade(url, BEFORE_SOURCE)  # and back: the revision is reversible
    upgrade(url, "head")


def test_source_revision_keeps_existing_messages_sqlite(tmp_path: Any) -> None:
    _in_thread(_check_upgrade_keeps_rows, f"sqlite+aiosqlite:///{tmp_path}/old.db")


@pytest.mark.postgres
def test_source_revision_keeps_existing_messages_postgres() -> None:
    if not os.environ.get(PG_ENV):
        pytest.skip(f"{PG_ENV} is not set: PostgreSQL variant skipped")
    name = "loquent_m_" + secrets.token_hex(6)
    _in_thread(asyncio.run, _pg_exec(f'CREATE DATABASE "{name}"'))
    try:
        _in_thread(_check_upgrade_keeps_rows, _pg_url_for(name))
    finally:
        _in_thread(asyncio.run, _pg_exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def test_models_match_the_migrations(tmp_path: Any) -> None:
    from alembic import command

    from loquent.migrate import alembic_config

    url = f"sqlite+aiosqlite:///{tmp_path}/check.db"
    _in_thread(upgrade, url)
    _in_thread(command.check, alembic_config(url))  # raises if autogenerate finds a diff
