"""Refresh tokens: stored only as SHA-256 hashes, rotated on every use, revoked as a family.

Each login starts a family; each refresh spends one token and issues the next in the same family.
A spent token presented again means a copy exists somewhere else: the whole family is revoked,
so neither the thief nor the owner can continue without logging in again.

A login that names its device ties the family to it (`device_id`): revoking the device revokes
the family (`store.devices.revoke`), and `login_state` tells the access-token check so at once.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from store.errors import RefreshTokenDeviceRevoked, RefreshTokenInvalid, RefreshTokenReused
from store.models import Device, RefreshToken, utcnow


async def issue(
    session: AsyncSession,
    user_id: int,
    token_hash: bytes,
    *,
    ttl: timedelta,
    family: str | None = None,
    device_id: str | None = None,
) -> RefreshToken:
    now = utcnow()
    await session.execute(
        delete(RefreshToken).where(RefreshToken.user_id == user_id, RefreshToken.expires_at < now)
    )
    row = RefreshToken(
        user_id=user_id,
        token_hash=token_hash,
        family=family or secrets.token_hex(16),
        device_id=device_id,
        created_at=now,
        expires_at=now + ttl,
    )
    session.add(row)
    await session.flush()
    return row


async def rotate(
    session: AsyncSession, token_hash: bytes, new_hash: bytes, *, ttl: timedelta, now: datetime | None = None
) -> RefreshToken:
    """Spend the token with `token_hash` and issue `new_hash` in its family.

    Raises RefreshTokenReused (after revoking the family; the caller must commit that) when the
    token was already spent, RefreshTokenDeviceRevoked when its device was revoked,
    RefreshTokenInvalid when it is unknown, revoked or expired.
    """
    now = now or utcnow()
    found = (
        await session.execute(
            select(RefreshToken, Device.revoked_at)
            .outerjoin(Device, Device.device_id == RefreshToken.device_id)
            .where(RefreshToken.token_hash == token_hash)
        )
    ).first()
    row = found[0] if found is not None else None
    if found is not None and found[1] is not None:
        raise RefreshTokenDeviceRevoked(row.device_id if row is not None else "")
    if row is None or row.revoked:
        raise RefreshTokenInvalid("unknown or revoked")
    if row.expires_at <= now:
        raise RefreshTokenInvalid("expired")
    # Compare-and-set, so two concurrent refreshes with one token cannot both succeed.
    spent = await session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == row.id, RefreshToken.used_at.is_(None), RefreshToken.revoked.is_(False))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if spent.rowcount != 1:  # type: ignore[attr-defined]
        await revoke_family(session, row.family)
        raise RefreshTokenReused(row.family, row.user_id)
    return await issue(session, row.user_id, new_hash, ttl=ttl, family=row.family, device_id=row.device_id)


@dataclass(frozen=True)
class LoginState:
    """What the access-token check needs of a login family, read in one query."""

    revoked: bool  # reuse detected, logout, or its device revoked
    device_revoked: bool  # the device it was made for is revoked


async def login_state(session: AsyncSession, family: str) -> LoginState:
    """The family's state; an unknown family (expired rows swept) reads as not revoked, as before.

    Every row of a family carries the same `device_id` (a rotation copies it), so the first row,
    revoked ones first, answers both questions.
    """
    row = (
        await session.execute(
            select(RefreshToken.revoked, Device.revoked_at)
            .outerjoin(Device, Device.device_id == RefreshToken.device_id)
            .where(RefreshToken.family == family)
            .order_by(RefreshToken.revoked.desc())
            .limit(1)
        )
    ).first()
    if row is None:
        return LoginState(revoked=False, device_revoked=False)
    return LoginState(revoked=bool(row[0]) or row[1] is not None, device_revoked=row[1] is not None)


async def family_revoked(session: AsyncSession, family: str) -> bool:
    """True when the login family was revoked (reuse detected, logout): its access tokens are dead."""
    return (await login_state(session, family)).revoked


async def revoke_family(session: AsyncSession, family: str) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family == family)
        .values(revoked=True)
        .execution_options(synchronize_session=False)
    )
    await session.flush()


async def revoke_device(session: AsyncSession, device_id: str) -> None:
    """Revoke every login made for `device_id` (the device itself was revoked)."""
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.device_id == device_id)
        .values(revoked=True)
        .execution_options(synchronize_session=False)
    )
    await session.flush()


async def revoke_all(session: AsyncSession, user_id: int) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user_id)
        .values(revoked=True)
        .execution_options(synchronize_session=False)
    )
    await session.flush()
