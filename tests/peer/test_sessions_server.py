"""Pairwise sessions against the real server: prekeys published, claimed and refilled over REST,
ratchet messages carried by the hub (live and mailbox), and a receiver whose local store is
replaced by an older copy heals without losing a message.

`Node` here is the smallest wiring of `SessionManager` to `ServerClient` and `HubSession` (what
the resident node will do): frames are queued by the hub reader and opened by one task, replies
and resends go back through the hub.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from crypto.bundle import make_bundle
from crypto.keys import DeviceKeys
from peer.client import ServerClient
from peer.localstore import LocalStore
from peer.prekeystock import PrekeyStock, bundle_from_wire
from peer.session import HubSession
from peer.sessions import Outbound, Outcome, Received, SessionManager, new_message_id
from signalling.protocol import DeliverFrame, DeviceBundleIn, RecipientDevice, b64decode, b64encode
from tests.peer.sessionworld import STORAGE_KEY, store_text
from tests.support.keys import fixed_device_keys
from tests.support.server import RunningServer

PASSWORD = "correct horse battery"


class Node:
    def __init__(
        self, server: RunningServer, folder: Path, name: str, device_id: str, keys: DeviceKeys
    ) -> None:
        self.server, self.folder, self.name, self.device_id, self.keys = server, folder, name, device_id, keys
        self.client = ServerClient(server.url)
        self.user_id = 0
        self.pins: dict[tuple[int, str], bytes] = {}
        self.frames: asyncio.Queue[DeliverFrame] = asyncio.Queue()
        self.results: list[Received] = []
        self.changed = asyncio.Condition()
        self.generation = 0
        self._task: asyncio.Task[None] | None = None
        self.hub: HubSession | None = None

    @property
    def path(self) -> Path:
        return self.folder / f"{self.name}.{self.generation}.db"

    async def register(self) -> None:
        me = await self.client.register(self.name, f"{self.name}@example.org", PASSWORD)
        await self.client.login(self.name, PASSWORD)
        self.user_id = me.id
        b = make_bundle(self.keys, self.user_id, self.device_id)
        await self.client.publish_device(
            DeviceBundleIn(
                device_id=self.device_id,
                identity_key=b64encode(b.identity_key),
                encryption_key=b64encode(b.encryption_key),
                created_at=b.created_at,
                signature=b64encode(b.signature),
            )
        )

    async def claim(self, user_id: int, device_id: str):  # type: ignore[no-untyped-def]
        got = await self.client.claim_prekey_bundles(user_id, [device_id])
        return bundle_from_wire(got[0]) if got else None

    async def open_store(self) -> None:
        self.store = LocalStore(self.path, STORAGE_KEY)
        await self.store.open()
        self.stock = PrekeyStock(self.store, self.keys, self.device_id, one_time_target=5, one_time_low=2)
        self.sessions = SessionManager(
            self.store,
            self.keys,
            self.user_id,
            self.device_id,
            pinned=lambda u, d: self.pins.get((u, d)),
            claim=self.claim,
            prekeys=self.stock,
        )

    async def go_online(self) -> None:
        async def on_frame(frame) -> None:  # type: ignore[no-untyped-def]
            if isinstance(frame, DeliverFrame):
                self.frames.put_nowait(frame)

        async def on_status(up: bool, reason: str | None) -> None:
            return None

        self.hub = HubSession(self.client, self.device_id, on_frame, on_status)
        self.hub.start()
        assert await self.hub.wait_connected(10)
        self._task = asyncio.ensure_future(self._process())

    async def go_offline(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.hub is not None:
            await self.hub.close()
            self.hub = None

    async def send(self, out: Outbound) -> None:
        assert self.hub is not None
        await self.hub.send_envelope(
            out.message_id,
            b64encode(out.data),
            [RecipientDevice(user_id=out.user_id, device_id=out.device_id)],
            10,
        )

    async def say(self, other: Node, text: str) -> str:
        out = await self.sessions.seal(other.user_id, other.device_id, text.encode(), new_message_id())
        await self.send(out)
        return out.message_id

    async def _process(self) -> None:
        while True:
            frame = await self.frames.get()
            data = b64decode(frame.envelope)
            r = await self.sessions.open(data, store_with=store_text(self.store))
            assert self.hub is not None
            await self.hub.ack(frame.message_id)  # saved (or answered): the server may forget it
            if r.reply is not None:
                await self.send(r.reply)
            for o in r.resend:
                await self.send(o)
            async with self.changed:
                self.results.append(r)
                self.changed.notify_all()

    async def wait_until(self, check, within: float = 20.0) -> None:  # type: ignore[no-untyped-def]
        async with asyncio.timeout(within), self.changed:
            await self.changed.wait_for(check)

    def history(self) -> list[tuple[str, str]]:
        db = sqlite3.connect(self.path)
        try:
            rows = db.execute("SELECT message_id FROM messages ORDER BY rowid").fetchall()
        finally:
            db.close()
        return [r[0] for r in rows]

    async def close(self) -> None:
        await self.go_offline()
        await self.store.close()
        await self.client.aclose()


@pytest.fixture
async def nodes(peer_server: RunningServer, tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    alice = Node(peer_server, tmp_path, "alice", "alice-laptop-0", fixed_device_keys(0))
    bob = Node(peer_server, tmp_path, "bob", "bob-phone-00001", fixed_device_keys(1))
    for n in (alice, bob):
        await n.register()
    await alice.client.add_contact(username="bob")
    await bob.client.accept_contact(alice.user_id)
    for n, other in ((alice, bob), (bob, alice)):
        n.pins[(other.user_id, other.device_id)] = other.keys.identity_public_bytes()
        await n.open_store()
        stock = await n.stock.refresh(n.client)
        assert (stock.one_time, stock.kem_one_time) == (5, 5)
        await n.go_online()
    try:
        yield alice, bob
    finally:
        for n in (alice, bob):
            await n.close()


def copy_db(source: Path, target: Path) -> None:
    """The database and its WAL as they are on disk (a backup tool's copy)."""
    for suffix in ("", "-wal"):
        src = Path(str(source) + suffix)
        if src.exists():
            Path(str(target) + suffix).write_bytes(src.read_bytes())


def delivered(node: Node, ids: list[str]):  # type: ignore[no-untyped-def]
    return lambda: set(ids) <= {r.message_id for r in node.results if r.outcome is Outcome.DELIVERED}


async def test_prekeys_are_claimed_and_refilled_through_the_server(nodes) -> None:
    alice, bob = nodes
    first = await alice.say(bob, "hello over the hub")
    await bob.wait_until(delivered(bob, [first]))
    assert (await bob.client.prekey_stock(bob.device_id)).one_time == 4  # Alice's claim used one
    for _ in range(3):  # other initiators drain the stock
        await alice.client.claim_prekey_bundles(bob.user_id, [bob.device_id])
    assert (await bob.client.prekey_stock(bob.device_id)).one_time == 1
    stock = await bob.stock.refresh(bob.client)
    assert (stock.one_time, stock.kem_one_time) == (5, 5)
    reply = await bob.say(alice, "hi back")
    await alice.wait_until(delivered(alice, [reply]))


async def test_mailbox_delivery_after_being_offline_opens_in_order(nodes) -> None:
    alice, bob = nodes
    await bob.go_offline()
    ids = [await alice.say(bob, f"queued {i}") for i in range(4)]
    await bob.go_online()
    await bob.wait_until(delivered(bob, ids))
    assert bob.history() == ids


async def test_receiver_restored_from_an_older_copy_heals_and_nothing_is_lost(nodes) -> None:
    alice, bob = nodes
    sent_by_alice = [await alice.say(bob, "before the backup")]
    await bob.wait_until(delivered(bob, sent_by_alice))
    sent_by_bob = [await bob.say(alice, "bob before the backup")]
    await alice.wait_until(delivered(alice, sent_by_bob))
    # Bob backs up his profile; the conversation goes on (both ratchets step past the copy)
    await bob.go_offline()
    backup = bob.folder / "bob.backup.db"
    await asyncio.to_thread(copy_db, bob.path, backup)
    await bob.go_online()
    for i in range(2):
        mid = await alice.say(bob, f"after the backup {i}")
        sent_by_alice.append(mid)
        await bob.wait_until(delivered(bob, [mid]))
        await alice.sessions.acknowledge(bob.device_id, [mid])  # Bob's receipt, as the node will do
        back = await bob.say(alice, f"bob after the backup {i}")
        sent_by_bob.append(back)
        await alice.wait_until(delivered(alice, [back]))
    # Bob's laptop is restored from the backup
    await bob.go_offline()
    await bob.store.close()
    bob.generation += 1
    await asyncio.to_thread(copy_db, backup, bob.path)
    await bob.open_store()
    assert set(bob.history()) == set(sent_by_alice[:1])
    bob.results.clear()
    await bob.go_online()
    later = [await alice.say(bob, f"after the restore {i}") for i in range(2)]
    sent_by_alice += later
    await bob.wait_until(delivered(bob, sent_by_alice[1:]))
    assert any(r.outcome is Outcome.UNDECRYPTABLE for r in bob.results)  # it could not, and said so
    assert sum(r.reestablished for r in bob.results) == 1  # "secure session re-established" once
    history = bob.history()
    assert sorted(history) == sorted(sent_by_alice) and len(history) == len(set(history))
    # and Bob's side works again: a new message both ways
    ping = await bob.say(alice, "bob is back")
    await alice.wait_until(delivered(alice, [ping]))
    pong = await alice.say(bob, "welcome back")
    await bob.wait_until(delivered(bob, [pong]))
    assert all(r.outcome is not Outcome.UNDECRYPTABLE for r in bob.results[-1:])
