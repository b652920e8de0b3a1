"""Contact resolution: one contact per number per organization, safe under concurrency."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from loquent.contacts.models import Contact, ContactPhone
from loquent.db import is_unique_violation, utcnow


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

    Two transactions may race to create the same contact; the unique (organization_id,
    number) on contact_phone lets exactly one win. The loser's savepoint is rolled back and
    it reads the winner's row.
    """
    contact = await find_by_number(session, org_id, number)
    if contact is not None:
        return contact
    try:
        async with session.begin_nested():
            contact = Contact(organization_id=org_id, source=source)
            session.add(contact)
            await session.flush()
            session.add(ContactPhone(organization_id=org_id, contact_id=contact.id, number=number))
            await session.flush()
        return contact
    except IntegrityError as exc:
        if not is_unique_violation(exc):
            raise
    contact = await find_by_number(session, org_id, number)
    if contact is None:  # the winner rolled back after all; very unlikely, safe to retry
        return await resolve_or_create(session, org_id, number, source=source)
    return contact


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
