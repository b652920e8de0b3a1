"""Contact resolution: one contact per number per organization, safe under concurrency."""

from __future__ import annotations

from datetime import datetime
from typing import cast

from sqlalchemy import Table, bindparam, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from loquent.contacts.models import Contact, ContactPhone
from loquent.db import dialect_insert, utcnow


async def find_by_number(session: AsyncSession, org_id: int, number: str) -> Contact | None:
    result = await session.execute(
        select(Contact)
        .join(ContactPhone, ContactPhone.contact_id == Contact.id)
        .where(ContactPhone.organization_id == org_id, ContactPhone.number == number)
    )
    return result.scalar_one_or_none()


async def resolve_or_create(
    session: AsyncSession, org_id: int, number: str, *, source: str
) -> Contact:
    """The contact owning ``number`` (E.164), creating a stub contact if there is none.

    One get-or-create for one number or many: ``resolve_or_create_many`` (``INSERT … ON
    CONFLICT DO NOTHING`` on the unique (organization_id, number), the loser reads the
    winner's contact).
    """
    contact = await find_by_number(session, org_id, number)
    if contact is not None:
        return contact
    ids = await resolve_or_create_many(session, org_id, {number: source})
    resolved = await session.get(Contact, ids[number])
    if resolved is None:  # pragma: no cover - the id was just inserted or read
        raise RuntimeError("a resolved contact is not visible")
    return resolved


async def touch_last_contacted(session: AsyncSession, contact_id: int, at: datetime) -> None:
    """Move last_contacted_at forward only (max(current, at)), in the caller's transaction."""
    await session.execute(
        update(Contact)
        .where(
            Contact.id == contact_id,
            (Contact.last_contacted_at.is_(None)) | (Contact.last_contacted_at < at),
        )
        .values(last_contacted_at=at, updated_at=utcnow())
    )


def display_name(contact: Contact, number: str | None) -> str:
    name = f"{contact.first_name} {contact.last_name}".strip()
    return name or (number or "")


async def list_contacts(
    session: AsyncSession, org_id: int, *, limit: int, after: tuple[datetime | None, int] | None
) -> list[tuple[Contact, str | None]]:
    """Contacts newest-contacted first (never-contacted last), with their preferred number."""
    stmt = (
        select(Contact, ContactPhone.number)
        .outerjoin(
            ContactPhone,
            (ContactPhone.contact_id == Contact.id) & ContactPhone.is_preferred.is_(True),
        )
        .where(Contact.organization_id == org_id)
    )
    if after is not None:
        at, last_id = after
        if at is None:
            stmt = stmt.where(Contact.last_contacted_at.is_(None), Contact.id < last_id)
        else:
            stmt = stmt.where(
                Contact.last_contacted_at.is_(None)
                | (Contact.last_contacted_at < at)
                | ((Contact.last_contacted_at == at) & (Contact.id < last_id))
            )
    stmt = stmt.order_by(
        Contact.last_contacted_at.is_(None), Contact.last_contacted_at.desc(), Contact.id.desc()
    ).limit(limit)
    return [(row[0], row[1]) for row in (await session.execute(stmt)).all()]


async def get_contact(session: AsyncSession, org_id: int, contact_id: int) -> Contact | None:
    contact = await session.get(Contact, contact_id)
    return contact if contact is not None and contact.organization_id == org_id else None


async def preferred_number(session: AsyncSession, contact_id: int) -> str | None:
    result = await session.execute(
        select(ContactPhone.number)
        .where(ContactPhone.contact_id == contact_id)
        .order_by(ContactPhone.is_preferred.desc(), ContactPhone.id)
        .limit(1)
    )
    return result.scalar_one_or_none()


# --- many at once (history import, catch-up) ------------------------------------------------


async def resolve_or_create_many(
    session: AsyncSession, org_id: int, sources: dict[str, str]
) -> dict[str, int]:
    """Contact ids for many numbers at once (``{number: source for new contacts}``).

    The set-based form of ``resolve_or_create``: one SELECT for the known numbers, then one
    multi-row INSERT of stub contacts and one ``INSERT … ON CONFLICT DO NOTHING`` of their
    numbers. A number another transaction claimed meanwhile loses on the unique
    (organization_id, number): its stub contact is deleted again and the winner's contact
    is read, so the result is the same as one get-or-create per number.
    """
    found = await _contact_ids_by_number(session, org_id, list(sources))
    missing = sorted(set(sources) - found.keys())
    if not missing:
        return found
    contact_table = cast(Table, Contact.__table__)
    phone_table = cast(Table, ContactPhone.__table__)
    now = utcnow()
    created = (
        await session.execute(
            insert(contact_table).returning(contact_table.c.id, sort_by_parameter_order=True),
            [
                {
                    "organization_id": org_id,
                    "first_name": "",
                    "last_name": "",
                    "source": sources[number],
                    "created_at": now,
                    "updated_at": now,
                }
                for number in missing
            ],
        )
    ).scalars()
    new_ids = dict(zip(missing, created, strict=True))
    won = set(
        (
            await session.execute(
                dialect_insert(session)(phone_table)
                .on_conflict_do_nothing(index_elements=["organization_id", "number"])
                .returning(phone_table.c.number),
                [
                    {
                        "organization_id": org_id,
                        "contact_id": contact_id,
                        "number": number,
                        "is_preferred": True,
                    }
                    for number, contact_id in new_ids.items()
                ],
            )
        ).scalars()
    )
    lost = [number for number in missing if number not in won]
    if lost:
        await session.execute(
            delete(contact_table).where(contact_table.c.id.in_([new_ids[n] for n in lost]))
        )
        found.update(await _contact_ids_by_number(session, org_id, lost))
    found.update({number: new_ids[number] for number in won})
    return found


async def touch_last_contacted_many(session: AsyncSession, times: dict[int, datetime]) -> None:
    """``touch_last_contacted`` for many contacts in one executemany: forward only."""
    if not times:
        return
    table = cast(Table, Contact.__table__)
    stmt = (
        update(table)
        .where(
            table.c.id == bindparam("contact_id"),
            (table.c.last_contacted_at.is_(None)) | (table.c.last_contacted_at < bindparam("at")),
        )
        .values(last_contacted_at=bindparam("at"), updated_at=bindparam("now"))
    )
    now = utcnow()
    await session.execute(
        stmt, [{"contact_id": cid, "at": at, "now": now} for cid, at in times.items()]
    )


async def _contact_ids_by_number(
    session: AsyncSession, org_id: int, numbers: list[str]
) -> dict[str, int]:
    found: dict[str, int] = {}
    for start in range(0, len(numbers), _IN_CHUNK):
        chunk = numbers[start : start + _IN_CHUNK]
        rows = await session.execute(
            select(ContactPhone.number, ContactPhone.contact_id).where(
                ContactPhone.organization_id == org_id, ContactPhone.number.in_(chunk)
            )
        )
        found.update({number: contact_id for number, contact_id in rows.all()})
    return found


# Bound parameters per IN list: far below SQLite's and PostgreSQL's limits.
_IN_CHUNK = 500
