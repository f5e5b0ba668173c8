"""store.groups and the group side of store.mailbox on a migrated SQLite file and on PostgreSQL:
roles and their rules, the guarded record chain, 1,000-member groups, and a group message stored
once with a row per device."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from store import groups, mailbox, migrate
from store.db import create_engine, session_factory
from store.mailbox import MailboxWriter, NewMessage
from store.models import Contact, Device, MailboxBody, MailboxEntry, User

PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"
USERS = 1001  # user 1 and 1,000 contacts of theirs
LIMITS = {"max_members": 1000, "max_groups_per_user": 500}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    admin = None
    name = f"peerpost_groups_{secrets.token_hex(5)}"
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'g.db'}"
    else:
        try:
            admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
        except (OSError, asyncpg.PostgresError) as exc:
            pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_DSN} ({exc}); deselect -m 'not postgres'")
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    await migrate.upgrade(url)
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.execute(
            insert(User),
            [
                {"username": f"user{i}", "email": f"u{i}@example.org", "password_hash": b"x"}
                for i in range(USERS)
            ],
        )
        contacts = [
            {"owner_id": a, "friend_id": b, "status": "accepted"}
            for i in range(2, USERS + 1)
            for a, b in ((1, i), (i, 1))
        ]
        await conn.execute(insert(Contact), contacts)
        await conn.execute(
            insert(Device),
            [
                {
                    "user_id": u,
                    "device_id": f"dev-{u:04d}-{k}",
                    "identity_key": b"k",
                    "encryption_key": b"e",
                    "signature": b"s",
                    "signed_at": 0,
                }
                for u in range(1, 7)
                for k in (0, 1)
            ],
        )
    yield engine
    await engine.dispose()
    if admin is not None:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


GID = "ab" * 16


async def _create(engine: AsyncEngine, members: list[int], gid: str = GID) -> groups.GroupView:
    async with session_factory(engine)() as session:
        view = await groups.create(session, 1, gid, "climbing", members, b"record-0", **LIMITS)
        await session.commit()
        return view


async def test_the_creator_is_admin_and_members_list_in_joining_order_a_page_at_a_time(engine) -> None:
    view = await _create(engine, [3, 2, 4])
    assert (view.role, view.member_count, view.version) == ("admin", 4, 1)
    async with session_factory(engine)() as session:
        first = await groups.members(session, GID, 2, skip=0, limit=2)
        rest = await groups.members(session, GID, 2, skip=2, limit=2)
        assert [m.user_id for m in first + rest] == [1, 3, 2, 4]
        assert [m.role for m in first] == ["admin", "member"]
        with pytest.raises(groups.GroupNotFound):
            await groups.members(session, GID, 5)  # not a member: it does not exist for them


async def test_only_accepted_contacts_can_be_added_and_only_by_an_admin(engine) -> None:
    await _create(engine, [2])
    async with session_factory(engine)() as session:
        with pytest.raises(groups.NotGroupAdmin):
            await groups.add_members(session, GID, 2, [3], b"r", 1, **LIMITS)
        await session.rollback()
        async with engine.begin() as conn:
            await conn.execute(
                insert(User).values(username="stranger", email="s@example.org", password_hash=b"x")
            )
            stranger = (await conn.execute(select(User.id).where(User.username == "stranger"))).scalar_one()
        with pytest.raises(groups.NotYourContacts):
            await groups.add_members(session, GID, 1, [stranger], b"r", 1, **LIMITS)


async def test_records_append_only_at_the_version_they_were_signed_on(engine) -> None:
    await _create(engine, [2])
    async with session_factory(engine)() as session:
        await groups.add_members(session, GID, 1, [3], b"record-1", 1, **LIMITS)
        await session.commit()
        with pytest.raises(groups.StaleGroupVersion, match="has 2 membership records, not 1"):
            await groups.add_members(session, GID, 1, [4], b"record-1-again", 1, **LIMITS)
        await session.rollback()
        assert await groups.records(session, GID, 3) == [(0, b"record-0"), (1, b"record-1")]
        assert await groups.records(session, GID, 3, after=0) == [(1, b"record-1")]


async def test_the_last_admin_leaving_makes_the_oldest_member_admin(engine) -> None:
    await _create(engine, [3, 2])
    async with session_factory(engine)() as session:
        change = await groups.leave(session, GID, 1, b"leave", 1)
        await session.commit()
        assert change.promoted == [3]
        assert (await groups.get_for_member(session, GID, 3)).role == "admin"
        change = await groups.leave(session, GID, 2, b"leave", 2)
        await session.commit()
        assert change.promoted == [] and not change.deleted
        change = await groups.leave(session, GID, 3, b"leave", 3)
        await session.commit()
        assert change.deleted
        with pytest.raises(groups.GroupNotFound):
            await groups.get_for_member(session, GID, 3)


async def test_admins_remove_promote_and_rename_but_not_remove_themselves(engine) -> None:
    await _create(engine, [2, 3])
    async with session_factory(engine)() as session:
        with pytest.raises(groups.CannotRemoveSelf):
            await groups.remove_members(session, GID, 1, [1], b"r", 1)
        change = await groups.remove_members(session, GID, 1, [3], b"r1", 1)
        await session.commit()
        assert change.audience == [1, 2, 3]  # the removed member hears of it too
        await groups.promote(session, GID, 1, 2, b"r2", 2)
        await groups.rename(session, GID, 2, "bouldering", b"r3", 3)
        await session.commit()
        view = await groups.get_for_member(session, GID, 2)
        assert (view.role, view.name, view.member_count, view.version) == ("admin", "bouldering", 2, 4)
        async with engine.connect() as conn:
            assert not await groups.share_a_group(conn, 1, 3)
            assert await groups.share_a_group(conn, 1, 2)


async def test_a_group_of_a_thousand_members_works_and_the_next_one_is_refused(engine) -> None:
    view = await _create(engine, list(range(2, 1001)))
    assert view.member_count == 1000
    async with session_factory(engine)() as session:
        with pytest.raises(groups.GroupFull):
            await groups.add_members(session, GID, 1, [1001], b"r", 1, **LIMITS)
        page = await groups.members(session, GID, 500, skip=900, limit=500)
        assert len(page) == 100 and page[-1].user_id == 1000
    async with engine.connect() as conn:
        found = await groups.member_devices(conn, GID, 1)
        assert found is not None and len(found[1]) == 12  # users 1-6 have two devices each
        assert [g.public_id for g in await groups.summaries(conn, 1000)] == [GID]


async def test_a_group_message_is_stored_once_with_a_row_per_device_and_goes_with_its_last_ack(
    engine,
) -> None:
    view = await _create(engine, [2, 3, 4, 5, 6])
    writer = MailboxWriter(
        engine, retention=timedelta(days=1), device_quota_bytes=10**6, device_quota_messages=100
    )
    await writer.start()
    try:
        async with engine.connect() as conn:
            _, devices = await groups.member_devices(conn, GID, 1)  # type: ignore[misc]
        envelope = secrets.token_bytes(3000)
        async with engine.begin() as conn:
            body = await mailbox.store_body(conn, view.pk, envelope, datetime.now(UTC) + timedelta(days=1))
        mid = secrets.token_hex(16)
        rows = [
            NewMessage(u, d, 1, "dev-0001-0", mid, b"", body, len(envelope)) for u, d in devices if u != 1
        ]
        await writer.store(rows)
        async with engine.connect() as conn:
            assert await mailbox.body_bytes(conn) == (1, 3000)
            row_bytes = await conn.execute(select(func.sum(func.length(MailboxEntry.envelope))))
            assert row_bytes.scalar_one() == 0  # the rows hold no copy
            drained = await mailbox.fetch_after(conn, rows[0].recipient_device)
            assert [(r.envelope, r.group_id) for r in drained] == [(envelope, GID)]
            assert (await mailbox.usage(conn, [rows[0].recipient_device]))[rows[0].recipient_device] == (
                3000,
                1,
            )
        for row in rows[:-1]:
            await writer.ack(row.recipient_device, [mid])
        async with engine.begin() as conn:
            assert await mailbox.purge_bodies(conn) == 0  # one device still has it
        await writer.ack(rows[-1].recipient_device, [mid])
        async with engine.begin() as conn:
            assert await mailbox.purge_bodies(conn) == 1
            assert (await conn.execute(select(func.count()).select_from(MailboxBody))).scalar_one() == 0
    finally:
        await writer.close()
