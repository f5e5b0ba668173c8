"""Edits and deletes that arrived before the message they change, kept until it comes.

The two can cross: the edit over a direct link, the message still in the sender's outbox or in
the server's mailbox. A change for a message this device does not have is held here — sealed at
rest under the storage key like every message body, with an AAD naming its row — and handed back
when that message is stored (`peer.edits.MessageEdits.on_stored`), which then checks it exactly
as a change that came after (only the original's sender, in the original's conversation, within
the window).

Bounded three ways, so a sender cannot fill the store with changes for messages that never come:
at most `PER_CONVERSATION` held per conversation and `IN_TOTAL` in all (the oldest goes first),
and none older than `HOLD_FOR_MS` (a message later than that is not coming; the oldest mailbox
row the server keeps is younger). Ids, conversation and sender stay plain, as in `messages`.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass

from peer.localstore import LocalStore, now_ms

PER_CONVERSATION = 200
IN_TOTAL = 2000
HOLD_FOR_MS = 32 * 24 * 3600 * 1000  # the mailbox retention (30 days) plus an outbox wait, as `seen`

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS held_changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
    "target_id TEXT NOT NULL, conversation TEXT NOT NULL, sender_user INTEGER NOT NULL, "
    "sent_at_ms INTEGER NOT NULL, data BLOB NOT NULL, at_ms INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS held_changes_by_target ON held_changes (target_id)",
    "CREATE INDEX IF NOT EXISTS held_changes_by_conversation ON held_changes (conversation, seq)",
)


@dataclass(frozen=True)
class HeldChange:
    """One held change of one message: an edit (`body`) or a delete (`body` None)."""

    target_id: str
    conversation: str
    sender_user: int
    sent_at_ms: int
    body: str | None


def _aad(target_id: str, conversation: str, sender_user: int, sent_at_ms: int) -> bytes:
    return f"held-change:{target_id}:{conversation}:{sender_user}:{sent_at_ms}".encode()


class HeldChanges:
    def __init__(
        self,
        store: LocalStore,
        *,
        per_conversation: int = PER_CONVERSATION,
        in_total: int = IN_TOTAL,
        hold_for_ms: int = HOLD_FOR_MS,
    ) -> None:
        self._store = store
        self.per_conversation = per_conversation
        self.in_total = in_total
        self.hold_for_ms = hold_for_ms
        # The held targets, in memory: a message that nothing waits for costs no query (the
        # receive path asks for every message). A target a bound dropped may stay: `take` is empty.
        self._targets: set[str] = set()

    async def prepare(self) -> None:
        def _tx(db: sqlite3.Connection) -> list[tuple[str]]:
            for statement in _SCHEMA:
                db.execute(statement)
            return db.execute("SELECT DISTINCT target_id FROM held_changes").fetchall()

        self._targets = {target for (target,) in await self._store.transaction(_tx)}

    def waits_for(self, target_id: str) -> bool:
        return target_id in self._targets

    async def hold(self, change: HeldChange) -> None:
        """Keep `change`; the oldest held ones go when a bound is reached."""
        c = change
        sealed = self._store.seal_value(
            _aad(c.target_id, c.conversation, c.sender_user, c.sent_at_ms),
            json.dumps({"body": c.body}).encode(),
        )
        at = now_ms()

        def _tx(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM held_changes WHERE at_ms < ?", (at - self.hold_for_ms,))
            db.execute(
                "INSERT INTO held_changes (target_id, conversation, sender_user, sent_at_ms, data, at_ms) "
                "VALUES (?,?,?,?,?,?)",
                (c.target_id, c.conversation, c.sender_user, c.sent_at_ms, sealed, at),
            )
            db.execute(
                "DELETE FROM held_changes WHERE conversation = ? AND seq NOT IN (SELECT seq FROM "
                "held_changes WHERE conversation = ? ORDER BY seq DESC LIMIT ?)",
                (c.conversation, c.conversation, self.per_conversation),
            )
            db.execute(
                "DELETE FROM held_changes WHERE seq NOT IN "
                "(SELECT seq FROM held_changes ORDER BY seq DESC LIMIT ?)",
                (self.in_total,),
            )

        await self._store.transaction(_tx)
        self._targets.add(c.target_id)

    async def take(self, target_id: str) -> list[HeldChange]:
        """The held changes of `target_id` (oldest sent first), no longer held; none past the bound."""
        cutoff = now_ms() - self.hold_for_ms
        if target_id not in self._targets:
            return []
        self._targets.discard(target_id)

        def _tx(db: sqlite3.Connection) -> list[tuple[str, int, int, bytes]]:
            rows = db.execute(
                "SELECT conversation, sender_user, sent_at_ms, data FROM held_changes "
                "WHERE target_id = ? AND at_ms >= ? ORDER BY sent_at_ms, seq",
                (target_id, cutoff),
            ).fetchall()
            db.execute("DELETE FROM held_changes WHERE target_id = ?", (target_id,))
            return rows

        rows = await self._store.transaction(_tx)
        held = []
        for conversation, sender_user, sent_at_ms, blob in rows:
            plain = self._store.open_value(_aad(target_id, conversation, sender_user, sent_at_ms), blob)
            body = json.loads(plain)["body"]
            held.append(HeldChange(target_id, conversation, sender_user, sent_at_ms, body))
        return held

    async def prune(self, at_ms: int | None = None) -> int:
        """Drop what was held longer than the bound (before `at_ms`, now); how many went."""
        cutoff = (now_ms() if at_ms is None else at_ms) - self.hold_for_ms
        return await self._store.transaction(
            lambda db: db.execute("DELETE FROM held_changes WHERE at_ms < ?", (cutoff,)).rowcount
        )

    async def count(self, conversation: str | None = None) -> int:
        """How many are held (in one conversation, or in all)."""
        where, args = ("WHERE conversation = ?", (conversation,)) if conversation else ("", ())
        row = await self._store.transaction(
            lambda db: db.execute(f"SELECT COUNT(*) FROM held_changes {where}", args).fetchone()  # noqa: S608
        )
        return int(row[0])
