"""The session manager on real local stores: sealing and opening with the state saved in the
message's transaction, duplicates, crashes, lost and restored state healed, prekey refill and
rotation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from crypto import pairwise
from crypto.errors import SessionError, SignatureInvalid
from crypto.pairwise import MessageKind, PairwiseSession, make_heal_request, peek
from crypto.prekeys import PrekeyKind
from peer import ratchetstore as rs
from peer.localstore import LocalStore, now_ms
from peer.sessions import Outcome, Received, new_message_id
from tests.peer.sessionworld import STORAGE_KEY, Directory, SessionDevice, store_text
from tests.support.keys import fixed_device_keys


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[SessionDevice, SessionDevice]]:
    directory = Directory()
    pins: dict = {}
    alice = SessionDevice(tmp_path, 1, "alice-laptop-0", fixed_device_keys(0), directory, pins)
    bob = SessionDevice(tmp_path, 2, "bob-phone-00001", fixed_device_keys(1), directory, pins)
    for d in (alice, bob):
        pins[(d.user_id, d.device_id)] = d.keys.identity_public_bytes()
        await d.open()
        await directory.refresh(d)
    try:
        yield alice, bob
    finally:
        await alice.close()
        await bob.close()


async def send(a: SessionDevice, b: SessionDevice, text: str, message_id: str | None = None) -> bytes:
    out = await a.sessions.seal(b.user_id, b.device_id, text.encode(), message_id or new_message_id())
    return out.data


async def deliver(b: SessionDevice, data: bytes) -> Received:
    return await b.sessions.open(data, store_with=store_text(b.store))


async def converse(a: SessionDevice, b: SessionDevice, rounds: int = 2) -> None:
    for i in range(rounds):
        r = await deliver(b, await send(a, b, f"a{i}"))
        assert r.outcome is Outcome.DELIVERED
        await a.sessions.acknowledge(b.device_id, [r.message_id])
        r = await deliver(a, await send(b, a, f"b{i}"))
        assert r.outcome is Outcome.DELIVERED
        await b.sessions.acknowledge(a.device_id, [r.message_id])


async def test_message_and_ratchet_state_are_saved_together(pair) -> None:
    alice, bob = pair
    data = await send(alice, bob, "hello")
    assert peek(data).kind is MessageKind.PREKEY
    r = await deliver(bob, data)
    assert (r.outcome, r.plaintext, r.reestablished) == (Outcome.DELIVERED, b"hello", False)
    assert bob.stored_messages() == [r.message_id]
    # the one-time keys the session used are gone from Bob's device, with the session saved
    ph = peek(data).prekey
    assert (
        await bob.store.transaction(
            lambda db: rs.get_prekey(bob.store, db, PrekeyKind.ONE_TIME, ph.one_time_prekey_id)
        )
        is None
    )
    again = await deliver(bob, data)
    assert again.outcome is Outcome.DUPLICATE and again.plaintext is None
    assert bob.stored_messages() == [r.message_id]


async def test_a_failed_message_save_leaves_the_state_as_before(pair) -> None:
    alice, bob = pair
    data = await send(alice, bob, "keep me")

    def broken(db, received) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        await bob.sessions.open(data, store_with=broken)
    assert bob.stored_messages() == []
    r = await deliver(bob, data)  # redelivered (the mailbox was never acked): opens now
    assert r.outcome is Outcome.DELIVERED and r.plaintext == b"keep me"


async def test_a_crash_between_any_two_steps_loses_nothing(pair) -> None:
    alice, bob = pair
    await converse(alice, bob)
    pending = [await send(alice, bob, f"in flight {i}") for i in range(3)]
    await alice.crash()
    await bob.crash()
    first = await deliver(bob, pending[2])
    await bob.crash()
    rest = [await deliver(bob, d) for d in pending[:2]]
    assert [r.plaintext for r in [first, *rest]] == [b"in flight 2", b"in flight 0", b"in flight 1"]
    await converse(alice, bob)


async def test_receiver_that_lost_its_state_asks_once_and_gets_everything_resent(pair) -> None:
    alice, bob = pair
    await converse(alice, bob)
    await bob.lose_everything()
    sent = [await send(alice, bob, f"after loss {i}") for i in range(3)]
    results = [await deliver(bob, d) for d in sent]
    assert [r.outcome for r in results] == [Outcome.UNDECRYPTABLE] * 3
    replies = [r.reply for r in results if r.reply is not None]
    assert len(replies) == 1  # one heal request for the burst
    assert peek(replies[0].data).kind is MessageKind.HEAL_REQUEST
    healed = await deliver(alice, replies[0].data)
    assert healed.outcome is Outcome.HEAL_REQUEST
    # Bob has nothing from Alice any more: she resends all she keeps (the retention), in order
    resent = [o.message_id for o in healed.resend]
    assert len(resent) == 5 and resent[-3:] == [peek(d).message_id for d in sent]
    opened = [await deliver(bob, o.data) for o in healed.resend]
    assert [r.plaintext for r in opened] == [b"a0", b"a1", b"after loss 0", b"after loss 1", b"after loss 2"]
    assert [r.reestablished for r in opened] == [True, False, False, False, False]  # shown once
    await converse(alice, bob)


async def pump(
    alice: SessionDevice, bob: SessionDevice, queue: list[tuple[SessionDevice, bytes]]
) -> list[Received]:
    """Deliver everything, with every heal request and resend it causes, until nothing moves."""
    results = []
    while queue:
        to, data = queue.pop(0)
        other = bob if to is alice else alice
        r = await deliver(to, data)
        results.append(r)
        if r.reply is not None:
            queue.append((other, r.reply.data))
        queue.extend((other, o.data) for o in r.resend)
        if r.outcome is Outcome.DELIVERED:
            await other.sessions.acknowledge(to.device_id, [r.message_id])
    return results


async def test_receiver_restored_from_an_older_copy_heals_and_loses_nothing(pair) -> None:
    alice, bob = pair
    await converse(alice, bob)
    backup = bob.snapshot("old")
    await converse(alice, bob, rounds=2)  # both ratchets move past the backup; all acknowledged
    before = set(bob.stored_messages())
    await bob.restore(backup)
    lost = before - set(bob.stored_messages())
    assert len(lost) == 2  # what Alice sent after the backup is gone from Bob's copy
    queue = [
        (alice, await send(bob, alice, "bob after restore")),  # Bob's stale state: Alice cannot read it
        (bob, await send(alice, bob, "alice after restore")),
    ]
    results = await pump(alice, bob, queue)
    assert any(r.outcome is Outcome.UNDECRYPTABLE for r in results)
    assert sum(r.reestablished for r in results) >= 1
    # everything Alice ever sent is in Bob's history again, once; and the other way round
    assert lost <= set(bob.stored_messages())
    for side in (alice, bob):
        stored = side.stored_messages()
        assert len(stored) == len(set(stored))
    assert "bob after restore" in [m for m in await bodies(alice)]
    assert "alice after restore" in [m for m in await bodies(bob)]
    await converse(alice, bob)


async def bodies(side: SessionDevice) -> list[str]:
    return [
        m.payload["body"] for m in await side.store.history(f"u:{(2 if side.user_id == 1 else 1)}", limit=100)
    ]


async def test_a_heal_resends_only_what_followed_the_newest_message_the_peer_has(pair) -> None:
    alice, bob = pair
    acked = await deliver(bob, await send(alice, bob, "seen"))
    await alice.sessions.acknowledge(bob.device_id, [acked.message_id])
    unacked = await send(alice, bob, "not yet acknowledged")
    await deliver(bob, unacked)
    heal = make_heal_request(
        bob.keys, 2, bob.device_id, alice.device_id, new_message_id(), None, [],
        have_message_ids=[acked.message_id],
    )  # fmt: skip
    r = await deliver(alice, heal)
    assert [o.message_id for o in r.resend] == [peek(unacked).message_id]
    dup = await deliver(bob, r.resend[0].data)
    assert dup.outcome is Outcome.DUPLICATE  # Bob had it: shown once


async def test_heal_request_not_signed_by_the_pinned_key_is_refused(pair, tmp_path) -> None:
    alice, bob = pair
    forged = make_heal_request(
        fixed_device_keys(3), 2, bob.device_id, alice.device_id, new_message_id(), None, []
    )
    with pytest.raises(SignatureInvalid):
        await deliver(alice, forged)


async def test_prekeys_refill_when_low_and_rotate_keeping_the_old_ones_for_late_mail(pair) -> None:
    alice, bob = pair
    directory = bob.directory
    for _ in range(3):  # 4 one-time keys of each kind published, 3 claimed
        await directory.claim(bob.user_id, bob.device_id)
    assert directory.stock(bob.device_id).one_time == 1
    await directory.refresh(bob)
    assert (directory.stock(bob.device_id).one_time, directory.stock(bob.device_id).kem_one_time) == (4, 4)
    old_spk = directory.stock(bob.device_id).signed_prekey_id
    late = await send(alice, bob, "sent to the old signed prekey")  # still in the mailbox at rotation
    a_week_later = now_ms() + 8 * 24 * 3600 * 1000
    await directory.refresh(bob, at_ms=a_week_later)
    assert directory.stock(bob.device_id).signed_prekey_id != old_spk
    r = await deliver(bob, late)  # the retired key still opens mail sent before the rotation
    assert r.outcome is Outcome.DELIVERED
    rows = await bob.store.transaction(rs.prekey_rows)
    assert [r.key_id for r in rows if r.kind is PrekeyKind.SIGNED and r.retired_ms is not None] == [old_spk]
    # past the grace period the retired key is deleted
    await directory.refresh(bob, at_ms=a_week_later + 31 * 24 * 3600 * 1000)
    rows = await bob.store.transaction(rs.prekey_rows)
    assert old_spk not in [r.key_id for r in rows if r.kind is PrekeyKind.SIGNED]


async def test_a_fresh_store_replaces_the_prekeys_the_server_still_holds(pair) -> None:
    alice, bob = pair
    await bob.lose_everything()  # publishes with replace: old one-time keys are gone from the server
    r = await deliver(bob, await send(alice, bob, "first contact after reinstall"))
    assert r.outcome is Outcome.DELIVERED


async def captured_sessions(side: SessionDevice, name: str) -> list[PairwiseSession]:
    """Every session in a copy of the device's whole local store, opened with its storage key
    (an attacker who took the profile and the keystore password)."""
    copy = LocalStore(side.snapshot(name), STORAGE_KEY)
    await copy.open()
    try:

        def _all(db) -> list[PairwiseSession]:
            rows = db.execute("SELECT peer_device, session_id FROM ratchet_sessions").fetchall()
            return [rs.load_session(copy, db, d, bytes(sid)) for d, sid in rows]

        return await copy.transaction(_all)
    finally:
        await copy.close()


def opens_with_any(sessions: list[PairwiseSession], data: bytes) -> bool:
    for s in sessions:
        try:
            pairwise.open_message(PairwiseSession.from_bytes(s.to_bytes()), peek(data))
        except SessionError:
            continue
        return True
    return False


async def test_a_stolen_store_opens_nothing_received_before_it_was_taken(pair) -> None:
    alice, bob = pair
    earlier = [await send(alice, bob, f"early {i}") for i in range(3)]
    for d in earlier:
        await deliver(bob, d)
    await deliver(alice, await send(bob, alice, "reply"))  # a ratchet step on the way
    last = await send(alice, bob, "just before")
    await deliver(bob, last)
    stolen = await captured_sessions(bob, "stolen")
    assert stolen  # the thief has Bob's sessions...
    for d in [*earlier, last]:
        assert not opens_with_any(stolen, d)  # ...and none of what Bob had received


async def test_after_one_round_trip_a_stolen_store_opens_nothing_that_follows(pair) -> None:
    alice, bob = pair
    await converse(alice, bob)
    stolen = await captured_sessions(bob, "stolen")
    # the thief sees every later message and feeds each to its copies (a passive attacker)
    first = await send(alice, bob, "still readable by the thief: no fresh key from Bob yet")
    await deliver(bob, first)
    assert opens_with_any(stolen, first)  # the double ratchet's stated limit
    await deliver(alice, await send(bob, alice, "fresh ratchet key from Bob"))
    after = [await send(alice, bob, f"healed {i}") for i in range(3)]
    for d in after:
        assert (await deliver(bob, d)).outcome is Outcome.DELIVERED
        assert not opens_with_any(stolen, d)


async def test_each_device_pair_has_its_own_session_including_my_other_devices(pair, tmp_path) -> None:
    alice, bob = pair
    phone = SessionDevice(tmp_path, 1, "alice-phone-003", fixed_device_keys(3), alice.directory, alice.pins)
    alice.pins[(1, phone.device_id)] = phone.keys.identity_public_bytes()
    await phone.open()
    await alice.directory.refresh(phone)
    try:
        mid = new_message_id()  # one message, one PPR per device: Bob's and Alice's own phone
        to_bob = await alice.sessions.seal(2, bob.device_id, b"hi all", mid)
        to_phone = await alice.sessions.seal(1, phone.device_id, b"hi all", mid)
        assert peek(to_bob.data).session_id != peek(to_phone.data).session_id
        assert (await deliver(bob, to_bob.data)).plaintext == b"hi all"
        assert (await deliver(phone, to_phone.data)).plaintext == b"hi all"
        with pytest.raises(SessionError, match="reached device"):
            await phone.sessions.open(to_bob.data)  # not addressed to it
        r = await deliver(alice, await send(phone, alice, "from my phone"))
        assert r.outcome is Outcome.DELIVERED and r.sender_device == phone.device_id
    finally:
        await phone.close()


async def test_a_store_restored_from_an_older_copy_republishes_its_prekeys(pair) -> None:
    _, bob = pair
    backup = bob.snapshot("before-refill")
    for _ in range(3):
        await bob.directory.claim(bob.user_id, bob.device_id)
    await bob.directory.refresh(bob)  # refilled: the server now holds ids the backup never made
    await bob.restore(backup)
    await bob.directory.refresh(bob)  # sees ids on the server it never made: replaces everything
    for _ in range(5):  # every key the server hands out now has its private half on Bob's device
        bundle = await bob.directory.claim(bob.user_id, bob.device_id)
        assert bundle is not None
        for p in (bundle.signed_prekey, bundle.kem_prekey, bundle.one_time_prekey):
            if p is not None:
                got = await bob.store.transaction(
                    lambda db, p=p: rs.get_prekey(bob.store, db, p.kind, p.key_id)
                )
                assert got is not None and got.public == p


async def test_a_restore_needing_no_ratchet_step_is_made_whole_by_a_resync(pair) -> None:
    alice, bob = pair
    await converse(alice, bob)
    backup = bob.snapshot("same-chain")
    window = [await send(alice, bob, f"same chain {i}") for i in range(2)]
    for d in window:
        r = await deliver(bob, d)
        await alice.sessions.acknowledge(bob.device_id, [r.message_id])
    await bob.restore(backup)
    later = await deliver(bob, await send(alice, bob, "still readable by the old state"))
    assert later.outcome is Outcome.DELIVERED  # nobody noticed: the window is gone from Bob
    assert not {peek(d).message_id for d in window} <= set(bob.stored_messages())
    request = await bob.sessions.resync(alice.user_id, alice.device_id)
    results = await pump(alice, bob, [(alice, request.data)])
    assert {peek(d).message_id for d in window} <= set(bob.stored_messages())
    assert all(r.outcome is not Outcome.UNDECRYPTABLE for r in results)
