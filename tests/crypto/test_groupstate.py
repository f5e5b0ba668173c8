"""Signed, hash-chained group membership: what a member device accepts, and what it refuses from a
server that injects a member, drops a removal, replays an old state or splices chains."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto import groupstate as gs
from crypto._codec import b64d
from crypto.errors import (
    GhostMember,
    GroupChainBroken,
    GroupError,
    GroupRecordSignatureInvalid,
    GroupRollback,
    MalformedGroupRecord,
    UnauthorizedGroupChange,
)
from tests.crypto.conftest import few, vector

GID = "ab" * 16


@pytest.fixture(scope="module")
def people(devices):
    return [d.local for d in devices]  # alice(1), bob(2), bob's laptop(2), carol(3), carol's phone, dave(4)


@pytest.fixture(scope="module")
def directory(devices):
    return gs.MapDirectory({(d.user_id, d.device_id): d.keys.identity_public_bytes() for d in devices})


def _chain(people, directory):
    alice, _bob, _, _carol, _, _dave = people
    r0 = gs.sign_record(alice, None, gs.GroupOp.CREATE, group_id=GID, name="climbing", users=[2, 3])
    s0 = gs.verify_chain([r0], directory)
    r1 = gs.sign_record(alice, s0, gs.GroupOp.ADD, users=[4])
    s1 = gs.verify_chain([r0, r1], directory)
    return [r0, r1], s1


def test_a_created_group_has_its_creator_as_only_admin_and_members_in_order(people, directory) -> None:
    _records, state = _chain(people, directory)
    assert state.member_ids == [1, 2, 3, 4]
    assert state.admin_ids == [1]
    assert state.name == "climbing"
    assert state.seq == 1
    assert state.oldest_member() == 1


def test_the_committed_chain_regenerates_identically_and_verifies(people, directory) -> None:
    v = vector("groups.json")
    records = [b64d(r) for r in v["records"]]
    state = gs.verify_chain(records, directory, expect_group=v["group_id"])
    assert state.member_ids == v["final"]["members"]
    assert state.admin_ids == v["final"]["admins"]
    assert state.name == v["final"]["name"]
    assert state.head_hash.hex() == v["final"]["head"]
    alice, _bob = people[0], people[1]
    again = gs.sign_record(
        alice, None, gs.GroupOp.CREATE, group_id=v["group_id"], name="climbing", users=[2, 3],
        at_ms=1_767_225_600_000,
    )  # fmt: skip
    assert again == records[0]


def test_a_member_no_admin_added_is_refused_as_a_ghost(people, directory) -> None:
    _, state = _chain(people, directory)
    with pytest.raises(GhostMember) as caught:
        gs.check_roster(state, [1, 2, 3, 4, 99])
    assert caught.value.user_ids == [99]
    assert gs.check_roster(state, [1, 2, 3]).missing == [4]


def test_a_member_cannot_add_someone_only_an_admin_can(people, directory) -> None:
    records, state = _chain(people, directory)
    bob = people[1]
    forged = _resign(bob, state, gs.GroupOp.ADD, users=[5])
    with pytest.raises(UnauthorizedGroupChange, match="not an admin"):
        gs.verify_chain([*records, forged], directory)


def test_a_record_signed_by_an_unknown_device_is_refused(people, directory, devices) -> None:
    records, _state = _chain(people, directory)
    stranger = gs.MapDirectory({})
    with pytest.raises(UnauthorizedGroupChange, match="does not know"):
        gs.verify_chain(records, stranger)


def test_a_server_altering_a_record_breaks_its_signature(people, directory) -> None:
    records, _ = _chain(people, directory)
    altered = records[1].replace(b"[4]", b"[5]")
    with pytest.raises(GroupRecordSignatureInvalid):
        gs.verify_chain([records[0], altered], directory)


def test_a_server_dropping_a_removal_is_caught_by_a_device_that_saw_it(people, directory) -> None:
    records, state = _chain(people, directory)
    alice = people[0]
    removal = gs.sign_record(alice, state, gs.GroupOp.REMOVE, users=[3])
    seen = gs.verify_chain([*records, removal], directory)
    assert not seen.is_member(3)
    with pytest.raises(GroupRollback, match="old state"):
        gs.verify_chain(records, directory, known=seen.head)  # the removal dropped
    with pytest.raises(GhostMember):
        gs.check_roster(seen, [1, 2, 3, 4])  # the server still routes to the removed member


def test_a_server_replaying_an_old_state_or_a_fork_is_refused(people, directory) -> None:
    records, state = _chain(people, directory)
    alice = people[0]
    rename = gs.sign_record(alice, state, gs.GroupOp.RENAME, name="bouldering")
    head = gs.verify_chain([*records, rename], directory).head
    with pytest.raises(GroupRollback):
        gs.verify_chain(records[:1], directory, known=head)
    other = gs.sign_record(alice, state, gs.GroupOp.RENAME, name="something else")
    with pytest.raises(GroupRollback, match="forks"):
        gs.verify_chain([*records, other], directory, known=head)
    assert gs.verify_chain([*records, rename], directory, known=head).name == "bouldering"


def test_records_of_another_group_or_out_of_order_do_not_chain(people, directory) -> None:
    records, _state = _chain(people, directory)
    alice = people[0]
    foreign = gs.sign_record(alice, None, gs.GroupOp.CREATE, group_id="cd" * 16, name="x", users=[2])
    with pytest.raises(GroupChainBroken):
        gs.verify_chain([records[0], foreign], directory)
    with pytest.raises(GroupChainBroken):
        gs.verify_chain([records[1], records[0]], directory)
    with pytest.raises(GroupChainBroken):
        gs.verify_chain(records, directory, expect_group="cd" * 16)


def test_the_last_admin_leaving_promotes_the_oldest_member(people, directory) -> None:
    records, state = _chain(people, directory)
    alice = people[0]
    leave = gs.sign_record(alice, state, gs.GroupOp.LEAVE)
    after = gs.verify_chain([*records, leave], directory)
    assert after.member_ids == [2, 3, 4]
    assert after.admin_ids == [2]
    assert gs.removed_between(state, after) == [1]


def test_anyone_may_leave_but_an_admin_cannot_remove_themselves(people, directory) -> None:
    records, state = _chain(people, directory)
    alice, bob = people[0], people[1]
    left = gs.verify_chain([*records, gs.sign_record(bob, state, gs.GroupOp.LEAVE)], directory)
    assert left.member_ids == [1, 3, 4]
    with pytest.raises(UnauthorizedGroupChange, match="leave record"):
        gs.sign_record(alice, state, gs.GroupOp.REMOVE, users=[1])


def test_an_admin_can_promote_and_the_new_admin_can_remove(people, directory) -> None:
    records, state = _chain(people, directory)
    alice, bob = people[0], people[1]
    promote = gs.sign_record(alice, state, gs.GroupOp.PROMOTE, users=[2])
    s2 = gs.verify_chain([*records, promote], directory)
    removal = gs.sign_record(bob, s2, gs.GroupOp.REMOVE, users=[4])
    s3 = gs.extend(s2, [removal], directory)
    assert s3.admin_ids == [1, 2] and s3.member_ids == [1, 2, 3]


def test_a_thousand_member_group_verifies_and_more_are_refused(people, directory) -> None:
    alice = people[0]
    r0 = gs.sign_record(alice, None, gs.GroupOp.CREATE, group_id=GID, name="big", users=list(range(2, 1001)))
    state = gs.verify_chain([r0], directory)
    assert len(state.members) == 1000
    with pytest.raises(UnauthorizedGroupChange, match="more than 1000"):
        gs.sign_record(alice, state, gs.GroupOp.ADD, users=[5000])


@few
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_in_a_record_is_refused(people, directory, position: int, bit: int) -> None:
    records, _ = _chain(people, directory)
    raw = bytearray(records[1])
    raw[position % len(raw)] ^= 1 << bit
    with pytest.raises(GroupError):
        gs.verify_chain([records[0], bytes(raw)], directory)


def test_malformed_records_say_what_is_wrong() -> None:
    with pytest.raises(MalformedGroupRecord, match="magic"):
        gs.parse_record(b"XXXX" + bytes(80))
    with pytest.raises(MalformedGroupRecord, match="truncated"):
        gs.parse_record(b"PPGR\x01\x00\x00\x00\x10{}")


def _resign(signer, state, op, **fields):
    """A record `signer` signs without the local rule check (what a malicious member could do)."""
    import time

    from crypto._codec import canonical_json

    draft = gs.GroupRecord(
        state.group_id, state.seq + 1, state.head_hash, op, signer.user_id, signer.device_id,
        int(time.time() * 1000), fields.get("name"), tuple(fields.get("users", ())),
    )  # fmt: skip
    body = canonical_json(gs._body(draft))
    unsigned = gs.RECORD_MAGIC + bytes([1]) + len(body).to_bytes(4, "big") + body
    return unsigned + signer.keys.sign(gs.RECORD_DOMAIN + unsigned)


@few
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(["add", "remove", "promote", "leave"]), st.integers(2, 9)), max_size=12
    )
)
def test_any_sequence_of_allowed_changes_verifies_to_what_a_plain_model_says(
    people, directory, steps
) -> None:
    """Signed by alice (user 1) while she is admin; the model is a dict and a list in joining order."""
    alice = people[0]
    records = [gs.sign_record(alice, None, gs.GroupOp.CREATE, group_id=GID, name="g", users=[2])]
    state = gs.verify_chain(records, directory)
    model = {1: "admin", 2: "member"}
    order = [1, 2]
    for op, user in steps:
        if not state.is_admin(1):
            break
        if op == "add" and user not in model:
            record, model[user] = gs.sign_record(alice, state, gs.GroupOp.ADD, users=[user]), "member"
            order.append(user)
        elif op == "remove" and user in model and user != 1:
            record = gs.sign_record(alice, state, gs.GroupOp.REMOVE, users=[user])
            del model[user]
            order.remove(user)
        elif op == "promote" and model.get(user) == "member":
            record, model[user] = gs.sign_record(alice, state, gs.GroupOp.PROMOTE, users=[user]), "admin"
        elif op == "leave":
            record = gs.sign_record(alice, state, gs.GroupOp.LEAVE)
            del model[1]
            order.remove(1)
            if model and "admin" not in model.values():
                model[order[0]] = "admin"
        else:
            continue
        records.append(record)
        state = gs.verify_chain(records, directory)
    assert {u: m.role.value for u, m in state.members.items()} == model
    assert state.seq == len(records) - 1


@few
@given(drop=st.integers(min_value=0, max_value=4))
def test_dropping_any_record_is_refused(people, directory, drop: int) -> None:
    alice = people[0]
    records = [gs.sign_record(alice, None, gs.GroupOp.CREATE, group_id=GID, name="g", users=[2, 3])]
    state = gs.verify_chain(records, directory)
    for op, fields in ((gs.GroupOp.ADD, {"users": [4]}), (gs.GroupOp.REMOVE, {"users": [3]}),
                       (gs.GroupOp.PROMOTE, {"users": [2]}), (gs.GroupOp.RENAME, {"name": "h"})):  # fmt: skip
        records.append(gs.sign_record(alice, state, op, **fields))
        state = gs.verify_chain(records, directory)
    served = records[:drop] + records[drop + 1 :]
    with pytest.raises(GroupRollback):  # a device that verified the head refuses any of them
        gs.verify_chain(served, directory, known=state.head)
    if drop < len(records) - 1:  # even without a head, a gap breaks the chain
        with pytest.raises(GroupChainBroken):
            gs.verify_chain(served, directory)
