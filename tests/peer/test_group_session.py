"""peer.groups.GroupSession on its own: the state machine, routing through the verified chain,
which sender keys it accepts, rotation, and saving."""

from __future__ import annotations

import pytest

from crypto import groupstate as gs
from crypto import payload
from crypto.envelope import LocalDevice
from crypto.errors import GhostMember, GroupError, GroupRollback, SenderKeyError, UnknownSenderKey
from crypto.senderkeys import OwnSenderKey
from peer.groups import GroupSession, GroupSessionError, GroupSessionState
from tests.support.keys import fixed_device_keys

ALICE = LocalDevice(1, "alice-laptop-0", fixed_device_keys(0))
BOB = LocalDevice(2, "bob-phone-00001", fixed_device_keys(1))
CAROL = LocalDevice(3, "carol-desk-0003", fixed_device_keys(3))
DIRECTORY = gs.MapDirectory(
    {(d.user_id, d.device_id): d.keys.identity_public_bytes() for d in (ALICE, BOB, CAROL)}
)


def _group() -> tuple[GroupSession, GroupSession, list[bytes]]:
    alice, record = GroupSession.create("climbing", [2], ALICE, DIRECTORY)
    bob = GroupSession(alice.group_id, BOB, DIRECTORY)
    assert bob.state is GroupSessionState.UNVERIFIED
    bob.apply_chain([record])
    return alice, bob, [record]


def _hand_key(sender: GroupSession, receiver: GroupSession) -> None:
    key, missing = sender.distribution_for([(receiver.me.user_id, receiver.me.device_id)])
    assert missing
    receiver.accept_distribution(sender.me.user_id, sender.me.device_id, key)
    sender.mark_distributed(missing)


def test_a_verified_member_reads_and_the_key_is_handed_once() -> None:
    alice, bob, _ = _group()
    assert bob.state is GroupSessionState.ACTIVE and bob.version == 1
    _hand_key(alice, bob)
    _, missing = alice.distribution_for([(2, BOB.device_id)])
    assert missing == []  # bob has the current key
    out = alice.encrypt(payload.Text("hi"))
    assert out.new_key is False
    assert bob.decrypt(out.data).payload == payload.Text("hi")


def test_routing_drops_this_device_and_reports_devices_of_users_no_admin_added() -> None:
    alice, _, _ = _group()
    route = alice.route(
        [(1, ALICE.device_id), (1, "alice-phone-01"), (2, BOB.device_id), (9, "ghost-device")]
    )
    assert route.devices == [(1, "alice-phone-01"), (2, BOB.device_id)]
    assert route.ghosts == [9]


def test_sender_keys_are_accepted_only_from_the_device_they_name_and_from_members() -> None:
    alice, bob, _ = _group()
    key, _ = alice.distribution_for([(2, BOB.device_id)])
    with pytest.raises(SenderKeyError, match="naming device"):
        bob.accept_distribution(1, "alice-other-dev", key)
    outsider = OwnSenderKey.create(alice.group_id, 3, CAROL.device_id)
    with pytest.raises(GhostMember):
        bob.accept_distribution(3, CAROL.device_id, payload.SenderKey(outsider.distribution().to_bytes()))
    other_group = OwnSenderKey.create("cd" * 16, 1, ALICE.device_id)
    with pytest.raises(SenderKeyError, match="not for group"):
        bob.accept_distribution(1, ALICE.device_id, payload.SenderKey(other_group.distribution().to_bytes()))


def test_a_message_from_a_non_member_is_refused_even_with_a_key() -> None:
    alice, bob, _ = _group()
    outsider = OwnSenderKey.create(alice.group_id, 3, CAROL.device_id)
    bob.received.add(outsider.distribution())  # even if a key slipped in
    with pytest.raises(GhostMember):
        bob.decrypt(outsider.encrypt(payload.Text("let me in")))


def test_a_removal_rotates_the_key_and_the_removed_device_is_left_out() -> None:
    alice, record = GroupSession.create("g", [2, 3], ALICE, DIRECTORY)
    bob, carol = GroupSession(alice.group_id, BOB, DIRECTORY), GroupSession(alice.group_id, CAROL, DIRECTORY)
    bob.apply_chain([record])
    carol.apply_chain([record])
    _hand_key(alice, bob)
    _hand_key(alice, carol)
    first = alice.encrypt(payload.Text("all"))
    assert carol.decrypt(first.data).payload == payload.Text("all")
    removal, version = alice.sign_change(gs.GroupOp.REMOVE, users=[3])
    assert version == 1
    update = alice.extend_chain([removal])
    assert (update.removed, update.rotate) == ([3], True)
    _, missing = alice.distribution_for(alice.route([(2, BOB.device_id), (3, CAROL.device_id)]).devices)
    assert missing == [(2, BOB.device_id)]
    later = alice.encrypt(payload.Text("not carol"))
    assert later.key_id != first.key_id
    with pytest.raises(UnknownSenderKey):
        carol.decrypt(later.data)
    carol_update = carol.extend_chain([removal])
    assert carol_update.state is GroupSessionState.LEFT
    with pytest.raises(GroupSessionError):
        carol.decrypt(later.data)


def test_the_schedule_rotates_the_key_and_asks_for_a_new_distribution() -> None:
    alice, bob = _group()[:2]
    alice.rotate_after_messages = 2
    _hand_key(alice, bob)
    keys = [alice.encrypt(payload.Text(str(i)), now_ms=1000 + i) for i in range(3)]
    assert [k.new_key for k in keys] == [False, False, True]
    _, missing = alice.distribution_for([(2, BOB.device_id)])
    assert missing == [(2, BOB.device_id)]


def test_an_older_chain_is_refused_and_changes_nothing() -> None:
    alice, bob, records = _group()
    rename, _ = alice.sign_change(gs.GroupOp.RENAME, name="bouldering")
    alice.extend_chain([rename])
    bob.apply_chain([*records, rename])
    with pytest.raises(GroupRollback):
        bob.apply_chain(records)
    assert bob.name == "bouldering"
    assert bob.needs_chain(2) is False and bob.needs_chain(3) is True


def test_leaving_or_the_server_dropping_the_group_stops_sending() -> None:
    alice, bob, _ = _group()
    bob.server_says_gone()
    assert bob.state is GroupSessionState.LEFT
    with pytest.raises(GroupSessionError, match="left"):
        bob.encrypt(payload.Text("x"))
    leave, _ = alice.sign_change(gs.GroupOp.LEAVE)
    assert alice.extend_chain([leave]).state is GroupSessionState.LEFT


def test_saved_sessions_load_again_and_a_tampered_chain_does_not() -> None:
    alice, bob, _ = _group()
    _hand_key(alice, bob)
    first = alice.encrypt(payload.Text("one"))
    alice2 = GroupSession.from_dict(alice.to_dict(), ALICE, DIRECTORY)
    bob2 = GroupSession.from_dict(bob.to_dict(), BOB, DIRECTORY)
    second = alice2.encrypt(payload.Text("two"))
    assert second.new_key is False
    assert [bob2.decrypt(m.data).payload for m in (second, first)] == [
        payload.Text("two"),
        payload.Text("one"),
    ]
    saved = alice.to_dict()
    saved["records"] = [saved["records"][0][:-4] + "AAAA"]
    with pytest.raises(GroupError):
        GroupSession.from_dict(saved, ALICE, DIRECTORY)


def test_a_device_that_lost_a_key_asks_and_reads_from_there_on() -> None:
    alice, bob, _ = _group()
    _hand_key(alice, bob)
    bob2 = GroupSession(alice.group_id, BOB, DIRECTORY)  # bob's state was lost
    bob2.apply_chain(bob._records)
    missed = alice.encrypt(payload.Text("missed"))
    with pytest.raises(UnknownSenderKey):
        bob2.decrypt(missed.data)
    request = bob2.request_for(missed.data)
    assert payload.decode_payload(payload.encode_payload(request)) == request
    answer = alice.answer_request(2, BOB.device_id, request)
    assert answer is not None
    bob2.accept_distribution(1, ALICE.device_id, answer)
    assert bob2.decrypt(alice.encrypt(payload.Text("next")).data).payload == payload.Text("next")
    with pytest.raises(SenderKeyError):
        bob2.decrypt(missed.data)  # the chain only moves forward
    with pytest.raises(GhostMember):
        alice.answer_request(3, CAROL.device_id, request)
