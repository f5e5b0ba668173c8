"""Devices with real local stores and session managers, for the pairwise-session tests.

`Directory` stands in for the server's prekey routes in unit tests (hands each one-time key out
once, last resort after); the routes themselves are tested in tests/server/test_prekeys.py and the
managers against the real server in test_sessions_server.py. `crash()` reopens a copy of the
database files taken while the store is still open: what a kill -9 leaves (committed
transactions only).
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from crypto.keys import DeviceKeys
from crypto.prekeys import PrekeyBundle, PrekeyKind, PublicPrekey
from peer.localstore import LocalStore, StoredMessage, now_ms
from peer.prekeystock import PrekeyStock
from peer.sessions import Received, SessionManager
from signalling.protocol import PrekeyStockOut

STORAGE_KEY = bytes(range(32))


@dataclass
class Published:
    user_id: int
    identity_key: bytes
    current: dict[PrekeyKind, PublicPrekey] = field(default_factory=dict)
    one_time: dict[PrekeyKind, list[PublicPrekey]] = field(default_factory=dict)


class Directory:
    def __init__(self) -> None:
        self.devices: dict[str, Published] = {}

    def stock(self, device_id: str) -> PrekeyStockOut | None:
        p = self.devices.get(device_id)
        if p is None:
            return None
        cur = {k: v.key_id for k, v in p.current.items()}
        ids = [v.key_id for v in p.current.values()] + [
            k.key_id for keys in p.one_time.values() for k in keys
        ]
        return PrekeyStockOut(
            device_id=device_id,
            one_time=len(p.one_time.get(PrekeyKind.ONE_TIME, [])),
            kem_one_time=len(p.one_time.get(PrekeyKind.KEM_ONE_TIME, [])),
            signed_prekey_id=cur.get(PrekeyKind.SIGNED),
            kem_last_resort_id=cur.get(PrekeyKind.KEM_LAST_RESORT),
            held_ids=sorted(ids),
        )

    async def refresh(self, dev: SessionDevice, *, at_ms: int | None = None) -> None:
        due = await dev.stock.due(self.stock(dev.device_id), at_ms=at_ms)
        if due.replace:
            self.devices.pop(dev.device_id, None)
        p = self.devices.setdefault(dev.device_id, Published(dev.user_id, dev.keys.identity_public_bytes()))
        pairs = due.pairs
        for pair in pairs:
            k = pair.public.kind
            if k.is_one_time:
                p.one_time.setdefault(k, []).append(pair.public)
            else:
                p.current[k] = pair.public
        await dev.stock.mark_published(pairs)

    async def claim(self, user_id: int, device_id: str) -> PrekeyBundle | None:
        p = self.devices.get(device_id)
        if p is None or p.user_id != user_id:
            return None
        opk = p.one_time.get(PrekeyKind.ONE_TIME, [])
        kem = p.one_time.get(PrekeyKind.KEM_ONE_TIME, [])
        return PrekeyBundle(
            user_id,
            device_id,
            p.identity_key,
            p.current[PrekeyKind.SIGNED],
            kem.pop(0) if kem else p.current[PrekeyKind.KEM_LAST_RESORT],
            opk.pop(0) if opk else None,
        )


class SessionDevice:
    def __init__(
        self, folder: Path, user_id: int, device_id: str, keys: DeviceKeys, directory: Directory, pins: dict
    ) -> None:
        self.folder = folder
        self.user_id = user_id
        self.device_id = device_id
        self.keys = keys
        self.directory = directory
        self.pins = pins
        self.generation = 0
        self.clock: Callable[[], int] = now_ms
        self._abandoned: list[LocalStore] = []
        self.store: LocalStore
        self.stock: PrekeyStock
        self.sessions: SessionManager

    @property
    def path(self) -> Path:
        return self.folder / f"{self.device_id}.{self.generation}.db"

    async def open(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.store = LocalStore(self.path, STORAGE_KEY)
        await self.store.open()
        self.stock = PrekeyStock(self.store, self.keys, self.device_id, one_time_target=4, one_time_low=2)
        self.sessions = SessionManager(
            self.store,
            self.keys,
            self.user_id,
            self.device_id,
            pinned=lambda u, d: self.pins.get((u, d)),
            claim=self.directory.claim,
            prekeys=self.stock,
            clock_ms=lambda: self.clock(),
        )

    def _copy_files(self, target: Path, source: Path | None = None) -> None:
        source = source or self.path
        for suffix in ("", "-wal"):
            src = Path(str(source) + suffix)
            if src.exists():
                shutil.copyfile(src, Path(str(target) + suffix))

    async def crash(self) -> None:
        """As after kill -9: reopen the files exactly as they are on disk now."""
        old = self.path
        self.generation += 1
        self._copy_files(self.path, old)
        self._abandoned.append(self.store)
        await self.open()

    def snapshot(self, name: str) -> Path:
        """A copy of the store as a backup tool would take it (committed state)."""
        target = self.folder / f"{self.device_id}.{name}.snapshot"
        self._copy_files(target)
        return target

    async def restore(self, snapshot: Path) -> None:
        """Replace the store by an older copy (restored from a backup)."""
        self.generation += 1
        self._copy_files(self.path, snapshot)
        self._abandoned.append(self.store)
        await self.open()

    async def lose_everything(self) -> None:
        """The local store is gone (new laptop, same keystore): fresh prekeys are published."""
        self.generation += 1
        self._abandoned.append(self.store)
        await self.open()
        await self.directory.refresh(self)

    async def close(self) -> None:
        for s in [*self._abandoned, self.store]:
            await s.close()

    def stored_messages(self) -> list[str]:
        db = sqlite3.connect(self.path)
        try:
            return [r[0] for r in db.execute("SELECT message_id FROM messages ORDER BY rowid")]
        finally:
            db.close()


def store_text(store: LocalStore) -> Callable[[sqlite3.Connection, Received], None]:
    """A `store_with` that saves the plaintext as a message row (in the ratchet's transaction)."""

    def _save(db: sqlite3.Connection, r: Received) -> None:
        assert r.plaintext is not None
        message = StoredMessage(
            message_id=r.message_id,
            conversation=f"u:{r.sender_user}",
            sender_user=r.sender_user,
            sender_device=r.sender_device,
            outgoing=False,
            content_type="text",
            payload={"type": "text", "body": r.plaintext.decode("utf-8", "backslashreplace")},
            sent_at_ms=now_ms(),
            stored_at_ms=now_ms(),
            path="relayed",
            state="delivered",
            reason=None,
        )
        store.insert_message(db, message)

    return _save
