"""What the peer tells its user interface: small immutable event records, JSON-safe via `to_dict`.

`EventBus` fans every event out to each subscriber's own bounded queue; a subscriber that stops
reading loses its oldest events (and gets told so), it never stalls the peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class Event:
    type: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}


@dataclass(frozen=True)
class ConnectionChanged(Event):
    type: ClassVar[str] = "connection"
    online: bool
    reason: str | None = None


@dataclass(frozen=True)
class PresenceChanged(Event):
    type: ClassVar[str] = "presence"
    user_id: int
    device_id: str | None
    online: bool


@dataclass(frozen=True)
class MessageReceived(Event):
    type: ClassVar[str] = "message"
    message: dict[str, Any]  # MessageView.to_dict()


@dataclass(frozen=True)
class MessageStateChanged(Event):
    type: ClassVar[str] = "message_state"
    message_id: str
    state: str
    path: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class DuplicateDropped(Event):
    """An envelope came again (the other path, a resend) and was acknowledged, not shown."""

    type: ClassVar[str] = "duplicate"
    message_id: str
    via: str


@dataclass(frozen=True)
class ReceiptReceived(Event):
    type: ClassVar[str] = "receipt"
    from_user: int
    status: str
    message_ids: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TypingChanged(Event):
    type: ClassVar[str] = "typing"
    user_id: int
    conversation: str
    active: bool


@dataclass(frozen=True)
class KeyWarning(Event):
    type: ClassVar[str] = "key_warning"
    user_id: int
    device_id: str
    change: str  # "new_device" | "key_changed"
    blocked: bool


@dataclass(frozen=True)
class SignalRejectedEvent(Event):
    type: ClassVar[str] = "signal_rejected"
    user_id: int
    device_id: str
    reason: str


@dataclass(frozen=True)
class LinkChanged(Event):
    type: ClassVar[str] = "link"
    user_id: int
    device_id: str
    state: str


@dataclass(frozen=True)
class FileProgress(Event):
    type: ClassVar[str] = "file_progress"
    message_id: str
    outgoing: bool
    done: int
    total: int
    via: str
    at_ns: int = field(default_factory=time.time_ns)  # when (wall clock), for speed readouts


@dataclass(frozen=True)
class FileReceived(Event):
    type: ClassVar[str] = "file_received"
    message_id: str
    path: str
    name: str
    size: int


@dataclass(frozen=True)
class KeygenProgress(Event):
    type: ClassVar[str] = "keygen"
    fraction: float
    label: str


@dataclass(frozen=True)
class ErrorEvent(Event):
    type: ClassVar[str] = "error"
    message: str


class EventBus:
    def __init__(self, capacity: int = 10_000) -> None:
        self._capacity = capacity
        self._queues: set[asyncio.Queue[Event | None]] = set()
        self._closed = False

    def publish(self, event: Event) -> None:
        for queue in list(self._queues):
            if queue.full():  # a subscriber that stopped reading loses its oldest event
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    def subscribe(self) -> asyncio.Queue[Event | None]:
        queue: asyncio.Queue[Event | None] = asyncio.Queue(self._capacity)
        if self._closed:
            queue.put_nowait(None)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event | None]) -> None:
        self._queues.discard(queue)

    async def stream(self) -> AsyncIterator[Event]:
        queue = self.subscribe()
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self.unsubscribe(queue)

    def close(self) -> None:
        """End every subscriber's stream."""
        self._closed = True
        for queue in list(self._queues):
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)
