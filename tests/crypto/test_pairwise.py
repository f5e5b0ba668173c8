"""Pairwise sessions: PQXDH set-up, the double ratchet, the PPR format, forward secrecy, healing."""

from __future__ import annotations

import hashlib
import random

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from crypto import pairwise, ratchet
from crypto._kdf import hkdf_sha256
from crypto._montgomery import x25519_private_from_ed25519, x25519_public_from_ed25519
from crypto.errors import (
    IdentityMismatch,
    MalformedSessionMessage,
    NoSession,
    PrekeyInvalid,
    SessionDecryptionFailed,
    SessionError,
    SignatureInvalid,
    StaleMessage,
    TooManySkipped,
)
from crypto.pairwise import MessageKind, PairwiseSession, open_message, peek, seal
from crypto.prekeys import PrekeyBundle, PrekeyKind, PublicPrekey, verify_prekey_bundle
from tests.crypto.conftest import few
from tests.crypto.pairs import established, new_id, pair

# --- the primitives as we call them, against published vectors ------------------------------------


def test_hkdf_matches_rfc5869_case_1_and_cryptography() -> None:
    ikm, salt, info = bytes([0x0B] * 22), bytes(range(13)), bytes(range(0xF0, 0xFA))
    okm = hkdf_sha256(ikm, salt, info, 42)
    assert okm.hex() == (
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"
    )
    assert okm == HKDF(hashes.SHA256(), 42, salt, info).derive(ikm)


def test_ed25519_to_x25519_matches_libsodium_vector() -> None:
    # libsodium test/default/ed25519_convert: crypto_sign_ed25519_{pk,sk}_to_curve25519
    seed = bytes.fromhex("421151a459faeade3d247115f94aedae42318124095afabe4d1451a559faedee")
    ed_pub = ed25519.Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    assert ed_pub.hex() == "b5076a8474a832daee4dd5b4040983b6623b5f344aca57d4d6ee4baf3f259e6e"
    assert x25519_public_from_ed25519(ed_pub).hex() == (
        "f1814f0e8ff1043d8a44d25babff3cedcae6c22c3edaa48f857ae70de2baae50"
    )
    private = x25519_private_from_ed25519(seed).private_bytes_raw()
    assert hashlib.sha512(seed).digest()[:32] == private
    assert x25519_private_from_ed25519(seed).public_key().public_bytes_raw() == x25519_public_from_ed25519(
        ed_pub
    )


@few
@given(st.binary(min_size=32, max_size=32))
def test_ed25519_to_x25519_private_and_public_agree(seed: bytes) -> None:
    key = ed25519.Ed25519PrivateKey.from_private_bytes(seed)
    pub = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert x25519_private_from_ed25519(seed).public_key().public_bytes_raw() == x25519_public_from_ed25519(
        pub
    )


def test_ed25519_to_x25519_refuses_non_keys() -> None:
    with pytest.raises(ValueError, match="neutral"):
        x25519_public_from_ed25519((1).to_bytes(32, "little"))
    with pytest.raises(ValueError, match="canonical"):
        x25519_public_from_ed25519((2**255 - 1).to_bytes(32, "little"))


# --- prekeys -------------------------------------------------------------------------------------


def test_prekey_bundle_verifies_and_refuses_tampering(devices) -> None:
    alice, bob = pair(devices)
    good = bob.bundle()
    ik = bob.keys.identity_public_bytes()
    flipped = PublicPrekey(
        good.signed_prekey.kind, good.signed_prekey.key_id, good.signed_prekey.created_at,
        bytes([good.signed_prekey.public_key[0] ^ 1]) + good.signed_prekey.public_key[1:],
        good.signed_prekey.signature,
    )  # fmt: skip
    with pytest.raises(PrekeyInvalid, match="not signed"):
        verify_prekey_bundle(PrekeyBundle(2, bob.device_id, ik, flipped, good.kem_prekey, None), ik)
    with pytest.raises(PrekeyInvalid, match="not the pinned"):
        verify_prekey_bundle(good, alice.keys.identity_public_bytes())
    # a kem key where the signed curve key belongs is refused by kind, before its signature
    with pytest.raises(PrekeyInvalid, match="KEM_ONE_TIME key"):
        verify_prekey_bundle(PrekeyBundle(2, bob.device_id, ik, good.kem_prekey, good.kem_prekey, None), ik)
    # a prekey of another device (same identity key) does not verify under this device id
    moved = PrekeyBundle(2, "bob-laptop-0002", ik, good.signed_prekey, good.kem_prekey, None)
    with pytest.raises(PrekeyInvalid, match="not signed"):
        verify_prekey_bundle(moved, ik)


# --- sessions ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("one_time", "kem_one_time"), [(True, True), (False, False), (True, False)])
def test_session_starts_with_and_without_one_time_prekeys(
    devices, one_time: bool, kem_one_time: bool
) -> None:
    alice, bob = pair(devices)
    sa = alice.start(bob, one_time=one_time, kem_one_time=kem_one_time)
    data = seal(sa, b"first", new_id())
    assert peek(data).kind is MessageKind.PREKEY
    sb = bob.accept(data, alice)
    assert sb.session_id == sa.session_id and sb.associated_data == sa.associated_data
    assert open_message(sb, peek(data)) == b"first"


def test_every_message_is_a_prekey_message_until_the_responder_answers(devices) -> None:
    alice, bob = pair(devices)
    sa = alice.start(bob)
    sent = [seal(sa, f"m{i}".encode(), new_id()) for i in range(3)]
    assert all(peek(m).kind is MessageKind.PREKEY for m in sent)
    # the responder got only the last one (the others are late in the mailbox): it starts the session
    sb = bob.accept(sent[2], alice)
    assert open_message(sb, peek(sent[2])) == b"m2"
    for m in sent[:2]:
        assert open_message(sb, peek(m)) in (b"m0", b"m1")
    assert open_message(sa, peek(seal(sb, b"answer", new_id()))) == b"answer"
    assert peek(seal(sa, b"now plain", new_id())).kind is MessageKind.MESSAGE


def test_out_of_order_both_ways_over_several_ratchet_steps(devices) -> None:
    _, _, sa, sb = established(devices)
    rng = random.Random(7)
    for rounds in range(4):
        for sender, receiver in ((sa, sb), (sb, sa)):
            batch = [
                (f"{rounds}-{i}".encode(), seal(sender, f"{rounds}-{i}".encode(), new_id())) for i in range(6)
            ]
            rng.shuffle(batch)
            for plain, data in batch:
                assert open_message(receiver, peek(data)) == plain


def test_duplicate_is_stale_and_leaves_state_unchanged(devices) -> None:
    _, _, sa, sb = established(devices)
    data = seal(sa, b"once", new_id())
    assert open_message(sb, peek(data)) == b"once"
    before = sb.to_bytes()
    with pytest.raises(StaleMessage):
        open_message(sb, peek(data))
    assert sb.to_bytes() == before


def test_any_flipped_byte_is_refused_and_leaves_state_unchanged(devices) -> None:
    _, _, sa, sb = established(devices)
    data = seal(sa, b"do not touch", new_id())
    before = sb.to_bytes()
    for i in range(0, len(data), 3):
        bad = bytearray(data)
        bad[i] ^= 0x40
        with pytest.raises(SessionError):
            open_message(sb, peek(bytes(bad)))
        assert sb.to_bytes() == before
    assert open_message(sb, peek(data)) == b"do not touch"


def test_a_gap_past_the_bound_is_refused(devices, monkeypatch) -> None:
    _, _, sa, sb = established(devices)
    monkeypatch.setattr(ratchet, "MAX_SKIP", 5)
    for _ in range(6):
        seal(sa, b"lost", new_id())
    with pytest.raises(TooManySkipped, match="at most 5"):
        open_message(sb, peek(seal(sa, b"too far", new_id())))


def test_skipped_keys_expire_with_the_mailbox_retention(devices) -> None:
    _, _, sa, sb = established(devices)
    late = seal(sa, b"late", new_id())
    now = 1_800_000_000
    assert open_message(sb, peek(seal(sa, b"on time", new_id())), now_s=now) == b"on time"
    assert len(sb.ratchet.skipped) == 1
    with pytest.raises(StaleMessage):
        open_message(sb, peek(late), now_s=now + ratchet.MAX_SKIPPED_AGE_S + 1)


def test_skipped_keys_are_bounded_in_count(devices, monkeypatch) -> None:
    _, _, sa, sb = established(devices)
    monkeypatch.setattr(ratchet, "MAX_SKIPPED_KEYS", 3)
    lost = [seal(sa, b"x", new_id()) for _ in range(5)]
    open_message(sb, peek(seal(sa, b"y", new_id())))
    assert len(sb.ratchet.skipped) == 3
    with pytest.raises(StaleMessage):
        open_message(sb, peek(lost[0]))  # evicted: the oldest go first
    assert open_message(sb, peek(lost[4])) == b"x"


def test_state_round_trips_through_bytes_mid_conversation(devices) -> None:
    _, _, sa, sb = established(devices)
    pending = [seal(sa, b"a", new_id()), seal(sa, b"b", new_id())]
    open_message(sb, peek(pending[1]))
    sb2 = PairwiseSession.from_bytes(sb.to_bytes())
    assert sb2.to_bytes() == sb.to_bytes()
    assert open_message(sb2, peek(pending[0])) == b"a"
    reply = seal(sb2, b"c", new_id())
    sa2 = PairwiseSession.from_bytes(sa.to_bytes())
    assert open_message(sa2, peek(reply)) == b"c"
    with pytest.raises(MalformedSessionMessage, match="damaged"):
        PairwiseSession.from_bytes(sb.to_bytes()[:-1])


def test_prekey_message_with_another_identity_key_is_refused(devices) -> None:
    alice, bob = pair(devices)
    data = seal(alice.start(bob), b"x", new_id())
    with pytest.raises(IdentityMismatch):
        pairwise.accept_session(
            bob.keys,
            bob.user_id,
            bob.device_id,
            peek(data),
            devices[3].keys.identity_public_bytes(),
            bob.lookup,
        )


def test_used_one_time_prekey_gone_is_no_session(devices) -> None:
    alice, bob = pair(devices)
    data = seal(alice.start(bob), b"x", new_id())
    ph = peek(data).prekey
    del bob.prekeys[(PrekeyKind.ONE_TIME, ph.one_time_prekey_id)]
    with pytest.raises(NoSession, match="one-time prekey"):
        bob.accept(data, alice)


def test_message_of_another_session_is_no_session(devices) -> None:
    alice, bob, _sa, sb = established(devices)
    other = alice.start(bob)
    with pytest.raises(NoSession):
        open_message(sb, peek(seal(other, b"x", new_id())))


# --- forward secrecy and healing ------------------------------------------------------------------


def test_captured_state_cannot_open_messages_received_before_capture(devices) -> None:
    _, _, sa, sb = established(devices)
    earlier = [seal(sa, f"old {i}".encode(), new_id()) for i in range(3)]
    for m in earlier:
        open_message(sb, peek(m))
    reply = seal(sb, b"step", new_id())  # a DH step on the way, too
    open_message(sa, peek(reply))
    more = seal(sa, b"after step", new_id())
    open_message(sb, peek(more))
    captured = PairwiseSession.from_bytes(sb.to_bytes())  # everything Bob's device holds at T
    for m in [*earlier, more]:
        with pytest.raises(SessionError):
            open_message(captured, peek(m))


def test_after_one_round_trip_the_captured_state_cannot_open_what_follows(devices) -> None:
    _, _, sa, sb = established(devices)
    captured = PairwiseSession.from_bytes(sb.to_bytes())
    # The attacker holds Bob's whole state at T and sees every later ciphertext. Until Bob has
    # made a ratchet key the attacker lacks, it can follow (the double ratchet's stated limit):
    to_bob = seal(sa, b"alice steps", new_id())
    assert open_message(sb, peek(to_bob)) == b"alice steps"
    assert open_message(captured, peek(to_bob)) == b"alice steps"
    # one round trip: Bob answers with a fresh ratchet key, Alice answers that
    to_alice = seal(sb, b"fresh key from bob", new_id())
    assert open_message(sa, peek(to_alice)) == b"fresh key from bob"
    after = [seal(sa, f"healed {i}".encode(), new_id()) for i in range(3)]
    for i, m in enumerate(after):
        assert open_message(sb, peek(m)) == f"healed {i}".encode()
        with pytest.raises(SessionDecryptionFailed):
            open_message(captured, peek(m))


def test_heal_request_verifies_against_the_pinned_key_only(devices) -> None:
    alice, bob, _, sb = established(devices)
    failed = [new_id(), new_id()]
    data = pairwise.make_heal_request(
        bob.keys, bob.user_id, bob.device_id, alice.device_id, new_id(), sb.session_id, failed, at_ms=5
    )
    parsed = peek(data)
    assert parsed.kind is MessageKind.HEAL_REQUEST
    req = pairwise.verify_heal_request(parsed, bob.keys.identity_public_bytes())
    assert req.failed_message_ids == tuple(failed) and req.session_id == sb.session_id and req.at_ms == 5
    with pytest.raises(SignatureInvalid):
        pairwise.verify_heal_request(parsed, alice.keys.identity_public_bytes())
    bad = bytearray(data)
    bad[-70] ^= 1
    with pytest.raises(SignatureInvalid):
        pairwise.verify_heal_request(peek(bytes(bad)), bob.keys.identity_public_bytes())


def test_pairwise_messages_are_told_apart_from_envelopes(devices) -> None:
    _, _, sa, _ = established(devices)
    assert pairwise.is_pairwise(seal(sa, b"x", new_id()))
    assert not pairwise.is_pairwise(b"PPE\x02" + bytes(40))


def test_malformed_bytes_are_one_clear_error() -> None:
    for junk in (b"", b"PPR", b"PPR\x02\x02", b"XYZ\x01\x02" + bytes(80), b"PPR\x01\x09" + bytes(80)):
        with pytest.raises(MalformedSessionMessage):
            peek(junk)
