"""Direct or server, per recipient device: the one place that decides how an envelope travels.

For each device: an open link carries the envelope and the receiver's ack must come within
`ack_deadline`; a device that is online without a link gets one link attempt bounded by
`link_deadline`; anything that did not end in a direct ack — no link, a failed link, a late ack, an
offline device — goes to the server in one `send` frame, which the hub answers with `accepted`
only after committing it. Until then the envelope sits in the local outbox and is sent again after
every reconnect, so a message is never held back by a failing direct path, and never lost. A
message that arrives both ways is dropped by the receiver's replay memory (same message id).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from peer import frames
from peer.errors import DeliveryTimeout, LinkFailed, ServerError, ServerUnavailable
from peer.linkset import LinkSet
from peer.localstore import LocalStore
from peer.session import HubSession
from signalling.protocol import RecipientDevice, b64encode

log = logging.getLogger(__name__)

DIRECT, RELAYED, QUEUED = "direct", "relayed", "queued"
PENDING, SENT, FAILED = "pending", "sent", "failed"


@dataclass(frozen=True)
class DeviceOutcome:
    user_id: int
    device_id: str
    path: str | None  # direct / relayed / queued; None while pending
    state: str  # sent / pending / failed
    reason: str | None = None


@dataclass(frozen=True)
class RoutePolicy:
    link_deadline: float = 5.0
    ack_deadline: float = 2.0
    server_deadline: float = 15.0
    direct: bool = True


class Router:
    def __init__(
        self,
        links: LinkSet,
        session: HubSession,
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

    def on_ack(self, device_id: str, message_id: str) -> None:
        future = self._acks.get((message_id, device_id))
        if future is not None and not future.done():
            future.set_result(None)

    async def _direct(
        self, message_id: str, envelope: bytes, user_id: int, device_id: str, connect: bool
    ) -> bool:
        if not self.policy.direct:
            return False
        link = self._links.open_link(device_id)
        if link is None and connect and self._device_online(user_id, device_id):
            try:
                link = await self._links.connect(user_id, device_id, within=self.policy.link_deadline)
            except LinkFailed as e:
                log.info("no direct link to %s: %s", device_id, e)
                return False
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

    async def deliver(
        self,
        message_id: str,
        envelope: bytes,
        targets: list[tuple[int, str]],
        *,
        connect: bool = True,
        persistent: bool = True,
    ) -> list[DeviceOutcome]:
        """Deliver to every target device; returns each device's path and state."""
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
            outcomes += await self._via_server(message_id, envelope, rest, persistent)
        return outcomes

    async def _via_server(
        self, message_id: str, envelope: bytes, targets: list[tuple[int, str]], persistent: bool
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
            for message_id, envelope, devices in await self._store.outbox_pending():
                if not devices:
                    await self._store.outbox_done(message_id)
                    continue
                outcomes = await self._via_server(message_id, envelope, devices, persistent=True)
                done.append((message_id, outcomes))
                if any(o.state == PENDING for o in outcomes):
                    break  # the connection dropped again; the next reconnect resumes here
        return done

    async def close(self) -> None:
        for future in self._acks.values():
            with contextlib.suppress(asyncio.InvalidStateError):
                future.cancel()
        self._acks.clear()
