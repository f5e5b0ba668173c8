"""One direct link to one remote device: an RTCPeerConnection with one ordered, reliable channel.

The link owns its state machine (new → connecting → open → closed | failed), its set-up deadline
and its keepalive: aiortc notices a vanished peer only after ~30 s and a path that never works after
~60 s, so the link pings over the channel and declares itself failed after `dead_after` seconds of
silence. A broken link is never repaired (aiortc has no ICE restart): it is closed and the owner
makes a new one.

The link knows nothing of signatures, envelopes or routing: it turns SDP into a channel and moves
frames (`peer.frames`). Signing and verifying the SDP is `peer.linkset`'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from aiortc import RTCConfiguration, RTCDataChannel, RTCIceServer, RTCPeerConnection, RTCSessionDescription

from peer import frames
from peer.errors import FrameError, LinkFailed
from peer.hostaddr import restricted_host_addresses
from peer.icepair import IcePair, selected_pair

log = logging.getLogger(__name__)

CHANNEL_LABEL = "peerpost"
CHANNEL_ID = 0


class LinkState(StrEnum):
    NEW = "new"
    CONNECTING = "connecting"
    OPEN = "open"
    CLOSED = "closed"
    FAILED = "failed"


@dataclass(frozen=True)
class LinkSettings:
    """How links are built. `ice_servers` is always explicit: aiortc's default is a public STUN server."""

    ice_servers: tuple[RTCIceServer, ...] = ()
    host_addresses: tuple[str, ...] | None = None  # None: every interface aioice finds
    setup_deadline: float = 8.0
    ping_interval: float = 2.0
    dead_after: float = 10.0
    high_water: int = 256 * 1024  # pause bulk sends above this many buffered bytes
    low_water: int = 64 * 1024  # resume below this


FrameHandler = Callable[["Link", frames.Frame], None]
StateHandler = Callable[["Link", LinkState], None]

_link_ids = itertools.count(1)


@dataclass
class _Stats:
    opened_at: float | None = None
    last_heard: float = field(default_factory=time.monotonic)


class Link:
    """A direct link; create it, then `create_offer` (caller) or `create_answer` (callee)."""

    def __init__(
        self,
        remote_device: str,
        settings: LinkSettings,
        on_frame: FrameHandler,
        on_state: StateHandler | None = None,
    ) -> None:
        self.id = next(_link_ids)
        self.remote_device = remote_device
        self.settings = settings
        self._on_frame = on_frame
        self._on_state = on_state
        self._state = LinkState.NEW
        self.failure: str | None = None
        self._pc: RTCPeerConnection | None = None
        self._channel: RTCDataChannel | None = None
        self._opened = asyncio.Event()
        self._ended = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stats = _Stats()
        self._ping_nonce = itertools.count(1)
        self._pc_closing: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<Link #{self.id} to {self.remote_device} {self._state}>"

    # ---------------------------------------------------------------------------------------------
    # state
    # ---------------------------------------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        return self._state

    @property
    def is_open(self) -> bool:
        return self._state is LinkState.OPEN

    @property
    def ended(self) -> bool:
        return self._state in (LinkState.CLOSED, LinkState.FAILED)

    @property
    def buffered_amount(self) -> int:
        return self._channel.bufferedAmount if self._channel is not None else 0

    def _set_state(self, state: LinkState) -> None:
        if self._state is state or self.ended:
            return
        log.debug("link #%s to %s: %s -> %s", self.id, self.remote_device, self._state, state)
        self._state = state
        if state is LinkState.OPEN:
            self._opened.set()
            self._stats.opened_at = time.monotonic()
        if self.ended:
            self._ended.set()
            self._drained.set()  # wake paced senders; they see the link ended
        if self._on_state is not None:
            try:
                self._on_state(self, state)
            except Exception:  # a broken observer must not break the link's bookkeeping
                log.exception("link state handler failed")

    # ---------------------------------------------------------------------------------------------
    # set-up
    # ---------------------------------------------------------------------------------------------

    def _spawn(self, coro, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=f"link#{self.id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _build(self) -> RTCPeerConnection:
        if self._pc is not None or self._state is not LinkState.NEW:
            raise LinkFailed(f"link #{self.id} was already set up")
        pc = RTCPeerConnection(RTCConfiguration(iceServers=list(self.settings.ice_servers)))
        self._pc = pc
        # Negotiated out of band with a fixed id on both sides: no "datachannel" event to miss on
        # the answering side (aiortc #1228), and both ends hold their channel from the start.
        channel = pc.createDataChannel(CHANNEL_LABEL, ordered=True, negotiated=True, id=CHANNEL_ID)
        self._channel = channel
        channel.bufferedAmountLowThreshold = self.settings.low_water
        channel.on("open", self._channel_open)
        channel.on("close", lambda: self._end(LinkState.CLOSED, "the channel closed"))
        channel.on("message", self._message)
        channel.on("bufferedamountlow", self._drained.set)
        pc.on("connectionstatechange", self._pc_state)
        self._set_state(LinkState.CONNECTING)
        self._spawn(self._setup_deadline(), "deadline")
        return pc

    async def create_offer(self) -> str:
        """Build the connection and return the local offer SDP (candidates included: no trickle)."""
        pc = self._build()
        try:
            with restricted_host_addresses(self.settings.host_addresses):
                await pc.setLocalDescription(await pc.createOffer())
        except Exception as e:
            await self._fail(f"could not create an offer: {e}")
            raise LinkFailed(self.failure or "offer failed") from e
        return pc.localDescription.sdp

    async def create_answer(self, offer_sdp: str) -> str:
        """Apply a (verified) remote offer and return the local answer SDP."""
        pc = self._build()
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            with restricted_host_addresses(self.settings.host_addresses):
                await pc.setLocalDescription(await pc.createAnswer())
        except Exception as e:
            await self._fail(f"could not answer the offer: {e}")
            raise LinkFailed(self.failure or "answer failed") from e
        return pc.localDescription.sdp

    async def apply_answer(self, answer_sdp: str) -> None:
        """Apply a (verified) remote answer to our offer."""
        if self._pc is None or self._pc.signalingState != "have-local-offer":
            raise LinkFailed(f"link #{self.id} is not waiting for an answer")
        try:
            await self._pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        except Exception as e:
            await self._fail(f"could not apply the answer: {e}")
            raise LinkFailed(self.failure or "answer rejected") from e

    async def wait_open(self, within: float | None = None) -> None:
        """Wait until the channel is open; LinkFailed when it ends first or the wait times out."""
        if self._state is LinkState.OPEN:
            return
        if self.ended:
            raise LinkFailed(self.failure or f"link to {self.remote_device} is {self._state}")
        opened = asyncio.ensure_future(self._opened.wait())
        ended = asyncio.ensure_future(self._ended.wait())
        try:
            async with asyncio.timeout(within):
                await asyncio.wait({opened, ended}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError as e:
            raise LinkFailed(f"link to {self.remote_device} did not open within {within} s") from e
        finally:
            opened.cancel()
            ended.cancel()
            await asyncio.gather(opened, ended, return_exceptions=True)
        if self._state is not LinkState.OPEN:
            raise LinkFailed(self.failure or f"link to {self.remote_device} is {self._state}")

    async def _setup_deadline(self) -> None:
        try:
            async with asyncio.timeout(self.settings.setup_deadline):
                await self._opened.wait()
        except TimeoutError:
            await self._fail(f"not open within the set-up deadline of {self.settings.setup_deadline} s")

    def _channel_open(self) -> None:
        if self.ended:
            return
        self._stats.last_heard = time.monotonic()
        self._set_state(LinkState.OPEN)
        self._spawn(self._keepalive(), "keepalive")

    def _pc_state(self) -> None:
        if self._pc is None:
            return
        state = self._pc.connectionState
        if state == "failed":
            self._end(LinkState.FAILED, "the connection failed")
        elif state == "closed":
            self._end(LinkState.CLOSED, "the connection closed")

    # ---------------------------------------------------------------------------------------------
    # traffic
    # ---------------------------------------------------------------------------------------------

    def _message(self, message: bytes | str) -> None:
        self._stats.last_heard = time.monotonic()
        try:
            frame = frames.decode(message)
        except FrameError as e:
            log.warning("link #%s: dropped a malformed frame: %s", self.id, e)
            return
        if isinstance(frame, frames.Ping):
            self._send_now(frames.Pong(frame.nonce))
            return
        if isinstance(frame, frames.Pong):
            return
        try:
            self._on_frame(self, frame)
        except Exception:
            log.exception("link #%s: frame handler failed", self.id)

    def _send_now(self, frame: frames.Frame) -> None:
        if self._state is not LinkState.OPEN or self._channel is None:
            raise LinkFailed(f"link to {self.remote_device} is {self._state}")
        try:
            self._channel.send(frames.encode(frame))
        except Exception as e:  # aiortc raises InvalidStateError once the transport is gone
            raise LinkFailed(f"link to {self.remote_device}: send failed: {e}") from e

    def send(self, frame: frames.Frame) -> None:
        """Queue one frame now (chat, acks): never waits behind back-pressure."""
        self._send_now(frame)

    async def send_paced(self, frame: frames.Frame, stall_limit: float | None = None) -> None:
        """Queue one bulk frame, first waiting while more than `high_water` bytes are buffered."""
        deadline = stall_limit if stall_limit is not None else self.settings.dead_after
        while self.buffered_amount > self.settings.high_water:
            self._drained.clear()
            if self.buffered_amount <= self.settings.low_water:
                break
            try:
                async with asyncio.timeout(deadline):
                    await self._drained.wait()
            except TimeoutError as e:
                raise LinkFailed(f"link to {self.remote_device} stalled for {deadline} s") from e
            if self.ended:
                raise LinkFailed(self.failure or f"link to {self.remote_device} is {self._state}")
        self._send_now(frame)

    async def _keepalive(self) -> None:
        interval = self.settings.ping_interval
        while self._state is LinkState.OPEN:
            await asyncio.sleep(interval)  # a timer, not synchronisation: the keepalive period
            silent = time.monotonic() - self._stats.last_heard
            if silent > self.settings.dead_after:
                await self._fail(f"no answer for {silent:.1f} s")
                return
            with contextlib.suppress(LinkFailed):
                self._send_now(frames.Ping(next(self._ping_nonce)))

    # ---------------------------------------------------------------------------------------------
    # ending
    # ---------------------------------------------------------------------------------------------

    def _end(self, state: LinkState, reason: str) -> None:
        """Mark the link ended from a synchronous callback; the owner still calls `close()`."""
        if self.ended:
            return
        self.failure = reason if state is LinkState.FAILED else self.failure
        if state is LinkState.CLOSED and self.failure is None:
            self.failure = reason
        self._set_state(state)

    async def _fail(self, reason: str) -> None:
        if not self.ended:
            self.failure = reason
            log.info("link #%s to %s failed: %s", self.id, self.remote_device, reason)
            self._set_state(LinkState.FAILED)
        await self._release()

    async def close(self) -> None:
        """Close the connection and end every task of the link; safe to call more than once."""
        if not self.ended:
            self.failure = self.failure or "closed locally"
            self._set_state(LinkState.CLOSED)
        await self._release()

    async def _release(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._pc is not None:
            if self._pc_closing is None:
                self._pc_closing = asyncio.ensure_future(self._pc.close())
            # Shielded: aiortc's close() shares one future between callers, and cancelling any
            # waiter cancels it for all (then aiortc's own close task dies with InvalidStateError).
            with contextlib.suppress(Exception):
                await asyncio.shield(self._pc_closing)

    async def wait_ended(self) -> None:
        await self._ended.wait()

    def selected_pair(self) -> IcePair | None:
        """The ICE candidate pair this link runs over (host, NAT-mapped or relayed); None until
        ICE has nominated one or once the connection is gone."""
        return selected_pair(self._pc)

    @property
    def pc(self) -> RTCPeerConnection | None:
        """The underlying connection, for tests that need to break it abruptly."""
        return self._pc
