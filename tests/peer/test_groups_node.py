"""Groups through the node: real server, real peers (peer.node.Peer), real SQLite files.

Each test drives only `Peer`'s public API and watches its events; what the server stored is read
from its own database file (the "captured" ciphertext of a message sent after a removal).
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from peer.events import GroupChanged, MessageReceived
from peer.node import Peer
from peer.vocab import GroupChange
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
