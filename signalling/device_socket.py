"""One authenticated device's live socket, as the rest of the hub sees it: who it is, the queue of
frames going out on it, and whether it is closing.

Anything may push a frame (a relay, a commit callback, the backplane); only the socket's writer
task (`signalling.connection`) takes them out and writes. Pushing never blocks and never awaits: a
client that stops reading fills its queue (bounded in frames and in bytes, per socket and per
account: `signalling.outbox`) and is closed with 1013, it does not slow anyone else. When the
socket ends, `discard()` drops what is still queued at once.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from signalling.lean_queue import SingleReaderQueue
from signalling.outbox import OutboxBudget
from signalling.protocol import CloseCode, ErrorCode, ErrorFrame
from signalling.wire import Wire

FRAME_OVERHEAD = 64  # bytes a queued frame costs beyond its text (the Outgoing and its slot), counted too


class CommitBarrier(Protocol):
    """Something a `ping` must wait behind that is not yet a writer future (delivery's live hold)."""

    def barrier(self) -> asyncio.Future[Any] | None: ...


@dataclass(slots=True)
class Outgoing:
    """One server frame waiting in a socket's queue, already serialised."""

    text: str
    message_id: str | None = None  # set on live `deliver` copies, for de-duplication with the drain
    accepted: bool = False  # an `accepted` frame: may join others in one `accepted_batch`


class Outbox(SingleReaderQueue[Outgoing]):
    """The frames queued for one socket, bounded in count; only its writer takes them out."""

    __slots__ = ()


class DeviceSocket:
    """One authenticated device's live socket and the queue of frames going out on it."""

    __slots__ = (
        "accepted_batch",
        "ack_credit",
        "budget",
        "closing",
        "conn_id",
        "device_id",
        "gone",
        "last_commit",
        "on_close",
        "outbox",
        "queued_bytes",
        "user_id",
        "ws",
    )

    def __init__(
        self,
        ws: Wire,
        user_id: int,
        device_id: str,
        outbox_size: int,
        budget: OutboxBudget | None = None,
    ) -> None:
        self.ws = ws
        self.budget = budget or OutboxBudget(per_socket=1 << 62, per_account=1 << 62)
        self.queued_bytes = 0  # bytes of the frames in `outbox`
        self.user_id = user_id
        self.device_id = device_id
        self.conn_id = secrets.token_hex(8)
        self.outbox = Outbox(outbox_size)
        self.closing: tuple[int, str] | None = None
        # the newest send/ack handed to the writer, or the newest send held for live acks
        self.last_commit: asyncio.Future[Any] | CommitBarrier | None = None
        self.gone = False  # the socket's tasks have ended; late commit callbacks answer nobody
        self.ack_credit = 0  # envelopes delivered on this socket and not yet acked: free acks
        # called once when close() is first asked for: the socket's Connection stops its tasks
        self.on_close: Callable[[], None] | None = None
        self.accepted_batch = ws.query_params.get("accepted_batch") == "1"  # the client opted in

    def push(self, item: Outgoing) -> bool:
        if self.closing is not None:
            return False
        size = len(item.text) + FRAME_OVERHEAD
        if self.outbox.full() or not self.budget.admit(self.user_id, self.queued_bytes, size):
            self.budget.closed_too_slow += 1
            self.close(CloseCode.TOO_SLOW, "the client is not reading its frames; reconnect to fetch them")
            self.discard()
            return False
        self.outbox.put_nowait(item)
        self.queued_bytes += size
        return True

    def taken(self, item: Outgoing) -> None:
        """The writer took `item` out of the queue: its bytes leave the budget."""
        size = len(item.text) + FRAME_OVERHEAD
        self.queued_bytes -= size
        self.budget.release(self.user_id, size)

    def discard(self) -> None:
        """Drop every queued frame now (the socket is closing): its memory is freed at once."""
        while not self.outbox.empty():
            self.outbox.get_nowait()
        if self.queued_bytes:
            self.budget.dropped += self.queued_bytes
            self.budget.release(self.user_id, self.queued_bytes)
            self.queued_bytes = 0

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
            if self.on_close is not None:
                self.on_close()
