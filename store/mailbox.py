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
from typing import Any, TypeVar

from sqlalchemy import bindparam, case, delete, func, insert, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from store.disk import DiskGuard
from store.errors import QuotaExceeded, StoreError
from store.models import Blob, Group, MailboxBody, MailboxEntry


class MailboxError(StoreError):
    """Base of the mailbox's own failures."""


class MailboxQuotaExceeded(MailboxError, QuotaExceeded):
    def __init__(self, device_id: str, used: int, quota: int, unit: str, message: str | None = None) -> None:
        super().__init__(
            message
            or f"the mailbox of device {device_id} is full ({used} of {quota} {unit} used); "
            "it must fetch and acknowledge its messages before more can be stored"
        )
        self.device_id = device_id
        self.used = used
        self.quota = quota


class SenderShareExceeded(MailboxQuotaExceeded):
    """One sender may fill only its share of another user's device mailbox (the rest stays free
    for everyone else who writes to that device)."""

    def __init__(self, device_id: str, used: int, quota: int, unit: str) -> None:
        super().__init__(
            device_id,
            used,
            quota,
            unit,
            f"your share of the mailbox of device {device_id} is full ({used} of {quota} {unit} from you "
            "are waiting there); more can be stored once it fetches them",
        )


class AccountQuotaExceeded(MailboxQuotaExceeded):
    """What one account may make the server keep: its queued envelopes (to anyone) plus its blobs."""

    def __init__(self, used: int, quota: int) -> None:
        super().__init__(
            "",
            used,
            quota,
            "bytes",
            f"your account's storage is full ({used} of {quota} bytes: envelopes you sent that are not "
            "fetched yet, and your files); wait for them to be fetched or delete files",
        )


class DuplicateMessageId(MailboxError):
    """Another sender already used this message id for this device: refused, never dropped."""

    def __init__(self, device_id: str, message_id: str) -> None:
        super().__init__(
            f"message id {message_id} is already used by another sender for device {device_id}; "
            "send it again with a new message id"
        )
        self.device_id = device_id
        self.message_id = message_id


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
    ttl_s: int | None = None  # the sender asked for a shorter life than the retention (disappearing)

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


async def usage_by_sender(
    conn: AsyncConnection, device_ids: Sequence[str]
) -> dict[str, dict[int, tuple[int, int]]]:
    """Per device: (stored bytes, stored rows) for each sender with rows there."""
    found: dict[str, dict[int, tuple[int, int]]] = {device: {} for device in device_ids}
    if not device_ids:
        return found
    stmt = (
        select(
            MailboxEntry.recipient_device,
            MailboxEntry.sender_user,
            func.coalesce(func.sum(MailboxEntry.size), 0),
            func.count(),
        )
        .where(MailboxEntry.recipient_device.in_(list(device_ids)))
        .group_by(MailboxEntry.recipient_device, MailboxEntry.sender_user)
    )
    for device, sender, size, rows in (await conn.execute(stmt)).all():
        found[device][int(sender)] = (int(size), int(rows))
    return found


async def stored_by_account(conn: AsyncConnection, user_ids: Sequence[int]) -> dict[int, int]:
    """Bytes each account makes the server keep: envelopes it sent, not yet fetched, plus its blobs."""
    totals = dict.fromkeys(user_ids, 0)
    if not user_ids:
        return totals
    for model, column in ((MailboxEntry, MailboxEntry.sender_user), (Blob, Blob.owner_id)):
        stmt = (
            select(column, func.coalesce(func.sum(model.size), 0))
            .where(column.in_(list(user_ids)))
            .group_by(column)
        )
        for user, size in (await conn.execute(stmt)).all():
            totals[int(user)] += int(size)
    return totals


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
_ACCOUNT_USAGE_TTL = 2.0  # seconds: acks do not say whose rows they delete, so re-read often
_SQLITE_INSERT_ROWS = 1000  # 10 parameters a row, well under SQLite's 32766
_SQLITE_DELETE_ROWS = 4000
_SQLITE_INSERT = (
    "INSERT INTO mailbox (recipient_user, recipient_device, sender_user, sender_device, message_id,"
    " envelope, size, created_at, expires_at, body_id) VALUES {values}"
    " ON CONFLICT (recipient_device, message_id) DO NOTHING RETURNING recipient_device, message_id"
)
# The join walks the unique index for each pair; `(a, b) IN (VALUES ...)` would scan the table.
_SQLITE_DELETE = (
    "DELETE FROM mailbox WHERE id IN (SELECT m.id FROM (VALUES {values}) AS v"
    " JOIN mailbox AS m ON m.recipient_device = v.column1 AND m.message_id = v.column2)"
)


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _expiry(m: NewMessage, created: datetime, retention_end: datetime) -> datetime:
    """The row's end: the retention, or sooner when its sender asked (a disappearing message)."""
    if m.ttl_s is None:
        return retention_end
    return min(retention_end, created + timedelta(seconds=m.ttl_s))


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
        "expires_at": _expiry(m, created, expires),
        "body_id": m.body_id,
    }


@dataclass(slots=True)
class _Usage:
    size: int
    rows: int
    loaded: float
    by_sender: dict[int, list[int]]  # sender user -> [bytes, rows] in this device's mailbox


@dataclass(slots=True)
class _Stored:
    size: int
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

    Quotas (docs/server.md "Quotas"), checked per job before its rows are written:
    - per device: `device_quota_bytes` / `device_quota_messages`;
    - per sender in another user's device: `sender_share` of those, so one contact can fill only
      its own share and the device's other correspondents still get through;
    - per account: what an account's sends keep stored anywhere, plus its blobs, within
      `account_quota_bytes`;
    - the disk: nothing new while the `DiskGuard` says the disk is nearly full.
    A job refused by a quota fails alone; a batch that fails in the database is retried job by job,
    so one bad job (say, a device deleted a moment ago) refuses only itself.

    Quota bookkeeping is a per-process cache, seeded from the database the first time a device or
    account is seen and refreshed after `quota_cache_ttl` seconds (accounts every few seconds),
    so several server instances on one PostgreSQL can overshoot a quota by what the others wrote
    in that window.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        retention: timedelta,
        device_quota_bytes: int,
        device_quota_messages: int,
        sender_share: float = 1.0,
        account_quota_bytes: int | None = None,
        disk: DiskGuard | None = None,
        max_batch: int = 8192,
        max_queue: int = 20_000,
        quota_cache_ttl: float = 60.0,
    ) -> None:
        self._engine = engine
        self._retention = retention
        self._quota_bytes = device_quota_bytes
        self._quota_rows = device_quota_messages
        self._share_bytes = max(1, int(device_quota_bytes * sender_share))
        self._share_rows = max(1, int(device_quota_messages * sender_share))
        self._account_quota = account_quota_bytes
        self._disk = disk
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle = asyncio.Event()  # set while the writer waits for work
        self._usage: dict[str, _Usage] = {}
        self._stored: dict[int, _Stored] = {}  # account -> bytes it keeps stored (sent + blobs)
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
        self.batches_retried = 0

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
        self._stored.clear()

    def precheck(
        self, sender_user: int, recipients: Sequence[tuple[int, str]], size: int
    ) -> QuotaExceeded | None:
        """The refusal an envelope of `size` bytes from `sender_user` to these (user, device)
        recipients would meet by what is known now, without the database: the hub asks before it
        pushes a send live, so a refused send is not delivered either. (The commit checks again.)"""
        rows = [(user, device, sender_user, size) for user, device in recipients]
        return self._check_sizes(rows, {}, {}, {}, record=False)

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
            except Exception as exc:
                self._usage.clear()
                self._stored.clear()
                await self._retry_one_by_one(batch, exc)

    async def _retry_one_by_one(self, batch: list[_Job], exc: Exception) -> None:
        """The batch failed as a whole: try each job alone, so only the bad ones hear of it."""
        waiting = [job for job in batch if not job.done.done()]
        if len(waiting) == 1:
            waiting[0].done.set_exception(MailboxError(f"storing messages failed: {_reason(exc)}"))
            return
        self.batches_retried += 1
        for job in waiting:
            try:
                await self._commit([job])
            except asyncio.CancelledError:
                if not job.done.done():
                    job.done.set_exception(MailboxClosed())
                raise
            except Exception as alone:
                self._usage.clear()
                self._stored.clear()
                if not job.done.done():
                    job.done.set_exception(MailboxError(f"storing messages failed: {_reason(alone)}"))

    async def _commit(self, batch: list[_Job]) -> None:
        now = _utcnow()
        expires = now + self._retention
        accepted: list[_Job] = []
        pending: dict[str, list[int]] = {}
        pending_pairs: dict[tuple[str, int], list[int]] = {}
        pending_accounts: dict[int, int] = {}
        refused: list[tuple[_Job, MailboxError | QuotaExceeded]] = []
        async with self._engine.begin() as conn:
            await self._load_usage(conn, batch)
            inserts: dict[tuple[str, str], NewMessage] = {}
            owner: dict[tuple[str, str], _Job] = {}
            for job in batch:
                clash = next(
                    (
                        m
                        for m in job.messages
                        if (m.recipient_device, m.message_id) in inserts
                        and inserts[(m.recipient_device, m.message_id)].sender_device != m.sender_device
                    ),
                    None,
                )
                if clash is not None:
                    job.done.set_exception(DuplicateMessageId(clash.recipient_device, clash.message_id))
                    continue
                verdict = self._check_quota(job, pending, pending_pairs, pending_accounts)
                if verdict is not None:
                    job.done.set_exception(verdict)
                    continue
                accepted.append(job)
                for m in job.messages:
                    key = (m.recipient_device, m.message_id)
                    if key not in inserts:
                        inserts[key] = m
                        owner[key] = job
            acks = [pair for job in accepted for pair in job.acks]
            # A row acked in the very batch that inserts it was pushed live and saved by its device
            # already: neither the insert nor the delete needs to reach the database.
            deletes = [pair for pair in acks if inserts.pop(pair, None) is None]
            if self._sqlite:
                written = await self._sqlite_apply(conn, list(inserts.values()), deletes, now, expires)
            else:
                written = await self._generic_apply(conn, list(inserts.values()), deletes, now, expires)
            # Rows not written hit an existing row: a resend of the same sender (idempotent), or
            # another sender's message under the same id, which is refused, not silently dropped.
            clashes = await self._foreign_clashes(
                conn, {k: m for k, m in inserts.items() if k not in written}
            )
            for key in clashes:
                job = owner[key]
                if job.done.done():
                    continue
                refused.append((job, DuplicateMessageId(*key)))
                job.done.set_exception(refused[-1][1])
            if refused:
                bad = {id(job) for job, _ in refused}
                undo = [k for k in written if id(owner[k]) in bad]
                if undo:
                    await self._delete_pairs(conn, undo)
                    written -= set(undo)
                accepted = [job for job in accepted if id(job) not in bad]
        # Committed: only now do the callers hear success, and the quota cache move. Only rows that
        # were written count; a device with deleted rows is re-read, at most once a second (under
        # live traffic every batch has acks, and a SUM over the device's rows per batch is waste).
        stamp = time.monotonic()
        for key in written:
            m = inserts[key]
            size = m.size
            known = self._usage.get(m.recipient_device)
            if known is not None:
                known.size += size
                known.rows += 1
                pair = known.by_sender.setdefault(m.sender_user, [0, 0])
                pair[0] += size
                pair[1] += 1
            stored = self._stored.get(m.sender_user)
            if stored is not None:
                stored.size += size
        for device in {d for d, _ in deletes}:
            known = self._usage.get(device)
            if known is not None:
                known.loaded = min(known.loaded, stamp - self._usage_ttl + _USAGE_RELOAD_AFTER_DELETE)
        self.batches += 1
        self.rows_written += len(written)
        self.rows_cancelled += len(acks) - len(deletes)
        for job in accepted:
            if not job.done.done():
                job.done.set_result(None)

    async def _generic_apply(
        self,
        conn: AsyncConnection,
        inserts: list[NewMessage],
        deletes: list[tuple[str, str]],
        now: datetime,
        expires: datetime,
    ) -> set[tuple[str, str]]:
        written: set[tuple[str, str]] = set()
        if inserts:
            stmt = (
                self._insert(MailboxEntry)
                .on_conflict_do_nothing(index_elements=["recipient_device", "message_id"])
                .returning(MailboxEntry.recipient_device, MailboxEntry.message_id)
            )
            result = await conn.execute(stmt, [_row(m, now, expires) for m in inserts])
            written = {(d, mid) for d, mid in result.all()}
        if deletes:
            await self._delete_pairs(conn, deletes)
        return written

    async def _delete_pairs(self, conn: AsyncConnection, pairs: Sequence[tuple[str, str]]) -> None:
        if self._sqlite:
            for chunk in _chunks(pairs, _SQLITE_DELETE_ROWS):
                values = ",".join(["(?,?)"] * len(chunk))
                flat = tuple(x for pair in chunk for x in pair)
                await conn.exec_driver_sql(_SQLITE_DELETE.format(values=values), flat)
            return
        # executemany of single-row deletes: each one walks the unique index
        await conn.execute(
            delete(MailboxEntry).where(
                MailboxEntry.recipient_device == bindparam("device"),
                MailboxEntry.message_id == bindparam("mid"),
            ),
            [{"device": d, "mid": m} for d, m in pairs],
        )

    async def _foreign_clashes(
        self, conn: AsyncConnection, missed: dict[tuple[str, str], NewMessage]
    ) -> list[tuple[str, str]]:
        """Of the rows that hit an existing row, those whose existing row is another sender's."""
        if not missed:
            return []
        stmt = select(
            MailboxEntry.recipient_device, MailboxEntry.message_id, MailboxEntry.sender_device
        ).where(
            MailboxEntry.recipient_device.in_({d for d, _ in missed}),
            MailboxEntry.message_id.in_({m for _, m in missed}),
        )
        clashes = []
        for device, mid, sender_device in (await conn.execute(stmt)).all():
            new = missed.get((device, mid))
            if new is not None and new.sender_device != sender_device:
                clashes.append((device, mid))
        return clashes

    async def _sqlite_apply(
        self,
        conn: AsyncConnection,
        inserts: list[NewMessage],
        deletes: list[tuple[str, str]],
        now: datetime,
        expires: datetime,
    ) -> set[tuple[str, str]]:
        """A batch as a few multi-row statements instead of one statement per row; returns the
        (device, message id) of the rows actually inserted.

        Why: sqlite3's executemany releases and re-takes the GIL for every row, and each re-take
        waits for the busy event-loop thread; under load a 1000-row batch then took seconds.
        The datetimes go through the column type's own bind processor, so the stored text is
        exactly what SQLAlchemy writes and reads everywhere else.
        """
        created = self._bind_time(now)
        expiry = self._bind_time(expires)
        written: set[tuple[str, str]] = set()
        sooner = {id(m): self._bind_time(_expiry(m, now, expires)) for m in inserts if m.ttl_s is not None}
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
                    sooner.get(id(m), expiry),
                    m.body_id,
                ]
            values = ",".join(["(?,?,?,?,?,?,?,?,?,?)"] * len(chunk))
            result = await conn.exec_driver_sql(_SQLITE_INSERT.format(values=values), tuple(params))
            inserted: list[Any] = list(result.all())  # RETURNING recipient_device, message_id
            written.update((str(row[0]), str(row[1])) for row in inserted)
        if deletes:
            await self._delete_pairs(conn, deletes)
        return written

    async def _load_usage(self, conn: AsyncConnection, batch: list[_Job]) -> None:
        stamp = time.monotonic()
        wanted = {m.recipient_device for job in batch for m in job.messages}
        stale = [d for d in wanted if d not in self._usage or stamp - self._usage[d].loaded > self._usage_ttl]
        if stale:
            for device, senders in (await usage_by_sender(conn, stale)).items():
                by_sender = {sender: [size, rows] for sender, (size, rows) in senders.items()}
                size = sum(v[0] for v in by_sender.values())
                rows = sum(v[1] for v in by_sender.values())
                self._usage[device] = _Usage(size, rows, stamp, by_sender)
        if self._account_quota is None:
            return
        sender_ids = {m.sender_user for job in batch for m in job.messages}
        stale_accounts = [
            u
            for u in sender_ids
            if u not in self._stored or stamp - self._stored[u].loaded > _ACCOUNT_USAGE_TTL
        ]
        if stale_accounts:
            for user, size in (await stored_by_account(conn, stale_accounts)).items():
                self._stored[user] = _Stored(size, stamp)

    def _check_quota(
        self,
        job: _Job,
        pending: dict[str, list[int]],
        pending_pairs: dict[tuple[str, int], list[int]],
        pending_accounts: dict[int, int],
    ) -> QuotaExceeded | None:
        """The first quota this job would pass (counting what earlier jobs of the batch add), or
        None; when None, the job's rows are added to the pending counts."""
        rows = [(m.recipient_user, m.recipient_device, m.sender_user, m.size) for m in job.messages]
        return self._check_sizes(rows, pending, pending_pairs, pending_accounts)

    def _check_sizes(
        self,
        rows: Sequence[tuple[int, str, int, int]],  # (recipient user, recipient device, sender, bytes)
        pending: dict[str, list[int]],
        pending_pairs: dict[tuple[str, int], list[int]],
        pending_accounts: dict[int, int],
        *,
        record: bool = True,
    ) -> QuotaExceeded | None:
        """The first quota `rows` would pass, or None; `record` adds them to the pending counts
        (a batch being committed), off for the hub's precheck of every send (nothing to keep)."""
        if not rows:
            return None
        if self._disk is not None and (full := self._disk.refusal()) is not None:
            return full
        extra: dict[str, list[int]] = {}
        extra_pairs: dict[tuple[str, int], list[int]] = {}
        extra_accounts: dict[int, int] = {}
        for recipient_user, recipient_device, sender_user, size in rows:
            entry = extra.setdefault(recipient_device, [0, 0])
            entry[0] += size
            entry[1] += 1
            if sender_user != recipient_user:
                pair = extra_pairs.setdefault((recipient_device, sender_user), [0, 0])
                pair[0] += size
                pair[1] += 1
            extra_accounts[sender_user] = extra_accounts.get(sender_user, 0) + size
        for device, (size, n_rows) in extra.items():
            known = self._usage.get(device)
            before = pending.get(device, [0, 0])
            used_size = (known.size if known else 0) + before[0]
            used_rows = (known.rows if known else 0) + before[1]
            if used_size + size > self._quota_bytes:
                return MailboxQuotaExceeded(device, used_size, self._quota_bytes, "bytes")
            if used_rows + n_rows > self._quota_rows:
                return MailboxQuotaExceeded(device, used_rows, self._quota_rows, "messages")
        for (device, sender), (size, n_rows) in extra_pairs.items():
            known = self._usage.get(device)
            mine = known.by_sender.get(sender, [0, 0]) if known else [0, 0]
            before = pending_pairs.get((device, sender), [0, 0])
            if mine[0] + before[0] + size > self._share_bytes:
                return SenderShareExceeded(device, mine[0] + before[0], self._share_bytes, "bytes")
            if mine[1] + before[1] + n_rows > self._share_rows:
                return SenderShareExceeded(device, mine[1] + before[1], self._share_rows, "messages")
        if self._account_quota is not None:
            for user, size in extra_accounts.items():
                stored = self._stored.get(user)
                used = (stored.size if stored else 0) + pending_accounts.get(user, 0)
                if used + size > self._account_quota:
                    return AccountQuotaExceeded(used, self._account_quota)
        if not record:
            return None
        for device, (size, n_rows) in extra.items():
            entry = pending.setdefault(device, [0, 0])
            entry[0] += size
            entry[1] += n_rows
        for key, (size, n_rows) in extra_pairs.items():
            entry = pending_pairs.setdefault(key, [0, 0])
            entry[0] += size
            entry[1] += n_rows
        for user, size in extra_accounts.items():
            pending_accounts[user] = pending_accounts.get(user, 0) + size
        return None


def _reason(exc: BaseException) -> str:
    """What went wrong, for the caller and the log: the driver's words, never the statement's
    parameters (the engine hides them too; this keeps a long SQL text out as well)."""
    orig = getattr(exc, "orig", None)
    return f"{type(orig or exc).__name__}: {orig if orig is not None else exc}"[:300]
