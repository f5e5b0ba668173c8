"""The hub: the live WebSocket of every connected device on this instance.

It owns the registry of sockets (one per device: a new one replaces the old with close code
REPLACED), the lifecycle of the parts below, and what the REST routes and the backplane call.
The work is in one module per job:

- `signalling.connection`: one socket from the auth handshake to its close (reader, writer, watcher)
- `signalling.delivery`: send, live hold, ack, signal, ping and the drain (docs/hub.md)
- `signalling.reach`: who may send to whom, with its short cache
- `signalling.device_socket`: a socket's identity and outgoing queue, which anyone may push to

The hub never decodes an envelope beyond base64url, and never logs one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.websockets import WebSocket, WebSocketDisconnect

from signalling import memory
from signalling.backplane import Backplane, InProcessBackplane
from signalling.connection import Authenticator, Connection, authenticate_socket, close_quietly
from signalling.delivery import Delivery, accepted_json, deliver_json
from signalling.device_socket import DeviceSocket, Outgoing
from signalling.errors import HubAuthError, HubError
from signalling.limits import HubLimits
from signalling.outbox import OutboxBudget
from signalling.presence import Presence
from signalling.protocol import CloseCode
from signalling.reach import Reach
from signalling.wire import Wire
from signalling.ws_protocol import HubWebSocketProtocol
from store import mailbox
from store.disk import DiskGuard
from store.mailbox import MailboxWriter

# Names other modules (routes, tests) have always imported from here.
__all__ = [
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
_RELEASE_AFTER_BYTES = 1024 * 1024  # a socket dropped with this much queued: trim the heap after it


class Hub:
    """All live sockets of this instance. Created by the app factory; `start()`/`close()` in lifespan."""

    def __init__(
        self,
        engine: AsyncEngine,
        authenticate: Authenticator,
        limits: HubLimits | None = None,
        backplane: Backplane | None = None,
        disk: DiskGuard | None = None,
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
            sender_share=self.limits.mailbox_sender_share,
            account_quota_bytes=self.limits.account_quota_bytes,
            disk=disk,
        )
        self.outbox = OutboxBudget(self.limits.outbox_max_bytes, self.limits.outbox_max_bytes_per_account)
        self._sockets: dict[str, DeviceSocket] = {}
        self._by_user: dict[int, set[str]] = {}
        self._reach = Reach(engine, self.limits.reach_cache_ttl, warm_limit=self.limits.reach_warm_limit)
        self._delivery = Delivery(
            engine, self.limits, self.writer, self.backplane, self._reach, self._sockets
        )
        self._janitor: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.writer.start()
        await self.backplane.start(self)
        self._janitor = asyncio.create_task(self._purge_periodically(), name="mailbox-janitor")
        self._delivery.start()

    async def close(self) -> None:
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
            self._janitor = None
        await self._delivery.close()  # stops the hold keeper; held sends join the last batches
        await self._reach.settle()  # a permission refresh under way ends before the engine does
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
        self._reach.clear()
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
        self._reach.clear()  # a deleted account's devices must stop being reachable at once
        for device_id in list(self._by_user.get(user_id, ())):
            self._sockets[device_id].close(code, reason)

    # -- one socket --------------------------------------------------------------------------------

    async def serve(self, ws: Wire) -> None:
        """Run one client socket from accept to close. Never raises for client mistakes."""
        await ws.accept()
        try:
            user_id, device_id = await authenticate_socket(
                ws, self._authenticate, self._engine, self.limits.auth_timeout
            )
        except HubAuthError as exc:
            await close_quietly(ws, exc.close_code, str(exc))
            return
        except WebSocketDisconnect:
            return

        sock = DeviceSocket(ws, user_id, device_id, self.limits.outbox_size, self.outbox)
        # The request headers (the bearer token among them) were read once, for the auth: they need
        # not live as long as the socket (~1 KB each; docs/hub.md "10,000 devices").
        _forget_headers(ws)
        self._register(sock)
        self._reach.warm(user_id)  # in the background: its first sends need not ask in line
        replaced = False
        try:
            await self.backplane.attach(user_id, device_id, sock.conn_id, CloseCode.REPLACED)
            await self.presence.device_came(user_id, device_id)
            await Connection(sock, self.limits, self._delivery).run()
        finally:
            big = (
                sock.queued_bytes >= _RELEASE_AFTER_BYTES
                or (sock.closing or (0, ""))[0] == CloseCode.TOO_SLOW
            )
            sock.discard()  # what it never read is freed now, not at the next full collection
            if big:
                memory.release()
            replaced = self._unregister(sock)
            with contextlib.suppress(Exception):
                await self.backplane.detach(user_id, device_id, sock.conn_id)
            code, reason = sock.closing or (1000, "")
            if sock.closing is not None:
                await close_quietly(ws, code, reason)
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
        self._delivery.hurry_holds(sock.device_id)
        devices = self._by_user.get(sock.user_id)
        if devices is not None:
            devices.discard(sock.device_id)
            if not devices:
                del self._by_user[sock.user_id]
        return False


def _forget_headers(ws: Wire) -> None:
    if isinstance(ws, HubWebSocketProtocol):
        ws.forget_headers()
    elif isinstance(ws, WebSocket):
        ws.scope["headers"] = []
        ws.__dict__.pop("_headers", None)  # Starlette's cached view of them
