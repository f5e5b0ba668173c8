"""Device key bundles: publish, list a user's active devices, revoke one.

The store keeps the public keys and the self-signature exactly as published; it does not verify
them (peers do, against the identity key they pin). Device ids are global and never reused: a
revoked device keeps its row, so a later bundle cannot take its place under the same id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from store import tokens
from store.errors import DeviceIdTaken, NotFound, TooManyDevices
from store.models import Device, MailboxEntry, Prekey, RetiredDevice, utcnow


@dataclass(frozen=True)
class Bundle:
    device_id: str
    identity_key: bytes
    encryption_key: bytes
    signature: bytes
    signed_at: int


def _same_bundle(device: Device, bundle: Bundle) -> bool:
    return (
        device.identity_key == bundle.identity_key
        and device.encryption_key == bundle.encryption_key
        and device.signature == bundle.signature
        and device.signed_at == bundle.signed_at
    )


async def publish(
    session: AsyncSession, user_id: int, bundle: Bundle, *, max_devices: int
) -> tuple[Device, bool]:
    """Store a bundle; returns (device, created). Publishing the same bundle again is a no-op."""
    existing = (
        await session.execute(select(Device).where(Device.device_id == bundle.device_id))
    ).scalar_one_or_none()
    if existing is not None:
        if existing.user_id == user_id and existing.revoked_at is None and _same_bundle(existing, bundle):
            return existing, False
        raise DeviceIdTaken(bundle.device_id)
    if await session.get(RetiredDevice, bundle.device_id) is not None:
        raise DeviceIdTaken(bundle.device_id)  # its account was deleted: ids are never reused
    active = await session.scalar(
        select(func.count()).select_from(Device).where(Device.user_id == user_id, Device.revoked_at.is_(None))
    )
    if (active or 0) >= max_devices:
        raise TooManyDevices(f"{active} active devices")
    device = Device(
        user_id=user_id,
        device_id=bundle.device_id,
        identity_key=bundle.identity_key,
        encryption_key=bundle.encryption_key,
        signature=bundle.signature,
        signed_at=bundle.signed_at,
        created_at=utcnow(),
    )
    session.add(device)
    try:
        await session.flush()
    except IntegrityError as exc:
        await session.rollback()
        raise DeviceIdTaken(bundle.device_id) from exc
    return device, True


async def list_active(session: AsyncSession, user_id: int) -> Sequence[Device]:
    query = select(Device).where(Device.user_id == user_id, Device.revoked_at.is_(None)).order_by(Device.id)
    return (await session.execute(query)).scalars().all()


async def get_active(session: AsyncSession, device_id: str) -> Device | None:
    """The published, unrevoked device with this id (any user), for the hub's checks."""
    query = select(Device).where(Device.device_id == device_id, Device.revoked_at.is_(None))
    return (await session.execute(query)).scalar_one_or_none()


async def is_revoked(session: AsyncSession, device_id: str) -> bool:
    """True when a device with this id was published and then revoked (its id is never reused)."""
    query = select(Device.id).where(Device.device_id == device_id, Device.revoked_at.is_not(None))
    return (await session.execute(query)).first() is not None


async def revoke(session: AsyncSession, user_id: int, device_id: str) -> Device:
    """Mark the user's device revoked and drop the envelopes queued for it (nobody can read them),
    its prekeys (nobody may start a session with it any more) and its logins (its tokens die now)."""
    query = select(Device).where(
        Device.user_id == user_id, Device.device_id == device_id, Device.revoked_at.is_(None)
    )
    device = (await session.execute(query)).scalar_one_or_none()
    if device is None:
        raise NotFound(device_id)
    device.revoked_at = utcnow()
    await session.execute(delete(MailboxEntry).where(MailboxEntry.recipient_device == device_id))
    await session.execute(delete(Prekey).where(Prekey.device_id == device_id))
    await tokens.revoke_device(session, device_id)
    return device


async def rename(session: AsyncSession, user_id: int, device_id: str, name: str | None) -> Device:
    """Give one of the user's active devices a label (None clears it)."""
    query = select(Device).where(
        Device.user_id == user_id, Device.device_id == device_id, Device.revoked_at.is_(None)
    )
    device = (await session.execute(query)).scalar_one_or_none()
    if device is None:
        raise NotFound(device_id)
    device.name = name
    await session.flush()
    return device
