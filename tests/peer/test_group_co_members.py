"""Group co-members who are not each other's contacts, through the node: real server, real peers.

alice adds bob and carol, who are contacts of alice only. Their sender keys still travel over the
forward-secret ratchet (the server lets co-members claim each other's prekeys); what the server
holds is read from its own database file, as in tests/peer/test_groups_node.py.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from crypto.pairwise import is_pairwise
from peer.vocab import GroupChange
from tests.peer.conftest import PASSWORD, World
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
