"""Where the node keeps its groups in the profile's local store, sealed at rest like the ratchet
sessions (`peer.ratchetstore`): each `GroupSession.to_dict()` (chain, own sender key, received
sender keys) and the member names this device last learnt, the group messages held until their
sender key arrives, the group messages still waiting for the server, and the per-device receipts
of this device's own group messages (for "delivered to 3 of 5").

Every value that holds key material or text is sealed under the storage key with an AAD naming its
row; ids and counts stay plain (they are what the server sees anyway).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from peer.localstore import LocalStore, now_ms

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS group_sessions (group_id TEXT PRIMARY KEY, data BLOB NOT NULL, "
    "updated_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS group_held (message_id TEXT PRIMARY KEY, group_id TEXT NOT NULL, "
    "via TEXT NOT NULL, data BLOB NOT NULL, at_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS group_outbox (message_id TEXT PRIMARY KEY, group_id TEXT NOT NULL, "
    "devices TEXT NOT NULL, data BLOB NOT NULL, at_ms INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS group_receipts (message_id TEXT NOT NULL, device_id TEXT NOT NULL, "
    "user_id INTEGER NOT NULL, status TEXT NOT NULL, PRIMARY KEY (message_id, device_id))",
)

_RANK = {"delivered": 1, "read": 2}


def _aad(kind: str, key: str) -> bytes:
    return f"group-{kind}:{key}".encode()


class GroupStore:
    def __init__(self, store: LocalStore) -> None:
        self._store = store

    async def prepare(self) -> None:
        def _tx(db: sqlite3.Connection) -> None:
            for statement in _SCHEMA:
                db.execute(statement)

        await self._store.transaction(_tx)

    # -- sessions ---------------------------------------------------------------------------------

    async def save(self, group_id: str, record: dict[str, Any]) -> None:
        sealed = self._store.seal_value(_aad("session", group_id), json.dumps(record).encode())
        await self._store.transaction(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO group_sessions (group_id, data, updated_ms) VALUES (?,?,?)",
                (group_id, sealed, now_ms()),
            )
        )

    async def load_all(self) -> dict[str, dict[str, Any]]:
        rows = await self._store.transaction(
            lambda db: db.execute("SELECT group_id, data FROM group_sessions").fetchall()
        )
        return {gid: json.loads(self._store.open_value(_aad("session", gid), blob)) for gid, blob in rows}

    # -- held messages (their sender key has not arrived yet) -------------------------------------

    async def hold(self, group_id: str, message_id: str, via: str, data: bytes) -> None:
        sealed = self._store.seal_value(_aad("held", message_id), data)
        await self._store.transaction(
            lambda db: db.execute(
                "INSERT OR IGNORE INTO group_held (message_id, group_id, via, data, at_ms) "
                "VALUES (?,?,?,?,?)",
                (message_id, group_id, via, sealed, now_ms()),
            )
        )

    async def held(self, group_id: str) -> list[tuple[str, str, bytes]]:
        rows = await self._store.transaction(
            lambda db: db.execute(
                "SELECT message_id, via, data FROM group_held WHERE group_id = ? ORDER BY at_ms", (group_id,)
            ).fetchall()
        )
        return [(mid, via, self._store.open_value(_aad("held", mid), blob)) for mid, via, blob in rows]

    async def release(self, message_id: str) -> None:
        await self._store.transaction(
            lambda db: db.execute("DELETE FROM group_held WHERE message_id = ?", (message_id,))
        )

    # -- outbox (group messages the server has not taken yet) -------------------------------------

    async def outbox_put(
        self, group_id: str, message_id: str, devices: list[tuple[int, str]], data: bytes
    ) -> None:
        await self._store.transaction(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO group_outbox (message_id, group_id, devices, data, at_ms) "
                "VALUES (?,?,?,?,?)",
                (message_id, group_id, json.dumps(devices), data, now_ms()),
            )
        )

    async def outbox(self) -> list[tuple[str, str, list[tuple[int, str]], bytes]]:
        rows = await self._store.transaction(
            lambda db: db.execute(
                "SELECT message_id, group_id, devices, data FROM group_outbox ORDER BY at_ms"
            ).fetchall()
        )
        return [
            (mid, gid, [(int(u), str(d)) for u, d in json.loads(devs)], data) for mid, gid, devs, data in rows
        ]

    async def outbox_done(self, message_id: str) -> None:
        await self._store.transaction(
            lambda db: db.execute("DELETE FROM group_outbox WHERE message_id = ?", (message_id,))
        )

    # -- receipts of own group messages, per device -----------------------------------------------

    async def receipt(self, message_id: str, user_id: int, device_id: str, status: str) -> bool:
        """Record a device's receipt; True when it moved that device forward."""

        def _tx(db: sqlite3.Connection) -> bool:
            row = db.execute(
                "SELECT status FROM group_receipts WHERE message_id = ? AND device_id = ?",
                (message_id, device_id),
            ).fetchone()
            if row is not None and _RANK.get(row[0], 0) >= _RANK.get(status, 0):
                return False
            db.execute(
                "INSERT OR REPLACE INTO group_receipts (message_id, device_id, user_id, status) "
                "VALUES (?,?,?,?)",
                (message_id, device_id, user_id, status),
            )
            return True

        return await self._store.transaction(_tx)

    async def rollup(self, message_id: str) -> tuple[int, int]:
        """(devices that have it, devices that read it) for one of this device's group messages."""
        rows = await self._store.transaction(
            lambda db: db.execute(
                "SELECT status, COUNT(*) FROM group_receipts WHERE message_id = ? GROUP BY status",
                (message_id,),
            ).fetchall()
        )
        counts = dict(rows)
        read = int(counts.get("read", 0))
        return read + int(counts.get("delivered", 0)), read
