"""signalling.reach on a real SQLite file: the permission cache refreshes ahead of expiry, and a
permission the database withdrew stops being used; time is a clock the test moves."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from signalling.errors import FrameRefused
from signalling.protocol import ErrorCode
from signalling.reach import Reach
from store.db import create_engine
from store.models import Base, Contact, Device, User

TTL = 10.0
ALICE, BOB = 1, 2
BOB_DEVICE = "bob-device-1"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'r.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(
            insert(User),
            [
                {"id": i, "username": f"user{i}", "email": f"u{i}@example.org", "password_hash": b"x"}
                for i in (ALICE, BOB)
            ],
        )
        await conn.execute(
            insert(Device),
            [
                {
                    "user_id": BOB,
                    "device_id": BOB_DEVICE,
                    "identity_key": b"k",
                    "encryption_key": b"e",
                    "signature": b"s",
                    "signed_at": 0,
                }
            ],
        )
        await conn.execute(insert(Contact), [{"owner_id": ALICE, "friend_id": BOB, "status": "accepted"}])
    yield engine
    await engine.dispose()


async def _unfriend(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(delete(Contact))


async def test_a_withdrawn_contact_is_dropped_by_the_refresh_begun_in_the_second_half_of_its_life(
    engine: AsyncEngine,
) -> None:
    clock = Clock()
    reach = Reach(engine, TTL, clock)
    await reach.check(ALICE, BOB, BOB_DEVICE)  # asked in line, kept
    await _unfriend(engine)
    clock.now += TTL * 0.6
    await reach.check(ALICE, BOB, BOB_DEVICE)  # still inside its ttl: used, and re-read behind it
    await reach.settle()
    with pytest.raises(FrameRefused) as refused:
        await reach.check(ALICE, BOB, BOB_DEVICE)  # same moment: the refresh already dropped it
    assert refused.value.code == ErrorCode.NOT_A_CONTACT


async def test_a_confirmed_answer_is_renewed_so_a_busy_sender_never_waits_for_expiry(
    engine: AsyncEngine,
) -> None:
    clock = Clock()
    reach = Reach(engine, TTL, clock)
    await reach.check(ALICE, BOB, BOB_DEVICE)
    for _ in range(5):  # 5 x 0.6 ttl: far past the first answer's life
        clock.now += TTL * 0.6
        await reach.check(ALICE, BOB, BOB_DEVICE)
        await reach.settle()
    await _unfriend(engine)
    await reach.check(ALICE, BOB, BOB_DEVICE)  # renewed by the last refresh: still cached ...
    clock.now += TTL + 1
    with pytest.raises(FrameRefused):  # ... but never past ttl from the database's last yes
        await reach.check(ALICE, BOB, BOB_DEVICE)


async def test_a_refresh_under_way_when_the_cache_is_cleared_does_not_bring_the_answer_back(
    engine: AsyncEngine,
) -> None:
    clock = Clock()
    reach = Reach(engine, TTL, clock)
    await reach.check(ALICE, BOB, BOB_DEVICE)
    clock.now += TTL * 0.6
    await reach.check(ALICE, BOB, BOB_DEVICE)  # starts the refreshes
    reach.clear()  # e.g. the contact was removed over REST while they ran
    await _unfriend(engine)
    await reach.settle()
    with pytest.raises(FrameRefused):
        await reach.check(ALICE, BOB, BOB_DEVICE)
