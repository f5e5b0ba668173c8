"""Prekeys: publish a device's prekeys, count its stock, and claim a bundle (one one-time key each).

A claim hands each one-time key to one claimer only: the row is deleted by the same statement that
returns it (`DELETE … WHERE id = (SELECT … LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING …`; SQLite
runs the statement under its write lock, PostgreSQL's SKIP LOCKED lets concurrent claims take
different rows instead of waiting on the same one). When the one-time stock of a kind is empty the
claim still succeeds: without a curve one-time key (PQXDH allows it), with the last-resort KEM key.
The store does not verify signatures; peers do.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from store.errors import Conflict, NotFound, QuotaExceeded
from store.models import Prekey


class Kind(IntEnum):  # the values of crypto.prekeys.PrekeyKind (the store imports nothing of ours)
    SIGNED = 1
    ONE_TIME = 2
    KEM_LAST_RESORT = 3
    KEM_ONE_TIME = 4


ONE_TIME_KINDS = (Kind.ONE_TIME, Kind.KEM_ONE_TIME)
CURRENT_KINDS = (Kind.SIGNED, Kind.KEM_LAST_RESORT)
_CLAIM_RETRIES = 5


class PrekeyConflict(Conflict):
    """A prekey id is already stored for this device and kind with different bytes."""


@dataclass(frozen=True)
class PrekeyIn:
    kind: Kind
    key_id: int
    public_key: bytes
    signature: bytes
    signed_at: int


@dataclass(frozen=True)
class Stock:
    one_time: int
    kem_one_time: int
    signed_prekey_id: int | None
    kem_last_resort_id: int | None
    held_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class ClaimedBundle:
    device_id: str
    signed_prekey: PrekeyIn
    kem_prekey: PrekeyIn
    one_time_prekey: PrekeyIn | None

    @property
    def took_one_time(self) -> bool:
        """Whether this claim used up a one-time key (curve or KEM) of the device's stock."""
        return self.one_time_prekey is not None or self.kem_prekey.kind is Kind.KEM_ONE_TIME


def _as_in(row: Prekey) -> PrekeyIn:
    return PrekeyIn(Kind(row.kind), row.key_id, row.public_key, row.signature, row.signed_at)


async def publish(
    session: AsyncSession,
    user_id: int,
    device_id: str,
    keys: Sequence[PrekeyIn],
    *,
    max_one_time: int,
    replace: bool = False,
) -> Stock:
    """Add prekeys for one of the user's devices (idempotent per id). A new signed or last-resort
    key replaces the older ones of its kind. The one-time stock per kind stays ≤ `max_one_time`.
    `replace` first drops everything held for the device (its local store was lost)."""
    if replace:
        await session.execute(delete(Prekey).where(Prekey.device_id == device_id))
    stored = {
        (r.kind, r.key_id): r
        for r in (await session.execute(select(Prekey).where(Prekey.device_id == device_id))).scalars()
    }
    added: dict[Kind, int] = {}
    for key in keys:
        old = stored.get((key.kind, key.key_id))
        if old is not None:
            if (old.public_key, old.signature, old.signed_at) != (
                key.public_key,
                key.signature,
                key.signed_at,
            ):
                raise PrekeyConflict(
                    f"{key.kind.name} prekey {key.key_id} is already published with other bytes"
                )
            continue
        if key.kind in ONE_TIME_KINDS:
            added[key.kind] = added.get(key.kind, 0) + 1
        row = Prekey(
            user_id=user_id,
            device_id=device_id,
            kind=int(key.kind),
            key_id=key.key_id,
            public_key=key.public_key,
            signature=key.signature,
            signed_at=key.signed_at,
        )
        session.add(row)
        stored[(key.kind, key.key_id)] = row
    for kind in ONE_TIME_KINDS:
        have = sum(1 for (k, _), r in stored.items() if k == kind and r.id is not None)
        if have + added.get(kind, 0) > max_one_time:
            raise QuotaExceeded(
                f"{kind.name} stock would be {have + added.get(kind, 0)}; at most {max_one_time} are kept"
            )
    await session.flush()
    for kind in CURRENT_KINDS:
        rows = sorted((r for (k, _), r in stored.items() if k == kind), key=lambda r: (r.signed_at, r.id))
        for old_row in rows[:-1]:
            await session.delete(old_row)
    await session.flush()
    return await stock(session, device_id)


async def stock(session: AsyncSession, device_id: str) -> Stock:
    counts = dict(
        (
            await session.execute(
                select(Prekey.kind, func.count())
                .where(Prekey.device_id == device_id, Prekey.kind.in_([int(k) for k in ONE_TIME_KINDS]))
                .group_by(Prekey.kind)
            )
        ).all()
    )
    current = {
        kind: (
            await session.execute(
                select(Prekey.key_id)
                .where(Prekey.device_id == device_id, Prekey.kind == int(kind))
                .order_by(Prekey.signed_at.desc(), Prekey.id.desc())
                .limit(1)
            )
        ).scalar_one_or_none()
        for kind in CURRENT_KINDS
    }
    held = tuple(
        (
            await session.execute(
                select(Prekey.key_id).where(Prekey.device_id == device_id).order_by(Prekey.key_id)
            )
        )
        .scalars()
        .all()
    )
    return Stock(
        counts.get(int(Kind.ONE_TIME), 0),
        counts.get(int(Kind.KEM_ONE_TIME), 0),
        current[Kind.SIGNED],
        current[Kind.KEM_LAST_RESORT],
        held,
    )


async def _current(session: AsyncSession, device_id: str, kind: Kind) -> PrekeyIn | None:
    row = (
        await session.execute(
            select(Prekey)
            .where(Prekey.device_id == device_id, Prekey.kind == int(kind))
            .order_by(Prekey.signed_at.desc(), Prekey.id.desc())
            .limit(1)
        )
    ).scalar_one_or_none()
    return None if row is None else _as_in(row)


async def _take_one_time(session: AsyncSession, device_id: str, kind: Kind) -> PrekeyIn | None:
    for _ in range(_CLAIM_RETRIES):
        oldest = (
            select(Prekey.id)
            .where(Prekey.device_id == device_id, Prekey.kind == int(kind))
            .order_by(Prekey.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        taken = (
            await session.execute(
                delete(Prekey)
                .where(Prekey.id == oldest)
                .returning(Prekey.kind, Prekey.key_id, Prekey.public_key, Prekey.signature, Prekey.signed_at)
                .execution_options(synchronize_session=False)
            )
        ).first()
        if taken is not None:
            return PrekeyIn(Kind(taken[0]), taken[1], taken[2], taken[3], taken[4])
        left = await session.scalar(
            select(func.count()).where(Prekey.device_id == device_id, Prekey.kind == int(kind))
        )
        if not left:
            return None
    return None  # every remaining row was being claimed by someone else: serve without one


async def claim(session: AsyncSession, device_id: str, *, one_time: bool = True) -> ClaimedBundle:
    """The device's current signed key, a one-time KEM key (else the last-resort one) and a one-time
    curve key if any is left; the one-time keys are deleted as they are handed out. The caller
    commits: the deletion and the answer belong to one transaction. `one_time=False` hands out no
    one-time key at all (signed and last-resort keys only): for a claimer past its quota."""
    signed = await _current(session, device_id, Kind.SIGNED)
    last_resort = await _current(session, device_id, Kind.KEM_LAST_RESORT)
    if signed is None or last_resort is None:
        raise NotFound(f"device {device_id} has not published its prekeys")
    if not one_time:
        return ClaimedBundle(device_id, signed, last_resort, None)
    kem = await _take_one_time(session, device_id, Kind.KEM_ONE_TIME) or last_resort
    curve = await _take_one_time(session, device_id, Kind.ONE_TIME)
    return ClaimedBundle(device_id, signed, kem, curve)
