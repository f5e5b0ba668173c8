"""Direct or server, per recipient device: the one place that decides how an envelope travels.

For each device: an open link carries the envelope and the receiver's ack must come within
`ack_deadline`; a device that is online without a link gets one link attempt bounded by
`link_deadline`; anything that did not end in a direct ack — no link, a failed link, a late ack, an
offline device — goes to the server in one `send` frame, which the hub answers with `accepted`
only after committing it. Until then the envelope sits in the local outbox and is sent again after
every reconnect, so a message is never held back by a failing direct path, and never lost. A
message that arrives both ways is dropped by the receiver's replay memory (same message id).

Only a device with no failed attempt behind it makes a message wait for a link. After an attempt
fails (a symmetric NAT without TURN, a peer that never answers) the device is backed off: messages
go to the server at once, and when the back-off has run out the next message starts a new attempt
in the background instead of waiting for it — so a path that keeps failing costs one deadline, not
one deadline per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from peer import frames
from peer.errors import DeliveryTimeout, LinkFailed, ServerError, ServerUnavailable
from peer.link import Link
from peer.localstore import LocalStore, now_ms, seconds_left
from peer.vocab import DeliveryPath, DeliveryState
from signalling.protocol import AcceptedFrame, RecipientDevice, b64encode

log = logging.getLogger(__name__)

# The vocabulary as short names (kept for readers of this module; the types live in peer.vocab).
DIRECT, RELAYED, QUEUED = DeliveryPath.DIRECT, DeliveryPath.RELAYED, DeliveryPath.QUEUED
PENDING, SENT, FAILED = DeliveryState.PENDING, DeliveryState.SENT, DeliveryState.FAILED


class DirectLinks(Protocol):
    """The direct side (`peer.linkset.LinkSet` in a peer; a unit test passes its own)."""

    def open_link(self, device_id: str) -> Link | None: ...

    async def connect(self, user_id: int, device_id: str, within: float) -> Link: ...


class ServerPath(Protocol):
    """The server side (`peer.session.HubSession`): hand over an envelope, get `accepted`;
    `connected` says whether signalling (and so a new link) is possible at all."""

    @property
    def connected(self) -> bool: ...

    async def send_envelope(
        self,
        message_id: str,
        envelope_b64: str,
        recipients: list[RecipientDevice],
        within: float,
        expires_in: int | None = None,
    ) -> AcceptedFrame: ...


@dataclass(frozen=True)
class DeviceOutcome:
    user_id: int
    device_id: str
    path: DeliveryPath | None  # None while pending
    state: DeliveryState
    reason: str | None = None


@dataclass(frozen=True)
class RoutePolicy:
    link_deadline: float = 5.0
    ack_deadline: float = 2.0
    server_deadline: float = 15.0
    direct: bool = True
    retry_after: float = 10.0  # seconds after a failed link attempt before the next one
    retry_cap: float = 300.0  # the back-off doubles per failure up to this


@dataclass
class _Backoff:
    next_try: float  # loop time
    delay: float


class Router:
    def __init__(
        self,
        links: DirectLinks,
        session: ServerPath,
        store: LocalStore,
        policy: RoutePolicy,
        device_online: Callable[[int, str], bool],
    ) -> None:
        self._links = links
        self._session = session
        self._store = store
        self.policy = policy
        self._device_online = device_online
        self._acks: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._flush_lock = asyncio.Lock()
        self._backoff: dict[str, _Backoff] = {}
        self._background: dict[str, asyncio.Task[Link | None]] = {}

    def on_ack(self, device_id: str, message_id: str) -> None:
        future = self._acks.get((message_id, device_id))
        if future is not None and not future.done():
            future.set_result(None)

    def backed_off(self, device_id: str) -> bool:
        """True while a failed link attempt keeps this device on the server path."""
        return device_id in self._backoff

    async def _attempt(self, user_id: int, device_id: str) -> Link | None:
        """One link attempt bounded by `link_deadline`; a failure backs the device off."""
        try:
            link = await self._links.connect(user_id, device_id, within=self.policy.link_deadline)
        except LinkFailed as e:
            previous = self._backoff.get(device_id)
            delay = (
                self.policy.retry_after
                if previous is None
                else min(previous.delay * 2, self.policy.retry_cap)
            )
            self._backoff[device_id] = _Backoff(asyncio.get_running_loop().time() + delay, delay)
            log.info("no direct link to %s (next attempt in %.0f s): %s", device_id, delay, e)
            return None
        self._backoff.pop(device_id, None)
        return link

    def _retry_in_background(self, user_id: int, device_id: str) -> None:
        """Start a new attempt once the back-off has run out, without anyone waiting for it."""
        backoff = self._backoff[device_id]
        if device_id in self._background or asyncio.get_running_loop().time() < backoff.next_try:
            return
        task = asyncio.create_task(self._attempt(user_id, device_id), name=f"link-retry-{device_id}")
        self._background[device_id] = task  # owned: cancelled and awaited in close()
        task.add_done_callback(lambda _t: self._background.pop(device_id, None))

    async def _direct(
        self, message_id: str, envelope: bytes, user_id: int, device_id: str, connect: bool
    ) -> bool:
        if not self.policy.direct:
            return False
        link = self._links.open_link(device_id)
        if link is not None:
            self._backoff.pop(device_id, None)  # a link the other side opened ends the back-off
        elif connect and self._session.connected and self._device_online(user_id, device_id):
            # (No server connection, no signalling: a new link cannot be set up; the outbox waits.)
            if device_id in self._backoff:
                self._retry_in_background(user_id, device_id)
                return False
            link = await self._attempt(user_id, device_id)
        if link is None:
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks[(message_id, device_id)] = future
        try:
            link.send(frames.Envelope(envelope))
            async with asyncio.timeout(self.policy.ack_deadline):
                await future
            return True
        except (LinkFailed, TimeoutError) as e:
            log.info("direct delivery of %s to %s failed: %s", message_id, device_id, e or "ack timeout")
            return False
        finally:
            self._acks.pop((message_id, device_id), None)

    async def send_direct(
        self, message_id: str, data: bytes, user_id: int, device_id: str, connect: bool = True
    ) -> bool:
        """One frame to one device over its link (set up if allowed), True once the receiver acked
        it. Never the server: the direct half of `deliver`, for bytes sealed per device
        (`peer.pairwise_path`) and for what must not leave the two devices' link (history transfer)."""
        return await self._direct(message_id, data, user_id, device_id, connect)

    async def deliver(
        self,
        message_id: str,
        envelope: bytes,
        targets: list[tuple[int, str]],
        *,
        connect: bool = True,
        persistent: bool = True,
        expires_in: int | None = None,
    ) -> list[DeviceOutcome]:
        """Deliver to every target device; returns each device's path and state. `expires_in`:
        the server's mailbox keeps it at most that many seconds (a disappearing message)."""
        if len(targets) == 1:  # the common case: no task to schedule before the frame leaves
            results = [await self._direct(message_id, envelope, *targets[0], connect)]
        else:
            results = await asyncio.gather(
                *(self._direct(message_id, envelope, u, d, connect) for u, d in targets)
            )
        outcomes = [
            DeviceOutcome(u, d, DIRECT, SENT) for (u, d), ok in zip(targets, results, strict=True) if ok
        ]
        rest = [(u, d) for (u, d), ok in zip(targets, results, strict=True) if not ok]
        if persistent:
            for o in outcomes:
                await self._store.set_delivery(message_id, o.user_id, o.device_id, DIRECT, SENT)
        if rest:
            outcomes += await self._via_server(message_id, envelope, rest, persistent, expires_in)
        return outcomes

    async def _via_server(
        self,
        message_id: str,
        envelope: bytes,
        targets: list[tuple[int, str]],
        persistent: bool,
        expires_in: int | None = None,
    ) -> list[DeviceOutcome]:
        if persistent:
            await self._store.outbox_put(message_id, envelope)
            for u, d in targets:
                await self._store.set_delivery(message_id, u, d, None, PENDING)
        try:
            accepted = await self._session.send_envelope(
                message_id,
                b64encode(envelope),
                [RecipientDevice(user_id=u, device_id=d) for u, d in targets],
                within=self.policy.server_deadline,
                # Only when asked: a session without disappearing messages keeps the old signature.
                **({"expires_in": expires_in} if expires_in is not None else {}),
            )
        except (ServerUnavailable, DeliveryTimeout) as e:
            # Kept in the outbox: sent again after the next reconnect.
            return [DeviceOutcome(u, d, None, PENDING, str(e)) for u, d in targets]
        except ServerError as e:
            if persistent:
                for u, d in targets:
                    await self._store.set_delivery(message_id, u, d, None, FAILED)
                await self._store.outbox_done(message_id)
            return [DeviceOutcome(u, d, None, FAILED, str(e)) for u, d in targets]
        outcomes = []
        for u, d in targets:
            path = RELAYED if d in accepted.live else QUEUED
            outcomes.append(DeviceOutcome(u, d, path, SENT))
            if persistent:
                await self._store.set_delivery(message_id, u, d, path, SENT)
        if persistent:
            await self._store.outbox_done(message_id)
        return outcomes

    async def flush_outbox(self) -> list[tuple[str, list[DeviceOutcome]]]:
        """Send every envelope still pending for some device (after a reconnect)."""
        done = []
        async with self._flush_lock:
            for message_id, envelope, devices, expires_at_ms in await self._store.outbox_pending():
                expires_in = seconds_left(expires_at_ms, now_ms())
                if not devices or expires_in == 0:  # nobody left to send to, or it ran out meanwhile
                    await self._store.outbox_done(message_id)
                    continue
                outcomes = await self._via_server(
                    message_id, envelope, devices, persistent=True, expires_in=expires_in
                )
                done.append((message_id, outcomes))
                if any(o.state == PENDING for o in outcomes):
                    break  # the connection dropped again; the next reconnect resumes here
        return done

    async def close(self) -> None:
        background = list(self._background.values())
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._background.clear()
        for future in self._acks.values():
            with contextlib.suppress(asyncio.InvalidStateError):
                future.cancel()
        self._acks.clear()
