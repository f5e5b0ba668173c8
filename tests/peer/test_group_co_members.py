"""Group co-members who are not each other's contacts, and a member removed, through the node:
real server, real peers, real SQLite files.

alice adds bob and carol, who are contacts of alice only. Their sender keys still travel over the
forward-secret ratchet (the server lets co-members claim each other's prekeys); what the server
holds is read from its own database file, as in tests/peer/test_groups_node.py. A removed member's
device learns who removed it from the signed record in its `group` frame, verified on its chain.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from crypto import groupstate as gs
from crypto.bundle import make_bundle
from crypto.envelope import LocalDevice
from crypto.pairwise import is_pairwise
from peer.events import GroupWarning
from peer.vocab import GroupChange
from tests.peer.conftest import PASSWORD, World, fixed_keys
from tests.peer.test_groups_node import _changed, _text_in, _three


def _pairwise_from(database: Path, sender_user: int, device_id: str) -> list[bytes]:
    """The 1:1 (not group) rows from `sender_user` waiting for `device_id`."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        rows = db.execute(
            "SELECT envelope FROM mailbox WHERE recipient_device = ? AND sender_user = ? "
            "AND body_id IS NULL ORDER BY id",
            (device_id, sender_user),
        ).fetchall()
    return [bytes(r[0]) for r in rows]


async def test_co_members_who_are_not_contacts_exchange_sender_keys_as_ratchet_messages(world: World):
    alice, bob, carol = await _three(world, direct=False)
    assert carol.me.user_id not in {c.user_id for c in await bob.contacts()}
    rb, rc = world.record(bob), world.record(carol)
    group = await alice.create_group("climbing", [bob.me.user_id, carol.me.user_id])
    conv = f"g:{group.group_id}"
    await rb.wait_for(_changed(group.group_id, GroupChange.CREATED))
    await rc.wait_for(_changed(group.group_id, GroupChange.CREATED))

    carol_device = carol.me.device_id
    await carol.close()  # what bob sends her now waits on the server, where we can look at it
    await bob.send_text(conv, "bob on belay")
    keys = _pairwise_from(world.server.database_path, bob.me.user_id, carol_device)
    # bob's sender key for carol: a ratchet (PPR) message, not envelope v2, though not contacts
    assert keys and all(is_pairwise(data) for data in keys)

    again = world.peer("carol", 3, direct=False)
    events = world.record(again)
    await again.unlock(PASSWORD)
    assert await again.wait_online(10)
    got = await events.wait_for(_text_in(conv, "bob on belay"))
    assert got.message.sender_user == bob.me.user_id

    bob_device = bob.me.device_id
    await bob.close()  # and the other way: carol's sender key for bob rides the ratchet too
    await again.send_text(conv, "carol climbing")
    keys = _pairwise_from(world.server.database_path, again.me.user_id, bob_device)
    assert keys and all(is_pairwise(data) for data in keys)


# ------------------------------------------------------------------------------------------------
# the removed member's device learns why it is out: the frame carries the signed record
# ------------------------------------------------------------------------------------------------


async def test_the_removed_member_sees_who_removed_her_from_the_verified_record_in_the_frame(world: World):
    alice, bob, carol = await _three(world, direct=False)
    rb, rc = world.record(bob), world.record(carol)
    group = await alice.create_group("climbing", [bob.me.user_id, carol.me.user_id])
    conv = f"g:{group.group_id}"
    await rc.wait_for(_changed(group.group_id, GroupChange.CREATED))

    await alice.remove_group_member(group.group_id, carol.me.user_id)
    out = await rc.wait_for(_changed(group.group_id, GroupChange.REMOVED))
    assert (out.actor, out.users) == (alice.me.user_id, [carol.me.user_id])  # from the record
    await rb.wait_for(_changed(group.group_id, GroupChange.REMOVED))
    assert not (await carol.group(group.group_id)).active
    lines = [m.text for m in await carol.history(conv) if m.kind == "group_event"]
    assert lines[-1] == "alice removed you"
    assert "alice removed carol" in [m.text for m in await bob.history(conv) if m.kind == "group_event"]
    assert not [e for e in rc.of("group_warning") if e.group_id == group.group_id]


async def test_a_forged_record_in_the_removal_frame_is_refused_and_shows_no_reason(world: World):
    alice, bob, carol = await _three(world, direct=False)
    rc = world.record(carol)
    group = await alice.create_group("climbing", [bob.me.user_id, carol.me.user_id])
    conv = f"g:{group.group_id}"
    await rc.wait_for(_changed(group.group_id, GroupChange.CREATED))

    # the server (here: alice's account writing past her node) records a removal that alice's
    # device never signed: same signer named, another key
    records = await alice.server.group_records(group.group_id)
    alice_key = make_bundle(alice.local_device.keys, alice.me.user_id, alice.me.device_id).identity_key
    state = gs.verify_chain(records, gs.MapDirectory({(alice.me.user_id, alice.me.device_id): alice_key}))
    impostor = LocalDevice(alice.me.user_id, alice.me.device_id, fixed_keys(4))
    forged = gs.sign_record(impostor, state, gs.GroupOp.REMOVE, users=[carol.me.user_id])
    await alice.server.remove_group_members(group.group_id, [carol.me.user_id], forged, state.seq + 1)

    warning = await rc.wait_for(lambda e: isinstance(e, GroupWarning) and e.group_id == group.group_id)
    assert "does not verify" in warning.reason
    # out all the same (the server routes her nothing now), but with no reason it could forge
    out = await rc.wait_for(_changed(group.group_id, GroupChange.REMOVED))
    assert out.actor is None
    assert not (await carol.group(group.group_id)).active
    lines = [m.text for m in await carol.history(conv) if m.kind == "group_event"]
    assert not [line for line in lines if "removed" in line]
