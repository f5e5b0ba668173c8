"""The mailbox: ciphertext envelopes waiting for a device that was not there to take them.

Rules this module keeps, whoever calls it:
- a row is keyed by (recipient device, message id): storing the same message twice is a no-op;
- rows come out in the order they went in (by row id), per device;
- a row is deleted only when its device acknowledges it (or when it expires);
- a device's stored bytes never exceed its quota.

Writes go through one `MailboxWriter` per process: it batches the rows of many sends into one
transaction (group commit) and resolves each caller only after *its* batch has committed, so the
server can answer `accepted` without paying one commit per envelope. It never holds plaintext: the
envelope is opaque bytes to it.

A group message is stored once (`store_body`, a row of `mailbox_bodies`) and each recipient
device's row points at it (`NewMessage.body_id`, with an empty envelope of its own); the drain
reads the body through the row, and the body goes with its last row (or on expiry) in the purge.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from sqlalchemy import bindparam, case, delete, func, insert, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from store.errors import QuotaExceeded, StoreError
from store.models import Group, MailboxBody, MailboxEntry


class MailboxError(StoreError):
    """Base of the mailbox's own failures."""


class MailboxQuotaExceeded(MailboxError, QuotaExceeded):
    def __init__(self, device_id: str, used: int, quota: int, unit: str) -> None:
        super().__init__(
            f"the mailbox of device {device_id} is full ({used} of {quota} {unit} used); "
            "it must fetch and acknowledge its messages before more can be stored"
        )
        self.device_id = device_id
        self.used = used
        self.quota = quota


class MailboxClosed(MailboxError):
    def __init__(self) -> None:
        super().__init__("the mailbox writer is shut down")


@dataclass(frozen=True, slots=True)
class NewMessage:
    """One envelope for one recipient device, as the hub hands it over."""

    recipient_user: int
    recipient_device: str
    sender_user: int
    sender_device: str
    message_id: str
    envelope: bytes
    body_id: int | None = None  # a group message's shared body; `envelope` is then empty
    body_size: int = 0

    @property
    def size(self) -> int:
        """What the row costs its device's quota (a shared body counts for every device)."""
        return len(self.envelope) if self.body_id is None else self.body_size


@dataclass(frozen=True, slots=True)
class StoredMessage:
    seq: int
    message_id: str
    sender_user: int
    sender_device: str
    envelope: bytes
    queued_at: datetime
    group_id: str | None = None  # the group's public id, for a group message


T = TypeVar("T")


def _utcnow() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------------------------------
# Reads and single deletes: plain functions on a connection
# --------------------------------------------------------------------------------------------------


async def pending_count(conn: AsyncConnection, device_id: str, now: datetime | None = None) -> int:
    now = now or _utcnow()
    stmt = select(func.count()).where(
        MailboxEntry.recipient_device == device_id, MailboxEntry.expires_at > now
    )
    return int((await conn.execute(stmt)).scalar_one())


async def fetch_after(
    conn: AsyncConnection, device_id: str, after_seq: int = 0, limit: int = 200, now: datetime | None = None
) -> list[StoredMessage]:
    """The next `limit` rows of a device after `after_seq`, oldest first (the drain order)."""
    now = now or _utcnow()
    stmt = (
        select(
            MailboxEntry.id,
            MailboxEntry.message_id,
            MailboxEntry.sender_user,
            MailboxEntry.sender_device,
            case((MailboxEntry.body_id.is_(None), MailboxEntry.envelope), else_=MailboxBody.envelope),
            MailboxEntry.created_at,
            Group.public_id,
        )
        .outerjoin(MailboxBody, MailboxBody.id == MailboxEntry.body_id)
        .outerjoin(Group, Group.id == MailboxBody.group_id)
        .where(
            MailboxEntry.recipient_device == device_id,
            MailboxEntry.id > after_seq,
            MailboxEntry.expires_at > now,
        )
        .order_by(MailboxEntry.id)
        .limit(limit)
    )
    rows = (await conn.execute(stmt)).all()
    return [StoredMessage(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in rows]


async def usage(conn: AsyncConnection, device_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """(stored bytes, stored rows) per device, zero for devices without rows."""
    if not device_ids:
        return {}
    stmt = (
        select(
            MailboxEntry.recipient_device,
            func.coalesce(func.sum(MailboxEntry.size), 0),
            func.count(),
        )
        .where(MailboxEntry.recipient_device.in_(list(device_ids)))
        .group_by(MailboxEntry.recipient_device)
    )
    found = {device: (int(size), int(rows)) for device, size, rows in (await conn.execute(stmt)).all()}
    return {device: found.get(device, (0, 0)) for device in device_ids}


async def delete_acked(conn: AsyncConnection, device_id: str, message_ids: Sequence[str]) -> int:
    if not message_ids:
        return 0
    stmt = delete(MailboxEntry).where(
        MailboxEntry.recipient_device == device_id, MailboxEntry.message_id.in_(list(message_ids))
    )
    return (await conn.execute(stmt)).rowcount or 0


async def purge_expired(conn: AsyncConnection, now: datetime | None = None) -> int:
    """Delete expired rows, and group bodies that expired or that no row points at any more."""
    now = now or _utcnow()
    stmt = delete(MailboxEntry).where(MailboxEntry.expires_at <= now)
    removed = (await conn.execute(stmt)).rowcount or 0
    await purge_bodies(conn, now)
    return removed


async def store_body(conn: AsyncConnection, group_pk: int, envelope: bytes, expires_at: datetime) -> int:
    """Store one group message's ciphertext once; its rows then name the returned id."""
    stmt = (
        insert(MailboxBody)
        .values(
            group_id=group_pk,
            envelope=envelope,
            size=len(envelope),
            created_at=_utcnow(),
            expires_at=expires_at,
        )
        .returning(MailboxBody.id)
    )
    return int((await conn.execute(stmt)).scalar_one())


async def purge_bodies(conn: AsyncConnection, now: datetime | None = None) -> int:
    """Bodies past expiry (their rows go with them) or acked by every device they were stored for."""
    now = now or _utcnow()
    referenced = select(MailboxEntry.body_id).where(MailboxEntry.body_id.is_not(None))
    stmt = delete(MailboxBody).where(or_(MailboxBody.expires_at <= now, MailboxBody.id.not_in(referenced)))
    return (await conn.execute(stmt)).rowcount or 0


async def body_bytes(conn: AsyncConnection) -> tuple[int, int]:
    """(group bodies stored, their total bytes): what the mailbox holds once for many devices."""
    stmt = select(func.count(), func.coalesce(func.sum(MailboxBody.size), 0)).select_from(MailboxBody)
    count, size = (await conn.execute(stmt)).one()
    return int(count), int(size)


async def count_all(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(MailboxEntry))).scalar_one())


# --------------------------------------------------------------------------------------------------
# Group commit
# --------------------------------------------------------------------------------------------------


_USAGE_RELOAD_AFTER_DELETE = 1.0  # seconds
_SQLITE_INSERT_ROWS = 1000  # 10 parameters a row, well under SQLite's 32766
_SQLITE_DELETE_ROWS = 4000
_SQLITE_INSERT = (
    "INSERT INTO mailbox (recipient_user, recipient_device, sender_user, sender_device, message_id,"
    " envelope, size, created_at, expires_at, body_id) VALUES {values}"
    " ON CONFLICT (recipient_device, message_id) DO NOTHING"
)
# The join walks the unique index for each pair; `(a, b) IN (VALUES ...)` would scan the table.
_SQLITE_DELETE = (
    "DELETE FROM mailbox WHERE id IN (SELECT m.id FROM (VALUES {values}) AS v"
    " JOIN mailbox AS m ON m.recipient_device = v.column1 AND m.message_id = v.column2)"
)


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _row(m: NewMessage, created: datetime, expires: datetime) -> dict[str, object]:
    return {
        "recipient_user": m.recipient_user,
        "recipient_device": m.recipient_device,
        "sender_user": m.sender_user,
        "sender_device": m.sender_device,
        "message_id": m.message_id,
        "envelope": m.envelope,
        "size": m.size,
        "created_at": created,
        "expires_at": expires,
        "body_id": m.body_id,
    }


@dataclass(slots=True)
class _Usage:
    size: int
    rows: int
    loaded: float


@dataclass(slots=True)
class _Job:
    messages: Sequence[NewMessage]
    acks: Sequence[tuple[str, str]]  # (device id, message id)
    done: asyncio.Future[None]


class MailboxWriter:
    """One writer task that turns many small stores and acks into few transactions.

    A caller's `store()` returns only after the transaction holding its rows has committed: that is
    the moment the hub may answer `accepted`. Whether a committed row survives a crash is the
    database's durability setting (see docs/hub.md: SQLite WAL keeps committed rows through SIGKILL
    with synchronous NORMAL or FULL).

    Quota bookkeeping is a per-process cache of bytes used per device, seeded from the database the
    first time a device is seen and refreshed after `quota_cache_ttl` seconds, so several server
    instances on one PostgreSQL can overshoot a quota by what the others wrote in that window.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        retention: timedelta,
        device_quota_bytes: int,
        device_quota_messages: int,
        max_batch: int = 8192,
        max_queue: int = 20_000,
        quota_cache_ttl: float = 60.0,
    ) -> None:
        self._engine = engine
        self._retention = retention
        self._quota_bytes = device_quota_bytes
        self._quota_rows = device_quota_messages
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle = asyncio.Event()  # set while the writer waits for work
        self._usage: dict[str, _Usage] = {}
        self._usage_ttl = quota_cache_ttl
        dialect = engine.dialect.name
        self._insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        self._sqlite = dialect == "sqlite"
        self._bind_time = MailboxEntry.__table__.c.created_at.type.bind_processor(engine.dialect) or (
            lambda value: value
        )
        self.batches = 0
        self.rows_written = 0
        self.rows_cancelled = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="mailbox-writer")

    async def close(self, deadline: float = 5.0) -> None:
        """Commit what is already queued (for at most `deadline` seconds), then stop.

        Jobs that do not make it hear MailboxClosed: their senders never got `accepted`.
        """
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True
            if self._idle.is_set() and self._queue.empty():
                task.cancel()  # waiting for work: nothing to finish
            else:
                finished, _ = await asyncio.wait({task}, timeout=deadline)
                if not finished:
                    task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.done.done():
                job.done.set_exception(MailboxClosed())

    async def store(self, messages: Sequence[NewMessage]) -> None:
        """Returns when every row is committed; raises MailboxQuotaExceeded for a full device."""
        await (await self.submit_store(messages))

    async def ack(self, device_id: str, message_ids: Sequence[str]) -> None:
        """Returns when the rows are deleted (unknown ids are ignored: acks may repeat)."""
        await (await self.submit_ack(device_id, message_ids))

    async def submit_store(self, messages: Sequence[NewMessage]) -> asyncio.Future[None]:
        """Queue rows and return at once with the future of their commit (for pipelining callers)."""
        return await self._submit(self._job(messages, ()))

    async def submit_ack(self, device_id: str, message_ids: Sequence[str]) -> asyncio.Future[None]:
        return await self._submit(self._job((), [(device_id, m) for m in message_ids]))

    def forget_usage(self) -> None:
        """Drop the quota cache (after a purge or an account deletion changed the table)."""
        self._usage.clear()

    def _job(self, messages: Sequence[NewMessage], acks: Sequence[tuple[str, str]]) -> _Job:
        if self._task is None or self._stopping or self._loop is None:
            raise MailboxClosed()
        return _Job(messages, acks, self._loop.create_future())

    async def _submit(self, job: _Job) -> asyncio.Future[None]:
        await self._queue.put(job)  # waits only when the writer is max_queue jobs behind
        return job.done

    async def _run(self) -> None:
        while True:
            if self._stopping and self._queue.empty():
                return
            self._idle.set()
            batch = [await self._queue.get()]
            self._idle.clear()
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._commit(batch)
            except asyncio.CancelledError:
                for job in batch:
                    if not job.done.done():
                        job.done.set_exception(MailboxClosed())
                raise
            except Exception as exc:  # the whole batch failed: every caller hears it
                self._usage.clear()
                for job in batch:
                    if not job.done.done():
                        job.done.set_exception(MailboxError(f"storing messages failed: {exc}"))

    async def _commit(self, batch: list[_Job]) -> None:
        now = _utcnow()
        expires = now + self._retention
        accepted: list[_Job] = []
        pending_usage: dict[str, list[int]] = {}
        async with self._engine.begin() as conn:
            await self._load_usage(conn, batch)
            inserts: dict[tuple[str, str], NewMessage] = {}
            for job in batch:
                verdict = self._check_quota(job, pending_usage)
                if verdict is not None:
                    job.done.set_exception(verdict)
                    continue
                accepted.append(job)
                for m in job.messages:
                    inserts.setdefault((m.recipient_device, m.message_id), m)
            acks = [pair for job in accepted for pair in job.acks]
            # A row acked in the very batch that inserts it was pushed live and saved by its device
            # already: neither the insert nor the delete needs to reach the database.
            deletes = [pair for pair in acks if inserts.pop(pair, None) is None]
            if self._sqlite:
                await self._sqlite_apply(conn, list(inserts.values()), deletes, now, expires)
            else:
                if inserts:
                    stmt = self._insert(MailboxEntry).on_conflict_do_nothing(
                        index_elements=["recipient_device", "message_id"]
                    )
                    await conn.execute(stmt, [_row(m, now, expires) for m in inserts.values()])
                if deletes:
                    # executemany of single-row deletes: each one walks the unique index
                    await conn.execute(
                        delete(MailboxEntry).where(
                            MailboxEntry.recipient_device == bindparam("device"),
                            MailboxEntry.message_id == bindparam("mid"),
                        ),
                        [{"device": d, "mid": m} for d, m in deletes],
                    )
        # Committed: only now do the callers hear success, and the quota cache move. Only rows that
        # were written count; a device with deleted rows is re-read, at most once a second (under
        # live traffic every batch has acks, and a SUM over the device's rows per batch is waste).
        stamp = time.monotonic()
        for m in inserts.values():
            known = self._usage.get(m.recipient_device)
            if known is not None:
                known.size += m.size
                known.rows += 1
        for device in {d for d, _ in deletes}:
            known = self._usage.get(device)
            if known is not None:
                known.loaded = min(known.loaded, stamp - self._usage_ttl + _USAGE_RELOAD_AFTER_DELETE)
        self.batches += 1
        self.rows_written += len(inserts)
        self.rows_cancelled += len(acks) - len(deletes)
        for job in accepted:
            if not job.done.done():
                job.done.set_result(None)

    async def _sqlite_apply(
        self,
        conn: AsyncConnection,
        inserts: list[NewMessage],
        deletes: list[tuple[str, str]],
        now: datetime,
        expires: datetime,
    ) -> None:
        """A batch as a few multi-row statements instead of one statement per row.

        Why: sqlite3's executemany releases and re-takes the GIL for every row, and each re-take
        waits for the busy event-loop thread; under load a 1000-row batch then took seconds.
        The datetimes go through the column type's own bind processor, so the stored text is
        exactly what SQLAlchemy writes and reads everywhere else.
        """
        created = self._bind_time(now)
        expiry = self._bind_time(expires)
        for chunk in _chunks(inserts, _SQLITE_INSERT_ROWS):
            params: list[object] = []
            for m in chunk:
                params += [
                    m.recipient_user,
                    m.recipient_device,
                    m.sender_user,
                    m.sender_device,
                    m.message_id,
                    m.envelope,
                    m.size,
                    created,
                    expiry,
                    m.body_id,
                ]
            values = ",".join(["(?,?,?,?,?,?,?,?,?,?)"] * len(chunk))
            await conn.exec_driver_sql(_SQLITE_INSERT.format(values=values), tuple(params))
        for pairs in _chunks(deletes, _SQLITE_DELETE_ROWS):
            values = ",".join(["(?,?)"] * len(pairs))
            flat = tuple(x for pair in pairs for x in pair)
            await conn.exec_driver_sql(_SQLITE_DELETE.format(values=values), flat)

    async def _load_usage(self, conn: AsyncConnection, batch: list[_Job]) -> None:
        stamp = time.monotonic()
        wanted = {m.recipient_device for job in batch for m in job.messages}
        stale = [d for d in wanted if d not in self._usage or stamp - self._usage[d].loaded > self._usage_ttl]
        if stale:
            for device, (size, rows) in (await usage(conn, stale)).items():
                self._usage[device] = _Usage(size, rows, stamp)

    def _check_quota(self, job: _Job, pending: dict[str, list[int]]) -> MailboxQuotaExceeded | None:
        extra: dict[str, list[int]] = {}
        for m in job.messages:
            entry = extra.setdefault(m.recipient_device, [0, 0])
            entry[0] += m.size
            entry[1] += 1
        for device, (size, rows) in extra.items():
            known = self._usage.get(device)
            before = pending.get(device, [0, 0])
            used_size = (known.size if known else 0) + before[0]
            used_rows = (known.rows if known else 0) + before[1]
            if used_size + size > self._quota_bytes:
                return MailboxQuotaExceeded(device, used_size, self._quota_bytes, "bytes")
            if used_rows + rows > self._quota_rows:
                return MailboxQuotaExceeded(device, used_rows, self._quota_rows, "messages")
        for device, (size, rows) in extra.items():
            entry = pending.setdefault(device, [0, 0])
            entry[0] += size
            entry[1] += rows
        return None
