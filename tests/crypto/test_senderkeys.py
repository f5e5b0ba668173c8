"""Sender keys: one ciphertext and one signature per group message; the hash ratchet's window for
reordering, loss and duplicates; rotation; and what a late or removed member cannot read."""

from __future__ import annotations

import copy

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from crypto import payload
from crypto import senderkeys as sk
from crypto._codec import b64d
from crypto.errors import (
    GroupMessageInvalid,
    GroupMessageReplayed,
    GroupMessageTooFarAhead,
    MalformedEnvelope,
    MalformedGroupMessage,
    SenderKeyError,
    UnknownSenderKey,
)
from tests.crypto.conftest import few, some, vector

GID = "ab" * 16


def _pair() -> tuple[sk.OwnSenderKey, sk.SenderKeyStore]:
    own = sk.OwnSenderKey.create(GID, 1, "alice-laptop-0")
    store = sk.SenderKeyStore()
    store.add(sk.SenderKeyDistribution.from_bytes(own.distribution().to_bytes()))
    return own, store


def _text(store: sk.SenderKeyStore, message: bytes) -> str:
    opened = store.decrypt(message)
    assert isinstance(opened.payload, payload.Text)
    return opened.payload.body


def test_committed_vectors_pin_the_key_schedule_distribution_and_messages() -> None:
    v = vector("groups.json")
    chain = bytes.fromhex(v["chain_key"])
    for step in v["schedule"]:
        seed = sk._message_seed(chain)
        assert seed.hex() == step["message_seed"]
        assert sk._aes_key(seed).hex() == step["aes_key"]
        chain = sk._next_chain(chain)
    own = sk.OwnSenderKey(
        v["group_id"], 1, "alice-laptop-0", 0x01020304, bytes.fromhex(v["chain_key"]), 0,
        Ed25519PrivateKey.from_private_bytes(bytes.fromhex(v["signing_seed"])), 0,
    )  # fmt: skip
    assert own.distribution().to_bytes() == b64d(v["distribution"])
    store = sk.SenderKeyStore()
    store.add(sk.SenderKeyDistribution.from_bytes(b64d(v["distribution"])))
    for m in reversed(v["messages"]):  # out of order, too
        opened = store.decrypt(b64d(m["message"]))
        assert opened.header.iteration == m["iteration"]
        assert opened.payload == payload.Text(m["text"])


def test_a_group_message_is_one_ciphertext_and_one_signature_whatever_the_group_size() -> None:
    own, store = _pair()
    first_chain, signing = own.chain_key, own.distribution().signing_key
    message = own.encrypt(payload.Text("hi all"))
    header_bytes = 4 + 1 + 32 + 8 + 1 + len("alice-laptop-0") + 4 + 4 + 16 + 8
    # one 256-byte padded payload with its GCM tag, one nonce, one signature: no per-device part
    assert len(message) == header_bytes + 12 + 4 + 256 + 16 + 64
    header = sk.peek_group_message(message)
    assert (header.group_id, header.sender_user, header.iteration) == (GID, 1, 0)
    assert _text(store, message) == "hi all"
    # every member device opens the very same bytes with its copy of the key
    other = sk.SenderKeyStore()
    other.add(sk.SenderKeyDistribution(GID, 1, "alice-laptop-0", own.key_id, 0, first_chain, signing))
    assert _text(other, message) == "hi all"


def test_a_member_added_later_cannot_read_earlier_messages() -> None:
    own, _store = _pair()
    early = [own.encrypt(payload.Text(f"before {i}")) for i in range(3)]
    late = sk.SenderKeyStore()
    late.add(own.distribution())  # handed the key at its current position
    after = own.encrypt(payload.Text("after"))
    assert _text(late, after) == "after"
    for m in early:
        with pytest.raises(GroupMessageReplayed):
            late.decrypt(m)


def test_after_rotation_a_removed_member_cannot_read_what_follows() -> None:
    own, removed = _pair()
    _, staying = _pair()
    staying = sk.SenderKeyStore()
    staying.add(own.distribution())
    assert _text(removed, own.encrypt(payload.Text("everyone"))) == "everyone"
    new = sk.OwnSenderKey.create(GID, 1, "alice-laptop-0")  # rotation: only the others get it
    staying.add(new.distribution())
    captured = new.encrypt(payload.Text("without them"))
    assert _text(staying, captured) == "without them"
    with pytest.raises(UnknownSenderKey):
        removed.decrypt(captured)


def test_the_schedule_asks_for_rotation_after_enough_messages_or_time() -> None:
    own = sk.OwnSenderKey.create(GID, 1, "alice-laptop-0", now_ms=1_000)
    assert not own.needs_rotation(2_000, max_messages=3, max_age_ms=10_000)
    for _ in range(3):
        own.encrypt(payload.Text("x"))
    assert own.needs_rotation(2_000, max_messages=3, max_age_ms=10_000)
    fresh = sk.OwnSenderKey.create(GID, 1, "alice-laptop-0", now_ms=1_000)
    assert fresh.needs_rotation(11_000, max_messages=3, max_age_ms=10_000)


def test_a_forged_or_altered_message_is_refused_and_does_not_move_the_chain() -> None:
    own, store = _pair()
    good = own.encrypt(payload.Text("real"))
    altered = bytearray(good)
    altered[-80] ^= 1  # inside the ciphertext
    with pytest.raises(GroupMessageInvalid):
        store.decrypt(bytes(altered))
    impostor = copy.copy(own)
    impostor.signing = Ed25519PrivateKey.generate()  # knows the chain, not the signing key
    impostor.chain_key, impostor.iteration = own.chain_key, own.iteration
    with pytest.raises(GroupMessageInvalid):
        store.decrypt(impostor.encrypt(payload.Text("fake")))
    assert _text(store, good) == "real"


def test_a_message_too_far_ahead_is_refused() -> None:
    own, store = _pair()
    own.chain_key = sk._next_chain(own.chain_key)
    own.iteration = sk.MAX_SKIP + 1
    with pytest.raises(GroupMessageTooFarAhead):
        store.decrypt(own.encrypt(payload.Text("far")))


@some
@given(data=st.data(), count=st.integers(min_value=1, max_value=30))
def test_any_order_with_loss_and_duplicates_within_the_window_opens_each_once(data, count: int) -> None:
    own, store = _pair()
    messages = [own.encrypt(payload.Text(str(i))) for i in range(count)]
    kept = data.draw(st.lists(st.sampled_from(range(count)), min_size=1, max_size=2 * count))
    order = data.draw(st.permutations(kept))
    opened: list[str] = []
    for i in order:
        try:
            opened.append(_text(store, messages[i]))
        except GroupMessageReplayed:
            assert str(i) in opened  # only a repeat is refused
    assert sorted(opened, key=int) == sorted({str(i) for i in kept}, key=int)


@few
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_is_refused(position: int, bit: int) -> None:
    own, store = _pair()
    raw = bytearray(own.encrypt(payload.Text("tamper me")))
    raw[position % len(raw)] ^= 1 << bit
    with pytest.raises(SenderKeyError):
        store.decrypt(bytes(raw))


def test_saved_state_round_trips_and_keeps_skipped_keys() -> None:
    own, store = _pair()
    messages = [own.encrypt(payload.Text(str(i))) for i in range(4)]
    assert _text(store, messages[3]) == "3"
    restored = sk.SenderKeyStore.from_dict(store.to_dict())
    assert [_text(restored, messages[i]) for i in (0, 2, 1)] == ["0", "2", "1"]
    again = sk.OwnSenderKey.from_dict(own.to_dict())
    assert _text(restored, again.encrypt(payload.Text("4"))) == "4"


def test_forgetting_a_user_stops_opening_their_messages() -> None:
    own, store = _pair()
    store.forget_user(GID, 1)
    with pytest.raises(UnknownSenderKey):
        store.decrypt(own.encrypt(payload.Text("x")))


def test_a_device_cannot_claim_another_users_key_slot() -> None:
    own, store = _pair()
    dist = own.distribution()
    spoof = sk.SenderKeyDistribution(GID, 7, dist.sender_device, 5, 0, bytes(32), dist.signing_key)
    with pytest.raises(SenderKeyError, match="belongs to user 1"):
        store.add(spoof)


def test_distribution_travels_as_a_payload_and_malformed_ones_are_refused() -> None:
    own, _ = _pair()
    raw = own.distribution().to_bytes()
    p = payload.SenderKey(raw)
    assert payload.decode_payload(payload.encode_payload(p)) == p
    with pytest.raises(MalformedGroupMessage):
        sk.SenderKeyDistribution.from_bytes(raw[:-1])
    with pytest.raises(MalformedEnvelope):
        payload.encode_payload(payload.SenderKey(b""))


def test_a_sender_key_request_travels_as_a_payload_and_bad_ones_are_refused() -> None:
    p = payload.SenderKeyRequest(GID, 2**32 - 1)
    assert payload.decode_payload(payload.encode_payload(p)) == p
    with pytest.raises(MalformedEnvelope):
        payload.encode_payload(payload.SenderKeyRequest("not-a-group", 1))
    with pytest.raises(MalformedEnvelope):
        payload.encode_payload(payload.SenderKeyRequest(GID, 2**32))
