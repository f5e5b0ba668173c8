"""The ratchet path of the node: 1:1 traffic as PPR messages (`crypto.pairwise`), one per device.

`Outbox.send` asks `seal` first: every recipient device (and this user's other devices) that
published prekeys gets its own PPR message, sealed by `peer.sessions.SessionManager`; the rest
(older peers without prekeys) keep envelope v2. `deliver` moves PPR messages like the router moves
envelopes — the open link first (the receiver's ack), else the server, one `send` frame per device
whose `message_id` is the message's own id — and keeps each device's sealed bytes in
`pairwise_outbox`, written in the same local-store transaction as the ratchet state that produced
them, so a kill -9 never loses a sealed message nor sends one twice with two ratchet steps.

`Inbox.receive` hands PPR bytes to `receive`, which opens them (the message and the state that
opened it commit together) and returns what to do: the decoded payload, the heal traffic to send,
and whether to show "secure session re-established".

Inside a PPR message (the "inner" plaintext, version 1):

    u8 1 || u64 sent_at_ms || u8 n || conversation (n bytes ASCII) || crypto.payload encoding

The conversation is named as the sender sees it (`u:<peer>`), exactly as in an envelope header.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import struct
from collections.abc import Callable
from dataclasses import dataclass

from crypto.envelope import Recipient
from crypto.errors import MalformedEnvelope
from crypto.keys import DeviceKeys
from crypto.payload import Payload, decode_payload, encode_payload
from crypto.prekeys import PrekeyBundle
from peer.client import ServerClient
from peer.errors import DeliveryTimeout, ServerError, ServerUnavailable
from peer.localstore import LocalStore, StoredMessage, now_ms
from peer.prekeystock import PrekeyStock, bundle_from_wire
from peer.router import DIRECT, FAILED, PENDING, QUEUED, RELAYED, SENT, DeviceOutcome, Router, ServerPath
from peer.sessions import NoPrekeys, Outbound, Outcome, Received, SessionManager
from signalling.protocol import RecipientDevice, b64encode

log = logging.getLogger(__name__)

INNER_VERSION = 1
_INNER = struct.Struct(">BQB")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS pairwise_outbox (message_id TEXT NOT NULL, device_id TEXT NOT NULL, "
    "user_id INTEGER NOT NULL, data BLOB NOT NULL, created_ms INTEGER NOT NULL, "
    "PRIMARY KEY (message_id, device_id))"
)


def encode_inner(conversation: str, sent_at_ms: int, payload: Payload) -> bytes:
    name = conversation.encode("ascii")
    return _INNER.pack(INNER_VERSION, sent_at_ms, len(name)) + name + encode_payload(payload)


@dataclass(frozen=True)
class Inner:
    conversation: str
    sent_at_ms: int
    payload: Payload


def decode_inner(data: bytes) -> Inner:
    if len(data) < _INNER.size:
        raise MalformedEnvelope("the ratchet message's content is too short")
    version, sent_at_ms, n = _INNER.unpack_from(data)
    if version != INNER_VERSION:
        raise MalformedEnvelope(f"unknown ratchet content version {version}")
    end = _INNER.size + n
    try:
        conversation = data[_INNER.size : end].decode("ascii")
    except UnicodeDecodeError as e:
        raise MalformedEnvelope("the ratchet message names no valid conversation") from e
    return Inner(conversation, sent_at_ms, decode_payload(data[end:]))


@dataclass(frozen=True)
class Opened:
    """What `receive` found: `received.outcome` says which; `inner` for DELIVERED only."""

    received: Received
    inner: Inner | None
    stored: StoredMessage | None  # DELIVERED text/file newly saved (same transaction as the state)

    @property
    def outgoing_traffic(self) -> list[Outbound]:
        r = self.received
        return [*r.resend, *([r.reply] if r.reply is not None else [])]


class PairwisePath:
    def __init__(
        self,
        sessions: SessionManager,
        store: LocalStore,
        router: Router,
        server: ServerPath,
        *,
        server_deadline: float,
        enabled: bool = True,
    ) -> None:
        self.sessions = sessions
        self._store = store
        self._router = router
        self._server = server
        self._server_deadline = server_deadline
        self.enabled = enabled

    async def prepare(self) -> None:
        """Make this path's table (once per store; before the first send or flush)."""
        await self._store.transaction(lambda db: db.execute(_SCHEMA))

    # --- sending --------------------------------------------------------------------------------

    async def seal(
        self,
        recipients: list[Recipient],
        conversation: str,
        payload: Payload,
        message_id: str,
        sent_at_ms: int,
        *,
        persistent: bool,
        message: StoredMessage | None = None,
    ) -> tuple[list[Outbound], list[Recipient], bool]:
        """PPR messages for every device with prekeys; the devices left for envelope v2; whether
        `message` (the sender's own row) was saved, in the first seal's transaction with the
        ratchet state (when no device takes PPR, the caller saves it)."""
        if not self.enabled:
            return [], recipients, False
        inner = encode_inner(conversation, sent_at_ms, payload)
        sealed: list[Outbound] = []
        rest: list[Recipient] = []
        saved = False

        def also(db: sqlite3.Connection, o: Outbound) -> None:
            nonlocal saved
            if message is not None and not saved:
                self._store.insert_message(db, message)
                saved = True
            if persistent:
                self._keep(db, o)

        for r in recipients:
            try:
                sealed.append(
                    await self.sessions.seal(
                        r.user_id, r.device_id, inner, message_id, keep_for_resend=persistent, also=also
                    )
                )
            except NoPrekeys:
                rest.append(r)
            except ServerError as e:  # the claim could not be made now: envelope v2 this time
                log.info("no prekey bundle for %s now (%s): envelope v2", r.device_id, e)
                rest.append(r)
        return sealed, rest, saved

    @staticmethod
    def _keep(db: sqlite3.Connection, o: Outbound) -> None:
        """Inside the seal's transaction: the sealed bytes stay until the device has them."""
        db.execute(
            "INSERT OR REPLACE INTO pairwise_outbox (message_id, device_id, user_id, data, created_ms) "
            "VALUES (?,?,?,?,?)",
            (o.message_id, o.device_id, o.user_id, o.data, now_ms()),
        )
        db.execute(
            "INSERT INTO deliveries (message_id, user_id, device_id, path, state) VALUES (?,?,?,NULL,?) "
            "ON CONFLICT (message_id, device_id) DO NOTHING",
            (o.message_id, o.user_id, o.device_id, PENDING.value),
        )

    async def _settle(self, o: Outbound, path: str | None, state: str) -> None:
        """The device's outcome, and its sealed copy dropped (it has it, or it never will)."""

        def _tx(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO deliveries (message_id, user_id, device_id, path, state) VALUES (?,?,?,?,?) "
                "ON CONFLICT (message_id, device_id) DO UPDATE SET path = COALESCE(excluded.path, path), "
                "state = excluded.state",
                (o.message_id, o.user_id, o.device_id, path, state),
            )
            db.execute(
                "DELETE FROM pairwise_outbox WHERE message_id = ? AND device_id = ?",
                (o.message_id, o.device_id),
            )

        await self._store.transaction(_tx)

    async def deliver(
        self, sealed: list[Outbound], *, connect: bool = True, persistent: bool = True
    ) -> list[DeviceOutcome]:
        """Each PPR message to its device: the open link (with the receiver's ack), else the server."""
        if not sealed:
            return []
        if len(sealed) == 1:
            o = sealed[0]
            direct = [await self._router.send_direct(o.message_id, o.data, o.user_id, o.device_id, connect)]
        else:
            direct = await asyncio.gather(
                *(
                    self._router.send_direct(o.message_id, o.data, o.user_id, o.device_id, connect)
                    for o in sealed
                )
            )
        outcomes = []
        for o, ok in zip(sealed, direct, strict=True):
            if ok:
                outcomes.append(DeviceOutcome(o.user_id, o.device_id, DIRECT, SENT))
                if persistent:
                    await self._settle(o, DIRECT, SENT)
            else:
                outcomes.append(await self._via_server(o, persistent))
        return outcomes

    async def _via_server(self, o: Outbound, persistent: bool) -> DeviceOutcome:
        try:
            accepted = await self._server.send_envelope(
                o.message_id,
                b64encode(o.data),
                [RecipientDevice(user_id=o.user_id, device_id=o.device_id)],
                within=self._server_deadline,
            )
        except (ServerUnavailable, DeliveryTimeout) as e:
            return DeviceOutcome(o.user_id, o.device_id, None, PENDING, str(e))  # flushed after reconnect
        except ServerError as e:
            if persistent:
                await self._settle(o, None, FAILED)
            return DeviceOutcome(o.user_id, o.device_id, None, FAILED, str(e))
        path = RELAYED if o.device_id in accepted.live else QUEUED
        if persistent:
            await self._settle(o, path, SENT)
        return DeviceOutcome(o.user_id, o.device_id, path, SENT)

    async def send_traffic(self, outbound: list[Outbound]) -> None:
        """Heal requests and resends: outgoing traffic like any other (kept until sent)."""
        if not outbound:
            return

        def _keep_all(db: sqlite3.Connection) -> None:
            for o in outbound:
                self._keep(db, o)

        await self._store.transaction(_keep_all)
        await self.deliver(outbound, connect=True, persistent=True)

    async def flush(self) -> list[str]:
        """After a reconnect: every PPR message still waiting for the server; the message ids."""

        def _rows(db: sqlite3.Connection) -> list[tuple[str, str, int, bytes]]:
            return db.execute(
                "SELECT message_id, device_id, user_id, data FROM pairwise_outbox ORDER BY created_ms"
            ).fetchall()

        done = []
        for message_id, device_id, user_id, data in await self._store.transaction(_rows):
            outcome = await self._via_server(Outbound(user_id, device_id, message_id, data), True)
            if outcome.state == PENDING:
                break
            done.append(message_id)
        return done

    # --- receiving ------------------------------------------------------------------------------

    async def receive(
        self, data: bytes, *, stored: Callable[[Received, Inner], StoredMessage | None]
    ) -> Opened:
        """Open one PPR message. `stored(received, inner)` says what to save as a message (text and
        files); it is saved in the same transaction as the ratchet state that opened it."""
        box: dict[str, Inner] = {}
        saved: list[StoredMessage] = []

        def _store_with(db: sqlite3.Connection, received: Received) -> None:
            assert received.plaintext is not None
            inner = decode_inner(received.plaintext)  # MalformedEnvelope: nothing is committed
            box["inner"] = inner
            message = stored(received, inner)
            if message is not None and self._store.insert_message(db, message):
                saved.append(message)

        received = await self.sessions.open(data, store_with=_store_with)
        inner = box.get("inner") if received.outcome is Outcome.DELIVERED else None
        return Opened(received, inner, saved[0] if saved else None)


DAY_S = 24 * 3600.0


def build(
    *,
    store: LocalStore,
    keys: DeviceKeys,
    user_id: int,
    device_id: str,
    client: ServerClient,
    pinned: Callable[[int, str], bytes | None],
    router: Router,
    server: ServerPath,
    server_deadline: float,
) -> tuple[PairwisePath, PrekeyStock]:
    """The node's ratchet path: this device's prekey stock and sessions, wired to the REST claim."""
    stock = PrekeyStock(store, keys, device_id)

    async def claim(peer_user: int, peer_device: str) -> PrekeyBundle | None:
        got = await client.claim_prekey_bundles(peer_user, [peer_device])
        return bundle_from_wire(got[0]) if got else None

    sessions = SessionManager(store, keys, user_id, device_id, pinned=pinned, claim=claim, prekeys=stock)
    return PairwisePath(sessions, store, router, server, server_deadline=server_deadline), stock


async def maintain(path: PairwisePath, stock: PrekeyStock, client: ServerClient) -> None:
    """Once a day while the node runs: rotate and refill the prekeys, prune old sessions."""
    while True:
        await asyncio.sleep(DAY_S)
        try:
            await stock.refresh(client)
        except ServerError as e:
            log.info("prekey refresh failed (next in a day, or at the next connect): %s", e)
        await path.sessions.prune()
