"""The `/ws` socket's own WebSocket protocol: RFC 6455 framing handed straight to the hub, no ASGI.

Why not uvicorn's protocol: a device's socket stays open for hours and is idle almost all of that
time, and every byte an idle socket holds is multiplied by the devices online. uvicorn's protocol
object (a `__dict__` of ~40 attributes, an `asyncio.Event`, two keepalive `TimerHandle`s, the ASGI
scope, the `websockets` `ServerProtocol` with its generator parser, buffers and header objects) held
~9.5 KB per idle socket (tracemalloc, bench/scale.py; docs/hub.md "10,000 devices"). This protocol
holds one object with `__slots__`:

- the receive buffer and the fragment list exist only while a frame is partly read;
- the frame codec is a few module functions shared by every socket (`websockets`' C `apply_mask`);
- keepalive pings come from one `Keepalive` wheel for all sockets (one loop timer per second, each
  socket pinged once per interval), not two timers per socket;
- the request's headers live until the hub has authenticated the socket (`forget_headers`).

uvicorn's h11 protocol still reads the upgrade request and hands the transport over
(`ws=` in `signalling.__main__`); this class answers the handshake, runs `Hub.serve(self)` in one
task, and offers the hub the few calls of Starlette's `WebSocket` it uses (`signalling.wire.Wire`).
What the old stack did is kept: no extension is negotiated (per-message deflate off), messages over
`ws_max_size` close with 1009, bad UTF-8 with 1007, protocol errors with 1002, a keepalive ping
unanswered for an interval with 1011, uvicorn's shutdown with 1012; reading pauses
after each message until the hub has taken every message read (a flooding client waits in its own
TCP buffer; reading up to 16 ahead was tried and made the tail worse: one socket's burst then holds
the loop for longer, docs/hub.md); a send waits while the transport's write buffer is over its
high-water mark (so a client that stops reading fills its hub queue and is closed with 1013).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import struct
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar
from urllib.parse import parse_qsl, unquote

from starlette.websockets import WebSocketDisconnect, WebSocketState
from websockets.frames import apply_mask

from signalling.errors import HubError
from signalling.lean_queue import SingleReaderQueue

log = logging.getLogger("peerpost.ws")

Message = dict[str, Any]

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
_DATA_OPS = frozenset((OP_CONT, OP_TEXT, OP_BINARY))
_CONTROL_OPS = frozenset((OP_CLOSE, OP_PING, OP_PONG))
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HUB_PATH = "/ws"
CLOSE_TIMEOUT = 10.0  # seconds to wait for the client's answer to our close frame
KEEPALIVE_TICK = 0.1  # the wheel's resolution: sockets are pinged in 100 ms slots


class WireState(StrEnum):
    HANDSHAKE = "handshake"  # the upgrade request is read; the hub has not accepted yet
    OPEN = "open"
    CLOSING = "closing"  # our close frame is sent; waiting for the client's
    CLOSED = "closed"  # the transport is gone


class ProtocolViolation(HubError):
    """The client broke RFC 6455: the socket is closed with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final server frame."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def close_payload(code: int, reason: str) -> bytes:
    if code == 1005:  # "no status": an empty close frame
        return b""
    return code.to_bytes(2, "big") + reason.encode()[:123]


def _valid_close_code(code: int) -> bool:
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or (
        3000 <= code <= 4999
    )


def parse_close(payload: bytes) -> tuple[int, str]:
    """The code and reason of a client's close frame (1005 when it names none)."""
    if not payload:
        return 1005, ""
    if len(payload) == 1:
        raise ProtocolViolation(1002, "a close frame's payload must be empty or at least 2 bytes")
    code = int.from_bytes(payload[:2], "big")
    if not _valid_close_code(code):
        raise ProtocolViolation(1002, f"close code {code} is not allowed")
    try:
        return code, payload[2:].decode()
    except UnicodeDecodeError as exc:
        raise ProtocolViolation(1007, "the close reason is not UTF-8") from exc


def accept_key(key: str) -> str:
    # SHA-1 is what RFC 6455 names for the handshake; it protects nothing (not a security use).
    return base64.b64encode(hashlib.sha1(key.encode() + _GUID, usedforsecurity=False).digest()).decode()


def _http_answer(status: str, text: str, extra: str = "") -> bytes:
    body = text.encode()
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
        f"{extra}content-length: {len(body)}\r\n\r\n"
    ).encode() + body


class Keepalive:
    """Pings every open socket once per `interval`, from one timer for all of them.

    Sockets sit in `interval / KEEPALIVE_TICK` slots (by the second they opened in); each tick visits
    one slot. A socket whose previous ping is still unanswered at its next visit (one interval
    later: uvicorn's default timeout equals its interval, 20 s) is closed with 1011.
    """

    __slots__ = ("_cursor", "_loop", "_slots", "_timer", "tick")

    def __init__(self, interval: float) -> None:
        self.tick = min(KEEPALIVE_TICK, interval)
        self._slots: list[set[HubWebSocketProtocol]] = [
            set() for _ in range(max(1, round(interval / self.tick)))
        ]
        self._cursor = 0
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, sock: HubWebSocketProtocol) -> int:
        """Join the slot visited last from now, so the first ping comes one interval after opening."""
        slot = (self._cursor - 1) % len(self._slots)
        self._slots[slot].add(sock)
        if self._timer is None:
            self._loop = asyncio.get_running_loop()
            self._timer = self._loop.call_later(self.tick, self._visit)
        return slot

    def discard(self, sock: HubWebSocketProtocol, slot: int) -> None:
        self._slots[slot].discard(sock)

    def _visit(self) -> None:
        assert self._loop is not None
        due = self._slots[self._cursor]
        self._cursor = (self._cursor + 1) % len(self._slots)
        for sock in list(due):
            sock.keepalive_visit()
        if any(self._slots):
            self._timer = self._loop.call_later(self.tick, self._visit)
        else:
            self._timer = None


class HubWebSocketProtocol(asyncio.Protocol):
    """One `/ws` connection after uvicorn's HTTP protocol handed it over. Bind with `for_app`."""

    app: ClassVar[Any] = None  # the PeerPost app; its `state.hub` serves each socket
    max_size: ClassVar[int] = 1 << 20
    keepalive: ClassVar[Keepalive | None] = None

    __slots__ = (
        "_buf",
        "_frag_op",
        "_frags",
        "_headers",
        "_inbox",
        "_ka_slot",
        "_path",
        "_ping",
        "_query",
        "_read_paused",
        "_server_state",
        "_state",
        "_task",
        "_timer",
        "_write_waiter",
        "transport",
    )

    @classmethod
    def for_app(cls, app: Any, *, max_size: int, ping_interval: float | None) -> type[HubWebSocketProtocol]:
        """A protocol class bound to one app and its limits (uvicorn makes one instance per socket)."""
        attrs = {
            "__slots__": (),
            "app": app,
            "max_size": max_size,
            "keepalive": Keepalive(ping_interval) if ping_interval else None,
        }
        return type("BoundHubWebSocketProtocol", (cls,), attrs)

    def __init__(self, config: Any = None, server_state: Any = None, app_state: Any = None, **_: Any) -> None:
        self._server_state = server_state  # uvicorn's: its `connections` and `tasks` sets
        self.transport: asyncio.Transport = None  # type: ignore[assignment]
        self._state = WireState.HANDSHAKE
        self._buf: bytearray | None = None
        self._frags: list[bytes] | None = None
        self._frag_op = OP_TEXT
        self._headers: list[tuple[str, str]] | None = None
        self._path = ""
        self._query = ""
        self._inbox: SingleReaderQueue[Message] = SingleReaderQueue()
        self._read_paused = False
        self._write_waiter: asyncio.Future[None] | None = None
        self._ping: bytes | None = None  # the keepalive ping not answered yet
        self._ka_slot = -1
        self._timer: asyncio.TimerHandle | None = None  # only while closing
        self._task: asyncio.Task[None] | None = None

    def _set_state(self, state: WireState) -> None:
        self._state = state

    # -- what the hub calls (signalling.wire.Wire) -------------------------------------------------

    @property
    def headers(self) -> Mapping[str, str]:
        return dict(self._headers or ())

    @property
    def query_params(self) -> Mapping[str, str]:
        return dict(parse_qsl(self._query, keep_blank_values=True))

    @property
    def application_state(self) -> WebSocketState:
        if self._state is WireState.HANDSHAKE:
            return WebSocketState.CONNECTING
        return WebSocketState.CONNECTED if self._state is WireState.OPEN else WebSocketState.DISCONNECTED

    @property
    def client_state(self) -> WebSocketState:
        return WebSocketState.DISCONNECTED if self._state is WireState.CLOSED else WebSocketState.CONNECTED

    def forget_headers(self) -> None:
        """The socket is authenticated: its request headers (the bearer token among them) go."""
        self._headers = None

    async def accept(self) -> None:
        if self._state is not WireState.HANDSHAKE:
            raise WebSocketDisconnect(1006)
        key = self.headers.get("sec-websocket-key", "")
        self.transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"sec-websocket-accept: " + accept_key(key).encode() + b"\r\n\r\n"
        )
        self._set_state(WireState.OPEN)
        if self.keepalive is not None:
            self._ka_slot = self.keepalive.add(self)

    async def receive(self) -> Message:
        message = await self._inbox.get()
        if self._read_paused and self._inbox.empty() and self._state is not WireState.CLOSED:
            self._read_paused = False
            self.transport.resume_reading()
        return message

    async def receive_text(self) -> str:
        message = await self.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000), message.get("reason"))
        return str(message["text"])  # KeyError for a binary message, as Starlette's

    async def send_text(self, data: str) -> None:
        while self._write_waiter is not None and self._state is WireState.OPEN:
            await asyncio.shield(self._write_waiter)
        if self._state is not WireState.OPEN:
            raise WebSocketDisconnect(1006)
        self.transport.write(frame(OP_TEXT, data.encode()))

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        if self._state is WireState.HANDSHAKE:
            self._inbox.put_nowait({"type": "websocket.disconnect", "code": 1006})
            self._refuse("403 Forbidden", "the socket was refused")
        elif self._state is WireState.OPEN:
            self._inbox.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason or ""})
            self._send_close(code, reason or "")
        else:
            raise WebSocketDisconnect(1006)

    # -- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self._server_state is not None:
            self._server_state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        opened = self._state is not WireState.HANDSHAKE
        self._set_state(WireState.CLOSED)
        self._stop_keepalive()
        self._inbox.put_nowait({"type": "websocket.disconnect", "code": 1005 if opened else 1006})
        if self._server_state is not None:
            self._server_state.connections.discard(self)
        self._wake_writer()
        self._buf = self._frags = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if exc is None:
            self.transport.close()

    def eof_received(self) -> None:
        pass

    def pause_writing(self) -> None:
        if self._write_waiter is None:
            self._write_waiter = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    def _wake_writer(self) -> None:
        waiter, self._write_waiter = self._write_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._buf is None:
            self._buf = bytearray(data)
        else:
            self._buf += data
        try:
            if self._path == "" and not self._handshake():
                return
            self._parse()
        except ProtocolViolation as exc:
            self._fail(exc.code, exc.reason)
        if self._buf is not None and not self._buf:
            self._buf = None  # an idle socket keeps no buffer

    def shutdown(self) -> None:
        """uvicorn is stopping: close like its own protocol did (1012, or 500 before the accept)."""
        self._stop_keepalive()
        if self._state is WireState.OPEN:
            self._inbox.put_nowait({"type": "websocket.disconnect", "code": 1012})
            self.transport.write(frame(OP_CLOSE, close_payload(1012, "")))
        elif self._state is WireState.HANDSHAKE:
            self.transport.write(_http_answer("500 Internal Server Error", "the server is stopping"))
        self._set_state(WireState.CLOSING)
        self.transport.close()

    # -- the handshake -----------------------------------------------------------------------

    def _handshake(self) -> bool:
        """Read the upgrade request (uvicorn's h11 already checked its syntax); start the hub's task."""
        assert self._buf is not None
        end = self._buf.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + 4]
        request_line, *lines = head.split("\r\n")
        method, target, _version = request_line.split(" ", 2)
        raw_path, _, self._query = target.partition("?")
        self._path = unquote(raw_path) or "/"
        headers = []
        for line in lines:
            name, _, value = line.partition(":")
            headers.append((name.strip().lower(), value.strip()))
        self._headers = headers
        found = dict(headers)
        key = found.get("sec-websocket-key", "")
        if method != "GET" or self._path != HUB_PATH:
            self._refuse("403 Forbidden", f"no WebSocket here; the hub's socket is {HUB_PATH}")
            return False
        if found.get("sec-websocket-version") != "13":
            self._refuse("426 Upgrade Required", "only WebSocket version 13", "sec-websocket-version: 13\r\n")
            return False
        try:
            valid_key = len(base64.b64decode(key, validate=True)) == 16
        except ValueError:
            valid_key = False
        if not valid_key:
            self._refuse("400 Bad Request", "Sec-WebSocket-Key must be 16 bytes in base64")
            return False
        loop = asyncio.get_running_loop()
        self._task = task = loop.create_task(self._serve())
        if self._server_state is not None:
            self._server_state.tasks.add(task)
            task.add_done_callback(self._server_state.tasks.discard)
        return True

    async def _serve(self) -> None:
        try:
            await self.app.state.hub.serve(self)
        except Exception:
            log.exception("the hub failed serving a socket")
            if self._state is WireState.OPEN:
                self._send_close(1011, "internal error")
        finally:
            self._task = None
            if self._state is not WireState.CLOSING and self.transport is not None:
                self.transport.close()

    def _refuse(self, status: str, text: str, extra: str = "") -> None:
        self._set_state(WireState.CLOSING)
        self.transport.write(_http_answer(status, text, extra))
        self.transport.close()

    # -- frames -------------------------------------------------------------------------------

    def _parse(self) -> None:
        """Every complete frame in the buffer, in order (RFC 6455 section 5.2)."""
        buf = self._buf
        while buf and self._buf is buf and not self.transport.is_closing():
            n = len(buf)
            if n < 2:
                return
            b0, b1 = buf[0], buf[1]
            length, pos = b1 & 0x7F, 2
            if length == 126:
                if n < 4:
                    return
                length, pos = int.from_bytes(buf[2:4], "big"), 4
            elif length == 127:
                if n < 10:
                    return
                length, pos = int.from_bytes(buf[2:10], "big"), 10
            opcode, fin = b0 & 0x0F, bool(b0 & 0x80)
            self._check_header(b0, b1, opcode, fin, length)
            if n < pos + 4 + length:
                return
            mask = bytes(buf[pos : pos + 4])
            with memoryview(buf) as view, view[pos + 4 : pos + 4 + length] as body:
                payload = apply_mask(body, mask)
            del buf[: pos + 4 + length]
            self._on_frame(opcode, fin, payload)

    def _check_header(self, b0: int, b1: int, opcode: int, fin: bool, length: int) -> None:
        if b0 & 0x70:
            raise ProtocolViolation(1002, "reserved bits are set; no extension was negotiated")
        if not b1 & 0x80:
            raise ProtocolViolation(1002, "client frames must be masked")
        if opcode in _CONTROL_OPS:
            if not fin or length > 125:
                raise ProtocolViolation(1002, "control frames must be final and at most 125 bytes")
        elif opcode not in _DATA_OPS:
            raise ProtocolViolation(1002, f"opcode {opcode} is not defined")
        else:
            held = sum(map(len, self._frags)) if self._frags else 0
            if held + length > self.max_size:
                raise ProtocolViolation(1009, f"message over the limit of {self.max_size} bytes")

    def _on_frame(self, opcode: int, fin: bool, payload: bytes) -> None:
        if opcode in (OP_TEXT, OP_BINARY):
            if self._frags is not None:
                raise ProtocolViolation(1002, "a new message began inside a fragmented one")
            if fin:
                self._deliver(opcode, payload)
            else:
                self._frags, self._frag_op = [payload], opcode
        elif opcode == OP_CONT:
            if self._frags is None:
                raise ProtocolViolation(1002, "a continuation frame without a message to continue")
            self._frags.append(payload)
            if fin:
                whole, self._frags = b"".join(self._frags), None
                self._deliver(self._frag_op, whole)
        elif opcode == OP_PING:
            if self._state is WireState.OPEN:
                self.transport.write(frame(OP_PONG, payload))
        elif opcode == OP_PONG:
            if payload == self._ping:
                self._ping = None
        else:
            self._on_close(*parse_close(payload))

    def _deliver(self, opcode: int, payload: bytes) -> None:
        if self._state is WireState.CLOSING:
            return  # past our close: read on until the client's close, keep nothing
        if opcode == OP_TEXT:
            try:
                message: Message = {"type": "websocket.receive", "text": payload.decode()}
            except UnicodeDecodeError as exc:
                raise ProtocolViolation(1007, "a text frame that is not UTF-8") from exc
        else:
            message = {"type": "websocket.receive", "bytes": payload}
        self._inbox.put_nowait(message)
        if not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()

    def _on_close(self, code: int, reason: str) -> None:
        if self._state is WireState.CLOSING:  # the client answered ours: the handshake is done
            self.transport.close()
            return
        self._inbox.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.transport.write(frame(OP_CLOSE, close_payload(code, "")))
        self._set_state(WireState.CLOSING)
        self._stop_keepalive()
        self.transport.close()

    def _send_close(self, code: int, reason: str) -> None:
        self.transport.write(frame(OP_CLOSE, close_payload(code, reason)))
        self._set_state(WireState.CLOSING)
        self._stop_keepalive()
        self._wake_writer()
        if self._read_paused:  # read on, to see the client's close
            self._read_paused = False
            self.transport.resume_reading()
        self._timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.transport.close)

    def _fail(self, code: int, reason: str) -> None:
        """The client broke the protocol: tell it why and drop the connection."""
        if self._state is WireState.OPEN:
            self._inbox.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
            self.transport.write(frame(OP_CLOSE, close_payload(code, reason)))
        self._set_state(WireState.CLOSING)
        self._stop_keepalive()
        self._buf = self._frags = None
        self.transport.close()

    # -- keepalive ----------------------------------------------------------------------------

    def keepalive_visit(self) -> None:
        """The wheel's visit, once per interval: ping, or close if the last ping went unanswered."""
        if self._state is not WireState.OPEN:
            return
        if self._ping is not None:
            self._fail(1011, "keepalive ping timeout")
            return
        self._ping = os.urandom(4)
        self.transport.write(frame(OP_PING, self._ping))

    def _stop_keepalive(self) -> None:
        if self._ka_slot >= 0 and self.keepalive is not None:
            self.keepalive.discard(self, self._ka_slot)
        self._ka_slot = -1
        self._ping = None
