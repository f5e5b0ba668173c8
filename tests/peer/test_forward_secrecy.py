"""Forward secrecy wired into the node (issue 14): 1:1 traffic between devices with prekeys goes as
ratchet (PPR) messages on the direct path and through the mailbox; multi-device; a store restored
from an older copy heals through the real peers; a peer without prekeys still gets envelope v2.

Real server, real aiortc peers, real SQLite. What travelled is observed at the receivers' `Inbox`
(the bytes each got and by which path) and in the server's mailbox table (the bytes it stored).
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from peer import Peer
from peer.inbox import Inbox
from peer.session import HubSession
from peer.views import MessageView
from signalling.protocol import b64decode
from tests.peer.conftest import PASSWORD, Recorder, World

PPR, PPE = b"PPR", b"PPE"


class Wire:
    """Every message a peer's inbox got: (receiving device, path, bytes)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.got: list[tuple[str, str, bytes]] = []
        original = Inbox.receive
        wire = self

        async def receive(self, data, *, via, link, server_id):  # type: ignore[no-untyped-def]
            raw = b64decode(data) if isinstance(data, str) else data
            wire.got.append((self._me.device_id, str(via), raw))
            return await original(self, data, via=via, link=link, server_id=server_id)

        monkeypatch.setattr(Inbox, "receive", receive)

    def at(self, peer: Peer, message_id: str) -> list[tuple[str, bytes]]:
        """(path, first bytes) of each copy of a message that reached this peer."""
        from crypto.envelope import peek_header
        from crypto.pairwise import is_pairwise, peek

        found = []
        for device, via, raw in self.got:
            if device != peer.me.device_id:
                continue
            mid = peek(raw).message_id if is_pairwise(raw) else peek_header(raw).message_id
            if mid == message_id:
                found.append((via, raw[:3]))
        return found


def mailbox_bytes(database: Path, device_id: str) -> dict[str, bytes]:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        rows = db.execute(
            "select message_id, envelope from mailbox where recipient_device = ?", (device_id,)
        ).fetchall()
    return {m: bytes(e) for m, e in rows}


def restore(backup: Path, db_path: Path) -> None:
    """The older copy replaces the (closed) store."""
    for suffix in ("-wal", "-shm"):
        Path(str(db_path) + suffix).unlink(missing_ok=True)
    shutil.copyfile(backup, db_path)


async def move_on_from_a_backup_then_restore_it(
    world: World, alice: Peer, alice_events: Recorder, bob: Peer, tmp_path: Path
) -> tuple[MessageView, Peer, Recorder]:
    """bob's (closed) store is copied; his node then takes "two" and answers "r2", moving the
    ratchet on; the older copy is put back. Returns "two" and bob's node on the older state."""
    alice_id, bob_id, bob_device = alice.me.user_id, bob.me.user_id, bob.me.device_id
    db_path = bob.profile.db_path
    await bob.close()
    backup = tmp_path / "bob-backup.db"
    shutil.copyfile(db_path, backup)  # closed: the whole store is in the file

    bob2 = world.peer("bob", 1)
    bob2_events = world.record(bob2)
    await bob2.unlock(PASSWORD)
    await bob2.wait_online(10)
    two = await alice.send_text(bob_id, "two")
    await bob2_events.wait_for(lambda e: e.type == "message" and e.message.text == "two")
    await bob2.send_text(alice_id, "r2")
    await alice_events.wait_for(lambda e: e.type == "message" and e.message.text == "r2")
    await alice_events.wait_for(
        lambda e: e.type == "message_state" and e.message_id == two.message_id and e.state == "delivered"
    )
    await bob2.close()
    await alice_events.wait_for(lambda e: e.type == "presence" and e.device_id == bob_device and not e.online)

    restore(backup, db_path)
    bob3 = world.peer("bob", 1)
    bob3_events = world.record(bob3)
    await bob3.unlock(PASSWORD)
    await bob3.wait_online(10)
    return two, bob3, bob3_events


def magic(stored: bytes) -> bytes:
    return stored[:3] if stored[:3] in (PPR, PPE) else b64decode(stored.decode())[:3]


async def test_conversation_goes_as_ratchet_messages_directly_and_through_the_mailbox(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    wire = Wire(monkeypatch)
    alice, bob = await world.pair()
    bob_events, alice_events = world.record(bob), world.record(alice)

    hello = await alice.send_text(bob.me.user_id, "hello over the ratchet")
    assert hello.path == "direct"
    await bob_events.wait_for(lambda e: e.type == "message" and e.message.text == "hello over the ratchet")
    assert wire.at(bob, hello.message_id) == [("direct", PPR)]
    reply = await bob.send_text(alice.me.user_id, "and back")
    await alice_events.wait_for(lambda e: e.type == "message" and e.message.text == "and back")
    assert wire.at(alice, reply.message_id) == [("direct", PPR)]
    await alice_events.wait_for(
        lambda e: e.type == "message_state" and e.message_id == hello.message_id and e.state == "delivered"
    )

    bob_device = bob.me.device_id
    await bob.close()
    await alice_events.wait_for(lambda e: e.type == "presence" and e.device_id == bob_device and not e.online)
    queued = await alice.send_text(bob.me.user_id, "while you were away")
    assert queued.path == "queued"
    stored = mailbox_bytes(world.server.database_path, bob_device)
    assert magic(stored[queued.message_id]) == PPR  # the server holds a ratchet message, not an envelope

    again = world.peer("bob", 1)
    again_events = world.record(again)
    await again.unlock(PASSWORD)
    got = await again_events.wait_for(
        lambda e: e.type == "message" and e.message.text == "while you were away"
    )
    assert got.message.path == "queued"
    assert wire.at(again, queued.message_id) == [("queued", PPR)]
    texts = [m.text for m in await again.history(alice.me.user_id)]
    assert texts == ["hello over the ratchet", "and back", "while you were away"]


async def test_each_device_gets_its_own_ratchet_copy_and_the_senders_other_device_its_own(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    wire = Wire(monkeypatch)
    alice, bob = await world.pair(alice_settings={"key_refresh_after": 0.0}, key_refresh_after=0.0)
    laptop = world.peer("alice-laptop", 2, key_refresh_after=0.0)
    laptop_events, alice_events, bob_events = world.record(laptop), world.record(alice), world.record(bob)
    await laptop.login("alice", PASSWORD)
    await laptop.wait_online(10)
    await bob_events.wait_for(lambda e: e.type == "key_warning" and e.device_id == laptop.me.device_id)

    to_both = await bob.send_text(alice.me.user_id, "to both of your devices")
    for peer, events in ((alice, alice_events), (laptop, laptop_events)):
        await events.wait_for(lambda e: e.type == "message" and e.message.text == "to both of your devices")
        copies = wire.at(peer, to_both.message_id)
        assert copies and all(m == PPR for _, m in copies)

    mine = await alice.send_text(bob.me.user_id, "sync me")
    own = await laptop_events.wait_for(lambda e: e.type == "message" and e.message.text == "sync me")
    assert own.message.outgoing and own.message.conversation == f"u:{bob.me.user_id}"
    await bob_events.wait_for(lambda e: e.type == "message" and e.message.text == "sync me")
    for peer in (laptop, bob):
        copies = wire.at(peer, mine.message_id)
        assert copies and all(m == PPR for _, m in copies)


async def test_receiver_restored_from_an_older_copy_heals_and_loses_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    wire = Wire(monkeypatch)
    alice, bob = await world.pair()
    alice_events = world.record(alice)
    bob_events = world.record(bob)
    alice_id, bob_id = alice.me.user_id, bob.me.user_id

    await alice.send_text(bob_id, "one")
    await bob_events.wait_for(lambda e: e.type == "message" and e.message.text == "one")
    await bob.send_text(alice_id, "r1")
    await alice_events.wait_for(lambda e: e.type == "message" and e.message.text == "r1")

    _two, bob3, bob3_events = await move_on_from_a_backup_then_restore_it(
        world, alice, alice_events, bob, tmp_path
    )
    three = await alice.send_text(bob_id, "three")
    await bob3_events.wait_for(lambda e: e.type == "message" and e.message.text == "three", within=20)
    healed = await bob3_events.wait_for(lambda e: e.type == "session_reestablished", within=20)
    assert healed.device_id == alice.me.device_id and healed.message == "secure session re-established"
    await bob3_events.wait_for(lambda e: e.type == "message" and e.message.text == "two", within=20)
    assert [m.text for m in await bob3.history(alice_id)] == ["one", "r1", "two", "three"]
    assert len(bob3_events.of("session_reestablished")) == 1
    assert all(m == PPR for _, m in wire.at(bob3, three.message_id))

    # the healed session carries on both ways, and the notice is not shown again
    after = await alice.send_text(bob_id, "after the heal")
    await bob3_events.wait_for(lambda e: e.type == "message" and e.message.text == "after the heal")
    back = await bob3.send_text(alice_id, "r3")
    await alice_events.wait_for(lambda e: e.type == "message" and e.message.text == "r3")
    assert [m.text for m in await alice.history(bob_id)] == [
        "one",
        "r1",
        "two",
        "r2",
        "three",
        "after the heal",
        "r3",
    ]
    assert len(bob3_events.of("session_reestablished")) == 1
    assert wire.at(bob3, after.message_id) and wire.at(alice, back.message_id)


async def test_peer_without_prekeys_still_gets_envelope_v2_both_ways(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    wire = Wire(monkeypatch)
    alice, bob = await world.pair(forward_secrecy=False)
    alice_events, bob_events = world.record(alice), world.record(bob)
    sent = await alice.send_text(bob.me.user_id, "old peer")
    await bob_events.wait_for(lambda e: e.type == "message" and e.message.text == "old peer")
    assert [m for _, m in wire.at(bob, sent.message_id)] == [PPE]
    back = await bob.send_text(alice.me.user_id, "old reply")
    await alice_events.wait_for(lambda e: e.type == "message" and e.message.text == "old reply")
    assert [m for _, m in wire.at(alice, back.message_id)] == [PPE]


async def test_file_offers_travel_with_their_keys_inside_ratchet_messages_direct_and_blob(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    wire = Wire(monkeypatch)
    alice, bob = await world.pair()
    direct_file, blob_file = tmp_path / "direct.bin", tmp_path / "blob.bin"
    direct_file.write_bytes(bytes(range(256)) * 1000)
    blob_file.write_bytes(bytes(range(255, -1, -1)) * 1000)

    offer = await alice.send_file(bob.me.user_id, direct_file)
    assert offer.file is not None and not offer.file["blob_id"]
    received = await bob.wait_file(offer.message_id, within=30)
    assert received.read_bytes() == direct_file.read_bytes()
    assert [m for _, m in wire.at(bob, offer.message_id)] == [PPR]

    await alice.set_direct(False)
    offer = await alice.send_file(bob.me.user_id, blob_file)
    assert offer.file is not None and offer.file["blob_id"]
    received = await bob.wait_file(offer.message_id, within=30)
    assert received.read_bytes() == blob_file.read_bytes()
    assert [m for _, m in wire.at(bob, offer.message_id)] == [PPR]


async def test_a_resend_after_a_heal_keeps_the_disappearing_timer_of_its_message(
    world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    sends: list[tuple[str, int | None]] = []
    original = HubSession.send_envelope

    async def send_envelope(self, message_id, envelope_b64, recipients, within, expires_in=None):  # type: ignore[no-untyped-def]
        sends.append((message_id, expires_in))
        return await original(self, message_id, envelope_b64, recipients, within, expires_in)

    monkeypatch.setattr(HubSession, "send_envelope", send_envelope)
    alice, bob = await world.pair()
    await alice.set_direct(False)  # every copy through the server, where its timer is seen
    alice_events, bob_events = world.record(alice), world.record(bob)
    bob_id = bob.me.user_id
    await alice.set_timer(bob_id, 3600)
    await bob_events.wait_for(lambda e: e.type == "message" and e.message.kind == "timer")

    two, _bob3, bob3_events = await move_on_from_a_backup_then_restore_it(
        world, alice, alice_events, bob, tmp_path
    )
    await alice.send_text(bob_id, "three")
    await bob3_events.wait_for(lambda e: e.type == "session_reestablished", within=20)
    await bob3_events.wait_for(lambda e: e.type == "message" and e.message.text == "two", within=20)
    copies = [expires_in for message_id, expires_in in sends if message_id == two.message_id]
    assert len(copies) >= 2  # the first send, and the resend after the heal
    assert all(e is not None and 0 < e <= 3600 for e in copies), copies
