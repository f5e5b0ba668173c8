"""Edit, delete and disappearing messages between two real peers on a real server (issue 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

from crypto.payload import HistoryChunk
from peer.edits import EditRefused
from peer.errors import PeerError


def _exists(*paths: Path) -> list[bool]:
    return [p.exists() for p in paths]


async def test_a_file_deleted_for_everyone_leaves_a_tombstone_and_no_copy_on_the_receiver(
    world, tmp_path: Path
):
    alice, bob = await world.pair()
    bob_events = world.record(bob)
    source = tmp_path / "plan.txt"
    source.write_bytes(b"the secret plan\n" * 1000)
    sent = await alice.send_file(bob.me.user_id, source)
    exported = await bob.wait_file(sent.message_id, within=30)
    transfer = await bob._parts().store.get_transfer(sent.message_id)
    assert transfer is not None
    assert _exists(Path(transfer.local_path), exported) == [True, True]
    await alice.delete_message(sent.message_id, for_everyone=True)
    await bob_events.wait_for(lambda e: e.type == "message_deleted" and e.message_id == sent.message_id)
    assert (await bob.message(sent.message_id)).kind == "deleted"
    assert (await alice.message(sent.message_id)).kind == "deleted"
    assert _exists(Path(transfer.local_path), exported) == [False, False]
    assert _exists(source) == [True]  # the sender's own original is never touched


async def test_only_the_sender_edits_and_a_forged_edit_is_refused(world):
    alice, bob = await world.pair()
    bob_events = world.record(bob)
    sent = await alice.send_text(bob.me.user_id, "original")
    await bob_events.wait_for(lambda e: e.type == "message" and e.message.text == "original")
    with pytest.raises(EditRefused, match="only its sender"):
        await bob.edit_message(sent.message_id, "bob's words")
    # bob's node sends an Edit of alice's message anyway: alice's side refuses it.
    from crypto.payload import Edit

    alice_events = world.record(alice)
    await bob._parts().outbox.send(f"u:{alice.me.user_id}", Edit(sent.message_id, "forged"), record=False)
    refused = await alice_events.wait_for(lambda e: e.type == "error" and "did not send" in e.message)
    assert "refused" in refused.message
    assert (await alice.message(sent.message_id)).text == "original"


async def test_an_edit_past_the_window_is_refused(world):
    alice, bob = await world.pair({"edit_window": 0.0})
    sent = await alice.send_text(bob.me.user_id, "too late to change")
    with pytest.raises(PeerError, match="hours after sending"):
        await alice.edit_message(sent.message_id, "changed")


async def test_a_timer_set_by_one_side_applies_to_both_and_expired_messages_go(world):
    alice, bob = await world.pair()
    bob_events, alice_events = world.record(bob), world.record(alice)
    await alice.set_timer(bob.me.user_id, 5)
    await bob_events.wait_for(lambda e: e.type == "message" and e.message.kind == "timer")
    assert await bob.timer(alice.me.user_id) == 5
    sent = await bob.send_text(alice.me.user_id, "short-lived")
    for events in (alice_events, bob_events):
        await events.wait_for(
            lambda e: e.type == "message_deleted" and e.message_id == sent.message_id, within=30
        )
    assert await alice.message(sent.message_id) is None and await bob.message(sent.message_id) is None
    assert not await alice.search_messages("short")


async def test_history_from_someone_else_is_refused_and_stores_nothing(world):
    alice, bob = await world.pair()
    alice_events = world.record(alice)
    record = {
        "message_id": "ab" * 16,
        "conversation": f"u:{bob.me.user_id}",
        "sender_user": bob.me.user_id,
        "sender_device": bob.me.device_id,
        "kind": "text",
        "payload": {"type": "text", "body": "planted"},
        "sent_at_ms": 1,
        "state": "read",
    }
    await bob._parts().outbox.send(f"u:{alice.me.user_id}", HistoryChunk([record]), record=False)
    refused = await alice_events.wait_for(lambda e: e.type == "error" and "history" in e.message)
    assert "refused" in refused.message
    assert await alice.message("ab" * 16) is None
