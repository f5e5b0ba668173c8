"""Two group paths that only go wrong sometimes, through a real server and real peers:

- a member device without a sender key (it lost it) asks its sender, and the answer opens what
  the sender writes next;
- two admins change the group at the same moment: one of them is told the group moved on (409),
  verifies the new chain, signs again on it, and every member ends on the same verified chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3

import pytest

from peer import group_chat
from peer.node import Peer
from peer.vocab import GroupChange
from tests.peer.conftest import PASSWORD, World
from tests.peer.test_groups_node import _changed, _text_in, _three


async def test_a_member_that_lost_a_sender_key_asks_for_it_and_opens_what_comes_next(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(group_chat, "KEY_REQUEST_AFTER", 0.2)  # the grace period before asking
    alice, bob, carol = await _three(world, direct=False)
    rb, rc = world.record(bob), world.record(carol)
    group = await alice.create_group("climbing", [bob.me.user_id, carol.me.user_id])
    gid, conv = group.group_id, f"g:{group.group_id}"
    await alice.send_text(conv, "one")
    for r in (rb, rc):
        await r.wait_for(_text_in(conv, "one"))

    # bob's device loses alice's sender key (kept only in its store: forgotten there too)
    chats = bob._parts().groups
    session = chats._sessions[gid]
    session.received.forget_sender(gid, alice.me.device_id)
    await chats._save(session)

    lost = await alice.send_text(conv, "two")
    await rc.wait_for(_text_in(conv, "two"))
    # bob holds it and asks alice (pairwise); her answer is her key at her current position, so
    # the held one stays shut and is said to be lost (not dropped in silence) ...
    said = await rb.wait_for(lambda e: e.type == "error" and lost.message_id in e.message)
    assert "is lost" in said.message and "sender key" in said.message
    assert session.received.has(gid, alice.me.device_id)  # ... but bob has her key again
    assert await chats.groupstore.held(gid) == []

    for text in ("three", "four"):
        await alice.send_text(conv, text)
        got = await rb.wait_for(_text_in(conv, text))
        assert got.message.sender_user == alice.me.user_id
    texts = [m.text for m in await bob.history(conv) if m.kind == "text"]
    assert texts == ["one", "three", "four"]
    await bob.send_text(conv, "bob still writes")  # his own key was never touched
    await rc.wait_for(_text_in(conv, "bob still writes"))


async def _contact_of(world: World, alice: Peer, name: str, n: int) -> Peer:
    p = world.peer(name, n, direct=False)
    await p.register(name, f"{name}@example.org", PASSWORD)
    await alice.add_contact(name)
    await p.accept_contact(alice.me.user_id)
    assert await p.wait_online(10)
    return p


def _chain(peer: Peer, gid: str) -> tuple[object, int, str | None, tuple[int, ...]]:
    """(verified head, version, name, members) of the group as `peer` verified it."""
    session = peer._parts().groups._sessions[gid]
    assert session.membership is not None
    return session.head, session.version, session.name, tuple(sorted(session.membership.members))


async def test_two_admins_changing_the_group_at_once_both_land_and_every_member_has_the_same_chain(
    world: World, caplog: pytest.LogCaptureFixture
):
    alice, bob, carol = await _three(world, direct=False)
    dave = await _contact_of(world, alice, "dave", 5)
    erin = world.peer("erin", 4, direct=False)
    await erin.register("erin", "erin@example.org", PASSWORD)
    await bob.add_contact("erin")
    await erin.accept_contact(bob.me.user_id)  # bob's contact, not alice's: only bob may add her
    assert await erin.wait_online(10)
    everyone = (alice, bob, carol, dave, erin)
    recorders = {p.me.username: world.record(p) for p in everyone}
    group = await alice.create_group("climbing", [bob.me.user_id, carol.me.user_id])
    gid, conv = group.group_id, f"g:{group.group_id}"
    await alice.promote_group_member(gid, bob.me.user_id)
    for name in ("alice", "bob", "carol"):
        await recorders[name].wait_for(_changed(gid, GroupChange.PROMOTED))
    assert _chain(alice, gid) == _chain(bob, gid)  # both admins sign on the same head

    # Both sign on version 2 and send at once: the server takes one, the other gets 409 and signs
    # again on the head that now includes the first.
    caplog.set_level(logging.INFO, logger="peer.group_chat")
    added, renamed = await asyncio.gather(
        alice.add_group_members(gid, [dave.me.user_id]),
        bob.rename_group(gid, "bouldering"),
    )
    assert [r for r in caplog.records if "moved on" in r.getMessage()]  # one of them was stale
    assert added.version == 4 or renamed.version == 4
    await bob.add_group_members(gid, [erin.me.user_id])  # and a third change on top of both

    members = tuple(sorted(p.me.user_id for p in everyone))
    for r in recorders.values():  # the last change (erin's arrival) verified everywhere
        await r.wait_for(lambda e: _changed(gid, GroupChange.ADDED)(e) and erin.me.user_id in e.users)
    chains = {p.me.username: _chain(p, gid) for p in everyone}
    assert len(set(chains.values())) == 1, chains
    _, version, name, verified = chains["alice"]
    assert (version, name, verified) == (5, "bouldering", members)
    for p in (alice, bob, carol):  # each change once in each timeline, in the chain's order
        lines = [m.text for m in await p.history(conv) if m.kind == "group_event"]
        assert lines.count("alice added dave") == 1 and lines.count("bob added erin") == 1
        assert lines.count("bob renamed the group to bouldering") == 1
    listening = [world.record(p) for p in (alice, bob, carol, erin)]
    await dave.send_text(conv, "hello from dave")
    for r in listening:
        await r.wait_for(_text_in(conv, "hello from dave"), within=15)

    # Both admins remove carol at once: the one that comes second finds it done, and is told no
    # error (nothing more is signed); the chain holds one removal.
    caplog.clear()
    await asyncio.gather(
        alice.remove_group_member(gid, carol.me.user_id), bob.remove_group_member(gid, carol.me.user_id)
    )
    assert [r for r in caplog.records if "moved on" in r.getMessage()]
    rest = (alice, bob, dave, erin)
    for p in rest:
        await recorders[p.me.username].wait_for(_changed(gid, GroupChange.REMOVED))
    chains = {p.me.username: _chain(p, gid) for p in rest}
    assert len(set(chains.values())) == 1, chains
    assert chains["dave"][1:] == (6, "bouldering", tuple(sorted(p.me.user_id for p in rest)))
    assert not (await carol.group(gid)).active
    lines = [m.text for m in await dave.history(conv) if m.kind == "group_event"]
    assert len([line for line in lines if line.endswith("removed carol")]) == 1


async def test_a_device_whose_sender_key_the_server_lost_asks_and_opens_what_comes_next(
    world: World, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(group_chat, "KEY_REQUEST_AFTER", 0.2)
    alice, bob, carol = await _three(world, direct=False)
    group = await alice.create_group("climbing", [bob.me.user_id, carol.me.user_id])
    conv = f"g:{group.group_id}"
    bob_device = bob.me.device_id
    await bob.close()
    lost = await alice.send_text(conv, "while bob was away")
    # The server loses what waited for bob besides the group message: the sender key.
    with contextlib.closing(sqlite3.connect(world.server.database_path)) as db, db:
        dropped = db.execute(
            "DELETE FROM mailbox WHERE recipient_device = ? AND body_id IS NULL", (bob_device,)
        ).rowcount
    assert dropped >= 1

    again = world.peer("bob", 1, direct=False)
    events = world.record(again)
    await again.unlock(PASSWORD)
    said = await events.wait_for(lambda e: e.type == "error" and lost.message_id in e.message, within=20)
    assert "is lost" in said.message
    await alice.send_text(conv, "after the answer")
    got = await events.wait_for(_text_in(conv, "after the answer"))
    assert got.message.sender_user == alice.me.user_id
    assert [m.text for m in await again.history(conv) if m.kind == "text"] == ["after the answer"]
