"""Refresh tokens: stored only as SHA-256 hashes, rotated on every use, revoked as a family.

Each login starts a family; each refresh spends one token and issues the next in the same family.
A spent token presented again means a copy exists somewhere else: the whole family is revoked,
so neither the thief nor the owner can continue without logging in again.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from store.errors import RefreshTokenInvalid, RefreshTokenReused
from store.models import RefreshToken, utcnow


async def issue(
    session: AsyncSession, user_id: int, token_hash: bytes, *, ttl: timedelta, family: str | None = None
) -> RefreshToken:
    now = utcnow()
    await session.execute(
        delete(RefreshToken).where(RefreshToken.user_id == user_id, RefreshToken.expires_at < now)
    )
    row = RefreshToken(
        user_id=user_id,
        token_hash=token_hash,
        family=family or secrets.token_hex(16),
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
    token was already spent, RefreshTokenInvalid when it is unknown, revoked or expired.
    """
    now = now or utcnow()
    row = (
        await session.execute(select(RefreshToken).where(RefreshToken.token_hash == token_hash))
    ).scalar_one_or_none()
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
    return await issue(session, row.user_id, new_hash, ttl=ttl, family=row.family)


async def family_revoked(session: AsyncSession, family: str) -> bool:
    """True when the login family was revoked (reuse detected, logout): its access tokens are dead."""
    row = (
        await session.execute(
            select(RefreshToken.id)
            .where(RefreshToken.family == family, RefreshToken.revoked.is_(True))
            .limit(1)
        )
    ).first()
    return row is not None


async def revoke_family(session: AsyncSession, family: str) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family == family)
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
