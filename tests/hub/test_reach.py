"""signalling.reach on a real SQLite file and a real PostgreSQL database: the permission cache
refreshes ahead of expiry, a permission the database withdrew stops being used, a connecting
user's answers are warmed in one bounded query, and a co-member who blocked the sender is out of
reach; time is a clock the test moves."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import delete, event, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from signalling.errors import FrameRefused
from signalling.protocol import ErrorCode
from signalling.reach import Reach
from store.db import create_engine
from store.models import Base, Block, Contact, Device, Group, GroupMember, User

TTL = 10.0
ALICE, BOB, CAROL = 1, 2, 3
BOB_DEVICE = "bob-device-1"
CAROL_DEVICE = "carol-device-1"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """The same queries on both stores: the warm-up's union and exists must mean the same on each."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'r.db'}"
        return
    name = f"peerpost_reach_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(
            insert(User),
            [
                {"id": i, "username": f"user{i}", "email": f"u{i}@example.org", "password_hash": b"x"}
                for i in (ALICE, BOB, CAROL)
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


# -- warm on connect, and blocks in a shared group ---------------------------------------------------


async def _group_with_carol(engine: AsyncEngine) -> None:
    """Alice and carol share a group (they are not contacts); carol has one device."""
    async with engine.begin() as conn:
        await conn.execute(insert(Device), [_device(CAROL, CAROL_DEVICE)])
        await conn.execute(insert(Group), [{"id": 1, "public_id": "g1", "name": "g"}])
        await conn.execute(
            insert(GroupMember),
            [{"group_id": 1, "user_id": u, "role": "member"} for u in (ALICE, CAROL)],
        )


def _device(user_id: int, device_id: str) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "device_id": device_id,
        "identity_key": b"k",
        "encryption_key": b"e",
        "signature": b"s",
        "signed_at": 0,
    }


async def _forget_everything(engine: AsyncEngine) -> None:
    """The database withdraws every permission: what is still allowed came from the cache."""
    async with engine.begin() as conn:
        await conn.execute(delete(Contact))
        await conn.execute(delete(GroupMember))


class Statements:
    """Counts the SQL statements the engine runs."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.count = 0
        event.listen(engine.sync_engine, "before_cursor_execute", self._one)

    def _one(self, *_: Any) -> None:
        self.count += 1


async def test_a_connecting_user_is_warmed_in_one_query_and_its_first_sends_ask_nothing(
    engine: AsyncEngine,
) -> None:
    await _group_with_carol(engine)
    clock = Clock()
    reach = Reach(engine, TTL, clock)
    statements = Statements(engine)
    reach.warm(ALICE)
    await reach.settle()
    assert statements.count == 1
    await reach.check(ALICE, BOB, BOB_DEVICE)  # a contact's device
    await reach.check(ALICE, CAROL, CAROL_DEVICE)  # a co-member's device
    assert statements.count == 1


async def test_warmed_answers_keep_the_ttl_promise(engine: AsyncEngine) -> None:
    await _group_with_carol(engine)
    clock = Clock()
    reach = Reach(engine, TTL, clock)
    reach.warm(ALICE)
    await reach.settle()
    await _forget_everything(engine)
    await reach.check(ALICE, CAROL, CAROL_DEVICE)  # inside the ttl: from the warm-up
    clock.now += TTL + 1
    with pytest.raises(FrameRefused) as refused:
        await reach.check(ALICE, CAROL, CAROL_DEVICE)
    assert refused.value.code == ErrorCode.NOT_A_CONTACT


async def test_a_send_during_the_warm_up_waits_for_it_instead_of_asking_again(engine: AsyncEngine) -> None:
    reach = Reach(engine, TTL, Clock())
    statements = Statements(engine)
    reach.warm(ALICE)
    await reach.check(ALICE, BOB, BOB_DEVICE)  # before the warm-up's task has even run
    assert statements.count == 1


async def test_the_warm_up_is_bounded_and_what_it_left_out_is_asked_in_line(engine: AsyncEngine) -> None:
    await _group_with_carol(engine)
    reach = Reach(engine, TTL, Clock(), warm_limit=1)
    reach.warm(ALICE)
    await reach.settle()
    await _forget_everything(engine)
    outcomes = []
    for user, device in ((BOB, BOB_DEVICE), (CAROL, CAROL_DEVICE)):
        try:
            await reach.check(ALICE, user, device)
            outcomes.append("cached")
        except FrameRefused:
            outcomes.append("asked, refused")
    assert sorted(outcomes) == ["asked, refused", "cached"]


async def test_a_warm_up_under_way_when_the_cache_is_cleared_stores_nothing(engine: AsyncEngine) -> None:
    reach = Reach(engine, TTL, Clock())
    reach.warm(ALICE)
    reach.clear()  # e.g. alice was unfriended over REST while it ran
    await _forget_everything(engine)
    await reach.settle()
    with pytest.raises(FrameRefused):
        await reach.check(ALICE, BOB, BOB_DEVICE)


async def _carol_blocks_alice(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(insert(Block), [{"blocker_id": CAROL, "blocked_id": ALICE}])


async def test_a_co_member_who_blocked_the_sender_is_out_of_reach_as_if_it_had_no_device(
    engine: AsyncEngine,
) -> None:
    await _group_with_carol(engine)
    await _carol_blocks_alice(engine)
    reach = Reach(engine, TTL, Clock())
    reach.warm(ALICE)
    await reach.settle()
    with pytest.raises(FrameRefused) as refused:
        await reach.check(ALICE, CAROL, CAROL_DEVICE)
    assert (refused.value.code, refused.value.device_id) == (ErrorCode.UNKNOWN_DEVICE, CAROL_DEVICE)
    await reach.check(ALICE, BOB, BOB_DEVICE)  # others are untouched


async def test_a_block_made_after_the_warm_up_takes_effect_within_the_ttl(engine: AsyncEngine) -> None:
    await _group_with_carol(engine)
    clock = Clock()
    reach = Reach(engine, TTL, clock)
    reach.warm(ALICE)
    await reach.settle()
    await _carol_blocks_alice(engine)  # without the REST route's clear(): only the ttl is left
    clock.now += TTL * 0.6
    await reach.check(ALICE, CAROL, CAROL_DEVICE)  # inside the ttl; the refresh starts behind it
    await reach.settle()
    with pytest.raises(FrameRefused) as refused:
        await reach.check(ALICE, CAROL, CAROL_DEVICE)
    assert refused.value.code == ErrorCode.UNKNOWN_DEVICE
