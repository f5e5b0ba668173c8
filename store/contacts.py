"""Contacts: requests, acceptance, groups and remarks.

A contact is a directed row `owner -> friend`. A request is one pending row from the asker;
accepting it makes it accepted and adds the acceptor's own accepted row, so each side keeps its own
group and remark. Removing a contact removes both directions. (What the hub asks of contacts, who
may reach whom, is in `store.reach`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Select, and_, delete, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from store.errors import DuplicateContact, NotFound
from store.models import Block, Contact, User, utcnow

PENDING, ACCEPTED, DECLINED = "pending", "accepted", "declined"
Direction = Literal["outgoing", "incoming"]


@dataclass(frozen=True)
class ContactView:
    """One row as its viewer sees it: the row, the other person, and who asked whom."""

    contact: Contact
    other: User
    direction: Direction


async def _row(session: AsyncSession, owner_id: int, friend_id: int) -> Contact | None:
    query = select(Contact).where(Contact.owner_id == owner_id, Contact.friend_id == friend_id)
    return (await session.execute(query)).scalar_one_or_none()


async def _view_of_own_row(session: AsyncSession, row: Contact) -> ContactView:
    views = await _own_rows(session, owner_id=row.owner_id, only_friend=row.friend_id)
    return views[0]


def _own_rows_query(owner_id: int) -> Select:
    reverse = aliased(Contact)
    return (
        select(Contact, User, reverse.id)
        .join(User, User.id == Contact.friend_id)
        .outerjoin(
            reverse, and_(reverse.owner_id == Contact.friend_id, reverse.friend_id == Contact.owner_id)
        )
        .where(Contact.owner_id == owner_id)
    )


async def _own_rows(
    session: AsyncSession,
    *,
    owner_id: int,
    only_friend: int | None = None,
    status: str | None = None,
    group: str | None = None,
    skip: int = 0,
    limit: int | None = None,
) -> list[ContactView]:
    query = _own_rows_query(owner_id)
    if only_friend is not None:
        query = query.where(Contact.friend_id == only_friend)
    if status is not None:
        query = query.where(Contact.status == status)
    if group is not None:
        query = query.where(Contact.group_name == group)
    query = query.order_by(func.lower(User.username), User.id).offset(skip)
    if limit is not None:
        query = query.limit(limit)
    views = []
    for contact, other, reverse_id in (await session.execute(query)).all():
        # Who asked: the asker's row is always the older one of the pair.
        direction: Direction = (
            "incoming" if reverse_id is not None and reverse_id < contact.id else "outgoing"
        )
        views.append(ContactView(contact, other, direction))
    return views


async def add(session: AsyncSession, owner_id: int, friend_id: int) -> ContactView:
    """Ask `friend_id`; when they already asked `owner_id`, both become contacts at once.

    Raises DuplicateContact when the owner already has a row for them (pending, accepted or
    declined; a declined asker may remove the row and ask again).
    """
    if await _row(session, owner_id, friend_id) is not None:
        raise DuplicateContact(f"{owner_id}->{friend_id}")
    reverse = await _row(session, friend_id, owner_id)
    status = PENDING
    if reverse is not None and reverse.status in (PENDING, DECLINED, ACCEPTED):
        reverse.status = ACCEPTED
        reverse.updated_at = utcnow()
        status = ACCEPTED
    row = Contact(owner_id=owner_id, friend_id=friend_id, status=status, created_at=utcnow())
    session.add(row)
    try:
        await session.flush()
    except IntegrityError as exc:
        await session.rollback()
        raise DuplicateContact(f"{owner_id}->{friend_id}") from exc
    return await _view_of_own_row(session, row)


async def list_own(
    session: AsyncSession,
    owner_id: int,
    *,
    status: str | None = None,
    group: str | None = None,
    skip: int = 0,
    limit: int = 50,
) -> list[ContactView]:
    return await _own_rows(session, owner_id=owner_id, status=status, group=group, skip=skip, limit=limit)


async def incoming_requests(
    session: AsyncSession, user_id: int, *, skip: int = 0, limit: int = 50
) -> list[ContactView]:
    blocked = select(Block.blocked_id).where(Block.blocker_id == user_id)
    query = (
        select(Contact, User)
        .join(User, User.id == Contact.owner_id)
        .where(Contact.friend_id == user_id, Contact.status == PENDING, Contact.owner_id.not_in(blocked))
        .order_by(Contact.id)
        .offset(skip)
        .limit(limit)
    )
    return [ContactView(c, u, "incoming") for c, u in (await session.execute(query)).all()]


async def outgoing_requests(
    session: AsyncSession, user_id: int, *, skip: int = 0, limit: int = 50
) -> list[ContactView]:
    return await _own_rows(session, owner_id=user_id, status=PENDING, skip=skip, limit=limit)


async def view_of(session: AsyncSession, owner_id: int, friend_id: int) -> ContactView | None:
    """How `owner_id` sees `friend_id` now: their own row, else `friend_id`'s pending request to
    them (as the incoming list shows it), else None. For telling each side of a change."""
    own = await _own_rows(session, owner_id=owner_id, only_friend=friend_id)
    if own:
        return own[0]
    blocked = select(Block.blocked_id).where(Block.blocker_id == owner_id)
    query = (
        select(Contact, User)
        .join(User, User.id == Contact.owner_id)
        .where(
            Contact.owner_id == friend_id,
            Contact.friend_id == owner_id,
            Contact.status == PENDING,
            Contact.owner_id.not_in(blocked),
        )
    )
    found = (await session.execute(query)).first()
    return ContactView(found[0], found[1], "incoming") if found is not None else None


async def related_user_ids(session: AsyncSession, user_id: int) -> list[int]:
    """Everyone with a row to or from `user_id`, whatever its status (told when the account goes)."""
    query = (
        select(Contact.friend_id)
        .where(Contact.owner_id == user_id)
        .union(select(Contact.owner_id).where(Contact.friend_id == user_id))
    )
    return sorted((await session.execute(query)).scalars().all())


async def accept(session: AsyncSession, user_id: int, asker_id: int) -> ContactView:
    """Accept the pending request `asker_id -> user_id`; NotFound when there is none."""
    request = await _row(session, asker_id, user_id)
    if request is None or request.status != PENDING:
        raise NotFound(f"no pending request from {asker_id}")
    request.status = ACCEPTED
    request.updated_at = utcnow()
    own = await _row(session, user_id, asker_id)
    if own is None:
        own = Contact(owner_id=user_id, friend_id=asker_id, status=ACCEPTED, created_at=utcnow())
        session.add(own)
    else:
        own.status = ACCEPTED
        own.updated_at = utcnow()
    await session.flush()
    return await _view_of_own_row(session, own)


async def decline(session: AsyncSession, user_id: int, asker_id: int) -> None:
    request = await _row(session, asker_id, user_id)
    if request is None or request.status != PENDING:
        raise NotFound(f"no pending request from {asker_id}")
    request.status = DECLINED
    request.updated_at = utcnow()
    await session.flush()


_UNSET = object()


async def update_labels(
    session: AsyncSession, owner_id: int, friend_id: int, *, group: object = _UNSET, remark: object = _UNSET
) -> ContactView:
    """Set the owner's group and/or remark for a contact (None clears); NotFound without a row."""
    row = await _row(session, owner_id, friend_id)
    if row is None:
        raise NotFound(f"{owner_id}->{friend_id}")
    if group is not _UNSET:
        row.group_name = group  # type: ignore[assignment]
    if remark is not _UNSET:
        row.remark = remark  # type: ignore[assignment]
    row.updated_at = utcnow()
    await session.flush()
    return await _view_of_own_row(session, row)


async def remove(session: AsyncSession, owner_id: int, friend_id: int) -> None:
    """End the relationship both ways (also withdraws or discards a request); NotFound if none."""
    result = await session.execute(
        delete(Contact).where(
            or_(
                and_(Contact.owner_id == owner_id, Contact.friend_id == friend_id),
                and_(Contact.owner_id == friend_id, Contact.friend_id == owner_id),
            )
        )
    )
    if result.rowcount == 0:  # type: ignore[attr-defined]
        raise NotFound(f"{owner_id}<->{friend_id}")
    session.expire_all()
