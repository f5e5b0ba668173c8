"""Edit and delete for everyone in groups (issues 13 and 15): real server, real peers, real SQLite.

A change is one group message (sender-key ciphertext) like a text; every member device applies it
only when it comes from the original's sender, in the original's conversation.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from crypto.payload import Edit
from peer.edits import EditRefused
from peer.vocab import GroupChange
from tests.peer.conftest import World
from tests.peer.test_groups_node import _changed, _text_in, _three


def _blob_on_server(world: World, blob_id: str) -> bool:
    with contextlib.closing(sqlite3.connect(world.server.database_path)) as db:
        return db.execute("SELECT 1 FROM blobs WHERE blob_id = ?", (blob_id,)).fetchone() is not None


async def test_the_sender_edits_a_group_message_for_every_member_and_a_forged_edit_is_refused(world: World):
    alice, bob, carol = await _three(world, direct=False)
    ra, rb, rc = world.record(alice), world.record(bob), world.record(carol)
    group = await alice.create_group("climbing", [bob.me.user_id, carol.me.user_id])
    conv = f"g:{group.group_id}"
    await rc.wait_for(_changed(group.group_id, GroupChange.CREATED))
    sent = await alice.send_text(conv, "meet at 6")
    for r in (rb, rc):
        await r.wait_for(_text_in(conv, "meet at 6"))

    edited = await alice.edit_message(sent.message_id, "meet at 7")
    assert edited.text == "meet at 7" and edited.edited_at_ms is not None
    for p, r in ((bob, rb), (carol, rc)):
        got = await r.wait_for(
            lambda e: e.type == "message_edited" and e.message.message_id == sent.message_id
        )
        assert got.message.text == "meet at 7" and got.message.conversation == conv
        view = await p.message(sent.message_id)
        assert view is not None and view.text == "meet at 7" and view.edited_at_ms is not None

    # bob may not edit alice's message: refused on his device ...
    with pytest.raises(EditRefused, match="only its sender"):
        await bob.edit_message(sent.message_id, "bob's words")
    # ... and when his node sends the edit to the group anyway (signed with his own sender key),
    # every other member refuses it
    await bob._parts().groups.send(conv, Edit(sent.message_id, "forged by bob"), record=False)
    for r in (ra, rc):
        refused = await r.wait_for(lambda e: e.type == "error" and "did not send" in e.message)
        assert f"user {bob.me.user_id}" in refused.message
    # alice's own change of her group message over the 1:1 path (bob only) is refused too:
    # the members would see different texts
    await alice._parts().outbox.send(
        f"u:{bob.me.user_id}", Edit(sent.message_id, "for bob only"), record=False, own_devices=False
    )
    refused = await rb.wait_for(lambda e: e.type == "error" and "of another conversation" in e.message)
    assert "refused" in refused.message
    for p in (alice, bob, carol):
        view = await p.message(sent.message_id)
        assert view is not None and view.text == "meet at 7"


async def test_a_group_file_deleted_for_everyone_is_a_tombstone_everywhere_and_gone_from_the_server(
    world: World, tmp_path: Path
):
    alice, bob, carol = await _three(world, direct=False)
    rb, rc = world.record(bob), world.record(carol)
    group = await alice.create_group("climbing", [bob.me.user_id, carol.me.user_id])
    conv = f"g:{group.group_id}"
    await rc.wait_for(_changed(group.group_id, GroupChange.CREATED))
    source = tmp_path / "topo.bin"
    source.write_bytes(b"the secret crag\n" * 2000)
    sent = await alice.send_file(conv, source)
    assert sent.file is not None and sent.file["blob_id"]
    blob_id = sent.file["blob_id"]
    copies: list[Path] = []
    for p in (bob, carol):
        exported = await p.wait_file(sent.message_id, within=30)
        transfer = await p._parts().store.get_transfer(sent.message_id)
        assert transfer is not None and transfer.local_path
        copies += [exported, Path(transfer.local_path)]
    assert all(c.exists() for c in copies) and _blob_on_server(world, blob_id)
    text = await alice.send_text(conv, "and a word")
    await rc.wait_for(_text_in(conv, "and a word"))

    # carol may not delete alice's file for everyone
    with pytest.raises(EditRefused, match="only its sender"):
        await carol.delete_message(sent.message_id, for_everyone=True)

    await alice.delete_message(sent.message_id, for_everyone=True)
    await alice.delete_message(text.message_id, for_everyone=True)
    for r in (rb, rc):
        for mid in (sent.message_id, text.message_id):
            await r.wait_for(
                lambda e, mid=mid: e.type == "message_deleted" and e.message_id == mid and e.for_everyone
            )
    for p in (alice, bob, carol):
        assert [(await p.message(m)).kind for m in (sent.message_id, text.message_id)] == ["deleted"] * 2
    assert not any(c.exists() for c in copies)  # the members' sealed and exported copies
    assert source.exists()  # the sender's own original is never touched
    assert not _blob_on_server(world, blob_id)
