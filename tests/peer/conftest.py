"""Fixtures for the peer's tests: committed device keys, a real server, peers on 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from aiortc import RTCPeerConnection

from crypto.keys import DeviceKeys
from peer import Peer, PeerSettings, Profile
from peer.events import Event
from tests.support.keys import fixed_device_keys
from tests.support.server import RunningServer


@pytest.fixture(scope="session")
def keyring() -> list[DeviceKeys]:
    """Four committed test devices' keys (no RSA-4096 generation in tests)."""
    return [fixed_keys(i) for i in range(4)]


def live_peer_connections() -> list[RTCPeerConnection]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, RTCPeerConnection) and o.connectionState != "closed"]


def foreign_tasks(before: set[asyncio.Task]) -> list[asyncio.Task]:
    current = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t not in before and t is not current and not t.done()]


# ------------------------------------------------------------------------------------------------
# A real server and real peers
# ------------------------------------------------------------------------------------------------


PASSWORD = "correct horse battery"
# The contact-event tests decline and ask again; the decline cool-down has its own server test.
SERVER_ENV = {"PEERPOST_PRESENCE_GRACE_SECONDS": "0.2", "PEERPOST_CONTACT_DECLINE_COOLDOWN_SECONDS": "0"}


def fixed_keys(n: int) -> DeviceKeys:
    return fixed_device_keys(n)


def loopback_settings(n: int, **overrides) -> PeerSettings:
    """Peer settings for one machine: 127.0.0.1 only, no ICE servers, short timers, fixed keys."""
    base = PeerSettings(
        ice_servers=(),
        host_addresses=("127.0.0.1",),
        link_deadline=2.0,
        ack_deadline=1.0,
        server_deadline=10.0,
        keepalive=0.5,
        dead_after=2.0,
        reconnect_base=0.05,
        reconnect_cap=0.5,
        device_keys=fixed_keys(n),
        scrypt_n=1 << 10,
    )
    return replace(base, **overrides)


@pytest.fixture
async def peer_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    server = RunningServer(tmp_path / "server", env=SERVER_ENV)
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


@dataclass
class Recorder:
    """Collects a peer's events and lets a test wait for one that matches."""

    peer: Peer
    events: list[Event] = field(default_factory=list)
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _task: asyncio.Task | None = None

    def start(self) -> Recorder:
        queue = self.peer.subscribe()

        async def pump() -> None:
            try:
                while (event := await queue.get()) is not None:
                    self.events.append(event)
                    async with self._changed:
                        self._changed.notify_all()
            finally:
                self.peer.unsubscribe(queue)

        self._task = asyncio.ensure_future(pump())
        return self

    async def wait_for(self, match: Callable[[Event], bool], within: float = 10.0) -> Event:
        async with asyncio.timeout(within), self._changed:
            while True:
                for event in self.events:
                    if match(event):
                        return event
                await self._changed.wait()

    def of(self, type_: str) -> list[Event]:
        return [e for e in self.events if e.type == type_]

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class World:
    """A server, and peers made on demand; everything closed at the end."""

    def __init__(self, server: RunningServer, root: Path) -> None:
        self.server = server
        self.root = root
        self.peers: list[Peer] = []
        self.recorders: list[Recorder] = []

    def peer(self, name: str, n: int, **overrides) -> Peer:
        overrides.setdefault("download_dir", self.root / f"{name}-downloads")
        p = Peer(Profile.at(self.root / name), self.server.url, settings=loopback_settings(n, **overrides))
        self.peers.append(p)
        return p

    def record(self, p: Peer) -> Recorder:
        r = Recorder(p).start()
        self.recorders.append(r)
        return r

    async def pair(self, alice_settings: dict | None = None, **overrides_b) -> tuple[Peer, Peer]:
        """alice and bob, registered, online, accepted contacts (overrides go to bob's settings)."""
        alice = self.peer("alice", 0, **(alice_settings or {}))
        bob = self.peer("bob", 1, **overrides_b)
        await alice.register("alice", "alice@example.org", PASSWORD)
        await bob.register("bob", "bob@example.org", PASSWORD)
        await alice.add_contact("bob")
        await bob.accept_contact(alice.me.user_id)
        assert await alice.wait_online(10) and await bob.wait_online(10)
        return alice, bob

    async def close(self) -> None:
        for r in self.recorders:
            await r.stop()
        for p in self.peers:
            await p.close()


@pytest.fixture
async def world(peer_server: RunningServer, tmp_path: Path) -> AsyncIterator[World]:
    w = World(peer_server, tmp_path / "peers")
    try:
        yield w
    finally:
        await w.close()
