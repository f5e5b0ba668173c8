"""store.mailbox on a real SQLite file: group commit, idempotency, order, acks, quotas, expiry."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from store import mailbox
from store.db import create_engine
from store.mailbox import MailboxQuotaExceeded, MailboxWriter, NewMessage
from store.models import Base, User


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'm.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(
            insert(User),
            [
                {"id": i, "username": f"user{i}", "email": f"u{i}@example.org", "password_hash": b"x"}
                for i in (1, 2)
            ],
        )
    yield engine
    await engine.dispose()


def _message(mid: str | None = None, device: str = "bob-device-1", size: int = 100) -> NewMessage:
    return NewMessage(2, device, 1, "alice-device-1", mid or secrets.token_hex(16), secrets.token_bytes(size))


async def _writer(engine: AsyncEngine, **kw) -> MailboxWriter:
    options = {"retention": timedelta(days=1), "device_quota_bytes": 10**7, "device_quota_messages": 10**5}
    writer = MailboxWriter(engine, **{**options, **kw})
    await writer.start()
    return writer


async def test_concurrent_stores_are_group_committed_and_drain_in_order(engine: AsyncEngine) -> None:
    writer = await _writer(engine)
    messages = [_message() for _ in range(300)]
    futures = [await writer.submit_store([m]) for m in messages]
    await asyncio.gather(*futures)
    assert writer.batches < 300  # many sends shared a transaction
    async with engine.connect() as conn:
        rows = await mailbox.fetch_after(conn, "bob-device-1", 0, 1000)
        assert [r.message_id for r in rows] == [m.message_id for m in messages]
        assert [r.envelope for r in rows] == [m.envelope for m in messages]
        assert await mailbox.pending_count(conn, "bob-device-1") == 300
    await writer.close()


async def test_storing_a_message_twice_keeps_one_row_and_an_ack_deletes_it(engine: AsyncEngine) -> None:
    writer = await _writer(engine)
    m = _message()
    await writer.store([m])
    await writer.store([m])
    async with engine.connect() as conn:
        assert await mailbox.count_all(conn) == 1
    await writer.ack("bob-device-1", [m.message_id])
    await writer.ack("bob-device-1", [m.message_id])  # repeated acks are harmless
    async with engine.connect() as conn:
        assert await mailbox.count_all(conn) == 0
    await writer.close()


async def test_an_ack_in_the_same_batch_as_its_insert_touches_no_row(engine: AsyncEngine) -> None:
    writer = await _writer(engine)
    kept, acked = _message(), _message()
    futures = [
        await writer.submit_store([kept]),
        await writer.submit_store([acked]),
        await writer.submit_ack("bob-device-1", [acked.message_id]),
    ]
    await asyncio.gather(*futures)
    async with engine.connect() as conn:
        rows = await mailbox.fetch_after(conn, "bob-device-1")
    assert [r.message_id for r in rows] == [kept.message_id]
    assert writer.rows_cancelled == 1
    await writer.close()


async def test_a_full_device_is_refused_with_words_and_others_still_commit(engine: AsyncEngine) -> None:
    writer = await _writer(engine, device_quota_messages=2, device_quota_bytes=10_000)
    await writer.store([_message(), _message()])
    with pytest.raises(MailboxQuotaExceeded, match=r"full \(2 of 2 messages"):
        await writer.store([_message()])
    with pytest.raises(MailboxQuotaExceeded, match="bytes"):
        await writer.store([_message(device="carol-device", size=20_000)])
    await writer.store([_message(device="carol-device")])
    async with engine.connect() as conn:
        assert await mailbox.pending_count(conn, "bob-device-1") == 2
        assert await mailbox.pending_count(conn, "carol-device") == 1
    await writer.close()


async def test_expired_rows_are_not_drained_and_are_purged(engine: AsyncEngine) -> None:
    writer = await _writer(engine, retention=timedelta(seconds=-1))  # born expired
    await writer.store([_message()])
    async with engine.begin() as conn:
        assert await mailbox.fetch_after(conn, "bob-device-1") == []
        assert await mailbox.purge_expired(conn, datetime.now(UTC)) == 1
        assert await mailbox.count_all(conn) == 0
    await writer.close()


async def test_closing_commits_what_is_queued_and_refuses_what_comes_after(engine: AsyncEngine) -> None:
    writer = await _writer(engine)
    futures = [await writer.submit_store([_message()]) for _ in range(50)]
    await writer.close()
    await asyncio.gather(*futures)  # every queued job committed, none was dropped
    async with engine.connect() as conn:
        assert await mailbox.count_all(conn) == 50
    with pytest.raises(mailbox.MailboxClosed):
        await writer.store([_message()])


async def test_a_disappearing_message_expires_when_its_sender_asked_not_at_the_retention(
    engine: AsyncEngine,
) -> None:
    writer = await _writer(engine)
    kept = _message()
    short = NewMessage(2, "bob-device-1", 1, "alice-device-1", secrets.token_hex(16), b"x" * 50, ttl_s=60)
    capped = NewMessage(2, "bob-device-1", 1, "alice-device-1", secrets.token_hex(16), b"y" * 50, ttl_s=10**7)
    await writer.store([kept, short, capped])
    later = datetime.now(UTC) + timedelta(minutes=2)  # past the minute, well inside the day
    async with engine.connect() as conn:
        assert await mailbox.pending_count(conn, "bob-device-1") == 3
        assert await mailbox.pending_count(conn, "bob-device-1", now=later) == 2
    async with engine.begin() as conn:
        assert await mailbox.purge_expired(conn, now=later) == 1
    past_retention = datetime.now(UTC) + timedelta(days=2)
    async with engine.connect() as conn:  # a long timer never outlives the retention
        assert await mailbox.pending_count(conn, "bob-device-1", now=past_retention) == 0
        rows = await mailbox.fetch_after(conn, "bob-device-1", 0, 10)
        assert short.message_id not in [r.message_id for r in rows]
    await writer.close()
