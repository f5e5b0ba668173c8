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


# -- a fleet of idle sockets in a process of its own ----------------------------------------------


def _fleet_main(host: str, port: int, who: Sequence[Any], concurrency: int, conn: Any) -> None:
    """The child process: open every socket, then obey the parent's commands until `close`."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is pinned
        runner = asyncio.run
    runner(_fleet(host, port, who, concurrency, conn))


async def _fleet(host: str, port: int, who: Sequence[Any], concurrency: int, conn: Any) -> None:
    start = time.perf_counter()
    try:
        sockets = await connect_many(host, port, who, concurrency)
    except Exception as exc:
        conn.send(("failed", repr(exc)))
        return
    conn.send(("connected", time.perf_counter() - start, len(sockets)))
    watched: list[RawSocket] = []
    while True:
        command = await asyncio.to_thread(conn.recv)
        if command[0] == "watch":
            _, user_id, count = command
            watched = sockets[:count]
            for s in watched:
                s.watch_presence(user_id)
            conn.send(("watching",))
        elif command[0] == "presence":
            try:
                async with asyncio.timeout(command[1]):
                    await asyncio.gather(*(s.presence_seen.wait() for s in watched))
                conn.send(("presence", [s.presence_at for s in watched]))
            except TimeoutError:
                conn.send(("failed", f"{sum(not s.presence_seen.is_set() for s in watched)} never heard it"))
        elif command[0] == "close":
            alive = sum(1 for s in sockets if not s.closed.is_set())
            for s in sockets:
                s.close()
            await asyncio.sleep(0.5)  # let the close frames go out
            conn.send(("closed", alive))
            return


class IdleFleet:
    """Thousands of idle sockets held by a child process, so that the process measuring latency
    does not also answer their pings. `time.perf_counter` is CLOCK_MONOTONIC on Linux: the child's
    timestamps compare with the parent's."""

    def __init__(self, host: str, port: int, who: Sequence[Any], concurrency: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_fleet_main, args=(host, port, list(who), concurrency, child), daemon=True
        )
        self._child_conn = child

    async def _ask(self, *command: Any, deadline: float = 600.0) -> tuple[Any, ...]:
        if command:
            self._conn.send(command)
        if not await asyncio.to_thread(self._conn.poll, deadline):
            raise TimeoutError(f"the idle fleet did not answer {command[:1]} within {deadline} s")
        answer = self._conn.recv()
        if answer[0] == "failed":
            raise ConnectionError(f"the idle fleet failed: {answer[1]}")
        return answer

    async def start(self) -> tuple[float, int]:
        """Spawn the child and wait until every socket is admitted: (seconds, sockets)."""
        self._process.start()
        _, seconds, count = await self._ask()
        return seconds, count

    async def watch(self, user_id: int, count: int) -> None:
        await self._ask("watch", user_id, count)

    async def presence_times(self, deadline: float = 60.0) -> list[float]:
        return (await self._ask("presence", deadline, deadline=deadline + 10))[1]

    async def close(self) -> int:
        """Close every socket; how many were still open."""
        try:
            alive = (await self._ask("close", deadline=60))[1]
        finally:
            await asyncio.to_thread(self._process.join, 30)
            if self._process.is_alive():
                self._process.kill()
        return alive
