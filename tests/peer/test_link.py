"""Direct links between two in-process aiortc endpoints over 127.0.0.1, signalling wired directly.

The "hub" here is a function that fills `from_*` like the real hub does and can tamper or drop;
the end-to-end tests with a real server live in test_scenarios.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import pytest

from crypto.keys import DeviceKeys
from peer import frames
from peer.errors import FrameError, LinkFailed
from peer.link import Link, LinkSettings, LinkState
from peer.linkset import LinkSet
from signalling.protocol import SignalFrame
from tests.peer.conftest import foreign_tasks, live_peer_connections

LOOPBACK = LinkSettings(
    ice_servers=(), host_addresses=("127.0.0.1",), setup_deadline=3.0, ping_interval=0.2, dead_after=1.0
)

Tamper = Callable[[SignalFrame], SignalFrame | None]


class Pair:
    """Two link sets (device A of user 1, device B of user 2) joined by an in-memory relay."""

    def __init__(self, keys_a: DeviceKeys, keys_b: DeviceKeys, settings: LinkSettings = LOOPBACK) -> None:
        self.frames: dict[str, asyncio.Queue[frames.Frame]] = {"a": asyncio.Queue(), "b": asyncio.Queue()}
        self.rejected: list[str] = []
        self.tamper: Tamper | None = None
        self.signals: list[SignalFrame] = []
        identities = {
            "device-aaaa": keys_a.identity_public_bytes(),
            "device-bbbb": keys_b.identity_public_bytes(),
        }

        async def lookup(user_id: int, device_id: str) -> bytes | None:
            return identities.get(device_id)

        def make(name: str, user: int, device: str, keys: DeviceKeys) -> LinkSet:
            async def send(frame: SignalFrame) -> None:
                relayed = frame.model_copy(update={"from_user": user, "from_device": device})
                self.signals.append(relayed)
                if self.tamper is not None:
                    relayed = self.tamper(relayed)
                    if relayed is None:
                        return
                target = self.b if frame.to_device == "device-bbbb" else self.a
                self._relay_tasks.add(asyncio.ensure_future(target.handle_signal(relayed)))

            return LinkSet(
                user_id=user,
                device_id=device,
                keys=keys,
                settings=settings,
                send_signal=send,
                pinned_identity=lookup,
                on_frame=lambda link, f: self.frames[name].put_nowait(f),
                on_rejected=lambda u, d, why: self.rejected.append(why),
            )

        self._relay_tasks: set[asyncio.Future] = set()
        self.a = make("a", 1, "device-aaaa", keys_a)
        self.b = make("b", 2, "device-bbbb", keys_b)

    async def close(self) -> None:
        await asyncio.gather(*self._relay_tasks, return_exceptions=True)
        await self.a.close()
        await self.b.close()


@pytest.fixture
async def pair(keyring):
    p = Pair(keyring[0], keyring[1])
    yield p
    await p.close()


async def next_frame(queue: asyncio.Queue, within: float = 3.0) -> frames.Frame:
    async with asyncio.timeout(within):
        return await queue.get()


async def test_link_opens_over_loopback_and_carries_frames_both_ways(pair):
    link = await pair.a.connect(2, "device-bbbb", within=5)
    assert link.state is LinkState.OPEN
    offer = pair.signals[0].payload["sdp"]
    candidates = [line for line in offer.splitlines() if line.startswith("a=candidate")]
    assert candidates and all(" 127.0.0.1 " in c for c in candidates)
    link.send(frames.Envelope(b"hello"))
    assert await next_frame(pair.frames["b"]) == frames.Envelope(b"hello")
    (await pair.b.wait_for_link("device-aaaa", 3)).send(frames.Ack("ab" * 16))
    assert await next_frame(pair.frames["a"]) == frames.Ack("ab" * 16)


async def test_tampered_offer_is_rejected_and_never_applied(pair):
    def rewrite(frame: SignalFrame) -> SignalFrame:
        if frame.kind == "offer":
            sdp = frame.payload["sdp"].replace("a=fingerprint:sha-256 ", "a=fingerprint:sha-256 00:")
            return frame.model_copy(update={"payload": {**frame.payload, "sdp": sdp}})
        return frame

    pair.tamper = rewrite
    with pytest.raises(LinkFailed):
        await pair.a.connect(2, "device-bbbb", within=1.0)
    assert pair.rejected and "signature" in pair.rejected[0]
    assert pair.b.link("device-aaaa") is None  # the callee built no connection from it


async def test_replayed_offer_is_rejected(pair):
    await pair.a.connect(2, "device-bbbb", within=5)
    offer = next(s for s in pair.signals if s.kind == "offer")
    await pair.b.handle_signal(offer)
    assert any("replay" in why for why in pair.rejected)


async def test_callee_that_ignores_offers_fails_within_deadline(pair):
    pair.b.ignore_signals = True
    # The attempt ends with LinkFailed (rather than hanging) because of its own deadline; the outer
    # timeout only keeps a broken deadline from hanging the suite.
    async with asyncio.timeout(30):
        with pytest.raises(LinkFailed):
            await pair.a.connect(2, "device-bbbb", within=1.0)


async def test_glare_ends_with_one_link_each_side(pair):
    la, lb = await asyncio.gather(
        pair.a.connect(2, "device-bbbb", within=5), pair.b.connect(1, "device-aaaa", within=5)
    )
    assert la.is_open and lb.is_open
    assert pair.a.links() == [la] and pair.b.links() == [lb]
    offers = [s for s in pair.signals if s.kind == "offer"]
    answers = [s for s in pair.signals if s.kind == "answer"]
    assert len(offers) == 2 and len(answers) == 1
    assert answers[0].from_device == "device-bbbb"  # the higher id yielded; the lower stays offerer
    la.send(frames.Envelope(b"after glare"))
    assert await next_frame(pair.frames["b"]) == frames.Envelope(b"after glare")


async def test_silent_peer_is_declared_failed_by_keepalive(pair):
    link = await pair.a.connect(2, "device-bbbb", within=5)
    remote = await pair.b.wait_for_link("device-aaaa", 3)
    # Mute and deaf, yet patient: it neither answers nor closes, as a vanished peer would not.
    remote.settings = dataclasses.replace(LOOPBACK, dead_after=60)
    remote._channel.remove_all_listeners("message")
    remote._send_now = lambda frame: None
    await asyncio.wait_for(link.wait_ended(), 30)
    assert link.state is LinkState.FAILED
    assert "no answer" in (link.failure or "")


async def test_remote_close_ends_the_link_quickly(pair):
    link = await pair.a.connect(2, "device-bbbb", within=5)
    await (await pair.b.wait_for_link("device-aaaa", 3)).pc.close()  # abrupt, from underneath the link
    await asyncio.wait_for(link.wait_ended(), 3)
    assert pair.a.open_link("device-bbbb") is None
    relink = await pair.a.connect(2, "device-bbbb", within=5)
    assert relink is not link and relink.is_open


async def test_paced_send_applies_back_pressure_and_delivers_everything(pair):
    link = await pair.a.connect(2, "device-bbbb", within=5)
    peak = 0
    for i in range(200):
        await link.send_paced(frames.Chunk("cd" * 16, i, bytes(16 * 1024)))
        peak = max(peak, link.buffered_amount)
    assert peak <= LOOPBACK.high_water + 16 * 1024 + 64
    for i in range(200):
        f = await next_frame(pair.frames["b"])
        assert isinstance(f, frames.Chunk) and f.index == i


async def test_closing_leaves_no_task_or_connection(keyring):
    before = set(asyncio.all_tasks())
    p = Pair(keyring[0], keyring[1])
    await p.a.connect(2, "device-bbbb", within=5)
    await p.close()
    assert foreign_tasks(before) == []
    assert live_peer_connections() == []


async def test_link_refuses_to_send_when_not_open():
    link = Link("device-x", LOOPBACK, lambda link, f: None)
    with pytest.raises(LinkFailed):
        link.send(frames.Envelope(b"x"))
    await link.close()
    assert link.state is LinkState.CLOSED


def test_frames_round_trip_and_reject_garbage():
    for f in (
        frames.Envelope(b"\x00\x01"),
        frames.Ack("0f" * 16),
        frames.Ping(7),
        frames.Pong(7),
        frames.Chunk("aa" * 16, 3, b"data"),
        frames.ChunkAck("aa" * 16, 3),
        frames.FileAbort("aa" * 16, "bad chunk"),
    ):
        assert frames.decode(frames.encode(f)) == f
    for bad in (b"", b"\x09", b"\x02short", "text"):
        with pytest.raises(FrameError):
            frames.decode(bad)
