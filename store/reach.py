"""Who may reach whom: the read side the hub asks before it relays or stores anything.

A frame may go to a device only when that device is published and not revoked, and its owner is
either the sender or one of the sender's accepted contacts or a co-member of a group who has not
blocked the sender. Presence goes only to accepted contacts. This module answers those questions
and records `last_seen`; it never decides what to do with the answer (the hub does).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import exists, select, union, update
from sqlalchemy.ext.asyncio import AsyncConnection

from store.models import Block, Contact, Device, GroupMember, User

ACCEPTED = "accepted"  # protocol.ContactStatus.ACCEPTED; the store does not import the protocol


@dataclass(frozen=True, slots=True)
class DeviceOwner:
    user_id: int
    active: bool


async def device_owner(conn: AsyncConnection, device_id: str) -> DeviceOwner | None:
    row = (
        await conn.execute(select(Device.user_id, Device.revoked_at).where(Device.device_id == device_id))
    ).first()
    if row is None:
        return None
    return DeviceOwner(user_id=row[0], active=row[1] is None)


async def is_accepted_contact(conn: AsyncConnection, owner_id: int, friend_id: int) -> bool:
    """True when `owner_id` holds an accepted contact row for `friend_id`."""
    row = (
        await conn.execute(
            select(Contact.id).where(
                Contact.owner_id == owner_id, Contact.friend_id == friend_id, Contact.status == ACCEPTED
            )
        )
    ).first()
    return row is not None


async def has_blocked(conn: AsyncConnection, blocker_id: int, blocked_id: int) -> bool:
    """True when `blocker_id` has blocked `blocked_id` (a shared group then does not let the blocked
    one reach the blocker's devices)."""
    stmt = select(Block.id).where(Block.blocker_id == blocker_id, Block.blocked_id == blocked_id)
    return (await conn.execute(stmt.limit(1))).first() is not None


async def reachable_devices(conn: AsyncConnection, user_id: int, limit: int) -> list[tuple[int, str]]:
    """(owner, device id) of up to `limit` active devices `user_id` may send to: its accepted
    contacts' devices and its groups' co-members' devices, but not those of a co-member who blocked
    it. One bounded query, however many contacts and groups the user has: the hub warms its cache
    with it when a device connects (signalling.reach), so the first sends need not ask in line."""
    friends = select(Contact.friend_id.label("uid")).where(
        Contact.owner_id == user_id, Contact.status == ACCEPTED
    )
    mine = select(GroupMember.group_id).where(GroupMember.user_id == user_id)
    co_members = select(GroupMember.user_id.label("uid")).where(
        GroupMember.group_id.in_(mine),
        GroupMember.user_id != user_id,
        ~exists().where(Block.blocker_id == GroupMember.user_id, Block.blocked_id == user_id),
    )
    audience = union(friends, co_members).subquery()
    stmt = (
        select(Device.user_id, Device.device_id)
        .where(Device.user_id.in_(select(audience.c.uid)), Device.revoked_at.is_(None))
        .limit(limit)
    )
    return [(int(u), str(d)) for u, d in (await conn.execute(stmt)).all()]


async def accepted_contact_ids(conn: AsyncConnection, user_id: int) -> list[int]:
    """Users who have `user_id` as an accepted contact: the audience of its presence."""
    rows = await conn.execute(
        select(Contact.owner_id).where(Contact.friend_id == user_id, Contact.status == ACCEPTED)
    )
    return [r[0] for r in rows]


async def touch_last_seen(conn: AsyncConnection, user_id: int, when: datetime) -> None:
    await conn.execute(update(User).where(User.id == user_id).values(last_seen=when))


async def touch_device_seen(conn: AsyncConnection, device_id: str, when: datetime) -> None:
    """When this device last held (or dropped) a socket: the owner's device list shows it."""
    await conn.execute(update(Device).where(Device.device_id == device_id).values(last_seen_at=when))


async def last_seen(conn: AsyncConnection, user_id: int) -> datetime | None:
    row = (await conn.execute(select(User.last_seen).where(User.id == user_id))).first()
    return None if row is None else row[0]
