"""One authenticated device's live socket, as the rest of the hub sees it: who it is, the queue of
frames going out on it, and whether it is closing.

Anything may push a frame (a relay, a commit callback, the backplane); only the socket's writer
task (`signalling.connection`) takes them out and writes. Pushing never blocks and never awaits: a
client that stops reading fills its queue and is closed with 1013, it does not slow anyone else.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.websockets import WebSocket

from signalling.protocol import CloseCode, ErrorCode, ErrorFrame


class CommitBarrier(Protocol):
    """Something a `ping` must wait behind that is not yet a writer future (delivery's live hold)."""

    def barrier(self) -> asyncio.Future[Any] | None: ...


@dataclass(slots=True)
class Outgoing:
    """One server frame waiting in a socket's queue, already serialised."""

    text: str
    message_id: str | None = None  # set on live `deliver` copies, for de-duplication with the drain
    accepted: bool = False  # an `accepted` frame: may join others in one `accepted_batch`


class DeviceSocket:
    """One authenticated device's live socket and the queue of frames going out on it."""

    def __init__(self, ws: WebSocket, user_id: int, device_id: str, outbox_size: int) -> None:
        self.ws = ws
        self.user_id = user_id
        self.device_id = device_id
        self.conn_id = secrets.token_hex(8)
        self.outbox: asyncio.Queue[Outgoing] = asyncio.Queue(maxsize=outbox_size)
        self.closing: tuple[int, str] | None = None
        # the newest send/ack handed to the writer, or the newest send held for live acks
        self.last_commit: asyncio.Future[Any] | CommitBarrier | None = None
        self.gone = False  # the socket's tasks have ended; late commit callbacks answer nobody
        self.ack_credit = 0  # envelopes delivered on this socket and not yet acked: free acks
        self.closed = asyncio.Event()  # set when close() is asked for; the owner closes the socket
        self.accepted_batch = ws.query_params.get("accepted_batch") == "1"  # the client opted in

    def push(self, item: Outgoing) -> bool:
        if self.closing is not None:
            return False
        try:
            self.outbox.put_nowait(item)
        except asyncio.QueueFull:
            self.close(CloseCode.TOO_SLOW, "the client is not reading its frames; reconnect to fetch them")
            return False
        return True

    def commit_barrier(self) -> asyncio.Future[Any] | None:
        """What a `ping` now waits for: every earlier send and ack committed (None: nothing)."""
        last = self.last_commit
        if last is None or isinstance(last, asyncio.Future):
            return last
        return last.barrier()

    def refuse(
        self, code: ErrorCode, message: str, ref: str | None = None, device_id: str | None = None
    ) -> None:
        """Answer a frame with an `error` frame; the socket stays up."""
        frame = ErrorFrame(code=code, message=message, ref=ref, device_id=device_id)
        self.push(Outgoing(frame.model_dump_json()))

    def close(self, code: int, reason: str) -> None:
        if self.closing is None:
            self.closing = (code, reason)
            self.closed.set()
