"""Pairwise sessions of this device: one double ratchet per (this device, their device), kept in
the local store, saved in the same transaction as the message it produced or consumed, and healed
when one side cannot decrypt.

The node (inbox/outbox) uses four calls:

- `seal(peer_user, peer_device, plaintext, message_id, also=...)` → `Outbound` (the PPR bytes to
  send). Starts a session from a claimed prekey bundle when there is none. The advanced state, the
  plaintext kept for a resend, and whatever `also(db, outbound)` writes (the outbox row with the
  sealed bytes) commit together.
- `open(data, store_with=...)` → `Received`. `store_with(db, received)` runs inside the same
  transaction as the ratchet state update, so the message and the state that opened it are saved
  together or not at all. Outcomes: `DELIVERED`; `DUPLICATE` (seen before, nothing decrypted: ack
  it and send the delivery receipt again, so a resend stops); `UNDECRYPTABLE` (the state is lost,
  rolled back or the message was altered: `reply` is a signed heal request for the sender,
  rate-limited per device and session); `HEAL_REQUEST` (the peer asked: a new session was started
  if the one it named is ours, and `resend` holds, re-sealed with the same message ids, every kept
  message the peer's list of what it has shows missing); when the request showed that *our*
  sending state was stale (restored from an older copy), `reply` asks the peer in turn.
- `acknowledge(peer_device, message_ids)` when a delivery receipt arrives. Copies of sent messages
  are kept (sealed) for the mailbox retention either way: a peer restored from an older copy may
  lack what it had acknowledged.
- `resync(peer_user, peer_device)` → a request for what that device sent that we lack (after a
  known restore).
- `prune()` once in a while.

`Received.reestablished` is true exactly once, on the first message of the new session after this
device asked for healing: the UI shows "secure session re-established" then.

It never talks to the network itself: `claim(user_id, device_id)` (the node passes the REST call)
returns an unverified bundle, which is verified here against the pinned identity key.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

from crypto import pairwise
from crypto.errors import CryptoError, IdentityMismatch, NoSession, SessionError
from crypto.keys import DeviceKeys
from crypto.pairwise import MessageKind, PairwiseSession
from crypto.prekeys import PrekeyBundle, PrekeyKind, verify_prekey_bundle
from peer import ratchetstore as rs
from peer.errors import PeerError
from peer.localstore import LocalStore, now_ms
from peer.prekeystock import PrekeyStock

DAY_MS = 24 * 3600 * 1000
RETENTION_MS = 30 * DAY_MS  # the mailbox's default retention: sessions and resend copies kept as long
HEAL_INTERVAL_MS = 10 * 60 * 1000  # at most one heal request per device and session per interval
NO_SESSION = bytes(16)  # a heal request naming no session: "resend what I lack", no new session

PinnedIdentity = Callable[[int, str], bytes | None]
ClaimBundle = Callable[[int, str], Awaitable[PrekeyBundle | None]]


class NoPrekeys(PeerError):
    """The peer device has published no prekeys (or the server did not answer a bundle for it)."""


class Outcome(StrEnum):
    DELIVERED = "delivered"
    DUPLICATE = "duplicate"
    UNDECRYPTABLE = "undecryptable"
    HEAL_REQUEST = "heal_request"


@dataclass(frozen=True)
class Outbound:
    user_id: int
    device_id: str
    message_id: str
    data: bytes = field(repr=False)


@dataclass(frozen=True)
class Received:
    outcome: Outcome
    sender_user: int
    sender_device: str
    message_id: str
    plaintext: bytes | None = field(default=None, repr=False)  # never in a log line
    reestablished: bool = False
    reply: Outbound | None = None  # a heal request to send to the sender device (send it too)
    resend: list[Outbound] = field(default_factory=list)  # HEAL_REQUEST: re-sealed unacked messages
    reason: str | None = None  # UNDECRYPTABLE: why (for the log and the UI; no secrets)


def new_message_id() -> str:
    return os.urandom(16).hex()


class SessionManager:
    def __init__(
        self,
        store: LocalStore,
        keys: DeviceKeys,
        user_id: int,
        device_id: str,
        *,
        pinned: PinnedIdentity,
        claim: ClaimBundle,
        prekeys: PrekeyStock,
        heal_interval_ms: int = HEAL_INTERVAL_MS,
        retention_ms: int = RETENTION_MS,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self._store = store
        self._keys = keys
        self.user_id = user_id
        self.device_id = device_id
        self._pinned = pinned
        self._claim = claim
        self._prekeys = prekeys
        self._heal_interval_ms = heal_interval_ms
        self._retention_ms = retention_ms
        self._clock = clock_ms
        # One operation at a time per peer device: its state is read, advanced and written as one
        # step, and a session set-up (a network claim) must not race another for the same device;
        # other devices' traffic never waits behind it.
        self._locks: dict[str, asyncio.Lock] = {}

    def _lock(self, peer_device: str) -> asyncio.Lock:
        lock = self._locks.get(peer_device)
        if lock is None:
            lock = self._locks[peer_device] = asyncio.Lock()
        return lock

    # --- sending --------------------------------------------------------------------------------

    async def _new_session(self, peer_user: int, peer_device: str) -> PairwiseSession:
        pinned = self._pinned(peer_user, peer_device)
        if pinned is None:
            raise NoPrekeys(f"no pinned identity key for device {peer_device} of user {peer_user}")
        bundle = await self._claim(peer_user, peer_device)
        if bundle is None:
            raise NoPrekeys(f"device {peer_device} of user {peer_user} has no prekeys on the server")
        verified = verify_prekey_bundle(bundle, pinned)  # PrekeyInvalid if the server lies
        at = self._clock()
        return pairwise.start_session(self._keys, self.user_id, self.device_id, verified, now_ms=at)

    def _seal_tx(
        self,
        db: sqlite3.Connection,
        session: PairwiseSession | None,
        peer_user: int,
        peer_device: str,
        items: list[tuple[str, bytes]],
        keep: bool,
        also: Callable[[sqlite3.Connection, Outbound], None] | None,
    ) -> list[Outbound]:
        at = self._clock()
        if session is None:
            sid = rs.active_session_id(db, peer_device)
            session = None if sid is None else rs.load_session(self._store, db, peer_device, sid)
            if session is None:
                raise NoPrekeys("the session disappeared while sealing")  # not reached: device locked
        out = []
        for message_id, plaintext in items:
            out.append(
                Outbound(peer_user, peer_device, message_id, pairwise.seal(session, plaintext, message_id))
            )
            if keep:
                rs.keep_sent(self._store, db, peer_user, peer_device, message_id, plaintext, at)
        rs.save_session(self._store, db, session, at, make_active=True)
        if also is not None:
            for o in out:
                also(db, o)
        return out

    async def _active(self, peer_device: str) -> PairwiseSession | None:
        def _get(db: sqlite3.Connection) -> PairwiseSession | None:
            sid = rs.active_session_id(db, peer_device)
            return None if sid is None else rs.load_session(self._store, db, peer_device, sid)

        return await self._store.transaction(_get)

    async def seal(
        self,
        peer_user: int,
        peer_device: str,
        plaintext: bytes,
        message_id: str,
        *,
        keep_for_resend: bool = True,
        also: Callable[[sqlite3.Connection, Outbound], None] | None = None,
    ) -> Outbound:
        """Encrypt `plaintext` for one device (starting a session if needed); see the module doc."""
        async with self._lock(peer_device):
            fresh = (
                None
                if await self._active(peer_device) is not None
                else await self._new_session(peer_user, peer_device)
            )
            (out,) = await self._store.transaction(
                lambda db: self._seal_tx(
                    db, fresh, peer_user, peer_device, [(message_id, plaintext)], keep_for_resend, also
                )
            )
            return out

    async def resync(self, peer_user: int, peer_device: str) -> Outbound:
        """A signed request (naming no session) for everything the peer device sent after the
        newest message we still have from it. For a store known to be restored from an older
        copy: a restore that needs no ratchet step is otherwise not noticed by either side."""
        async with self._lock(peer_device):

            def _tx(db: sqlite3.Connection) -> Outbound:
                data = pairwise.make_heal_request(
                    self._keys, self.user_id, self.device_id, peer_device, new_message_id(), NO_SESSION, [],
                    have_message_ids=rs.newest_seen_from(db, peer_device), at_ms=self._clock(),
                )  # fmt: skip
                return Outbound(peer_user, peer_device, pairwise.peek(data).message_id, data)

            return await self._store.transaction(_tx)

    async def acknowledge(self, peer_device: str, message_ids: list[str]) -> None:
        """The peer device confirmed these: no resend copy is needed any more."""
        await self._store.transaction(lambda db: rs.acknowledge(db, peer_device, message_ids))

    async def reset(self, peer_device: str) -> None:
        """Forget every session with a device (its key changed or it was revoked)."""
        async with self._lock(peer_device):
            await self._store.transaction(lambda db: rs.drop_sessions(db, peer_device))

    async def prune(self) -> None:
        cutoff = self._clock() - self._retention_ms

        def _prune(db: sqlite3.Connection) -> None:
            rs.prune_sessions(db, cutoff)
            rs.prune_sent(db, cutoff)

        await self._store.transaction(_prune)
        await self._store.prune_seen(self._clock())  # received ids: the same window, plus a margin

    # --- receiving ------------------------------------------------------------------------------

    async def open(
        self, data: bytes, *, store_with: Callable[[sqlite3.Connection, Received], None] | None = None
    ) -> Received:
        """Open one received PPR message (see the module doc for the outcomes).

        Raises `MalformedSessionMessage` for bytes that are not a PPR message (`is_pairwise`
        tells them from an envelope), `SignatureInvalid` for a forged heal request, and
        `NoPrekeys` when a heal request needs a new session but the peer has no prekeys."""
        parsed = pairwise.peek(data)  # MalformedSessionMessage: the caller acks and reports it
        if parsed.recipient_device != self.device_id:
            raise SessionError(
                f"message for device {parsed.recipient_device} reached device {self.device_id}"
            )
        async with self._lock(parsed.sender_device):
            if self._store.seen_before(parsed.sender_device, parsed.message_id):
                return Received(
                    Outcome.DUPLICATE, parsed.sender_user, parsed.sender_device, parsed.message_id
                )
            if parsed.kind is MessageKind.HEAL_REQUEST:
                return await self._on_heal_request(parsed)
            received = await self._store.transaction(lambda db: self._open_tx(db, parsed, store_with))
            if received.outcome is Outcome.DELIVERED:
                self._store.remember_after_commit([(parsed.sender_device, parsed.message_id)])
            return received

    def _open_tx(
        self,
        db: sqlite3.Connection,
        parsed: pairwise.ParsedMessage,
        store_with: Callable[[sqlite3.Connection, Received], None] | None,
    ) -> Received:
        at = self._clock()
        device = parsed.sender_device
        try:
            session = rs.load_session(self._store, db, device, parsed.session_id)
            new = session is None
            if session is None:
                if parsed.kind is not MessageKind.PREKEY:
                    raise NoSession(f"no session {parsed.session_id.hex()} with device {device}")
                session = pairwise.accept_session(
                    self._keys,
                    self.user_id,
                    self.device_id,
                    parsed,
                    self._pinned(parsed.sender_user, device),
                    self._prekeys.lookup(db),
                    now_ms=at,
                )
            if session.remote_user != parsed.sender_user:
                raise IdentityMismatch(f"device {device} belongs to user {session.remote_user}")
            plaintext = pairwise.open_message(session, parsed, now_s=at // 1000)
        except IdentityMismatch as e:
            # a key change, not a lost state: a new session would not help; the UI warns instead
            return Received(
                Outcome.UNDECRYPTABLE, parsed.sender_user, device, parsed.message_id, reason=str(e)
            )
        except CryptoError as e:
            return self._undecryptable(db, parsed, e, at)
        if new and parsed.prekey is not None:  # one-time keys go with the session that used them
            if parsed.prekey.one_time_prekey_id:
                rs.delete_prekey(db, PrekeyKind.ONE_TIME, parsed.prekey.one_time_prekey_id)
            if parsed.prekey.kem_kind is PrekeyKind.KEM_ONE_TIME:
                rs.delete_prekey(db, PrekeyKind.KEM_ONE_TIME, parsed.prekey.kem_prekey_id)
        active = rs.active_session_id(db, device)
        make_active = new or active is None
        if not make_active and active != session.session_id:
            current = rs.load_session(self._store, db, device, active)  # type: ignore[arg-type]
            make_active = current is None or session.created_at_ms > current.created_at_ms
        rs.save_session(self._store, db, session, at, make_active=make_active)
        healing = rs.heal_requested(db, device)
        reestablished = False
        if healing is not None and session.session_id != healing[0] and session.created_at_ms >= healing[1]:
            reestablished = rs.clear_heal_request(db, device)
        db.execute(
            "INSERT OR IGNORE INTO seen (sender_device, message_id, at_ms) VALUES (?,?,?)",
            (device, parsed.message_id, at),
        )
        received = Received(
            Outcome.DELIVERED, parsed.sender_user, device, parsed.message_id, plaintext, reestablished
        )
        if store_with is not None:
            store_with(db, received)
        return received

    def _undecryptable(
        self, db: sqlite3.Connection, parsed: pairwise.ParsedMessage, error: CryptoError, at: int
    ) -> Received:
        """Nothing of the failed attempt is saved; a heal request goes back unless one for this
        session went out within the interval (a burst of undecryptable mail asks once)."""
        device = parsed.sender_device
        last = rs.heal_requested(db, device)
        reply = None
        if last is None or last[0] != parsed.session_id or at - last[1] >= self._heal_interval_ms:
            rs.record_heal_request(db, device, parsed.session_id, at)
            data = pairwise.make_heal_request(
                self._keys, self.user_id, self.device_id, device, new_message_id(), parsed.session_id,
                [parsed.message_id], have_message_ids=rs.newest_seen_from(db, device), at_ms=at,
            )  # fmt: skip
            reply = Outbound(parsed.sender_user, device, pairwise.peek(data).message_id, data)
        return Received(
            Outcome.UNDECRYPTABLE,
            parsed.sender_user,
            device,
            parsed.message_id,
            reply=reply,
            reason=str(error),
        )

    async def _on_heal_request(self, parsed: pairwise.ParsedMessage) -> Received:
        request = pairwise.verify_heal_request(parsed, self._pinned(parsed.sender_user, parsed.sender_device))
        device, user = request.requester_device, request.requester_user
        named = request.session_id != NO_SESSION
        active = await self._active(device)
        items = await self._store.transaction(
            lambda db: rs.to_resend(self._store, db, device, request.have_message_ids)
        )
        fresh = None
        if (named and (active is None or active.session_id == request.session_id)) or (
            not named and active is None and items
        ):
            # The session it could not read is the one we use (or we have none): start anew. If it
            # names an older one, ours may work for it: resend on ours (a failure there asks again,
            # naming ours). Clocks of the two devices are never compared.
            fresh = await self._new_session(user, device)

        def _tx(db: sqlite3.Connection) -> tuple[list[Outbound], Outbound | None]:
            at = self._clock()
            db.execute(
                "INSERT OR IGNORE INTO seen (sender_device, message_id, at_ms) VALUES (?,?,?)",
                (device, request.request_id, at),
            )
            resend = self._seal_tx(db, fresh, user, device, items, False, None) if items or fresh else []
            counter = None
            if fresh is not None and named:
                # Our sending state was one it could not read: ours was likely restored from an
                # older copy, so we may lack what it sent since. Ask for that (no new session).
                data = pairwise.make_heal_request(
                    self._keys, self.user_id, self.device_id, device, new_message_id(), NO_SESSION, [],
                    have_message_ids=rs.newest_seen_from(db, device), at_ms=at,
                )  # fmt: skip
                counter = Outbound(user, device, pairwise.peek(data).message_id, data)
            return resend, counter

        resend, counter = await self._store.transaction(_tx)
        self._store.remember_after_commit([(device, request.request_id)])
        return Received(Outcome.HEAL_REQUEST, user, device, request.request_id, reply=counter, resend=resend)
