"""Groups through the node: real server, real peers (peer.node.Peer), real SQLite files.

Each test drives only `Peer`'s public API and watches its events; what the server stored is read
from its own database file (the "captured" ciphertext of a message sent after a removal).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from crypto.bundle import make_bundle
from crypto.envelope import LocalDevice
from crypto.errors import SenderKeyError
from crypto.groupstate import MapDirectory
from crypto.keystore import load_keystore
from crypto.pairwise import is_pairwise
from crypto.payload import Text
from crypto.senderkeys import OwnSenderKey, peek_group_message
from peer.events import GroupChanged, GroupWarning, MessageReceived
from peer.groups import GroupSession
from peer.groupstore import GroupStore
from peer.localstore import LocalStore
from peer.node import Peer
from peer.profile import Profile
from peer.vocab import GroupChange
from signalling.protocol import b64encode
from tests.peer.conftest import PASSWORD, World


async def _three(world: World, **settings) -> tuple[Peer, Peer, Peer]:
    """alice (contacts with bob and carol), bob and carol, registered and online."""
    alice = world.peer("alice", 0, **settings)
    bob = world.peer("bob", 1, **settings)
    carol = world.peer("carol", 3, **settings)
    for p, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        await p.register(name, f"{name}@example.org", PASSWORD)
    for other in (bob, carol):
        await alice.add_contact(other.me.username)
        await other.accept_contact(alice.me.user_id)
    for p in (alice, bob, carol):
        assert await p.wait_online(10)
    return alice, bob, carol


def _text_in(conversation: str, text: str):
    return lambda e: (
        isinstance(e, MessageReceived) and e.message.conversation == conversation and e.message.text == text
    )


def _changed(group_id: str, change: GroupChange):
    return lambda e: isinstance(e, GroupChanged) and e.group_id == group_id and e.change is change


async def test_members_read_each_other_the_removed_reads_nothing_after_and_a_rename_still_reaches_all(
    world: World,
):
    alice, bob, carol = await _three(world, direct=False)
    ra, rb, rc = world.record(alice), world.record(bob), world.record(carol)
    group = await alice.create_group("climbing", [bob.me.user_id, carol.me.user_id])
    conv = f"g:{group.group_id}"
    assert group.role == "admin" and group.members == 3 and group.active
    await rb.wait_for(_changed(group.group_id, GroupChange.CREATED))
    await rc.wait_for(_changed(group.group_id, GroupChange.CREATED))

    sent = await alice.send_text(conv, "hello climbers")
    assert sent.conversation == conv and sent.recipients == 2
    for r in (rb, rc):
        got = await r.wait_for(_text_in(conv, "hello climbers"))
        assert got.message.sender_user == alice.me.user_id
    await bob.send_text(conv, "hi from bob")
    await ra.wait_for(_text_in(conv, "hi from bob"))
    await rc.wait_for(_text_in(conv, "hi from bob"))

    members = {m.username: m for m in await carol.group_members(group.group_id)}
    assert set(members) == {"alice", "bob", "carol"} and members["alice"].role == "admin"
    assert members["carol"].is_me

    await alice.remove_group_member(group.group_id, carol.me.user_id)
    await rb.wait_for(_changed(group.group_id, GroupChange.REMOVED))
    await rc.wait_for(lambda e: isinstance(e, GroupChanged) and e.change is GroupChange.REMOVED)
    assert not (await carol.group(group.group_id)).active

    await alice.send_text(conv, "without carol")
    await rb.wait_for(_text_in(conv, "without carol"))
    await bob.send_text(conv, "bob without carol")
    await ra.wait_for(_text_in(conv, "bob without carol"))

    # the rename after the removal's key rotation reaches every remaining member
    await alice.rename_group(group.group_id, "bouldering")
    await rb.wait_for(_changed(group.group_id, GroupChange.RENAMED))
    assert (await bob.group(group.group_id)).name == "bouldering"
    assert await bob.resolve_group("#bouldering") == group.group_id
    await alice.send_text(conv, "after the rename")
    await rb.wait_for(_text_in(conv, "after the rename"))

    texts = [m.text for m in await carol.history(conv)]
    assert "hello climbers" in texts
    assert not {"without carol", "bob without carol", "after the rename"} & set(texts)
    timeline = [m.text for m in await bob.history(conv) if m.kind == "group_event"]
    assert "alice removed carol" in timeline and "alice renamed the group to bouldering" in timeline


# ------------------------------------------------------------------------------------------------
# what the server holds: read from its own database file
# ------------------------------------------------------------------------------------------------


def _mailbox(database: Path, device_id: str) -> list[tuple[str, bytes, bool]]:
    """(message id, bytes, is a group message) of every row waiting for `device_id`."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        rows = db.execute(
            "SELECT m.message_id, COALESCE(b.envelope, m.envelope), m.body_id IS NOT NULL FROM mailbox m "
            "LEFT JOIN mailbox_bodies b ON b.id = m.body_id WHERE m.recipient_device = ? ORDER BY m.id",
            (device_id,),
        ).fetchall()
    return [(mid, bytes(data), bool(group)) for mid, data, group in rows]


async def _saved_session(world: World, name: str, group_id: str, signers: list[Peer]) -> GroupSession:
    """The group as a closed peer's profile keeps it (sealed in its store; opened with its password)."""
    profile = Profile.at(world.root / name)
    keystore = await asyncio.to_thread(load_keystore, profile.keystore_path, PASSWORD)
    meta = profile.load_meta()
    assert meta is not None
    store = LocalStore(profile.db_path, keystore.storage_key)
    await store.open()
    try:
        saved = await GroupStore(store).load_all()
    finally:
        await store.close()
    directory = MapDirectory(
        {
            (p.me.user_id, p.me.device_id): make_bundle(
                p.local_device.keys, p.me.user_id, p.me.device_id
            ).identity_key
            for p in signers
        }
    )
    local = LocalDevice(meta.user_id, meta.device_id, keystore.keys)
    return GroupSession.from_dict(saved[group_id]["session"], local, directory)


async def _drained(peer: Peer) -> None:
    items = await peer.server.mailbox(peer.me.device_id)
    while items:
        await asyncio.sleep(0.05)  # polling the external server, bounded by the caller's wait_for
        items = await peer.server.mailbox(peer.me.device_id)


async def test_an_offline_member_gets_everything_once_and_the_sender_key_rides_the_ratchet(world: World):
    alice, bob, carol = await _three(world, direct=False)
    bob_id, bob_device = bob.me.user_id, bob.me.device_id
    await bob.close()
    group = await alice.create_group("climbing", [bob_id, carol.me.user_id])
    conv = f"g:{group.group_id}"
    sent = [await alice.send_text(conv, text) for text in ("one", "two", "three")]
    assert all(m.path == "queued" or m.state == "sent" for m in sent)

    waiting = _mailbox(world.server.database_path, bob_device)
    group_rows = [mid for mid, _, is_group in waiting if is_group]
    assert group_rows == [m.message_id for m in sent]  # stored once each, a row for his device
    keys = [data for _, data, is_group in waiting if not is_group]
    # The sender key waits as a ratchet (PPR) message: bob published prekeys, so it is forward-secret.
    assert keys and all(is_pairwise(data) for data in keys)

    for round_ in range(2):
        again = world.peer("bob", 1, direct=False)
        events = world.record(again)
        await again.unlock(PASSWORD)
        assert await again.wait_online(10)
        if round_ == 0:
            await events.wait_for(_text_in(conv, "three"))
            assert (await again.group(group.group_id)).name == "climbing"
        texts = [m.text for m in await again.history(conv) if m.kind == "text"]
        assert texts == ["one", "two", "three"]
        await asyncio.wait_for(_drained(again), 5)
        got = [e for e in events.of("message") if e.message.conversation == conv]
        assert len(got) == (3 if round_ == 0 else 0)
        await again.close()


async def test_a_captured_message_after_removal_stays_shut_to_the_removed_and_earlier_ones_to_a_newcomer(
    world: World,
):
    alice, bob, carol = await _three(world, direct=False)
    dave = world.peer("dave", 5, direct=False)
    await dave.register("dave", "dave@example.org", PASSWORD)
    await alice.add_contact("dave")
    await dave.accept_contact(alice.me.user_id)
    rc, rd = world.record(carol), world.record(dave)
    bob_device = bob.me.device_id
    group = await alice.create_group("climbing", [bob.me.user_id, carol.me.user_id])
    conv = f"g:{group.group_id}"
    await bob.close()  # what alice sends now waits on the server for bob: the "captured" copies

    early = await alice.send_text(conv, "early")
    await rc.wait_for(_text_in(conv, "early"))
    carol_id = carol.me.user_id
    await carol.close()
    await alice.remove_group_member(group.group_id, carol_id)
    later = await alice.send_text(conv, "later")
    await alice.add_group_members(group.group_id, [dave.me.user_id])
    await rd.wait_for(_changed(group.group_id, GroupChange.ADDED))
    welcome = await alice.send_text(conv, "welcome dave")
    await rd.wait_for(_text_in(conv, "welcome dave"))
    assert [m.text for m in await dave.history(conv) if m.kind == "text"] == ["welcome dave"]
    await dave.close()

    captured = {
        mid: data for mid, data, is_group in _mailbox(world.server.database_path, bob_device) if is_group
    }
    assert set(captured) == {early.message_id, later.message_id, welcome.message_id}
    assert (
        peek_group_message(captured[later.message_id]).key_id
        != peek_group_message(captured[early.message_id]).key_id
    )

    # carol's saved keys (from before her removal) do not open what came after it
    carols = await _saved_session(world, "carol", group.group_id, [alice])
    with pytest.raises(SenderKeyError):
        carols.decrypt(captured[later.message_id])
    # dave's keys (he joined later) do not open what came before
    daves = await _saved_session(world, "dave", group.group_id, [alice])
    for old in (early, later):
        with pytest.raises(SenderKeyError):
            daves.decrypt(captured[old.message_id])


async def test_a_server_that_injects_a_member_or_replays_an_old_chain_is_caught(world: World):
    alice, bob, carol = await _three(world, direct=False)
    mallory = world.peer("mallory", 4, direct=False)
    await mallory.register("mallory", "mallory@example.org", PASSWORD)
    assert await mallory.wait_online(10)
    ra, rb, rm = world.record(alice), world.record(bob), world.record(mallory)
    group = await alice.create_group("climbing", [bob.me.user_id, carol.me.user_id])
    conv = f"g:{group.group_id}"
    await rb.wait_for(_changed(group.group_id, GroupChange.CREATED))
    database = world.server.database_path

    # 1. the server adds mallory to its member list: nobody encrypts to her, her messages are refused
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        (internal,) = db.execute("SELECT id FROM groups WHERE public_id = ?", (group.group_id,)).fetchone()
        db.execute(
            "INSERT INTO group_members (group_id, user_id, role, joined_at) VALUES (?, ?, 'member', ?)",
            (internal, mallory.me.user_id, "2026-01-01 00:00:00.000000"),
        )
    await alice.send_text(conv, "not for mallory")
    warning = await ra.wait_for(lambda e: isinstance(e, GroupWarning) and e.group_id == group.group_id)
    assert warning.users == [mallory.me.user_id]
    await rb.wait_for(_text_in(conv, "not for mallory"))
    assert not [e for e in rm.of("message") if e.message.conversation == conv]
    forged = OwnSenderKey.create(group.group_id, mallory.me.user_id, mallory.me.device_id, now_ms=0)
    data = forged.encrypt(Text("I am a member"), message_id=None, sent_at_ms=1)
    ghost_id = peek_group_message(data).message_id
    await mallory.session.send_group(group.group_id, ghost_id, b64encode(data), [bob.me.device_id], 10)
    refused = await rb.wait_for(lambda e: isinstance(e, GroupWarning) and mallory.me.user_id in e.users)
    assert refused.group_id == group.group_id
    assert "I am a member" not in [m.text for m in await bob.history(conv)]

    # 2. carol is removed; the server drops the removal and puts her back: bob keeps what he verified
    await alice.remove_group_member(group.group_id, carol.me.user_id)
    await rb.wait_for(_changed(group.group_id, GroupChange.REMOVED))
    with contextlib.closing(sqlite3.connect(database)) as db, db:
        db.execute(
            "DELETE FROM group_records WHERE group_id = ? "
            "AND seq = (SELECT MAX(seq) FROM group_records WHERE group_id = ?)",
            (internal, internal),
        )
        db.execute("UPDATE groups SET version = version - 1 WHERE id = ?", (internal,))
        db.execute(
            "INSERT INTO group_members (group_id, user_id, role, joined_at) VALUES (?, ?, 'member', ?)",
            (internal, carol.me.user_id, "2026-01-01 00:00:00.000000"),
        )
    rc = world.record(carol)
    view = await bob.sync_group(group.group_id)
    rolled = await rb.wait_for(lambda e: isinstance(e, GroupWarning) and "replaying an old state" in e.reason)
    assert rolled.group_id == group.group_id
    assert view.members == 2 and view.active  # mallory never counted, carol stays removed
    await bob.send_text(conv, "still without carol")
    await ra.wait_for(_text_in(conv, "still without carol"))
    assert not [e for e in rc.of("message") if e.message.conversation == conv]
    assert "still without carol" not in [m.text for m in await carol.history(conv)]


async def test_a_linked_member_gets_it_direct_the_other_through_the_server_and_receipts_roll_up(world: World):
    alice = world.peer("alice", 0)
    bob = world.peer("bob", 1)
    carol = world.peer("carol", 3, direct=False, answer_offers=False)  # reachable only via the server
    for p, name in ((alice, "alice"), (bob, "bob"), (carol, "carol")):
        await p.register(name, f"{name}@example.org", PASSWORD)
    for other in (bob, carol):
        await alice.add_contact(other.me.username)
        await other.accept_contact(alice.me.user_id)
    for p in (alice, bob, carol):
        assert await p.wait_online(10)
    ra, rb, rc = world.record(alice), world.record(bob), world.record(carol)
    first = await alice.send_text(bob.me.user_id, "a link first")
    assert first.path == "direct" and alice.link_to(bob.me.device_id) is not None

    group = await alice.create_group("climbing", [bob.me.user_id, carol.me.user_id])
    conv = f"g:{group.group_id}"
    await rc.wait_for(_changed(group.group_id, GroupChange.CREATED))
    sent = await alice.send_text(conv, "mixed paths")
    paths = {d["device_id"]: d["path"] for d in sent.devices}
    assert paths[bob.me.device_id] == "direct" and paths[carol.me.device_id] in ("relayed", "queued")
    got_b = await rb.wait_for(_text_in(conv, "mixed paths"))
    got_c = await rc.wait_for(_text_in(conv, "mixed paths"))
    assert got_b.message.path == "direct" and got_c.message.path != "direct"

    # receipts come per device and roll up: delivered to 2 of 2, then read by 1 of 2
    await ra.wait_for(
        lambda e: e.type == "message_state" and e.message_id == sent.message_id and e.state == "delivered"
    )
    view = await alice.message(sent.message_id)
    assert view is not None and (view.recipients, view.delivered, view.read) == (2, 2, 0)
    await bob.mark_read(conv, [got_b.message.message_id])
    await ra.wait_for(lambda e: e.type == "receipt" and e.status == "read")  # published once applied
    view = await alice.message(sent.message_id)
    assert view is not None and view.state == "delivered" and (view.delivered, view.read) == (2, 1)

    await carol.send_typing(conv, True)
    typing = await rb.wait_for(lambda e: e.type == "typing" and e.conversation == conv)
    assert typing.user_id == carol.me.user_id and typing.active
    assert (
        len(
            [
                e
                for e in rb.of("message")
                if e.message.conversation == conv and e.message.text == "mixed paths"
            ]
        )
        == 1
    )


async def test_a_message_that_comes_before_its_sender_key_is_held_and_opens_when_the_key_arrives(
    world: World,
):
    alice, bob, carol = await _three(world, direct=False)
    group = await alice.create_group("climbing", [bob.me.user_id, carol.me.user_id])
    conv = f"g:{group.group_id}"
    bob_device = bob.me.device_id
    await bob.close()
    sent = await alice.send_text(conv, "before its key")
    # The server hands bob the group message first and the sender key after it.
    with contextlib.closing(sqlite3.connect(world.server.database_path)) as db, db:
        (top,) = db.execute("SELECT MAX(id) FROM mailbox").fetchone()
        db.execute(
            "UPDATE mailbox SET id = id + ? WHERE recipient_device = ? AND body_id IS NULL", (top, bob_device)
        )
    order = [is_group for _, _, is_group in _mailbox(world.server.database_path, bob_device)]
    assert order[0] and not order[-1]

    again = world.peer("bob", 1, direct=False)
    events = world.record(again)
    await again.unlock(PASSWORD)
    got = await events.wait_for(_text_in(conv, "before its key"))
    assert got.message.message_id == sent.message_id
    await asyncio.wait_for(_drained(again), 5)  # nothing left behind: held here, not on the server
    ra = world.record(alice)
    await again.send_text(conv, "bob answers")
    await ra.wait_for(_text_in(conv, "bob answers"))
