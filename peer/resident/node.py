"""`ResidentNode`: the one long-running process of a profile, owner of its one `Peer`.

It holds the device session, the direct links, the unlocked keystore and the local store for as
long as it runs, and serves them to any number of clients at once over the local API (JSON-RPC 2.0
on `<profile>/node.sock`, mode 0600: whoever can open it is this user, as with ssh-agent) and to
any number of browser windows through the in-process web UI (loopback HTTP with its launch token,
cookie and Host/Origin checks). Every client and window sees every event; none cuts another off,
because only this process ever opens the device's hub session.

States (`NodeState`): logged_out (no session on the profile; the web UI can log in), locked (no
keys in memory: `lock`, or started without a password), ready. SIGTERM and SIGINT stop it cleanly:
the peer, the UI server and a local signalling server it started are all closed before it exits.

It never prints a secret, and it refuses to start twice on one profile (an exclusive lock file).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crypto.errors import CryptoError
from peer.errors import (
    AuthFailed,
    KeyChanged,
    NotLoggedIn,
    PeerError,
    ServerUnavailable,
    UnknownContact,
    WrongPassword,
    advice,
)
from peer.events import ConnectionChanged, Event
from peer.node import Peer
from peer.profile import Profile
from peer.resident import api, rpc
from peer.resident.filequeue import FileQueue
from peer.resident.rpc import ErrorCode, NodeState, RpcError
from peer.views import PeerSettings

log = logging.getLogger(__name__)

SUBSCRIBER_QUEUE = 10_000
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes on Linux, with the terminating NUL
START_SETTLE_S = 10.0  # right after start, a send waits this long for the hub session (not a queue)


class NodeAlreadyRunning(PeerError):
    """Another node holds this profile."""


@dataclass(frozen=True)
class UiOptions:
    host: str = "127.0.0.1"
    port: int = 0
    ice_servers: tuple[str, ...] | None = None
    host_addresses: tuple[str, ...] | None = None


@dataclass(frozen=True)
class LocalServerOptions:
    """`peerpost up` without a server: run one on loopback (or reuse the one already there)."""

    data_dir: Path
    port: int


def rpc_error(err: BaseException) -> RpcError:
    """A peer failure in the local API's words: a stable code, the peer's own sentence."""
    if isinstance(err, RpcError):
        return err
    kind = type(err).__name__
    codes: list[tuple[type[BaseException], ErrorCode]] = [
        (api.BadInput, ErrorCode.BAD_INPUT),
        (NotLoggedIn, ErrorCode.NOT_LOGGED_IN),
        (WrongPassword, ErrorCode.WRONG_PASSWORD),
        (ServerUnavailable, ErrorCode.SERVER_UNAVAILABLE),
        (AuthFailed, ErrorCode.AUTH_FAILED),
        (UnknownContact, ErrorCode.UNKNOWN_CONTACT),
        (KeyChanged, ErrorCode.KEY_CHANGED),
        (PeerError, ErrorCode.PEER_ERROR),
        (CryptoError, ErrorCode.PEER_ERROR),
    ]
    for cls, code in codes:
        if isinstance(err, cls):
            message = str(err) or kind
            # Core errors say what is wrong; what to type is the CLI's word (peer.errors.advice).
            hint = advice(err) if isinstance(err, PeerError) else None
            return RpcError(code, f"{message}: {hint}" if hint else message, kind)
    log.error("local API call failed", exc_info=err)
    return RpcError(ErrorCode.INTERNAL, f"internal error in the node ({kind}); its log has the details", kind)


class ResidentNode:
    def __init__(
        self,
        profile: Profile,
        server_url: str | None,
        settings: PeerSettings,
        ui: UiOptions | None = None,
        local_server: LocalServerOptions | None = None,
    ) -> None:
        self.profile = profile
        self.server_url = server_url
        self.settings = settings
        self.ui_options = ui or UiOptions()
        self.local_server = local_server
        self.state = NodeState.LOGGED_OUT
        self._peer: Peer | None = None
        self._pump: asyncio.Task[None] | None = None
        self._subscribers: set[asyncio.Queue[dict[str, Any] | None]] = set()
        self._connections: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._peer_lock = asyncio.Lock()
        self._ready_at = 0.0
        self._settle = False  # the server answered at start: early sends wait for the hub session
        self._ui: Any = None  # peer.ui.server.UiServer, made on the first `ui.link`
        self._bridge: Any = None
        self._stack = contextlib.AsyncExitStack()
        self._lock_fd: int | None = None
        self.files = FileQueue(profile.path)
        self._flush: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ paths

    @property
    def socket_path(self) -> Path:
        return self.profile.path / rpc.SOCKET_NAME

    # ------------------------------------------------------------------ the process

    async def run(self, password: str | None, on_ready: Callable[[NodeState], None]) -> None:
        """Own the profile until stopped: lock, (local server), unlock, listen, serve, close all."""
        self._take_profile_lock()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        try:
            async with self._stack:
                if self.local_server is not None:
                    self.server_url = await self._stack.enter_async_context(self._local_server())
                self._stack.push_async_callback(self._close_peer)  # whatever fails after the unlock
                if password and self._has_session():
                    await self.unlock(password)
                elif self._has_session():
                    self.state = NodeState.LOCKED
                server = await self._listen()
                self._stack.push_async_callback(self._close_server, server)
                on_ready(self.state)
                await self._stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            self._release_profile_lock()

    def _has_session(self) -> bool:
        return self.profile.load_meta() is not None and self.profile.keystore_path.exists()

    def request_stop(self) -> None:
        self._stop.set()

    def _take_profile_lock(self) -> None:
        self.profile.ensure()
        fd = os.open(self.profile.path / rpc.LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise NodeAlreadyRunning(
                f"a node already runs for profile {self.profile.name!r} (stop it with `peerpost stop`)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _release_profile_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _local_server(self) -> contextlib.AbstractAsyncContextManager[str]:
        """A signalling server for `peerpost up`, shared with the other nodes on this machine."""
        from peer.resident.localserver import shared_local_server

        assert self.local_server is not None
        return shared_local_server(self.local_server.data_dir, self.local_server.port)

    async def _listen(self) -> asyncio.AbstractServer:
        path = self.socket_path
        if len(os.fsencode(path)) > MAX_SOCKET_PATH:
            raise PeerError(
                f"the profile folder {self.profile.path} is too deep for its socket "
                f"(a Unix socket path has at most {MAX_SOCKET_PATH} bytes): use a shorter PEERPOST_HOME"
            )
        path.unlink(missing_ok=True)  # a stale socket of a killed node (we hold the profile lock)
        old = os.umask(0o177)  # the socket is born 0600: no window where others could connect
        try:
            server = await asyncio.start_unix_server(
                self._connection, path=str(path), limit=rpc.MAX_LINE_BYTES
            )
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        return server

    async def _close_server(self, server: asyncio.AbstractServer) -> None:
        server.close()
        for queue in list(self._subscribers):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await server.wait_closed()
        self.socket_path.unlink(missing_ok=True)
        await self._close_ui()
        await self._close_peer()

    # ------------------------------------------------------------------ the peer

    def peer(self) -> Peer | None:
        if self._peer is not None:
            return self._peer
        if self._bridge is not None:
            return self._bridge.peer
        return None

    def require_peer(self) -> Peer:
        peer = self.peer()
        if peer is not None:
            return peer
        if self.state is NodeState.LOCKED:
            raise RpcError(ErrorCode.LOCKED, "the node is locked: unlock it with the password", "Locked")
        message = (
            "logged out: run `peerpost login` again"
            if self.profile.load_meta() is not None
            else f"profile {self.profile.name!r} has never logged in: run `peerpost login`"
        )
        raise RpcError(ErrorCode.NOT_LOGGED_IN, message, "NotLoggedIn")

    async def unlock(self, password: str) -> None:
        async with self._peer_lock:
            if self.peer() is not None:
                return  # ours, or the one the page logged in with: never two on one device session
            peer = Peer(self.profile, self.server_url, settings=self.settings)
            try:
                await peer.unlock(password)
            except BaseException:
                await peer.close()
                raise
            self._peer = peer
            self.files.load()
            self.state = NodeState.READY
            self._ready_at = asyncio.get_running_loop().time()
            self._pump = asyncio.create_task(self._pump_events(peer), name="node-events")
            if self._bridge is not None:
                self._bridge.adopt(peer)
            self.publish({"type": "node", "state": str(self.state)})
            # Best effort, so the first send goes out at once, not via the outbox; not when the
            # server is plainly down (an offline start answers at once and queues).
            self._settle = bool(self.server_url) and await _healthy(peer.server_url)
            if self._settle:
                await peer.wait_online(5.0)
            self._maybe_send_queued_files(peer)  # its connect may have come before the pump listened

    async def settle_start(self) -> None:
        """Just after start the hub session may still be connecting: give it its few seconds."""
        peer = self.peer()
        if peer is None or peer.online or not self._settle:
            return
        left = self._ready_at + START_SETTLE_S - asyncio.get_running_loop().time()
        if left > 0:
            await peer.wait_online(left)

    async def _close_peer(self) -> None:
        peer, self._peer = self._peer, None
        pump, self._pump = self._pump, None
        flush, self._flush = self._flush, None
        if flush is not None:
            flush.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flush
        if self._bridge is not None:
            await self._bridge.close()
        if peer is not None:
            await peer.close()
        if pump is not None:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pump

    async def lock(self) -> None:
        """Drop the keys from memory (the peer closes; the node stays, as `locked`)."""
        async with self._peer_lock:
            await self._close_peer()
            self.state = NodeState.LOCKED if self._has_session() else NodeState.LOGGED_OUT
        self.publish({"type": "node", "state": str(self.state)})

    async def logout(self) -> None:
        peer = self.require_peer()
        async with self._peer_lock:
            await peer.logout()
            await self._close_peer()
            self.state = NodeState.LOGGED_OUT
        self.publish({"type": "node", "state": str(self.state)})

    async def _pump_events(self, peer: Peer) -> None:
        async for event in peer.events():
            self.publish(_event_json(event, peer.group_name))
            if isinstance(event, ConnectionChanged) and not event.online:
                await self._drop_links(peer)
            elif isinstance(event, ConnectionChanged):
                self._maybe_send_queued_files(peer)

    def _maybe_send_queued_files(self, peer: Peer) -> None:
        if peer.online and self.files.items() and (self._flush is None or self._flush.done()):
            self._flush = asyncio.create_task(self._send_queued_files(peer), name="node-files")

    async def _send_queued_files(self, peer: Peer) -> None:
        """The server is back: send the files that were asked for while it was not (oldest first)."""
        for item in self.files.items():
            try:
                view = await peer.send_file(item.user_id, item.path)
            except ServerUnavailable:
                return  # down again: the next connect resumes here
            except PeerError as e:
                self.files.remove(item.queue_id)
                self.publish({"type": "error", "message": f"the queued file {item.path} was not sent: {e}"})
                continue
            self.files.remove(item.queue_id)
            self.publish(
                {"type": "queued_file_sent", "queue_id": item.queue_id, "message_id": view.message_id}
            )

    async def _drop_links(self, peer: Peer) -> None:
        """Our server connection is gone: treat every contact device as offline, as presence does.

        Presence is the hub connection (docs/architecture.md): when a contact's device drops off
        the server, the peer already closes its link. Losing our own connection is the same from
        where we stand: we no longer hear revocations, removals or key changes, so links we can
        no longer vouch for are closed, and sends wait in the outbox until the server is back
        (then links are set up again on demand). docs/decisions-peer.md has the trade-off.
        """
        with contextlib.suppress(PeerError):
            links = peer.linkset
            for link in links.links():
                await links.drop(link.remote_device)

    def publish(self, event: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            if queue.full():  # a client that stopped reading loses its oldest event, never stalls us
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    def status(self) -> dict[str, Any]:
        peer = self.peer()
        state = NodeState.READY if peer is not None else self.state
        links = peer.linkset.links() if peer is not None else []
        me = peer.me if peer is not None else None
        return {
            "state": str(state),
            "profile": self.profile.name,
            "profile_dir": str(self.profile.path),
            "pid": os.getpid(),
            "server": self.server_url,
            "online": bool(peer is not None and peer.online),
            "user": None if me is None else {"user_id": me.user_id, "username": me.username},
            "device_id": None if me is None else me.device_id,
            "links": [{"device_id": link.remote_device, "open": link.is_open} for link in links],
            "ui": self._ui.url if self._ui is not None else None,
            "subscribers": len(self._subscribers),
        }

    # ------------------------------------------------------------------ the web UI, in process

    async def ui_link(self) -> str:
        if self._ui is None:
            await self._start_ui()
        return self._ui.new_launch_url()

    async def _start_ui(self) -> None:
        from peer.ui.bridge import PeerBridge
        from peer.ui.run import settings_for
        from peer.ui.server import UiServer

        if not self.server_url:
            raise api.BadInput("no server configured for this profile: pass --server URL")
        settings = settings_for(self.profile.path, self.server_url, list(self.ui_options.ice_servers or []))
        if self.ui_options.ice_servers is not None:
            settings.ice_servers = [u for u in self.ui_options.ice_servers if u]
        settings.host_addresses = list(self.ui_options.host_addresses or []) or None
        bridge = PeerBridge(settings, self.profile)
        bridge.on_logout = self._ui_logged_out
        server = UiServer(bridge, self.ui_options.host, self.ui_options.port)
        await server.start()
        self._bridge, self._ui = bridge, server
        if self._peer is not None:
            bridge.adopt(self._peer)

    async def _ui_logged_out(self) -> None:
        """The page logged out: the session is gone for every client of this node."""
        async with self._peer_lock:
            peer, self._peer = self._peer, None
            if peer is not None:
                await peer.close()
            self.state = NodeState.LOGGED_OUT
        self.publish({"type": "node", "state": str(self.state)})

    async def _close_ui(self) -> None:
        ui, self._ui = self._ui, None
        if ui is not None:
            await ui.stop()
        if self._bridge is not None:
            await self._bridge.close()

    # ------------------------------------------------------------------ one client connection

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        write_lock = asyncio.Lock()
        calls: set[asyncio.Task[None]] = set()
        pump: asyncio.Task[None] | None = None

        async def send(data: bytes) -> None:
            async with write_lock:
                writer.write(data)
                await writer.drain()

        try:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, asyncio.LimitOverrunError):
                    await send(rpc.error(None, RpcError(ErrorCode.INVALID_REQUEST, "request line too long")))
                    return
                if not line:
                    return
                request_id, method, params, problem = _parse(line)
                if problem is not None:
                    await send(rpc.error(request_id, problem))
                    continue
                if method == "subscribe":
                    if pump is None:
                        pump = asyncio.create_task(self._forward_events(send), name="node-subscriber")
                    await send(rpc.result(request_id, {"subscribed": True}))
                    continue
                call = asyncio.create_task(self._answer(send, request_id, method, params))
                calls.add(call)
                call.add_done_callback(calls.discard)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            for t in [*calls, *([pump] if pump else [])]:
                t.cancel()
            await asyncio.gather(*calls, *([pump] if pump else []), return_exceptions=True)
            with contextlib.suppress(Exception):
                writer.close()
            self._connections.discard(task)

    async def _answer(self, send: Any, request_id: Any, method: str, params: dict[str, Any]) -> None:
        handler = api.METHODS.get(method)
        try:
            if handler is None:
                raise RpcError(
                    ErrorCode.METHOD_NOT_FOUND, f"there is no call {method!r} (see docs/local-api.md)"
                )
            answer = rpc.result(request_id, await handler(self, params))
        except asyncio.CancelledError:
            raise
        except Exception as e:
            answer = rpc.error(request_id, rpc_error(e))
        if request_id is not None:
            with contextlib.suppress(ConnectionError):
                await send(answer)

    async def _forward_events(self, send: Any) -> None:
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        try:
            while (event := await queue.get()) is not None:
                await send(rpc.notification(rpc.EVENT_METHOD, event))
        except ConnectionError:
            pass
        finally:
            self._subscribers.discard(queue)


def _parse(line: bytes) -> tuple[Any, str, dict[str, Any], RpcError | None]:
    try:
        message = json.loads(line)
    except ValueError as e:
        return None, "", {}, RpcError(ErrorCode.PARSE_ERROR, f"not JSON: {e}")
    except RecursionError:
        return None, "", {}, RpcError(ErrorCode.PARSE_ERROR, "the JSON is nested too deeply")
    if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
        return None, "", {}, RpcError(ErrorCode.INVALID_REQUEST, "not a JSON-RPC 2.0 request object")
    request_id = message.get("id")
    method = message.get("method")
    params = message.get("params", {})
    if not isinstance(method, str):
        return request_id, "", {}, RpcError(ErrorCode.INVALID_REQUEST, "the request has no method")
    if not isinstance(params, dict):
        return request_id, method, {}, RpcError(ErrorCode.INVALID_PARAMS, "params must be an object")
    return request_id, method, params, None


def _event_json(event: Event, group_name: Callable[[str], str | None]) -> dict[str, Any]:
    """The event's JSON; an event of a group conversation also carries the group's name."""
    data = event.to_dict()
    message = data.get("message")
    conversation = data.get("conversation") or (
        message.get("conversation") if isinstance(message, dict) else None
    )
    if isinstance(conversation, str) and conversation.startswith("g:"):
        data["conversation"] = conversation
        data["group"] = group_name(conversation[2:])
    elif isinstance(data.get("group_id"), str):
        data["conversation"] = f"g:{data['group_id']}"
        data["group"] = data.get("name") or group_name(data["group_id"])
    return data


async def _healthy(url: str) -> bool:
    import httpx

    try:
        async with httpx.AsyncClient(timeout=2.0) as client:
            response = await client.get(url + "/health")
    except httpx.HTTPError:
        return False
    return response.status_code == 200
