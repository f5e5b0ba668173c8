"""What the peer tells its user interface: small immutable event records, JSON-safe via `to_dict`.

`EventBus` fans every event out to each subscriber's own bounded queue; a subscriber that stops
reading loses its oldest events (and gets told so), it never stalls the peer.

Readers dispatch by event *class*, as matrix-nio's callbacks do: `EventHandlers().on(MessageReceived,
show)` calls `show(event)` for that class (and its subclasses), so no reader switches on
`to_dict()["type"]` strings; `type` stays the wire name for JSON readers (the local API, scripts).
`decode_event(json)` turns that JSON back into the typed record (stdlib-light: a thin client of
the resident node can dispatch by class without loading aiortc or the crypto stack).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

from peer.records import MessageView, message_from_dict
from peer.vocab import DeliveryPath, GroupChange, KeyChange, MessageState, ReceiptStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Event:
    type: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}


@dataclass(frozen=True)
class StateChanged(Event):
    """The Peer's lifecycle moved (`peer.node.PeerState`: new, starting, running, closing, closed)."""

    type: ClassVar[str] = "peer_state"
    state: str


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
class PresenceSnapshot(Event):
    """Presence re-read from the server's list (after a (re)connect or a contact change): these
    users are online, every other contact is not."""

    type: ClassVar[str] = "presence_snapshot"
    online_users: tuple[int, ...]


@dataclass(frozen=True)
class ContactChanged(Event):
    """A contact relationship changed on the server (pushed by the hub, `ContactFrame`).

    `event` is requested / accepted / declined / removed / updated; `user_id` and `username` name
    the other person; `by_me` is true when this user made the change (on any of their devices);
    `contact` is this user's row after the change as `ContactOut` JSON, or None when there is none.
    Emitted after the peer refreshed its contacts cache (and, on accepted, fetched the new
    contact's device bundles), so a reader may act on it at once.
    """

    type: ClassVar[str] = "contact"
    event: str
    user_id: int
    username: str
    by_me: bool = False
    contact: dict[str, Any] | None = None


@dataclass(frozen=True)
class MessageReceived(Event):
    type: ClassVar[str] = "message"
    message: MessageView


@dataclass(frozen=True)
class MessageStateChanged(Event):
    type: ClassVar[str] = "message_state"
    message_id: str
    state: MessageState
    path: DeliveryPath | None = None
    reason: str | None = None

    @classmethod
    def of(cls, message_id: str, state: str, path: str | None, reason: str | None) -> MessageStateChanged:
        """From the words the local store keeps (it stores the vocabularies' plain values)."""
        return cls(message_id, MessageState(state), DeliveryPath(path) if path else None, reason)


@dataclass(frozen=True)
class ReadMarked(Event):
    """Incoming messages were marked read on this device; `unread` is what is left unread."""

    type: ClassVar[str] = "read_marked"
    conversation: str
    message_ids: tuple[str, ...]
    unread: int


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
    status: ReceiptStatus
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
    change: KeyChange
    blocked: bool


@dataclass(frozen=True)
class GroupChanged(Event):
    """A verified membership change of a group (the chain's record, never the server's word)."""

    type: ClassVar[str] = "group"
    group_id: str
    name: str
    change: GroupChange
    actor: int | None = None
    users: list[int] = field(default_factory=list)

    @property
    def conversation(self) -> str:
        return f"g:{self.group_id}"


@dataclass(frozen=True)
class GroupWarning(Event):
    """The server's account of a group does not match the verified chain (a ghost member, a
    forged, rolled-back or broken chain): refused, nothing encrypted to or accepted from it."""

    type: ClassVar[str] = "group_warning"
    group_id: str
    reason: str
    users: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class DeviceRemoved(Event):
    """A device of this user (or of a contact) was revoked: a notice ("device removed"), not a
    key warning; nothing is sealed for it any more."""

    type: ClassVar[str] = "device_removed"
    user_id: int
    device_id: str


@dataclass(frozen=True)
class MessageEdited(Event):
    """A message's text was replaced by its sender (`message` is the view with the new text)."""

    type: ClassVar[str] = "message_edited"
    message: MessageView


@dataclass(frozen=True)
class MessageDeleted(Event):
    """A message was deleted: `for_everyone` leaves a tombstone, else it is gone from this device."""

    type: ClassVar[str] = "message_deleted"
    message_id: str
    conversation: str
    for_everyone: bool


@dataclass(frozen=True)
class HistoryReceived(Event):
    """Another device of mine sent its history here (device transfer): `stored` messages new."""

    type: ClassVar[str] = "history_received"
    from_device: str
    stored: int


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


@dataclass(frozen=True)
class SessionReestablished(Event):
    """The secure session with a device was re-established after this device could not decrypt
    (its state lost or restored from an older copy): shown to the user once."""

    type: ClassVar[str] = "session_reestablished"
    user_id: int
    device_id: str
    message: str = "secure session re-established"


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


@dataclass(frozen=True)
class UnknownEvent(Event):
    """An event of a type this reader does not know (a newer node): kept, not dropped."""

    type: ClassVar[str] = "unknown"
    name: str
    data: dict[str, Any]


def _event_classes() -> dict[str, type[Event]]:
    found: dict[str, type[Event]] = {}
    todo = list(Event.__subclasses__())
    while todo:
        cls = todo.pop()
        found.setdefault(cls.type, cls)
        todo.extend(cls.__subclasses__())
    return found


_VOCAB = {
    "state": MessageState,
    "path": DeliveryPath,
    "status": ReceiptStatus,
    "change": KeyChange,
}


def decode_event(data: dict[str, Any]) -> Event:
    """The typed event for one `Event.to_dict()` JSON object (`UnknownEvent` for a new type)."""
    name = str(data.get("type", ""))
    cls = _event_classes().get(name)
    if cls is None or cls is UnknownEvent:
        return UnknownEvent(name, dict(data))
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if cls in (MessageReceived, MessageEdited) and f.name == "message":
            value = message_from_dict(value)
        elif cls is GroupChanged and f.name == "change":
            value = GroupChange(value)
        elif cls is StateChanged:
            pass  # the lifecycle's words stay strings (peer.node.PeerState is the node's)
        elif f.name in _VOCAB and value is not None:
            value = _VOCAB[f.name](value)
        elif isinstance(value, list) and f.name in ("online_users", "message_ids"):
            value = tuple(value) if cls is not ReceiptReceived else list(value)
        values[f.name] = value
    return cls(**values)


E = TypeVar("E", bound=Event)
Handler = Callable[[Any], Awaitable[None] | None]


class EventHandlers:
    """Callbacks by event class (matrix-nio's `add_event_callback`): the typed way to read events.

    `on(Cls, fn)` registers `fn` for `Cls` and its subclasses (`on(Event, fn)` sees everything);
    `dispatch(event)` calls each matching handler in registration order, awaiting coroutines. A
    handler that raises is logged and the others still run: one bad event never stops a reader.
    """

    def __init__(self) -> None:
        self._handlers: list[tuple[type[Event], Handler]] = []

    def on(self, cls: type[E], handler: Callable[[E], Awaitable[None] | None]) -> EventHandlers:
        self._handlers.append((cls, handler))
        return self

    async def dispatch(self, event: Event) -> None:
        for cls, handler in self._handlers:
            if not isinstance(event, cls):
                continue
            try:
                result = handler(event)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("a %s handler failed", type(event).__name__)

    async def dispatch_json(self, data: dict[str, Any]) -> None:
        """Dispatch one event as the local API sends it (`Event.to_dict()` JSON)."""
        await self.dispatch(decode_event(data))

    async def pump(self, queue: asyncio.Queue[Event | None]) -> None:
        """Dispatch from a bus queue until the bus closes (None)."""
        while (event := await queue.get()) is not None:
            await self.dispatch(event)

    @contextlib.asynccontextmanager
    async def follow(self, bus: EventBus) -> AsyncIterator[None]:
        """Dispatch every event published from now on, until the block ends (then drain what is
        already queued, so nothing published before the block's end is missed, and stop)."""
        queue = bus.subscribe()
        task = asyncio.get_running_loop().create_task(self.pump(queue), name="event-follow")
        try:
            yield
        finally:
            bus.unsubscribe(queue)
            with contextlib.suppress(asyncio.QueueFull):
                queue.put_nowait(None)  # ends the pump after what is already queued
            try:
                async with asyncio.timeout(5):
                    await asyncio.shield(task)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
