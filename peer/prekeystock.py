"""This device's own prekeys: make them, keep them sealed in the local store, publish and refill
them, rotate the signed ones, and answer the private half a session set-up asks for.

Key ids are random 32-bit numbers (unique on this device), so two lineages of a store (a lost
one and its replacement, or a backup and the copy that ran on) never share ids, and a store that
finds the server holding an id it does not have (lost, or restored from an older copy)
republishes everything with `replace`: no initiator is handed a key without a private half.

Policy (each a constructor argument): the signed X25519 prekey and the last-resort ML-KEM prekey
rotate every 7 days; a replaced one stays usable for the mailbox retention (30 days), because
prekey messages sent to it may still sit in the mailbox; one-time keys are refilled to 100 of each
kind when the server holds fewer than 25. Keys are stored before they are published (a crash in
between republishes them next time, never publishes a key this device does not hold), and a
one-time key is deleted in the same transaction as the session that used it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

from crypto.keys import DeviceKeys
from crypto.prekeys import PrekeyBundle, PrekeyKind, PrekeyPair, PublicPrekey, generate_prekey
from peer import ratchetstore as rs
from peer.client import ServerClient
from peer.localstore import LocalStore, now_ms
from signalling.protocol import (
    PrekeyBundleOut,
    PrekeyIn,
    PrekeyKindName,
    PrekeyOut,
    PrekeysIn,
    PrekeyStockOut,
    b64decode,
    b64encode,
)

DAY_MS = 24 * 3600 * 1000
_WIRE = {
    PrekeyKind.SIGNED: PrekeyKindName.SIGNED,
    PrekeyKind.ONE_TIME: PrekeyKindName.ONE_TIME,
    PrekeyKind.KEM_LAST_RESORT: PrekeyKindName.KEM_LAST_RESORT,
    PrekeyKind.KEM_ONE_TIME: PrekeyKindName.KEM_ONE_TIME,
}
_KIND = {v: k for k, v in _WIRE.items()}


def prekey_to_wire(p: PublicPrekey) -> PrekeyIn:
    return PrekeyIn(
        kind=_WIRE[p.kind],
        key_id=p.key_id,
        public_key=b64encode(p.public_key),
        created_at=p.created_at,
        signature=b64encode(p.signature),
    )


def _from_wire(p: PrekeyOut) -> PublicPrekey:
    return PublicPrekey(
        _KIND[p.kind], p.key_id, p.created_at, b64decode(p.public_key), b64decode(p.signature)
    )


def bundle_from_wire(b: PrekeyBundleOut) -> PrekeyBundle:
    """The server's answer as a crypto bundle (still unverified: `verify_prekey_bundle` next)."""
    return PrekeyBundle(
        b.user_id,
        b.device_id,
        b64decode(b.identity_key),
        _from_wire(b.signed_prekey),
        _from_wire(b.kem_prekey),
        None if b.one_time_prekey is None else _from_wire(b.one_time_prekey),
    )


@dataclass(frozen=True)
class Publication:
    pairs: list[PrekeyPair]
    replace: bool  # drop everything the server holds for this device first


class PrekeyStock:
    def __init__(
        self,
        store: LocalStore,
        keys: DeviceKeys,
        device_id: str,
        *,
        one_time_target: int = 100,
        one_time_low: int = 25,
        rotate_after_ms: int = 7 * DAY_MS,
        retired_grace_ms: int = 30 * DAY_MS,
    ) -> None:
        self._store = store
        self._keys = keys
        self.device_id = device_id
        self.one_time_target = one_time_target
        self.one_time_low = one_time_low
        self.rotate_after_ms = rotate_after_ms
        self.retired_grace_ms = retired_grace_ms

    # --- inside a transaction (store thread) ----------------------------------------------------

    def lookup(self, db: sqlite3.Connection) -> Callable[[PrekeyKind, int], PrekeyPair | None]:
        return lambda kind, key_id: rs.get_prekey(self._store, db, kind, key_id)

    def _new(self, db: sqlite3.Connection, kind: PrekeyKind, at_ms: int) -> PrekeyPair:
        pair = generate_prekey(self._keys, self.device_id, kind, rs.new_prekey_id(db), at_ms // 1000)
        rs.put_prekey(self._store, db, pair, at_ms)
        return pair

    def _plan(self, db: sqlite3.Connection, server: PrekeyStockOut | None, at_ms: int) -> Publication:
        rows = rs.prekey_rows(db)
        mine = {r.key_id for r in rows}
        lost = server is not None and (not rows or any(i not in mine for i in server.held_ids))
        if lost:
            # A fresh local store (lost, or reinstalled with the same keystore), or one restored from
            # an older copy (the server holds ids this store never made): some of what the server
            # holds has no private half here, so replace it all.
            server = None
        replace = lost
        out: list[PrekeyPair] = []
        for kind, server_id in (
            (PrekeyKind.SIGNED, None if server is None else server.signed_prekey_id),
            (PrekeyKind.KEM_LAST_RESORT, None if server is None else server.kem_last_resort_id),
        ):
            live = [r for r in rows if r.kind is kind and r.retired_ms is None]
            current = max(live, key=lambda r: (r.created_ms, r.key_id), default=None)
            if current is None or at_ms - current.created_ms >= self.rotate_after_ms:
                for r in live:
                    rs.retire_prekey(db, kind, r.key_id, at_ms)
                out.append(self._new(db, kind, at_ms))
            elif server_id != current.key_id or not current.published:
                pair = rs.get_prekey(self._store, db, kind, current.key_id)
                if pair is not None:
                    out.append(pair)
        for kind, held in (
            (PrekeyKind.ONE_TIME, None if server is None else server.one_time),
            (PrekeyKind.KEM_ONE_TIME, None if server is None else server.kem_one_time),
        ):
            unpublished = [r for r in rows if r.kind is kind and not r.published]
            for r in unpublished:  # stored but never confirmed published (a crash in between)
                pair = rs.get_prekey(self._store, db, kind, r.key_id)
                if pair is not None:
                    out.append(pair)
            have = (held or 0) + len(unpublished)
            if held is None or held < self.one_time_low:
                out.extend(self._new(db, kind, at_ms) for _ in range(max(0, self.one_time_target - have)))
        cutoff = at_ms - self.retired_grace_ms
        for r in rows:
            if r.retired_ms is not None and r.retired_ms < cutoff:
                rs.delete_prekey(db, r.kind, r.key_id)
        return Publication(out, replace)

    # --- async API ------------------------------------------------------------------------------

    async def due(self, server: PrekeyStockOut | None, *, at_ms: int | None = None) -> Publication:
        """Make (and store) what should be published given the server's stock; rotate and prune."""
        when = now_ms() if at_ms is None else at_ms
        return await self._store.transaction(lambda db: self._plan(db, server, when))

    async def mark_published(self, pairs: list[PrekeyPair]) -> None:
        keys = [(p.public.kind, p.public.key_id) for p in pairs]
        await self._store.transaction(lambda db: rs.mark_published(db, keys))

    async def refresh(self, client: ServerClient, *, at_ms: int | None = None) -> PrekeyStockOut:
        """Ask the server what it holds, publish what is missing or due; the stock afterwards.

        Call on log-in, after every claim-heavy burst, and once a day (rotation)."""
        stock = await client.prekey_stock(self.device_id)
        due = await self.due(stock, at_ms=at_ms)
        pairs = due.pairs
        for i in range(0, len(pairs), 400):  # the route takes at most 400 per call
            part = pairs[i : i + 400]
            body = PrekeysIn(prekeys=[prekey_to_wire(p.public) for p in part], replace=due.replace and i == 0)
            stock = await client.publish_prekeys(self.device_id, body)
            await self.mark_published(part)
        return stock
