"""Edits, deletes and timers made while the server is down, changes that come before their
message, and typing that is never left in a mailbox: real server, real peers, real SQLite."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest

from crypto.payload import Edit, Text, Typing
from peer import Peer
from peer.edits import MessageEdits
from peer.events import Event
from peer.heldchanges import HeldChange
from peer.history import History
from peer.localstore import LocalStore, now_ms
from peer.views import received_message
from peer.vocab import GroupChange
from tests.peer.conftest import PASSWORD, Recorder, World
from tests.peer.test_groups_node import _changed, _mailbox, _text_in, _three


def _edited(message_id: str, text: str):
    return lambda e: (
        e.type == "message_edited" and e.message.message_id == message_id and e.message.text == text
    )


def _count(recorder: Recorder, type_: str, message_id: str) -> int:
    """How many `type_` events name `message_id` (directly, or as their message's id)."""

    def names(e: Event) -> bool:
        message = getattr(e, "message", None)
        return (
            getattr(e, "message_id", None) == message_id or getattr(message, "message_id", None) == message_id
        )

    return len([e for e in recorder.of(type_) if names(e)])


async def _server_down(world: World, *peers: tuple[Peer, Recorder]) -> None:
    await asyncio.to_thread(world.server.kill)  # SIGKILL: the sockets just die
    for _, events in peers:
        await events.wait_for(lambda e: e.type == "connection" and not e.online)


async def _server_back(world: World) -> None:
    await asyncio.to_thread(world.server.restart)


async def _settled(sender: Peer, to: int | str, receiver: Recorder, text: str) -> None:
    """A text after everything else the sender had waiting: once it is in, the rest is too."""
    await sender.send_text(to, text)
    await receiver.wait_for(lambda e: e.type == "message" and e.message.text == text, within=30)


# ------------------------------------------------------------------------------------------------
# 1. changes made while the server is down go out once it is back
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ratchet", [True, False], ids=["ratchet", "envelope-v2"])
async def test_an_edit_a_delete_and_a_timer_made_while_the_server_is_down_reach_bob_once_it_is_back(
    world: World, ratchet: bool
):
    alice, bob = await world.pair()
    alice.set_ratchet(ratchet)
    await alice.set_direct(False)  # no link: the server is the only way, and it is down
    ra, rb = world.record(alice), world.record(bob)
    keep = await alice.send_text(bob.me.user_id, "meet at 6")
    drop = await alice.send_text(bob.me.user_id, "bring the blue rope")
    for text in ("meet at 6", "bring the blue rope"):
        await rb.wait_for(_text_in(f"u:{alice.me.user_id}", text))

    await _server_down(world, (alice, ra))
    edited = await alice.edit_message(keep.message_id, "meet at 7")
    assert edited.text == "meet at 7" and edited.edited_at_ms is not None  # here at once
    await alice.delete_message(drop.message_id, for_everyone=True)
    assert (await alice.message(drop.message_id)).kind == "deleted"
    await alice.set_timer(bob.me.user_id, 3600)
    assert await alice.timer(bob.me.user_id) == 3600

    await _server_back(world)
    await rb.wait_for(_edited(keep.message_id, "meet at 7"), within=30)
    await rb.wait_for(lambda e: e.type == "message_deleted" and e.message_id == drop.message_id, within=30)
    await rb.wait_for(lambda e: e.type == "message" and e.message.kind == "timer", within=30)
    assert (await bob.message(keep.message_id)).text == "meet at 7"
    assert (await bob.message(drop.message_id)).kind == "deleted"
    assert await bob.timer(alice.me.user_id) == 3600

    await _settled(alice, bob.me.user_id, rb, "after the outage")
    assert _count(rb, "message_edited", keep.message_id) == 1  # once, not once per reconnect
    assert _count(rb, "message_deleted", drop.message_id) == 1
    assert len([e for e in rb.of("message") if e.message.kind == "timer"]) == 1


async def test_an_edit_made_while_the_server_is_down_survives_a_restart_of_the_node(world: World):
    alice, bob = await world.pair()
    await alice.set_direct(False)
    ra, rb = world.record(alice), world.record(bob)
    sent = await alice.send_text(bob.me.user_id, "meet at 6")
    await rb.wait_for(_text_in(f"u:{alice.me.user_id}", "meet at 6"))

    await _server_down(world, (alice, ra))
    await alice.edit_message(sent.message_id, "meet at 7")
    await alice.close()  # the edit is only in alice's store now
    await _server_back(world)

    again = world.peer("alice", 0, direct=False)
    await again.unlock(PASSWORD)
    assert (await again.message(sent.message_id)).text == "meet at 7"
    await rb.wait_for(_edited(sent.message_id, "meet at 7"), within=30)
    assert (await bob.message(sent.message_id)).text == "meet at 7"
    await _settled(again, bob.me.user_id, rb, "after the restart")
    assert _count(rb, "message_edited", sent.message_id) == 1


async def test_a_group_edit_made_while_the_server_is_down_reaches_every_member_once_it_is_back(world: World):
    alice, bob, carol = await _three(world, direct=False)
    ra, rb, rc = world.record(alice), world.record(bob), world.record(carol)
    group = await alice.create_group("climbing", [bob.me.user_id, carol.me.user_id])
    conv = f"g:{group.group_id}"
    await rc.wait_for(_changed(group.group_id, GroupChange.CREATED))
    sent = await alice.send_text(conv, "meet at 6")
    for r in (rb, rc):
        await r.wait_for(_text_in(conv, "meet at 6"))

    await _server_down(world, (alice, ra))
    edited = await alice.edit_message(sent.message_id, "meet at 7")
    assert edited.text == "meet at 7"
    await _server_back(world)
    for p, r in ((bob, rb), (carol, rc)):
        await r.wait_for(_edited(sent.message_id, "meet at 7"), within=30)
        assert (await p.message(sent.message_id)).text == "meet at 7"

    await alice.send_text(conv, "after the outage")
    for r in (rb, rc):
        await r.wait_for(_text_in(conv, "after the outage"), within=30)
        assert _count(r, "message_edited", sent.message_id) == 1


# ------------------------------------------------------------------------------------------------
# 2. a change that comes before its message
# ------------------------------------------------------------------------------------------------


async def _held(peer: Peer, count: int) -> None:
    held = peer._parts().inbox.edits.held
    now = await held.count()
    while now != count:
        await asyncio.sleep(0.05)  # polling the receiver's store, bounded by the caller's wait_for
        now = await held.count()


async def test_an_edit_that_crosses_its_message_is_held_and_applied_when_the_message_comes(world: World):
    """How the two cross, honestly: alice and bob have a direct link; the server goes down (the
    link stays: it is peer to peer). alice's router is told to leave links alone for one message,
    so "meet at 6" waits in her outbox for the server. Her edit of it then goes the normal way,
    over the open link, and reaches bob first: bob has nothing to apply it to, so he holds it.
    When the server is back, alice's outbox sends the message, and bob applies the held edit."""
    alice, bob = await world.pair()
    ra, rb = world.record(alice), world.record(bob)
    first = await alice.send_text(bob.me.user_id, "a link first")
    assert first.path == "direct" and alice.link_to(bob.me.device_id) is not None
    await _server_down(world, (alice, ra), (bob, rb))

    policy = alice.router.policy
    alice.router.policy = replace(policy, direct=False)  # this one message: the server path only
    sent = await alice.send_text(bob.me.user_id, "meet at 6")
    alice.router.policy = policy
    assert sent.state == "sending" and sent.path is None  # in alice's outbox
    await alice.edit_message(sent.message_id, "meet at 7")  # over the link
    await asyncio.wait_for(_held(bob, 1), 10)
    assert await bob.message(sent.message_id) is None

    await _server_back(world)
    got = await rb.wait_for(lambda e: e.type == "message" and e.message.message_id == sent.message_id, 30)
    assert got.message.text == "meet at 6"  # the message as sent, then the change
    await rb.wait_for(_edited(sent.message_id, "meet at 7"))
    view = await bob.message(sent.message_id)
    assert view is not None and view.text == "meet at 7" and view.edited_at_ms is not None
    assert await bob._parts().inbox.edits.held.count() == 0


# The rules of a held change, on one device's real store (no second peer needed for these).

ALICE, BOB, MALLORY = 2, 1, 3


@contextlib.asynccontextmanager
async def _device(tmp_path: Path):
    store = LocalStore(tmp_path / "bob.db", b"k" * 32)
    await store.open()
    events: list[Event] = []

    async def nowhere(_conversation: str, _payload: object) -> None:
        raise AssertionError("nothing is sent here")

    edits = MessageEdits(
        me_user=BOB,
        store=store,
        history=History(store, "bob-1"),
        send=nowhere,
        publish=events.append,
        window=3600,
    )
    await edits.prepare()
    try:
        yield store, edits, events
    finally:
        await store.close()


async def _arrives(store: LocalStore, edits: MessageEdits, message_id: str, sender: int, text: str) -> None:
    message = received_message(
        message_id=message_id,
        conversation=f"u:{sender}",
        sender_user=sender,
        sender_device=f"dev-{sender}",
        me_user=BOB,
        payload=Text(text),
        sent_at_ms=now_ms(),
        via="relayed",
        stored_at_ms=now_ms(),
    )
    assert await store.save_message(message)
    await edits.on_stored(message)


async def test_a_held_change_from_someone_else_is_refused_when_the_message_comes(tmp_path: Path):
    async with _device(tmp_path) as (store, edits, events):
        mid = "a" * 32
        # mallory claims alice's message (in alice's conversation, even): held, then refused
        await edits.on_edit(f"u:{ALICE}", MALLORY, now_ms(), Edit(mid, "forged"))
        await _arrives(store, edits, mid, ALICE, "the real text")
        assert [e.message for e in events if e.type == "error"] == [
            f"user {MALLORY} tried to edit a message they did not send; refused"
        ]
        assert (await store.get_message(mid)).payload["body"] == "the real text"
        assert await edits.held.count() == 0


async def test_held_changes_are_sealed_bounded_per_conversation_and_in_all_and_expire(tmp_path: Path):
    async with _device(tmp_path) as (store, edits, _events):
        held = edits.held
        held.per_conversation, held.in_total = 3, 5
        for i in range(4):
            await edits.on_edit(f"u:{ALICE}", ALICE, now_ms(), Edit(f"{i:032x}", f"secret edit {i}"))
        assert await held.count(f"u:{ALICE}") == 3  # the oldest went
        assert await held.take(f"{0:032x}") == []
        for i in range(4):
            await held.hold(HeldChange(f"{10 + i:032x}", f"u:{MALLORY}", MALLORY, now_ms(), None))
        assert await held.count(f"u:{MALLORY}") == 3 and await held.count() == 5
        with contextlib.closing(sqlite3.connect(tmp_path / "bob.db")) as db:
            stored = b"".join(bytes(row[0]) for row in db.execute("SELECT data FROM held_changes"))
        assert stored and b"secret edit" not in stored  # sealed at rest

        # an edit of a message that is here already is never held
        await _arrives(store, edits, "f" * 32, ALICE, "here")
        await edits.on_edit(f"u:{ALICE}", ALICE, now_ms(), Edit("f" * 32, "changed"))
        assert await held.count() == 5

        assert await held.prune(now_ms() + held.hold_for_ms + 1) == 5  # after the bound: all gone
        assert await held.count() == 0
    # and what was held comes back after a restart (held in the store, not in memory)
    async with _device(tmp_path) as (store, edits, _events):
        await edits.on_edit(f"u:{ALICE}", ALICE, now_ms(), Edit("e" * 32, "kept across a restart"))
    async with _device(tmp_path) as (store, edits, _events):
        await _arrives(store, edits, "e" * 32, ALICE, "first")
        assert (await store.get_message("e" * 32)).payload["body"] == "kept across a restart"


# ------------------------------------------------------------------------------------------------
# 3. typing is live only
# ------------------------------------------------------------------------------------------------


def _rows(world: World, device_id: str, *, group: bool) -> list[str]:
    return [mid for mid, _, is_group in _mailbox(world.server.database_path, device_id) if is_group == group]


async def _offline(watcher: Recorder, user_id: int) -> None:
    await watcher.wait_for(lambda e: e.type == "presence" and e.user_id == user_id and not e.online)


async def test_a_group_typing_is_not_left_in_an_offline_members_mailbox(world: World):
    alice, bob, carol = await _three(world, direct=False)
    ra, rb, rc = world.record(alice), world.record(bob), world.record(carol)
    group = await alice.create_group("climbing", [bob.me.user_id, carol.me.user_id])
    conv = f"g:{group.group_id}"
    for r in (rb, rc):
        await r.wait_for(_changed(group.group_id, GroupChange.CREATED))
    carol_device = carol.me.device_id

    await carol.close()
    await _offline(ra, carol.me.user_id)  # carol is alice's contact: presence says she is gone
    await alice.send_typing(conv, True)
    await rb.wait_for(lambda e: e.type == "typing" and e.conversation == conv)  # bob is online
    marker = await alice.send_text(conv, "carol is away")
    assert _rows(world, carol_device, group=True) == [marker.message_id]  # no typing waits for her

    # bob and carol are not contacts: bob's node knows nothing of her presence. His typing goes
    # (optimistically) once, and the server's answer that it waited stops the next ones.
    for _ in range(3):
        await bob.send_typing(conv, True)
    waiting = _rows(world, carol_device, group=True)
    assert len(waiting) == 2 and waiting[0] == marker.message_id


async def test_a_one_to_one_typing_is_not_left_in_the_mailbox_and_a_stored_one_is_not_shown(world: World):
    alice, bob = await world.pair()
    await alice.set_direct(False)
    ra = world.record(alice)
    bob_id, bob_device = bob.me.user_id, bob.me.device_id
    await bob.close()
    await _offline(ra, bob_id)
    await alice.send_typing(bob_id, True)
    assert _mailbox(world.server.database_path, bob_device) == []
    sent = await alice.send_text(bob_id, "while you were away")
    assert [mid for mid, _, _ in _mailbox(world.server.database_path, bob_device)] == [sent.message_id]

    # a typing stored anyway (sent without the live-only rule, as a node before it did) is not shown
    await alice._parts().outbox.send(f"u:{bob_id}", Typing(True), record=False)
    again = world.peer("bob", 1)
    rb = world.record(again)
    await again.unlock(PASSWORD)
    await rb.wait_for(lambda e: e.type == "message" and e.message.text == "while you were away", within=30)
    await _settled(alice, bob_id, rb, "and now you are back")
    assert rb.of("typing") == []
