"""Blocks and the decline cool-down: who may not reach whom, beyond contacts.

A block is one row `blocker -> blocked`. Making it ends every contact row between the two (both
ways, pending or accepted), so the hub's contact check (store.reach) refuses their messages and
signals and presence is not shared; what the blocked user asks afterwards is kept as their own
pending row but never shown to the blocker (store.contacts filters it). A cool-down row
`asker -> target` remembers a declined request until `until`, even when the asker deletes the
declined row to ask again. Functions flush, never commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import and_, delete, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from store.errors import Conflict, NotFound
from store.models import Block, Contact, ContactCooldown, User, utcnow


class AlreadyBlocked(Conflict):
    pass


async def block(session: AsyncSession, blocker_id: int, blocked_id: int) -> Block:
    """Block `blocked_id` and end every contact row between the two; AlreadyBlocked if it was."""
    if await is_blocked(session, blocker_id, blocked_id):
        raise AlreadyBlocked(f"{blocker_id}->{blocked_id}")
    await session.execute(
        delete(Contact).where(
            or_(
                and_(Contact.owner_id == blocker_id, Contact.friend_id == blocked_id),
                and_(Contact.owner_id == blocked_id, Contact.friend_id == blocker_id),
            )
        )
    )
    row = Block(blocker_id=blocker_id, blocked_id=blocked_id, created_at=utcnow())
    session.add(row)
    try:
        await session.flush()
    except IntegrityError as exc:
        await session.rollback()
        raise AlreadyBlocked(f"{blocker_id}->{blocked_id}") from exc
    return row


async def unblock(session: AsyncSession, blocker_id: int, blocked_id: int) -> None:
    result = await session.execute(
        delete(Block).where(Block.blocker_id == blocker_id, Block.blocked_id == blocked_id)
    )
    if not result.rowcount:  # type: ignore[attr-defined]
        raise NotFound(f"{blocker_id}->{blocked_id}")


async def is_blocked(session: AsyncSession, blocker_id: int, blocked_id: int) -> bool:
    query = select(Block.id).where(Block.blocker_id == blocker_id, Block.blocked_id == blocked_id)
    return (await session.execute(query.limit(1))).first() is not None


async def blocked_by(
    session: AsyncSession, blocker_id: int, *, skip: int = 0, limit: int = 50
) -> Sequence[tuple[Block, User]]:
    query = (
        select(Block, User)
        .join(User, User.id == Block.blocked_id)
        .where(Block.blocker_id == blocker_id)
        .order_by(Block.id)
        .offset(skip)
        .limit(limit)
    )
    return [(b, u) for b, u in (await session.execute(query)).all()]


async def start_cooldown(session: AsyncSession, asker_id: int, target_id: int, length: timedelta) -> None:
    """`target_id` declined `asker_id`: no new request from the asker before now + length."""
    until = utcnow() + length
    row = (
        await session.execute(
            select(ContactCooldown).where(
                ContactCooldown.asker_id == asker_id, ContactCooldown.target_id == target_id
            )
        )
    ).scalar_one_or_none()
    if row is None:
        session.add(ContactCooldown(asker_id=asker_id, target_id=target_id, until=until))
    else:
        row.until = until
    await session.flush()


async def cooldown_until(session: AsyncSession, asker_id: int, target_id: int) -> datetime | None:
    """When `asker_id` may ask `target_id` again, if that is still in the future."""
    row = (
        await session.execute(
            select(ContactCooldown.until).where(
                ContactCooldown.asker_id == asker_id, ContactCooldown.target_id == target_id
            )
        )
    ).scalar_one_or_none()
    return row if row is not None and row > utcnow() else None
