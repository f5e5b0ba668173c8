"""A lean raw WebSocket client for holding thousands of idle hub sockets from one process.

`websockets` keeps tens of KiB and a task per connection, so 10,000 of them would make the load
generator the thing measured. This is an `asyncio.Protocol`: the upgrade request written by hand
(bearer token and `device_id`, as a peer connects), a parser for the server's unmasked frames that
keeps nothing but the partial frame, pongs to the server's pings (uvicorn drops a silent client
after ping interval + timeout), and two events: `drained` (authenticated, the mailbox drained: the
device is live) and `presence_seen` (a `presence` frame about the user being watched arrived).
Loopback only; it never sends data frames.
"""

from __future__ import annotations

import asyncio
import base64
import os
import struct
import time
from collections.abc import Sequence
from typing import Any, Protocol

OP_TEXT, OP_CLOSE, OP_PING = 0x1, 0x8, 0x9


class Credential(Protocol):
    device_id: str
    token: str


class RawSocket(asyncio.Protocol):
    __slots__ = (
        "_buf",
        "_headers_done",
        "_transport",
        "_watched",
        "close_reason",
        "closed",
        "drained",
        "presence_at",
        "presence_seen",
    )

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._headers_done = False
        self._watched: bytes | None = None
        self.drained = asyncio.Event()
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.presence_seen = asyncio.Event()
        self.presence_at = 0.0

    def watch_presence(self, user_id: int) -> None:
        self._watched = b'"user_id":%d' % user_id

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.close_reason = self.close_reason or f"connection lost ({exc})"
        self.closed.set()
        self.drained.set()  # wake anyone waiting; they check `closed`

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._headers_done:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self._buf[: self._buf.find(b"\r\n")])
            if b" 101 " not in status:
                self.close_reason = status.decode(errors="replace")
                self.close()
                return
            del self._buf[: end + 4]
            self._headers_done = True
        self._frames()

    def _frames(self) -> None:
        buf = self._buf
        while len(buf) >= 2:
            opcode, size = buf[0] & 0x0F, buf[1] & 0x7F
            at = 2
            if size == 126:
                if len(buf) < 4:
                    return
                size, at = struct.unpack_from("!H", buf, 2)[0], 4
            elif size == 127:
                if len(buf) < 10:
                    return
                size, at = struct.unpack_from("!Q", buf, 2)[0], 10
            if len(buf) < at + size:
                return
            payload = bytes(buf[at : at + size])
            del buf[: at + size]
            if opcode == OP_TEXT:
                self._on_text(payload)
            elif opcode == OP_PING:
                self._send(0xA, payload)
            elif opcode == OP_CLOSE:
                self.close_reason = f"closed by the server: {payload[2:].decode(errors='replace')}"
                self.close()

    def _on_text(self, payload: bytes) -> None:
        if b'"type":"drained"' in payload:
            self.drained.set()
        elif (
            self._watched is not None
            and b'"type":"presence"' in payload
            and self._watched in payload
            and not self.presence_seen.is_set()
        ):
            self.presence_at = time.perf_counter()
            self.presence_seen.set()

    def _send(self, opcode: int, payload: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._send(OP_CLOSE, struct.pack("!H", 1000))
            self._transport.close()


async def open_socket(host: str, port: int, who: Credential, deadline: float = 60.0) -> RawSocket:
    loop = asyncio.get_running_loop()
    _, sock = await loop.create_connection(RawSocket, host, port)
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /ws?device_id={who.device_id} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {who.token}\r\n\r\n"
    )
    assert sock._transport is not None
    sock._transport.write(request.encode())
    async with asyncio.timeout(deadline):
        await sock.drained.wait()
    if sock.closed.is_set():
        raise ConnectionError(f"device {who.device_id} was not admitted: {sock.close_reason}")
    return sock


async def connect_many(host: str, port: int, who: Sequence[Any], concurrency: int) -> list[RawSocket]:
    """Open one socket per credential, `concurrency` handshakes at a time, in order; all or nothing."""
    gate = asyncio.Semaphore(concurrency)
    opened: list[RawSocket] = []

    async def one(cred: Any) -> RawSocket:
        async with gate:
            return await open_socket(host, port, cred)

    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(one(c)) for c in who]
    except BaseException:
        for t in tasks if "tasks" in locals() else []:
            if t.done() and not t.cancelled() and t.exception() is None:
                t.result().close()
        raise
    opened = [t.result() for t in tasks]
    return opened
