"""All direct links of this device: at most one per remote device, set up over signed signalling.

An offer or answer travels through the hub as a `SignalFrame` whose payload carries the SDP, a
fresh nonce and an Ed25519 signature by the sending device over (kind, both device ids, nonce,
body). The remote description is applied only after the signature verifies against the sender's
*pinned* identity key, so the DTLS fingerprints in the SDP are authenticated end to end and the
server cannot splice itself into a link. An answer's body also names the offer's nonce, so an
answer cannot be replayed onto another offer.

Glare (both devices offer at once) is resolved by device id: the lower id stays the offerer and
ignores the other's offer; the higher id drops its own attempt and answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from crypto.errors import SignatureInvalid
from crypto.keys import DeviceKeys
from crypto.signaling import sign_signal, verify_signal
from peer.errors import LinkFailed, SignalRejected
from peer.link import FrameHandler, Link, LinkSettings, LinkState
from signalling.protocol import SignalFrame, SignalKind, b64decode, b64encode

log = logging.getLogger(__name__)

SignalSender = Callable[[SignalFrame], Awaitable[None]]
KeyLookup = Callable[[int, str], Awaitable[bytes | None]]
LinkObserver = Callable[[Link, LinkState, int], None]
RejectObserver = Callable[[int, str, str], None]


@dataclass
class _Attempt:
    link: Link
    user_id: int
    offer_nonce: str | None  # set on the offering side while waiting for the answer


class LinkSet:
    def __init__(
        self,
        *,
        user_id: int,
        device_id: str,
        keys: DeviceKeys,
        settings: LinkSettings,
        send_signal: SignalSender,
        pinned_identity: KeyLookup,
        on_frame: FrameHandler,
        on_link_state: LinkObserver | None = None,
        on_rejected: RejectObserver | None = None,
    ) -> None:
        self.user_id = user_id
        self.device_id = device_id
        self._keys = keys
        self.settings = settings
        self.send_signal = send_signal  # where signals go (the hub); a test may play a meddling server here
        self._pinned_identity = pinned_identity
        self._on_frame = on_frame
        self._on_link_state = on_link_state
        self._on_rejected = on_rejected
        self._links: dict[str, _Attempt] = {}
        self._retired: set[Link] = set()
        self._seen_nonces: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()
        self.ignore_signals = False  # a peer that never answers (tests of the fallback path)
        self._closed = False

    # ---------------------------------------------------------------------------------------------

    def open_link(self, device_id: str) -> Link | None:
        attempt = self._links.get(device_id)
        if attempt is not None and attempt.link.is_open:
            return attempt.link
        return None

    def link(self, device_id: str) -> Link | None:
        attempt = self._links.get(device_id)
        return attempt.link if attempt else None

    async def wait_for_link(self, device_id: str, within: float) -> Link:
        """Wait (without starting anything) until an open link to the device exists."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: self.open_link(device_id) is not None)
        link = self.open_link(device_id)
        assert link is not None
        return link

    def links(self) -> list[Link]:
        return [a.link for a in self._links.values()]

    def _new_link(self, device_id: str) -> Link:
        return Link(device_id, self.settings, self._on_frame, self._state_changed)

    def _state_changed(self, link: Link, state: LinkState) -> None:
        attempt = self._links.get(link.remote_device)
        user_id = attempt.user_id if attempt and attempt.link is link else -1
        if link.ended:
            if attempt is not None and attempt.link is link:
                del self._links[link.remote_device]
            self._spawn(self._retire(link))
        if self._on_link_state is not None:
            self._on_link_state(link, state, user_id)
        self._spawn(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _retire(self, link: Link) -> None:
        self._retired.add(link)
        try:
            await link.close()
        finally:
            self._retired.discard(link)

    def _spawn(self, coro: Awaitable[None]) -> None:
        if self._closed:
            if asyncio.iscoroutine(coro):
                coro.close()
            return
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---------------------------------------------------------------------------------------------
    # caller side
    # ---------------------------------------------------------------------------------------------

    async def connect(self, user_id: int, device_id: str, within: float) -> Link:
        """An open link to the device within `within` seconds, starting an offer if none is underway.

        A glare hand-over (our attempt dropped for the other side's) is followed to the new link.
        """
        if self._closed:
            raise LinkFailed("the peer is closing")
        try:
            async with asyncio.timeout(within):
                while True:
                    attempt = self._links.get(device_id)
                    if attempt is None:
                        attempt = await self._offer(user_id, device_id)
                    link = attempt.link
                    if link.is_open:
                        return link
                    try:
                        await link.wait_open()
                        return link
                    except LinkFailed:
                        replacement = self._links.get(device_id)
                        if replacement is None or replacement.link is link:
                            raise
        except TimeoutError as e:
            raise LinkFailed(f"no direct link to device {device_id} within {within} s") from e

    async def _offer(self, user_id: int, device_id: str) -> _Attempt:
        link = self._new_link(device_id)
        nonce = os.urandom(16).hex()
        attempt = _Attempt(link, user_id, nonce)
        self._links[device_id] = attempt
        try:
            sdp = await link.create_offer()
            await self._signal(SignalKind.OFFER, user_id, device_id, nonce, sdp.encode(), {"sdp": sdp})
        except Exception as e:
            await link.close()
            if self._links.get(device_id) is attempt:
                del self._links[device_id]
            raise LinkFailed(f"could not offer a link to device {device_id}: {e}") from e
        return attempt

    async def _signal(
        self, kind: SignalKind, user_id: int, device_id: str, nonce: str, body: bytes, extra: dict
    ) -> None:
        signature = sign_signal(self._keys, kind, self.device_id, device_id, nonce, body)
        payload = {"nonce": nonce, "sig": b64encode(signature), **extra}
        await self.send_signal(SignalFrame(kind=kind, to_user=user_id, to_device=device_id, payload=payload))

    # ---------------------------------------------------------------------------------------------
    # incoming signals
    # ---------------------------------------------------------------------------------------------

    async def handle_signal(self, frame: SignalFrame) -> None:
        """Verify and act on one signal from the hub; a bad one is reported and never applied."""
        if self._closed or self.ignore_signals:
            return
        if frame.from_user is None or frame.from_device is None or frame.to_device != self.device_id:
            log.warning("signal without a sender or for another device; dropped")
            return
        user_id, device_id = frame.from_user, frame.from_device
        try:
            await self._verified(frame)
        except SignalRejected as e:
            log.warning("signal from device %s rejected: %s", device_id, e)
            if self._on_rejected is not None:
                self._on_rejected(user_id, device_id, str(e))
            return
        if frame.kind is SignalKind.OFFER:
            await self._answer(user_id, device_id, frame.payload)
        elif frame.kind is SignalKind.ANSWER:
            await self._accept_answer(device_id, frame.payload)
        elif frame.kind is SignalKind.BYE:
            attempt = self._links.get(device_id)
            if attempt is not None:
                await attempt.link.close()

    def _body(self, frame: SignalFrame) -> bytes:
        payload = frame.payload
        if frame.kind is SignalKind.OFFER:
            return str(payload.get("sdp", "")).encode()
        if frame.kind is SignalKind.ANSWER:
            return (str(payload.get("offer_nonce", "")) + "\n" + str(payload.get("sdp", ""))).encode()
        return b""

    async def _verified(self, frame: SignalFrame) -> None:
        assert frame.from_user is not None and frame.from_device is not None
        payload = frame.payload
        nonce, sig = payload.get("nonce"), payload.get("sig")
        if not isinstance(nonce, str) or not isinstance(sig, str) or not 16 <= len(nonce) <= 64:
            raise SignalRejected(f"{frame.kind} from device {frame.from_device} is not signed")
        key = await self._pinned_identity(frame.from_user, frame.from_device)
        if key is None:
            raise SignalRejected(f"{frame.kind} from unknown device {frame.from_device}: no pinned key")
        try:
            signature = b64decode(sig)
            verify_signal(
                key, signature, frame.kind, frame.from_device, self.device_id, nonce, self._body(frame)
            )
        except (ValueError, SignatureInvalid) as e:
            raise SignalRejected(
                f"{frame.kind} from device {frame.from_device} failed its signature check: "
                "the server or someone on the way altered it"
            ) from e
        seen = (frame.from_device, nonce)
        if seen in self._seen_nonces:
            raise SignalRejected(f"{frame.kind} from device {frame.from_device} is a replay")
        self._seen_nonces[seen] = None
        while len(self._seen_nonces) > 4096:
            self._seen_nonces.popitem(last=False)

    async def _answer(self, user_id: int, device_id: str, payload: dict) -> None:
        existing = self._links.get(device_id)
        if existing is not None and existing.offer_nonce is not None and not existing.link.is_open:
            if self.device_id < device_id:
                log.debug("glare with %s: our offer stands", device_id)
                return
            log.debug("glare with %s: yielding to their offer", device_id)
        # Their offer means their side has no working link: replace ours, whatever its state. The
        # new attempt is registered first, so a `connect` waiting on the old one follows it.
        link = self._new_link(device_id)
        attempt = _Attempt(link, user_id, None)
        self._links[device_id] = attempt
        if existing is not None:
            await existing.link.close()
        try:
            sdp = await link.create_answer(str(payload["sdp"]))
            nonce = os.urandom(16).hex()
            body = (str(payload["nonce"]) + "\n" + sdp).encode()
            extra = {"sdp": sdp, "offer_nonce": str(payload["nonce"])}
            await self._signal(SignalKind.ANSWER, user_id, device_id, nonce, body, extra)
        except Exception as e:
            log.info("could not answer device %s: %s", device_id, e)
            await link.close()

    async def _accept_answer(self, device_id: str, payload: dict) -> None:
        attempt = self._links.get(device_id)
        if (
            attempt is None
            or attempt.offer_nonce is None
            or payload.get("offer_nonce") != attempt.offer_nonce
        ):
            log.debug("answer from %s matches no offer of ours; dropped", device_id)
            return
        attempt.offer_nonce = None
        with contextlib.suppress(LinkFailed):
            await attempt.link.apply_answer(str(payload["sdp"]))

    # ---------------------------------------------------------------------------------------------

    async def drop(self, device_id: str) -> None:
        attempt = self._links.pop(device_id, None)
        if attempt is not None:
            await attempt.link.close()

    async def close(self) -> None:
        self._closed = True
        links = [a.link for a in self._links.values()]
        self._links.clear()
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
        # The remaining tasks are notifications and link retirements, each short and bounded:
        # let them finish (cancelling a closing RTCPeerConnection leaves aiortc half-closed).
        while self._tasks:
            tasks = list(self._tasks)
            _, pending = await asyncio.wait(tasks, timeout=5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(link.close() for link in list(self._retired)), return_exceptions=True)
