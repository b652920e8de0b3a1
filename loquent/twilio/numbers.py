"""The account's phone numbers (``IncomingPhoneNumbers``) and importing them as org lines.

Lines are what "phone ownership" is decided by, so importing is additive and idempotent:
a number already a line is counted as existing (its Twilio SID and friendly name are
filled in if the line was added without them, never overwritten), and nothing is removed
when a number leaves the account — its conversations stay readable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from loquent.contacts.phones import InvalidPhoneNumber, normalize_e164
from loquent.context import AppContext
from loquent.orgs import service as orgs
from loquent.orgs.models import PhoneNumber
from loquent.twilio.account import (
    LifecycleError,
    Problem,
    call_with_stored,
    rest_client,
    stored_credentials,
)

MAX_NUMBERS_PER_REQUEST = 1000


@dataclass(frozen=True)
class AccountNumber:
    sid: str
    phone_number: str
    friendly_name: str
    imported: bool


@dataclass(frozen=True)
class SyncResult:
    imported: int
    existing: int


def _account_number(item: dict[str, Any]) -> tuple[str, str, str] | None:
    sid, number, name = item.get("sid"), item.get("phone_number"), item.get("friendly_name")
    if not isinstance(sid, str) or not isinstance(number, str):
        return None
    return sid, number, name if isinstance(name, str) else ""


async def _fetch_account_numbers(ctx: AppContext, org_id: int) -> list[tuple[str, str, str]]:
    creds = await stored_credentials(ctx, org_id)
    client = rest_client(ctx, creds.account_sid, creds.auth_token)
    items = await call_with_stored(ctx, creds, client.list_incoming_numbers)
    return [parsed for item in items if (parsed := _account_number(item)) is not None]


async def list_numbers(ctx: AppContext, org_id: int) -> list[AccountNumber]:
    """Every number on the account (all pages), marked when it is already an org line."""
    numbers = await _fetch_account_numbers(ctx, org_id)
    async with ctx.db.reader() as session:
        lines = set(
            (
                await session.scalars(
                    select(PhoneNumber.number).where(PhoneNumber.organization_id == org_id)
                )
            ).all()
        )
    return [
        AccountNumber(sid=sid, phone_number=number, friendly_name=name, imported=number in lines)
        for sid, number, name in numbers
    ]


def _normalized(requested: list[str]) -> list[str]:
    if len(requested) > MAX_NUMBERS_PER_REQUEST:
        raise LifecycleError(
            Problem.INVALID_REQUEST,
            f"at most {MAX_NUMBERS_PER_REQUEST} numbers per request",
        )
    wanted: list[str] = []
    for raw in requested:
        try:
            number = normalize_e164(raw)
        except InvalidPhoneNumber:
            raise LifecycleError(
                Problem.INVALID_REQUEST, f"{raw!r} is not an E.164 phone number"
            ) from None
        if number not in wanted:
            wanted.append(number)
    return wanted


async def sync_numbers(ctx: AppContext, org_id: int, requested: list[str] | None) -> SyncResult:
    """Import the given numbers (all of the account's when ``requested`` is None)."""
    wanted = _normalized(requested) if requested is not None else None
    on_account = {
        number: (sid, name) for sid, number, name in await _fetch_account_numbers(ctx, org_id)
    }
    if wanted is None:
        wanted = list(on_account)
    missing = [number for number in wanted if number not in on_account]
    if missing:
        raise LifecycleError(
            Problem.NUMBER_NOT_ON_ACCOUNT,
            f"not on the connected Twilio account: {', '.join(missing)}",
        )

    entries = [
        orgs.LineImport(
            number=number, twilio_sid=on_account[number][0], friendly_name=on_account[number][1]
        )
        for number in wanted
    ]
    async with ctx.db.session() as session:
        imported, existing = await orgs.import_phone_numbers(session, org_id, entries)
        await session.commit()
    return SyncResult(imported=imported, existing=existing)
