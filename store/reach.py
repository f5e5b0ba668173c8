"""Who may reach whom: the read side the hub asks before it relays or stores anything.

A frame may go to a device only when that device is published and not revoked, and its owner is
either the sender or one of the sender's accepted contacts. Presence goes only to accepted
contacts. This module answers those questions and records `last_seen`; it never decides what to
do with the answer (the hub does).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from store.models import Contact, Device, User

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
