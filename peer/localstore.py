"""The peer's own SQLite database (one per profile): history, contacts cache, pinned device keys,
seen message ids, outgoing deliveries, file transfers, and the pairwise-session tables (ratchet
state, own prekeys, sent copies for resending, heal requests: used by `peer.ratchetstore`).

Message bodies are sealed at rest with `crypto.atrest` under the keystore's storage key (the
message id as associated data, so rows cannot be swapped), so a copied profile without the
password reveals no history. Everything runs on one dedicated thread (sqlite3 objects stay on the
thread that made them; the event loop never blocks on disk).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from crypto.atrest import open_at_rest, seal_at_rest

T = TypeVar("T")

SCHEMA_VERSION = 1


# How long a received message id is remembered (de-duplication across paths and redeliveries):
# the server's mailbox keeps an unacknowledged copy at most its retention (30 days by default) from
# when it stored it, which is no earlier than the sender sent it, so every copy the server can
# redeliver arrives within the retention of the first; 2 days more for clocks and a sender's outbox
# that waited. Reasoning and what is left outside: docs/decisions-peer.md "The seen window".
SEEN_WINDOW_MS = 32 * 24 * 3600 * 1000


def add_column_if_missing(db: sqlite3.Connection, table: str, column: str, declaration: str) -> None:
    """Bring a table made by an older version up to date (SQLite adds a nullable column in place)."""
    if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
        db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


def expiry_of(db: sqlite3.Connection, message_id: str) -> int | None:
    """The message's disappearing deadline (ms; peer/disappearing.py), for an outbox row to keep:
    the message may be swept before the row is sent, the row's deadline must outlive it."""
    row = db.execute("SELECT expires_at_ms FROM expiries WHERE message_id = ?", (message_id,)).fetchone()
    return int(row[0]) if row else None


def seconds_left(expires_at_ms: int | None, at_ms: int) -> int | None:
    """A stored disappearing deadline as the `expires_in` to send now: None for no deadline, 0 when
    it has passed (the message ran out before the server could take it: nothing to send)."""
    if expires_at_ms is None:
        return None
    return max(0, -(-(expires_at_ms - at_ms) // 1000))


_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS messages (
    message_id TEXT PRIMARY KEY,
    conversation TEXT NOT NULL,
    sender_user INTEGER NOT NULL,
    sender_device TEXT NOT NULL,
    outgoing INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    body BLOB NOT NULL,
    sent_at_ms INTEGER NOT NULL,
    stored_at_ms INTEGER NOT NULL,
    path TEXT,
    state TEXT NOT NULL,
    reason TEXT
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages (conversation, sent_at_ms);
CREATE TABLE IF NOT EXISTS deliveries (
    message_id TEXT NOT NULL,
    user_id INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    path TEXT,
    state TEXT NOT NULL,
    PRIMARY KEY (message_id, device_id)
);
CREATE TABLE IF NOT EXISTS outbox (
    message_id TEXT PRIMARY KEY,
    envelope BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_at_ms INTEGER
);
CREATE TABLE IF NOT EXISTS seen (
    sender_device TEXT NOT NULL,
    message_id TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    PRIMARY KEY (sender_device, message_id)
);
CREATE INDEX IF NOT EXISTS seen_by_time ON seen (at_ms);
CREATE TABLE IF NOT EXISTS contacts (
    user_id INTEGER PRIMARY KEY,
    username TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS devices (
    user_id INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    identity_key BLOB NOT NULL,
    encryption_key BLOB NOT NULL,
    fingerprint TEXT NOT NULL,
    confirmed INTEGER NOT NULL DEFAULT 1,
    first_seen_ms INTEGER NOT NULL,
    offered_identity_key BLOB,
    offered_encryption_key BLOB,
    revoked INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, device_id)
);
CREATE TABLE IF NOT EXISTS verified_users (user_id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ratchet_sessions (
    peer_device TEXT NOT NULL,
    session_id BLOB NOT NULL,
    peer_user INTEGER NOT NULL,
    state BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    used_ms INTEGER NOT NULL,
    PRIMARY KEY (peer_device, session_id)
);
CREATE TABLE IF NOT EXISTS ratchet_active (
    peer_device TEXT PRIMARY KEY,
    session_id BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS own_prekeys (
    kind INTEGER NOT NULL,
    key_id INTEGER NOT NULL,
    record BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    published INTEGER NOT NULL DEFAULT 0,
    retired_ms INTEGER,
    PRIMARY KEY (kind, key_id)
);
CREATE TABLE IF NOT EXISTS ratchet_sent (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    peer_device TEXT NOT NULL,
    message_id TEXT NOT NULL,
    peer_user INTEGER NOT NULL,
    plaintext BLOB NOT NULL,
    created_ms INTEGER NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0,
    UNIQUE (peer_device, message_id)
);
CREATE TABLE IF NOT EXISTS ratchet_heal (
    peer_device TEXT PRIMARY KEY,
    session_id BLOB NOT NULL,
    requested_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS transfers (
    transfer_id TEXT PRIMARY KEY,
    outgoing INTEGER NOT NULL,
    conversation TEXT NOT NULL,
    manifest BLOB NOT NULL,
    local_path TEXT NOT NULL,
    next_index INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    blob_id TEXT,
    export_path TEXT
);
CREATE TABLE IF NOT EXISTS conversation_timers (
    conversation TEXT PRIMARY KEY,
    seconds INTEGER NOT NULL,
    set_by INTEGER NOT NULL,
    set_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS expiries (message_id TEXT PRIMARY KEY, expires_at_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS expiries_by_time ON expiries (expires_at_ms);
"""


# An incoming message counts as unread while it is "received" (not yet "read" on this device).
_SUMMARIES_SQL = (
    "SELECT m.conversation, "
    "(SELECT l.message_id FROM messages l WHERE l.conversation = m.conversation "
    "AND l.content_type IN ('text', 'file') ORDER BY l.sent_at_ms DESC, l.rowid DESC LIMIT 1), "
    "MAX(m.sent_at_ms), SUM(CASE WHEN outgoing = 0 AND state = 'received' THEN 1 ELSE 0 END) "
    "FROM messages m WHERE m.content_type IN ('text', 'file') "
    "GROUP BY m.conversation ORDER BY 3 DESC"
)
_UNREAD_SQL = (
    "SELECT COUNT(*) FROM messages WHERE conversation = ? "
    "AND outgoing = 0 AND state = 'received' AND content_type IN ('text', 'file')"
)


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class StoredMessage:
    message_id: str
    conversation: str
    sender_user: int
    sender_device: str
    outgoing: bool
    content_type: str
    payload: dict[str, Any]  # the decoded payload as plain data (see peer.views.payload_record)
    sent_at_ms: int
    stored_at_ms: int
    path: str | None
    state: str
    reason: str | None


@dataclass(frozen=True)
class PinnedDevice:
    user_id: int
    device_id: str
    identity_key: bytes
    encryption_key: bytes
    fingerprint: str
    confirmed: bool
    revoked: bool
    offered_identity_key: bytes | None  # a different key the server offered for this device id


@dataclass(frozen=True)
class TransferRecord:
    transfer_id: str
    outgoing: bool
    conversation: str
    manifest: dict[str, Any]
    local_path: str
    next_index: int
    state: str
    blob_id: str | None
    export_path: str | None = None  # the decrypted copy in the downloads folder, if any


class LocalStore:
    def __init__(self, path: Path, storage_key: bytes) -> None:
        self._path = path
        self._key = storage_key
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="localstore")
        self._db: sqlite3.Connection | None = None
        self._seen: set[tuple[str, str]] = set()
        self._watchers: list[set[str]] = []  # ids of messages changed or deleted (peer/search.py)

    def watch_changes(self) -> set[str]:
        """A set that collects the id of every message edited, tombstoned or deleted from now on
        (the search index drains it before each query)."""
        watcher: set[str] = set()
        self._watchers.append(watcher)
        return watcher

    def _changed(self, message_id: str) -> None:
        for watcher in self._watchers:
            watcher.add(message_id)

    async def messages_after(self, rowid: int, limit: int) -> list[tuple[int, StoredMessage]]:
        """Stored messages in insertion order after `rowid` (the search index reads them in batches)."""

        def _after() -> list[tuple[int, StoredMessage]]:
            rows = self.db.execute(
                f"SELECT rowid, {self._COLUMNS} FROM messages WHERE rowid > ? ORDER BY rowid LIMIT ?",  # noqa: S608
                (rowid, limit),
            ).fetchall()
            return [(r[0], self._row(r[1:])) for r in rows]

        return await self._run(_after)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def transaction(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(db)` on the store's thread inside one IMMEDIATE transaction: all or nothing.

        The pairwise sessions use it to save ratchet state together with the message it produced or
        consumed (the caller's part runs inside the same `fn`)."""

        def _tx() -> T:
            db = self.db
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        return await self._run(_tx)

    def seal_value(self, aad: bytes, plaintext: bytes) -> bytes:
        """Seal a value for a row under the storage key (`aad` names the row)."""
        return seal_at_rest(self._key, plaintext, aad=aad)

    def open_value(self, aad: bytes, blob: bytes) -> bytes:
        return open_at_rest(self._key, blob, aad=aad)

    def remember_after_commit(self, pairs: list[tuple[str, str]]) -> None:
        """Add seen ids to the in-memory set once the transaction that stored them committed."""
        self._seen.update(pairs)

    async def open(self) -> None:
        def _open() -> None:
            db = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
            add_column_if_missing(db, "outbox", "expires_at_ms", "INTEGER")  # stores made before it
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            self._db = db
            db.execute("DELETE FROM seen WHERE at_ms < ?", (now_ms() - SEEN_WINDOW_MS,))
            self._seen = {(d, m) for d, m in db.execute("SELECT sender_device, message_id FROM seen")}

        await self._run(_open)
        self._path.chmod(0o600)

    async def close(self) -> None:
        def _close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await self._run(_close)
        self._pool.shutdown(wait=True)

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("local store is not open")
        return self._db

    # ---------------------------------------------------------------------------------------------
    # seen ids: crypto.envelope.SeenIds (synchronous, answered from memory, persisted with the message)
    # ---------------------------------------------------------------------------------------------

    def seen_before(self, sender_device: str, message_id: str) -> bool:
        return (sender_device, message_id) in self._seen

    def remember(self, sender_device: str, message_id: str) -> None:
        self._seen.add((sender_device, message_id))

    async def prune_seen(self, at_ms: int | None = None) -> int:
        """Forget ids seen more than `SEEN_WINDOW_MS` before `at_ms` (now): the table and the memory
        set stay bounded by the window, not by the device's whole history. Runs at open and daily."""
        cutoff = (now_ms() if at_ms is None else at_ms) - SEEN_WINDOW_MS

        def _prune() -> list[tuple[str, str]]:
            with self.db:
                self.db.execute("BEGIN")
                old = self.db.execute(
                    "SELECT sender_device, message_id FROM seen WHERE at_ms < ?", (cutoff,)
                ).fetchall()
                self.db.execute("DELETE FROM seen WHERE at_ms < ?", (cutoff,))
            return [(d, m) for d, m in old]

        old = await self._run(_prune)
        self._seen.difference_update(old)  # on the loop, like `remember`: no id added meanwhile is lost
        return len(old)

    async def mark_seen(self, sender_device: str, message_id: str) -> None:
        """Persist a seen id for payloads that are not stored as messages (receipts, typing)."""

        def _mark() -> None:
            self.db.execute(
                "INSERT OR IGNORE INTO seen (sender_device, message_id, at_ms) VALUES (?,?,?)",
                (sender_device, message_id, now_ms()),
            )

        await self._run(_mark)

    # ---------------------------------------------------------------------------------------------
    # messages
    # ---------------------------------------------------------------------------------------------

    def _seal(self, message_id: str, payload: dict[str, Any]) -> bytes:
        return seal_at_rest(self._key, json.dumps(payload).encode(), aad=message_id.encode())

    def _row(self, row: tuple[Any, ...]) -> StoredMessage:
        plain = json.loads(open_at_rest(self._key, row[6], aad=row[0].encode()))
        return StoredMessage(
            message_id=row[0],
            conversation=row[1],
            sender_user=row[2],
            sender_device=row[3],
            outgoing=bool(row[4]),
            content_type=row[5],
            payload=plain,
            sent_at_ms=row[7],
            stored_at_ms=row[8],
            path=row[9],
            state=row[10],
            reason=row[11],
        )

    _COLUMNS = (
        "message_id, conversation, sender_user, sender_device, outgoing, content_type, body, "
        "sent_at_ms, stored_at_ms, path, state, reason"
    )

    def insert_message(self, db: sqlite3.Connection, message: StoredMessage) -> bool:
        """Insert a message (and mark its id seen) inside the caller's transaction, on the store's
        thread (e.g. in `transaction(fn)`, with the ratchet state that opened it); False if it was
        already there."""
        cur = db.execute(
            f"INSERT OR IGNORE INTO messages ({self._COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",  # noqa: S608
            (
                message.message_id,
                message.conversation,
                message.sender_user,
                message.sender_device,
                int(message.outgoing),
                message.content_type,
                self._seal(message.message_id, message.payload),
                message.sent_at_ms,
                message.stored_at_ms,
                message.path,
                message.state,
                message.reason,
            ),
        )
        if not message.outgoing:
            db.execute(
                "INSERT OR IGNORE INTO seen (sender_device, message_id, at_ms) VALUES (?,?,?)",
                (message.sender_device, message.message_id, now_ms()),
            )
        if cur.rowcount == 1 and message.content_type in ("text", "file"):
            # Disappearing messages (peer/disappearing.py): the conversation's timer when the
            # message is stored decides when every copy of it goes.
            db.execute(
                "INSERT OR IGNORE INTO expiries (message_id, expires_at_ms) "
                "SELECT ?, ? + seconds * 1000 FROM conversation_timers "
                "WHERE conversation = ? AND seconds > 0",
                (message.message_id, message.sent_at_ms, message.conversation),
            )
        return cur.rowcount == 1

    async def save_message(self, message: StoredMessage) -> bool:
        """Insert a message (and mark its id seen) in one transaction; False if it was already there."""
        return await self.transaction(lambda db: self.insert_message(db, message))

    async def get_message(self, message_id: str) -> StoredMessage | None:
        def _get() -> StoredMessage | None:
            row = self.db.execute(
                f"SELECT {self._COLUMNS} FROM messages WHERE message_id = ?",  # noqa: S608
                (message_id,),
            ).fetchone()
            return self._row(row) if row else None

        return await self._run(_get)

    async def history(
        self, conversation: str | None = None, limit: int = 100, before_ms: int | None = None
    ) -> list[StoredMessage]:
        def _history() -> list[StoredMessage]:
            where: list[str] = []
            args: list[object] = []
            if conversation is not None:
                where.append("conversation = ?")
                args.append(conversation)
            if before_ms is not None:
                where.append("sent_at_ms < ?")
                args.append(before_ms)
            clause = ("WHERE " + " AND ".join(where)) if where else ""
            rows = self.db.execute(
                f"SELECT {self._COLUMNS} FROM messages {clause} ORDER BY sent_at_ms DESC, rowid DESC LIMIT ?",  # noqa: S608
                (*args, limit),
            ).fetchall()
            return [self._row(r) for r in reversed(rows)]

        return await self._run(_history)

    async def conversations(self) -> list[tuple[str, int]]:
        def _convs() -> list[tuple[str, int]]:
            return list(
                self.db.execute(
                    "SELECT conversation, MAX(sent_at_ms) FROM messages GROUP BY conversation ORDER BY 2 DESC"
                )
            )

        return await self._run(_convs)

    async def conversation_summaries(self) -> list[tuple[str, str, int, int]]:
        """Per conversation, most recent first: (conversation, last message id, its sent_at_ms,
        unread count)."""

        def _summaries() -> list[tuple[str, str, int, int]]:
            return list(self.db.execute(_SUMMARIES_SQL))

        return await self._run(_summaries)

    async def unread_count(self, conversation: str) -> int:
        def _count() -> int:
            row = self.db.execute(_UNREAD_SQL, (conversation,)).fetchone()
            return int(row[0])

        return await self._run(_count)

    async def mark_read(self, conversation: str, message_ids: list[str]) -> list[str]:
        """Incoming messages of `conversation` now read here; returns the ids that changed.

        A file counts as read only once it has arrived whole (its transfer is done): a read tick
        must not claim the person saw a file that is still on its way.
        """

        def _mark() -> list[str]:
            changed = []
            with self.db:
                self.db.execute("BEGIN")
                for message_id in dict.fromkeys(message_ids):
                    cur = self.db.execute(
                        "UPDATE messages SET state = 'read' WHERE message_id = ? AND conversation = ? "
                        "AND outgoing = 0 AND state = 'received' AND (content_type = 'text' OR "
                        "(content_type = 'file' AND EXISTS (SELECT 1 FROM transfers t WHERE "
                        "t.transfer_id = messages.message_id AND t.outgoing = 0 AND t.state = 'done')))",
                        (message_id, conversation),
                    )
                    if cur.rowcount == 1:
                        changed.append(message_id)
            return changed

        return await self._run(_mark)

    async def set_timer(self, conversation: str, seconds: int, set_by: int, at_ms: int) -> bool:
        """Keep the latest timer set in a conversation; False when a later one is already there."""

        def _set() -> bool:
            cur = self.db.execute(
                "INSERT INTO conversation_timers (conversation, seconds, set_by, set_at_ms) VALUES (?,?,?,?) "
                "ON CONFLICT (conversation) DO UPDATE SET seconds = excluded.seconds, "
                "set_by = excluded.set_by, set_at_ms = excluded.set_at_ms "
                "WHERE excluded.set_at_ms >= conversation_timers.set_at_ms",
                (conversation, seconds, set_by, at_ms),
            )
            return cur.rowcount == 1

        return await self._run(_set)

    async def timer(self, conversation: str) -> tuple[int, int, int] | None:
        """(seconds, set_by, set_at_ms) of the conversation's timer, or None if never set."""

        def _get() -> tuple[int, int, int] | None:
            row = self.db.execute(
                "SELECT seconds, set_by, set_at_ms FROM conversation_timers WHERE conversation = ?",
                (conversation,),
            ).fetchone()
            return (int(row[0]), int(row[1]), int(row[2])) if row else None

        return await self._run(_get)

    async def expired(self, at_ms: int, limit: int = 500) -> tuple[list[str], int | None]:
        """Message ids whose time ran out by `at_ms`, and the next expiry after them (or None)."""

        def _get() -> tuple[list[str], int | None]:
            ids = [
                r[0]
                for r in self.db.execute(
                    "SELECT message_id FROM expiries WHERE expires_at_ms <= ? ORDER BY expires_at_ms LIMIT ?",
                    (at_ms, limit),
                )
            ]
            row = self.db.execute(
                "SELECT MIN(expires_at_ms) FROM expiries WHERE expires_at_ms > ?", (at_ms,)
            ).fetchone()
            return ids, (int(row[0]) if row and row[0] is not None else None)

        return await self._run(_get)

    async def replace_payload(self, message_id: str, content_type: str, payload: dict[str, Any]) -> None:
        """Overwrite a stored message's content (an edit, a tombstone); sealed like any message."""
        body = self._seal(message_id, payload)
        self._changed(message_id)

        def _replace() -> None:
            self.db.execute(
                "UPDATE messages SET content_type = ?, body = ? WHERE message_id = ?",
                (content_type, body, message_id),
            )

        await self._run(_replace)

    async def delete_message(self, message_id: str) -> bool:
        """Remove a message and its delivery rows (its id stays seen: a late copy is not shown)."""
        self._changed(message_id)

        def _delete() -> bool:
            with self.db:
                self.db.execute("BEGIN")
                self.db.execute("DELETE FROM deliveries WHERE message_id = ?", (message_id,))
                self.db.execute("DELETE FROM transfers WHERE transfer_id = ?", (message_id,))
                self.db.execute("DELETE FROM expiries WHERE message_id = ?", (message_id,))
                cur = self.db.execute("DELETE FROM messages WHERE message_id = ?", (message_id,))
                return cur.rowcount == 1

        return await self._run(_delete)

    async def set_message_state(
        self, message_id: str, state: str, path: str | None = None, reason: str | None = None
    ) -> None:
        def _set() -> None:
            self.db.execute(
                "UPDATE messages SET state = ?, path = COALESCE(?, path), reason = ? WHERE message_id = ?",
                (state, path, reason, message_id),
            )

        await self._run(_set)

    async def set_delivery(
        self, message_id: str, user_id: int, device_id: str, path: str | None, state: str
    ) -> None:
        def _set() -> None:
            self.db.execute(
                "INSERT INTO deliveries (message_id, user_id, device_id, path, state) VALUES (?,?,?,?,?) "
                "ON CONFLICT (message_id, device_id) DO UPDATE SET path = COALESCE(excluded.path, path), "
                "state = excluded.state",
                (message_id, user_id, device_id, path, state),
            )

        await self._run(_set)

    async def deliveries(self, message_id: str) -> list[tuple[int, str, str | None, str]]:
        def _get() -> list[tuple[int, str, str | None, str]]:
            return list(
                self.db.execute(
                    "SELECT user_id, device_id, path, state FROM deliveries WHERE message_id = ?",
                    (message_id,),
                )
            )

        return await self._run(_get)

    # ---------------------------------------------------------------------------------------------
    # outbox: envelopes the server has not yet accepted for some device (survives restarts)
    # ---------------------------------------------------------------------------------------------

    async def outbox_put(self, message_id: str, envelope: bytes) -> None:
        """Keep an envelope until the server has it, with its message's disappearing deadline (if
        any), so a send after a restart still tells the server how soon to drop it."""

        def _put() -> None:
            self.db.execute(
                "INSERT OR IGNORE INTO outbox (message_id, envelope, created_ms, expires_at_ms) "
                "VALUES (?,?,?,?)",
                (message_id, envelope, now_ms(), expiry_of(self.db, message_id)),
            )

        await self._run(_put)

    async def outbox_pending(self) -> list[tuple[str, bytes, list[tuple[int, str]], int | None]]:
        """Each outbox envelope with the devices whose delivery is still 'pending', and its
        disappearing deadline (ms, None when it has none)."""

        def _pending() -> list[tuple[str, bytes, list[tuple[int, str]], int | None]]:
            result = []
            for message_id, envelope, expires_at_ms in self.db.execute(
                "SELECT message_id, envelope, expires_at_ms FROM outbox ORDER BY created_ms"
            ).fetchall():
                devices = self.db.execute(
                    "SELECT user_id, device_id FROM deliveries WHERE message_id = ? AND state = 'pending'",
                    (message_id,),
                ).fetchall()
                result.append((message_id, envelope, [(u, d) for u, d in devices], expires_at_ms))
            return result

        return await self._run(_pending)

    async def outbox_done(self, message_id: str) -> None:
        await self._run(lambda: self.db.execute("DELETE FROM outbox WHERE message_id = ?", (message_id,)))

    # ---------------------------------------------------------------------------------------------
    # contacts cache
    # ---------------------------------------------------------------------------------------------

    async def cache_contacts(self, records: list[dict[str, Any]]) -> None:
        def _cache() -> None:
            with self.db:
                self.db.execute("BEGIN")
                self.db.execute("DELETE FROM contacts")
                self.db.executemany(
                    "INSERT INTO contacts (user_id, username, record) VALUES (?,?,?)",
                    [(r["user_id"], r["username"], json.dumps(r, default=str)) for r in records],
                )

        await self._run(_cache)

    async def cached_contacts(self) -> list[dict[str, Any]]:
        def _get() -> list[dict[str, Any]]:
            return [
                json.loads(r) for (r,) in self.db.execute("SELECT record FROM contacts ORDER BY username")
            ]

        return await self._run(_get)

    # ---------------------------------------------------------------------------------------------
    # pinned device keys
    # ---------------------------------------------------------------------------------------------

    @staticmethod
    def _device(row: tuple[Any, ...]) -> PinnedDevice:
        return PinnedDevice(
            user_id=row[0],
            device_id=row[1],
            identity_key=row[2],
            encryption_key=row[3],
            fingerprint=row[4],
            confirmed=bool(row[5]),
            revoked=bool(row[6]),
            offered_identity_key=row[7],
        )

    _DEVICE_COLUMNS = (
        "user_id, device_id, identity_key, encryption_key, fingerprint, confirmed, revoked, "
        "offered_identity_key"
    )

    async def pinned_devices(self, user_id: int | None = None) -> list[PinnedDevice]:
        def _get() -> list[PinnedDevice]:
            if user_id is None:
                rows = self.db.execute(f"SELECT {self._DEVICE_COLUMNS} FROM devices")  # noqa: S608
            else:
                rows = self.db.execute(
                    f"SELECT {self._DEVICE_COLUMNS} FROM devices WHERE user_id = ?",  # noqa: S608
                    (user_id,),
                )
            return [self._device(r) for r in rows]

        return await self._run(_get)

    async def pin_device(
        self,
        user_id: int,
        device_id: str,
        identity_key: bytes,
        encryption_key: bytes,
        fingerprint: str,
        confirmed: bool,
    ) -> None:
        def _pin() -> None:
            self.db.execute(
                "INSERT INTO devices (user_id, device_id, identity_key, encryption_key, fingerprint, "
                "confirmed, "
                "first_seen_ms) VALUES (?,?,?,?,?,?,?) ON CONFLICT (user_id, device_id) DO UPDATE SET "
                "identity_key = excluded.identity_key, encryption_key = excluded.encryption_key, "
                "fingerprint = excluded.fingerprint, confirmed = excluded.confirmed, "
                "offered_identity_key = NULL, offered_encryption_key = NULL, revoked = 0",
                (user_id, device_id, identity_key, encryption_key, fingerprint, int(confirmed), now_ms()),
            )

        await self._run(_pin)

    async def record_offered_key(
        self, user_id: int, device_id: str, identity_key: bytes, encryption_key: bytes
    ) -> None:
        def _offer() -> None:
            self.db.execute(
                "UPDATE devices SET offered_identity_key = ?, offered_encryption_key = ? "
                "WHERE user_id = ? AND device_id = ?",
                (identity_key, encryption_key, user_id, device_id),
            )

        await self._run(_offer)

    async def offered_key(self, user_id: int, device_id: str) -> tuple[bytes, bytes] | None:
        def _get() -> tuple[bytes, bytes] | None:
            row = self.db.execute(
                "SELECT offered_identity_key, offered_encryption_key FROM devices "
                "WHERE user_id = ? AND device_id = ?",
                (user_id, device_id),
            ).fetchone()
            return (row[0], row[1]) if row and row[0] is not None else None

        return await self._run(_get)

    async def confirm_devices(self, user_id: int) -> None:
        await self._run(
            lambda: self.db.execute("UPDATE devices SET confirmed = 1 WHERE user_id = ?", (user_id,))
        )

    async def set_revoked(self, user_id: int, device_id: str, revoked: bool) -> None:
        await self._run(
            lambda: self.db.execute(
                "UPDATE devices SET revoked = ? WHERE user_id = ? AND device_id = ?",
                (int(revoked), user_id, device_id),
            )
        )

    async def set_verified(self, user_id: int, verified: bool) -> None:
        def _set() -> None:
            if verified:
                self.db.execute(
                    "INSERT OR REPLACE INTO verified_users (user_id, at_ms) VALUES (?,?)", (user_id, now_ms())
                )
            else:
                self.db.execute("DELETE FROM verified_users WHERE user_id = ?", (user_id,))

        await self._run(_set)

    async def is_verified(self, user_id: int) -> bool:
        def _get() -> bool:
            return (
                self.db.execute("SELECT 1 FROM verified_users WHERE user_id = ?", (user_id,)).fetchone()
                is not None
            )

        return await self._run(_get)

    # ---------------------------------------------------------------------------------------------
    # file transfers
    # ---------------------------------------------------------------------------------------------

    async def save_transfer(self, t: TransferRecord) -> None:
        manifest = seal_at_rest(self._key, json.dumps(t.manifest).encode(), aad=t.transfer_id.encode())

        def _save() -> None:
            self.db.execute(
                "INSERT OR REPLACE INTO transfers (transfer_id, outgoing, conversation, manifest, "
                "local_path, next_index, state, blob_id, export_path) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    t.transfer_id,
                    int(t.outgoing),
                    t.conversation,
                    manifest,
                    t.local_path,
                    t.next_index,
                    t.state,
                    t.blob_id,
                    t.export_path,
                ),
            )

        await self._run(_save)

    async def get_transfer(self, transfer_id: str) -> TransferRecord | None:
        def _get() -> TransferRecord | None:
            row = self.db.execute(
                "SELECT transfer_id, outgoing, conversation, manifest, local_path, next_index, state, "
                "blob_id, export_path "
                "FROM transfers WHERE transfer_id = ?",
                (transfer_id,),
            ).fetchone()
            if row is None:
                return None
            manifest = json.loads(open_at_rest(self._key, row[3], aad=row[0].encode()))
            return TransferRecord(
                row[0], bool(row[1]), row[2], manifest, row[4], row[5], row[6], row[7], row[8]
            )

        return await self._run(_get)

    async def transfer_progress(self, transfer_id: str, next_index: int, state: str | None = None) -> None:
        def _set() -> None:
            self.db.execute(
                "UPDATE transfers SET next_index = MAX(next_index, ?), state = COALESCE(?, state) "
                "WHERE transfer_id = ?",
                (next_index, state, transfer_id),
            )

        await self._run(_set)
