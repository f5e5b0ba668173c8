"""Edit, delete and disappearing messages between two real peers on a real server (issue 15)."""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from crypto.payload import HistoryChunk
from peer.edits import EditRefused
from peer.errors import PeerError, ServerError


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


def _server_blob(world, blob_id: str) -> tuple[datetime, datetime] | None:
    """(created_at, expires_at) of a blob in the server's own database, None when it is gone."""
    with contextlib.closing(sqlite3.connect(world.server.database_path)) as db:
        row = db.execute("SELECT created_at, expires_at FROM blobs WHERE blob_id = ?", (blob_id,)).fetchone()
    return None if row is None else (datetime.fromisoformat(row[0]), datetime.fromisoformat(row[1]))


async def _blob_refused(peer, blob_id: str) -> ServerError:
    with pytest.raises(ServerError) as refused:
        async for _ in peer.server.download_blob(blob_id):
            pass
    return refused.value


async def test_a_disappearing_files_blob_expires_with_the_timer_and_goes_when_the_message_does(
    world, tmp_path: Path
):
    alice, bob = await world.pair()
    alice_events, bob_events = world.record(alice), world.record(bob)
    await alice.set_direct(False)  # through the server: a blob
    await alice.set_timer(bob.me.user_id, 5)
    await bob_events.wait_for(lambda e: e.type == "message" and e.message.kind == "timer")
    source = tmp_path / "brief.txt"
    source.write_bytes(b"read and forget\n" * 500)
    sent = await alice.send_file(bob.me.user_id, source)
    assert sent.file is not None and sent.file["blob_id"]
    blob_id = sent.file["blob_id"]
    stored = _server_blob(world, blob_id)
    assert stored is not None and stored[1] - stored[0] == timedelta(seconds=5)  # not the 30 days
    await alice_events.wait_for(
        lambda e: e.type == "message_deleted" and e.message_id == sent.message_id, within=30
    )
    assert _server_blob(world, blob_id) is None  # the sender's sweep deleted it with the message
    assert (await _blob_refused(bob, blob_id)).status == 404


async def test_a_file_deleted_for_everyone_is_deleted_from_the_server_too(world, tmp_path: Path):
    alice, bob = await world.pair()
    bob_events = world.record(bob)
    await alice.set_direct(False)
    source = tmp_path / "draft.txt"
    source.write_bytes(b"not meant to be sent\n" * 500)
    sent = await alice.send_file(bob.me.user_id, source)
    assert sent.file is not None and sent.file["blob_id"]
    await bob.wait_file(sent.message_id, within=30)
    assert _server_blob(world, sent.file["blob_id"]) is not None
    await alice.delete_message(sent.message_id, for_everyone=True)
    await bob_events.wait_for(lambda e: e.type == "message_deleted" and e.message_id == sent.message_id)
    assert _server_blob(world, sent.file["blob_id"]) is None
    assert (await _blob_refused(bob, sent.file["blob_id"])).status == 404
