"""The hub: the live WebSocket of every connected device, and what happens to each frame.

One socket per device (a new one replaces the old with close code REPLACED). A socket's life:
authenticate → `ready` → drain the device's mailbox in order (`deliver`, queued) → `drained` →
live traffic until it closes. Per socket there are three tasks, owned by one TaskGroup: the reader
(validates and dispatches client frames), the writer (the only one that writes to the socket), and a
watcher (closes it when asked). A send's `accepted` is pushed by a callback on its commit; the
mailbox writer commits in submission order, so answers keep the order of the frames.

Send semantics (docs/hub.md): every recipient device gets a mailbox row, committed, before the
sender hears `accepted`; connected devices also get the envelope pushed at once; a row is deleted
only when its device acks it. So a live push lost with a dropping socket comes back from the
mailbox on the next connect, and a server killed at any moment has lost nothing it accepted.

The hub never decodes an envelope beyond base64url, and never logs one.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from signalling.backplane import Backplane, InProcessBackplane
from signalling.device_socket import CLOSE_TOO_SLOW, DeviceSocket, Outgoing
from signalling.errors import FrameRefused, HubAuthError, HubError
from signalling.limits import HubLimits
from signalling.presence import Presence
from signalling.protocol import (
    CLIENT_FRAME,
    DEVICE_ID_PATTERN,
    AckFrame,
    AuthFrame,
    CloseCode,
    DeliverFrame,
    DrainedFrame,
    ErrorCode,
    PingFrame,
    PongFrame,
    ReadyFrame,
    RecipientDevice,
    SendFrame,
    SignalFrame,
    b64encode,
)
from signalling.ratelimit import TokenBucket
from signalling.reach import Reach
from store import mailbox, reach
from store.mailbox import MailboxClosed, MailboxError, MailboxQuotaExceeded, MailboxWriter, NewMessage

# Names other modules (routes, tests) import from here.
__all__ = [
    "CLOSE_TOO_SLOW",
    "Authenticator",
    "DeviceSocket",
    "Hub",
    "HubAuthError",
    "HubError",
    "HubLimits",
    "accepted_json",
    "deliver_json",
]

log = logging.getLogger(__name__)

# Resolves a bearer access token to its user id; raises HubAuthError (or any Exception) when bad.
Authenticator = Callable[[str], Awaitable[int]]

_DEVICE_ID = re.compile(DEVICE_ID_PATTERN.removeprefix("^").removesuffix("$"))


@dataclass(slots=True, eq=False)
class _Held:
    """A send pushed live to every recipient device and not stored yet.

    It is answered `accepted` when every device has acked it (they saved it: no row is needed),
    or, when `deadline` passes first, its rows for the devices still silent are handed to the
    mailbox writer and it is answered after their commit, as any other send.
    """

    sock: DeviceSocket
    frame: SendFrame
    targets: list[RecipientDevice]  # checked and de-duplicated
    waiting: set[str]  # recipient devices that have not acked yet
    deadline: float
    settled: bool = False  # out of the hold: acked by all, or handed to the writer
    commit: asyncio.Future[None] | None = None  # the writer's future, once handed to it
    acked: asyncio.Future[None] | None = None  # made only when a ping waits for this send

    def barrier(self) -> asyncio.Future[None] | None:
        """What a `ping` behind this send waits for (None: it is answered already)."""
        if self.commit is not None:
            return self.commit
        if self.settled:
            return None
        if self.acked is None:
            self.acked = asyncio.get_running_loop().create_future()
        return self.acked


class _Closing(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Hub:
    """All live sockets of this instance. Created by the app factory; `start()`/`close()` in lifespan."""

    def __init__(
        self,
        engine: AsyncEngine,
        authenticate: Authenticator,
        limits: HubLimits | None = None,
        backplane: Backplane | None = None,
    ) -> None:
        self.limits = limits or HubLimits()
        self._engine = engine
        self._authenticate = authenticate
        self.backplane = backplane or InProcessBackplane()
        self.presence = Presence(engine, self.backplane, self.limits.presence_grace)
        self.writer = MailboxWriter(
            engine,
            retention=self.limits.mailbox_retention,
            device_quota_bytes=self.limits.mailbox_quota_bytes,
            device_quota_messages=self.limits.mailbox_quota_messages,
        )
        self._sockets: dict[str, DeviceSocket] = {}
        self._by_user: dict[int, set[str]] = {}
        self._reach = Reach(engine, self.limits.reach_cache_ttl)
        self._janitor: asyncio.Task[None] | None = None
        self._held: dict[tuple[str, str], _Held] = {}  # (recipient device, message id) -> hold
        self._hold_order: collections.deque[_Held] = collections.deque()  # by deadline
        self._hurried: list[_Held] = []  # holds whose device's socket went away: store them now
        self._hold_wakeup = asyncio.Event()
        self._hold_keeper: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.writer.start()
        await self.backplane.start(self)
        self._janitor = asyncio.create_task(self._purge_periodically(), name="mailbox-janitor")
        self._hold_keeper = asyncio.create_task(self._expire_holds(), name="live-holds")

    async def close(self) -> None:
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
            self._janitor = None
        if self._hold_keeper is not None:
            self._hold_keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._hold_keeper
            self._hold_keeper = None
        # Held sends are not lost on a clean shutdown: their rows join the writer's last batches.
        while self._hold_order:
            await self._store_held(self._hold_order.popleft())
        for sock in list(self._sockets.values()):
            sock.close(CloseCode.SERVER_SHUTDOWN, "the server is shutting down")
        await self.presence.close()
        await self.backplane.close()
        await self.writer.close()

    async def _purge_periodically(self) -> None:
        while True:
            try:
                await self.purge_expired()
            except Exception:
                log.exception("mailbox purge failed; retrying at the next interval")
            await asyncio.sleep(self.limits.purge_interval)

    async def purge_expired(self) -> int:
        async with self._engine.begin() as conn:
            removed = await mailbox.purge_expired(conn)
        if removed:
            self.writer.forget_usage()
            log.info("purged %d expired mailbox rows", removed)
        return removed

    # -- what the REST side calls ------------------------------------------------------------------

    async def disconnect_user(
        self, user_id: int, code: int = CloseCode.ACCOUNT_GONE, reason: str = ""
    ) -> None:
        """Close every socket of the user on every instance (logout, password change, deletion)."""
        await self.backplane.disconnect_user(user_id, code, reason or "the account was logged out")

    async def disconnect_device(
        self, user_id: int, device_id: str, code: int = CloseCode.ACCOUNT_GONE, reason: str = ""
    ) -> None:
        """Close the device's socket wherever it is (revocation); its permissions are re-read."""
        self._reach.clear()
        await self.backplane.disconnect_device(device_id, code, reason or "the device was revoked")

    def forget_reach(self) -> None:
        """Contacts or devices changed: re-check permissions from the database from now on."""
        self._reach.clear()

    async def is_online(self, user_id: int) -> bool:
        return await self.presence.is_online(user_id)

    async def push_to_user(self, user_id: int, text: str) -> None:
        """Push one server frame to every live device of the user, on whichever instance holds it.

        For news made over REST (contact changes). Nothing is stored: a device that is away misses
        it and learns the state from REST when it comes back.
        """
        await self.backplane.send_to_user(user_id, text)

    async def introduce(self, a: int, b: int) -> None:
        """`a` and `b` just became accepted contacts: each hears which devices of the other are
        online now, instead of only at the other's next reconnect."""
        await self.presence.introduce(a, b)

    def connected_devices(self) -> int:
        return len(self._sockets)

    # -- LocalSockets (called by the backplane) ----------------------------------------------------

    def deliver_to_device(self, device_id: str, text: str, message_id: str | None) -> bool:
        sock = self._sockets.get(device_id)
        return sock is not None and sock.push(Outgoing(text, message_id))

    def deliver_to_user(self, user_id: int, text: str) -> None:
        for device_id in self._by_user.get(user_id, ()):
            self._sockets[device_id].push(Outgoing(text))

    def close_device(self, device_id: str, code: int, reason: str, unless_conn: str | None) -> None:
        if unless_conn is None:  # a revocation (possibly from another instance), not a replacement
            self._reach.clear()
        sock = self._sockets.get(device_id)
        if sock is not None and sock.conn_id != unless_conn:
            sock.close(code, reason)

    async def device_vanished(self, user_id: int, device_id: str) -> None:
        await self.presence.device_vanished(user_id, device_id)

    def close_user(self, user_id: int, code: int, reason: str) -> None:
        for device_id in list(self._by_user.get(user_id, ())):
            self._sockets[device_id].close(code, reason)

    # -- one socket --------------------------------------------------------------------------------

    async def serve(self, ws: WebSocket) -> None:
        """Run one client socket from accept to close. Never raises for client mistakes."""
        await ws.accept()
        try:
            user_id, device_id = await self._authenticate_socket(ws)
        except HubAuthError as exc:
            await _close_quietly(ws, CloseCode.UNAUTHORIZED, str(exc))
            return
        except WebSocketDisconnect:
            return

        sock = DeviceSocket(ws, user_id, device_id, self.limits.outbox_size)
        self._register(sock)
        replaced = False
        try:
            await self.backplane.attach(user_id, device_id, sock.conn_id, CloseCode.REPLACED)
            await self.presence.device_came(user_id, device_id)
            await self._run_socket(sock)
        finally:
            replaced = self._unregister(sock)
            with contextlib.suppress(Exception):
                await self.backplane.detach(user_id, device_id, sock.conn_id)
            code, reason = sock.closing or (1000, "")
            if sock.closing is not None:
                await _close_quietly(ws, code, reason)
            if not replaced and code != CloseCode.REPLACED:
                with contextlib.suppress(Exception):
                    await self.presence.device_left(user_id, device_id)

    def _register(self, sock: DeviceSocket) -> None:
        old = self._sockets.get(sock.device_id)
        if old is not None:
            old.close(CloseCode.REPLACED, "this device connected again; this socket is replaced")
        self._sockets[sock.device_id] = sock
        self._by_user.setdefault(sock.user_id, set()).add(sock.device_id)

    def _unregister(self, sock: DeviceSocket) -> bool:
        """Forget the socket; True when a newer socket already holds the device."""
        if self._sockets.get(sock.device_id) is not sock:
            return True
        del self._sockets[sock.device_id]
        self._hurry_holds(sock.device_id)
        devices = self._by_user.get(sock.user_id)
        if devices is not None:
            devices.discard(sock.device_id)
            if not devices:
                del self._by_user[sock.user_id]
        return False

    async def _authenticate_socket(self, ws: WebSocket) -> tuple[int, str]:
        header = ws.headers.get("authorization", "")
        if header:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise HubAuthError("the Authorization header must be 'Bearer <access token>'")
            device_id = ws.query_params.get("device_id")
            if not device_id:
                raise HubAuthError("the device_id query parameter is missing")
        else:
            try:
                async with asyncio.timeout(self.limits.auth_timeout):
                    text = await ws.receive_text()
            except TimeoutError as exc:
                raise HubAuthError("no auth frame within the deadline") from exc
            except (KeyError, RuntimeError) as exc:
                raise HubAuthError("the first frame must be a text auth frame") from exc
            try:
                frame = AuthFrame.model_validate_json(text)
            except ValidationError as exc:
                raise HubAuthError("the first frame must be an auth frame with token and device_id") from exc
            token, device_id = frame.token, frame.device_id
        if not _DEVICE_ID.fullmatch(device_id):
            raise HubAuthError("device_id must be 8 to 64 characters of A-Z, a-z, 0-9, '_' or '-'")
        try:
            user_id = await self._authenticate(token)
        except Exception as exc:
            raise HubAuthError("the access token is invalid, expired or revoked") from exc
        async with self._engine.connect() as conn:
            owner = await reach.device_owner(conn, device_id)
        if owner is None or owner.user_id != user_id:
            raise HubAuthError(f"device {device_id} is not a published device of this account")
        if not owner.active:
            raise HubAuthError(f"device {device_id} has been revoked")
        return user_id, device_id

    async def _run_socket(self, sock: DeviceSocket) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._read(sock))
                tg.create_task(self._write(sock))
                tg.create_task(self._watch(sock))
        except* (_Closing, WebSocketDisconnect):
            pass
        finally:
            # Sends already handed to the writer still commit; their `accepted` has nobody to go
            # to, and the sender's client resends what it did not see accepted (idempotent).
            sock.gone = True

    async def _watch(self, sock: DeviceSocket) -> None:
        await sock.closed.wait()
        code, reason = sock.closing or (1000, "")
        raise _Closing(code, reason)

    # The reader: validate, check permissions, hand work on. It never writes to the socket itself.

    async def _read(self, sock: DeviceSocket) -> None:
        bucket = TokenBucket(self.limits.rate_per_second, self.limits.rate_burst)
        limit = self.limits.max_frame_bytes
        while True:
            message = await sock.ws.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            text = message.get("text")
            if text is None:
                raw = message.get("bytes") or b""
                size = len(raw)
            else:
                size = len(text) if text.isascii() else len(text.encode("utf-8"))
            if size > limit:
                if not self._charge(sock, bucket):
                    return
                sock.refuse(ErrorCode.TOO_LARGE, f"frame of {size} bytes is over the {limit}-byte limit")
                continue
            if text is None:
                if not self._charge(sock, bucket):
                    return
                sock.refuse(ErrorCode.MALFORMED, "frames must be JSON text, not binary")
                continue
            try:
                frame = CLIENT_FRAME.validate_json(text)
            except ValidationError as exc:
                if not self._charge(sock, bucket):
                    return
                sock.refuse(ErrorCode.MALFORMED, _describe(exc), _ref_of(text))
                continue
            # An ack answers a frame the server sent: a device coming back to a full mailbox acks
            # thousands at once, and that is not a flood. Acks beyond what was delivered are charged.
            if isinstance(frame, AckFrame) and sock.ack_credit > 0:
                sock.ack_credit = max(0, sock.ack_credit - _ack_count(frame))
            elif not self._charge(sock, bucket):
                return
            try:
                await self._dispatch(sock, frame)
            except FrameRefused as exc:
                sock.refuse(exc.code, exc.message, getattr(frame, "ref", None))

    def _charge(self, sock: DeviceSocket, bucket: TokenBucket) -> bool:
        """Take one frame from the socket's budget; close it (False) when the budget is spent."""
        if bucket.take():
            return True
        sock.close(
            CloseCode.RATE_LIMITED,
            f"too many frames: more than {self.limits.rate_per_second:g} per second "
            f"(burst {self.limits.rate_burst})",
        )
        return False

    async def _dispatch(self, sock: DeviceSocket, frame: Any) -> None:
        if isinstance(frame, PingFrame):
            # A pong comes after every earlier send and ack of this socket has been committed (the
            # writer commits in order, so waiting for the last one is waiting for all of them).
            pong = Outgoing(PongFrame(nonce=frame.nonce).model_dump_json())
            last = sock.last_commit
            if isinstance(last, _Held):
                last = last.barrier()
            if last is None or last.done():
                sock.push(pong)
            else:
                last.add_done_callback(lambda _f: sock.push(pong))
        elif isinstance(frame, SendFrame):
            await self._on_send(sock, frame)
        elif isinstance(frame, AckFrame):
            ids = [m for m in frame.ids() if not self._release_hold(sock.device_id, m)]
            if ids:  # the rest have (or may have) rows: delete them, after their insert
                future = await self.writer.submit_ack(sock.device_id, ids)
                sock.last_commit = future
                future.add_done_callback(lambda f: self._after_ack(sock, f, ids))
        elif isinstance(frame, SignalFrame):
            await self._on_signal(sock, frame)
        elif isinstance(frame, AuthFrame):
            raise FrameRefused(ErrorCode.MALFORMED, "this socket is already authenticated")

    async def _on_send(self, sock: DeviceSocket, frame: SendFrame) -> None:
        # The alphabet was checked by the frame's validator; only the length can be wrong.
        if len(frame.envelope) % 4 == 1:
            raise FrameRefused(ErrorCode.MALFORMED, "envelope is not unpadded base64url (bad length)")
        seen: set[str] = set()
        targets: list[RecipientDevice] = []
        for r in frame.recipients:
            if r.device_id in seen:
                continue
            seen.add(r.device_id)
            await self._reach.check(sock.user_id, r.user_id, r.device_id)
            targets.append(r)
        deliver = deliver_json(frame.message_id, sock.user_id, sock.device_id, frame.envelope)
        if self.limits.live_hold > 0 and all(t.device_id in self._sockets for t in targets):
            # Every recipient has a socket here: push now, store only if they do not all ack
            # within the hold (most live traffic then never touches the disk).
            mid = frame.message_id
            live = [t.device_id for t in targets if self.deliver_to_device(t.device_id, deliver, mid)]
            if len(live) == len(targets):
                self._hold(sock, frame, targets)
                return
            rows = _rows(sock, frame, targets)
            future = await self.writer.submit_store(rows)
        else:
            rows = _rows(sock, frame, targets)
            future = await self.writer.submit_store(rows)
            # Pushed live now, before the commit: the recipient may even ack before it, which is
            # safe because the writer applies this insert before any later ack. `accepted` still
            # waits for the commit (a callback on it, below), so what the sender hears stays true
            # after a crash.
            live = [
                row.recipient_device
                for row in rows
                if await self._push_live(row.recipient_device, deliver, frame)
            ]

        sock.last_commit = future
        future.add_done_callback(lambda f: self._after_store(sock, f, frame, live, rows))

    # Live holds: an envelope every recipient got live waits up to `live_hold` for their acks.

    def _hold(self, sock: DeviceSocket, frame: SendFrame, targets: list[RecipientDevice]) -> None:
        deadline = time.monotonic() + self.limits.live_hold
        held = _Held(sock, frame, targets, {t.device_id for t in targets}, deadline)
        for t in targets:
            self._held[(t.device_id, frame.message_id)] = held
        self._hold_order.append(held)
        if len(self._hold_order) == 1:
            self._hold_wakeup.set()  # the keeper sleeps without a deadline while there is none
        sock.last_commit = held

    def _release_hold(self, device_id: str, message_id: str) -> bool:
        """An ack of a held envelope: True when it was held (then it has no row to delete)."""
        held = self._held.pop((device_id, message_id), None)
        if held is None:
            return False
        held.waiting.discard(device_id)
        if not held.waiting:
            held.settled = True
            if held.acked is not None:
                held.acked.set_result(None)
            if not held.sock.gone:
                devices = [t.device_id for t in held.targets]
                held.sock.push(
                    Outgoing(accepted_json(held.frame.ref, held.frame.message_id, devices, []), accepted=True)
                )
        return True

    def _holds_of(self, device_id: str) -> set[_Held]:
        return {held for (device, _), held in self._held.items() if device == device_id}

    def _hurry_holds(self, device_id: str) -> None:
        """The device's socket went away: what it had not acked is stored now, not at the deadline."""
        hurried = self._holds_of(device_id)
        if hurried:
            self._hurried.extend(hurried)
            self._hold_wakeup.set()

    async def _settle_holds_of(self, device_id: str) -> None:
        """Before a socket drains: store what earlier sockets of the device were pushed and did not
        ack, and wait until everything already handed to the writer is committed, so the drain sees
        every row (a live push to a dying socket comes back from the mailbox at once, not on the
        next connect)."""
        for held in self._holds_of(device_id):
            await self._store_held(held)
        try:
            async with asyncio.timeout(self.limits.auth_timeout):
                await (await self.writer.submit_ack(device_id, []))  # a barrier: an empty job
        except (TimeoutError, MailboxError) as exc:
            log.warning("draining %s without waiting for queued commits: %s", device_id, exc)

    async def _expire_holds(self) -> None:
        """Owned by the hub: hands expired (or hurried) holds to the writer, in deadline order."""
        while True:
            now = time.monotonic()
            due, self._hurried = self._hurried, []
            while self._hold_order and (self._hold_order[0].settled or self._hold_order[0].deadline <= now):
                held = self._hold_order.popleft()
                if not held.settled:
                    due.append(held)
            for held in due:
                await self._store_held(held)
            self._hold_wakeup.clear()
            if self._hurried:
                continue
            if not self._hold_order:
                await self._hold_wakeup.wait()  # until the next hold; cancelled by close()
                continue
            wait = max(self._hold_order[0].deadline - time.monotonic(), 0.005)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._hold_wakeup.wait()

    async def _store_held(self, held: _Held) -> None:
        """The hold ran out: store the rows of the devices that did not ack, answer after the commit."""
        if held.settled:
            return
        held.settled = True
        silent = [t for t in held.targets if t.device_id in held.waiting]
        for t in silent:
            self._held.pop((t.device_id, held.frame.message_id), None)
        live = [t.device_id for t in held.targets]
        rows = _rows(held.sock, held.frame, silent)
        acked = held.acked
        try:
            held.commit = future = await self.writer.submit_store(rows)
        except MailboxClosed:
            if acked is not None:  # never answered: the sender resends what it did not see accepted
                acked.set_result(None)
            return
        if acked is not None:
            future.add_done_callback(lambda _f: acked.done() or acked.set_result(None))
        future.add_done_callback(lambda f: self._after_store(held.sock, f, held.frame, live, rows))

    async def _push_live(self, device_id: str, deliver: str, frame: SendFrame) -> bool:
        """Best effort: the row is stored either way, so a backplane outage only costs latency."""
        try:
            return await self.backplane.send_to_device(device_id, deliver, frame.message_id)
        except Exception as exc:
            log.warning("live push to %s failed, it stays queued: %s", device_id, exc)
            return False

    def _after_store(
        self,
        sock: DeviceSocket,
        future: asyncio.Future[None],
        frame: SendFrame,
        live: list[str],
        rows: list[NewMessage],
    ) -> None:
        """Runs when the send's batch has committed (or failed): now, and only now, answer it."""
        if sock.gone:
            return
        if future.cancelled():
            return
        exc = future.exception()
        if isinstance(exc, MailboxQuotaExceeded):
            sock.refuse(ErrorCode.QUOTA, str(exc), frame.ref)
        elif exc is not None:
            log.error("mailbox write failed: %s", exc)
            sock.refuse(ErrorCode.INTERNAL, "the server could not store this; send it again", frame.ref)
        else:
            sock.push(
                Outgoing(
                    accepted_json(frame.ref, frame.message_id, live, [r.recipient_device for r in rows]),
                    accepted=True,
                )
            )

    def _after_ack(self, sock: DeviceSocket, future: asyncio.Future[None], ids: list[str]) -> None:
        if future.cancelled() or future.exception() is None:
            return
        log.error("deleting acked messages failed: %s", future.exception())
        if not sock.gone:
            named = ids[0] if len(ids) == 1 else f"{len(ids)} messages ({ids[0]}, ...)"
            sock.refuse(ErrorCode.INTERNAL, f"the ack of {named} was not saved; ack it again")

    async def _on_signal(self, sock: DeviceSocket, frame: SignalFrame) -> None:
        await self._reach.check(sock.user_id, frame.to_user, frame.to_device)
        relayed = frame.model_copy(update={"from_user": sock.user_id, "from_device": sock.device_id})
        if not await self.backplane.send_to_device(frame.to_device, relayed.model_dump_json()):
            raise FrameRefused(ErrorCode.UNKNOWN_DEVICE, f"device {frame.to_device} is not connected")

    # The writer: ready, drain, drained, then whatever is queued. The only task that sends.

    async def _write(self, sock: DeviceSocket) -> None:
        ws = sock.ws
        await self._settle_holds_of(sock.device_id)
        async with self._engine.connect() as conn:
            pending = await mailbox.pending_count(conn, sock.device_id)
        ready = ReadyFrame(user_id=sock.user_id, device_id=sock.device_id, pending=pending)
        await ws.send_text(ready.model_dump_json())
        drained_ids: set[str] = set()
        after = 0
        while True:
            async with self._engine.connect() as conn:
                page = await mailbox.fetch_after(conn, sock.device_id, after, self.limits.drain_page)
            if not page:
                break
            for row in page:
                frame = DeliverFrame(
                    message_id=row.message_id,
                    sender_user=row.sender_user,
                    sender_device=row.sender_device,
                    envelope=b64encode(row.envelope),
                    queued=True,
                    queued_at=row.queued_at,
                )
                await ws.send_text(frame.model_dump_json())
                sock.ack_credit += 1
                drained_ids.add(row.message_id)
                after = row.seq
        await ws.send_text(DrainedFrame().model_dump_json())
        # Live copies queued while draining may repeat rows the drain already sent: skip those.
        carry: Outgoing | None = None
        while True:
            if drained_ids and sock.outbox.empty():
                drained_ids = set()
            item, carry = (carry, None) if carry is not None else (await sock.outbox.get(), None)
            if item.message_id is not None and item.message_id in drained_ids:
                continue
            if item.message_id is not None:
                sock.ack_credit += 1
            if item.accepted and sock.accepted_batch and not sock.outbox.empty():
                # Answers queued back to back go out as one frame: one write instead of many.
                answers = [item.text]
                while not sock.outbox.empty():
                    carry = sock.outbox.get_nowait()
                    if not carry.accepted:
                        break
                    answers.append(carry.text)
                    carry = None
                if len(answers) > 1:
                    await ws.send_text('{"type":"accepted_batch","items":[' + ",".join(answers) + "]}")
                    continue
            await ws.send_text(item.text)


# The two frames of every envelope, written by hand: pydantic's construct-and-dump was ~8 % of the
# hub's event loop at load. Every field is pattern-checked before it gets here (hex message id,
# device ids of [A-Za-z0-9_-], base64url envelope), so none needs escaping except `ref`.
# tests/hub/test_frames.py holds them equal to the protocol models.


def deliver_json(message_id: str, sender_user: int, sender_device: str, envelope: str) -> str:
    return (
        '{"type":"deliver","message_id":"'
        + message_id
        + '","sender_user":'
        + str(int(sender_user))
        + ',"sender_device":"'
        + sender_device
        + '","envelope":"'
        + envelope
        + '","queued":false,"queued_at":null}'
    )


def accepted_json(ref: str, message_id: str, live: list[str], queued: list[str]) -> str:
    return (
        '{"type":"accepted","ref":'
        + json.dumps(ref)
        + ',"message_id":"'
        + message_id
        + '","live":'
        + _id_list(live)
        + ',"queued":'
        + _id_list(queued)
        + "}"
    )


def _id_list(ids: list[str]) -> str:
    return '["' + '","'.join(ids) + '"]' if ids else "[]"


def _rows(sock: DeviceSocket, frame: SendFrame, targets: list[RecipientDevice]) -> list[NewMessage]:
    """The mailbox rows of a send (decoding the envelope only now: held sends never need it)."""
    envelope = base64.urlsafe_b64decode(frame.envelope + "=" * (-len(frame.envelope) % 4))
    return [
        NewMessage(t.user_id, t.device_id, sock.user_id, sock.device_id, frame.message_id, envelope)
        for t in targets
    ]


def _ack_count(frame: AckFrame) -> int:
    return (frame.message_id is not None) + len(frame.message_ids or ())


def _describe(exc: ValidationError) -> str:
    """Name the field, what is wrong, and (for a short string) the value: in a batched ack,
    `ack.message_ids.3: ... (got 'xyz')` says which id of the batch was refused."""
    problems = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "frame"
        problem = f"{where}: {err.get('msg', 'invalid')}"
        value = err.get("input")
        if isinstance(value, str) and len(value) <= 64:
            problem += f" (got {value!r})"
        problems.append(problem)
    return "frame rejected: " + "; ".join(problems)


def _ref_of(text: str) -> str | None:
    """Best effort: echo a `ref` back so the client can pair the error, if the JSON had one."""
    try:
        value = json.loads(text)
    except ValueError:
        return None
    ref = value.get("ref") if isinstance(value, dict) else None
    return ref if isinstance(ref, str) and len(ref) <= 64 else None


async def _close_quietly(ws: WebSocket, code: int, reason: str) -> None:
    if ws.application_state == WebSocketState.DISCONNECTED or ws.client_state == WebSocketState.DISCONNECTED:
        return
    with contextlib.suppress(Exception):
        await ws.close(code=code, reason=reason[:120])
