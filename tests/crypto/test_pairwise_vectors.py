"""Known answers for prekeys, PQXDH and the double ratchet (tests/data/crypto/pairwise.json).

Fixed keys → fixed bytes: Bob's prekeys (public keys and Ed25519 signatures), the PQXDH secret,
associated data and session id, and Alice's first two prekey messages are re-derived here and must
be byte-identical. Bob's reply and the later message contain fresh ratchet keys: they are pinned by
opening them. Signal publishes no vectors for PQXDH or the double ratchet; the primitives' own
published vectors (RFC 5869, libsodium's Ed25519→X25519 conversion) are in test_pairwise.py.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from crypto import pairwise, pqxdh
from crypto._codec import b64d
from crypto.pairwise import MessageKind, PairwiseSession, peek
from crypto.prekeys import PrekeyBundle, PrekeyKind, generate_prekey, verify_prekey_bundle
from tests.crypto.conftest import vector

V = vector("pairwise.json")


def _world(devices):
    alice, bob = devices[V["alice"]], devices[V["bob"]]
    pairs = {}
    for p in V["prekeys"]:
        made = generate_prekey(
            bob.keys,
            bob.device_id,
            PrekeyKind[p["kind"]],
            p["key_id"],
            p["created_at"],
            private=b64d(p["private"]),
        )
        assert made.public.public_key == b64d(p["public_key"])
        assert made.public.signature == b64d(p["signature"])
        pairs[(made.public.kind, made.public.key_id)] = made
    return alice, bob, pairs


def test_prekeys_from_fixed_private_bytes_give_the_committed_keys_and_signatures(devices) -> None:
    _, _bob, pairs = _world(devices)
    assert {k.name for k, _ in pairs} == {"SIGNED", "ONE_TIME", "KEM_ONE_TIME", "KEM_LAST_RESORT"}
    kem = pairs[(PrekeyKind.KEM_ONE_TIME, 3)]
    assert kem.mlkem().decapsulate(b64d(V["kem_ciphertext"])) == b64d(V["kem_shared_secret"])


def test_pqxdh_and_first_messages_are_the_committed_bytes(devices) -> None:
    alice, bob, pairs = _world(devices)
    ik = bob.keys.identity_public_bytes()
    bundle = verify_prekey_bundle(
        PrekeyBundle(
            bob.user_id, bob.device_id, ik,
            pairs[(PrekeyKind.SIGNED, 1)].public, pairs[(PrekeyKind.KEM_ONE_TIME, 3)].public,
            pairs[(PrekeyKind.ONE_TIME, 2)].public,
        ),
        ik,
    )  # fmt: skip
    agreement, header = pqxdh.initiate(
        alice.keys,
        alice.user_id,
        alice.device_id,
        bundle,
        ephemeral=X25519PrivateKey.from_private_bytes(b64d(V["ephemeral_private"])),
        kem_encapsulation=(b64d(V["kem_shared_secret"]), b64d(V["kem_ciphertext"])),
    )
    assert agreement.shared_secret == b64d(V["shared_secret"])
    assert agreement.associated_data == b64d(V["associated_data"])
    assert agreement.session_id.hex() == V["session_id"]
    rk = X25519PrivateKey.from_private_bytes(b64d(V["alice_ratchet_private"]))
    session = pairwise.start_session(
        alice.keys,
        alice.user_id,
        alice.device_id,
        bundle,
        _agreement=(agreement, header),
        _ratchet_pair=(rk.private_bytes_raw(), rk.public_key().public_bytes_raw()),
    )
    for m in V["messages"][:2]:
        assert m["fixed"]
        assert pairwise.seal(session, m["plaintext"].encode(), m["message_id"]) == b64d(m["data"])


def _alice_session(alice, bob, pairs) -> PairwiseSession:
    ik = bob.keys.identity_public_bytes()
    bundle = verify_prekey_bundle(
        PrekeyBundle(
            bob.user_id, bob.device_id, ik,
            pairs[(PrekeyKind.SIGNED, 1)].public, pairs[(PrekeyKind.KEM_ONE_TIME, 3)].public,
            pairs[(PrekeyKind.ONE_TIME, 2)].public,
        ),
        ik,
    )  # fmt: skip
    agreement, header = pqxdh.initiate(
        alice.keys,
        alice.user_id,
        alice.device_id,
        bundle,
        ephemeral=X25519PrivateKey.from_private_bytes(b64d(V["ephemeral_private"])),
        kem_encapsulation=(b64d(V["kem_shared_secret"]), b64d(V["kem_ciphertext"])),
    )
    rk = X25519PrivateKey.from_private_bytes(b64d(V["alice_ratchet_private"]))
    return pairwise.start_session(
        alice.keys,
        alice.user_id,
        alice.device_id,
        bundle,
        _agreement=(agreement, header),
        _ratchet_pair=(rk.private_bytes_raw(), rk.public_key().public_bytes_raw()),
    )


def test_committed_conversation_opens_on_both_sides(devices) -> None:
    alice, bob, pairs = _world(devices)
    msgs = V["messages"]
    first = peek(b64d(msgs[0]["data"]))
    assert first.kind is MessageKind.PREKEY and first.session_id.hex() == V["session_id"]
    sb = pairwise.accept_session(
        bob.keys,
        bob.user_id,
        bob.device_id,
        first,
        alice.keys.identity_public_bytes(),
        lambda k, i: pairs.get((k, i)),
    )
    assert sb.associated_data == b64d(V["associated_data"])
    for m in msgs[:2]:
        assert pairwise.open_message(sb, peek(b64d(m["data"]))).decode() == m["plaintext"]
    # Alice, rebuilt from the fixed inputs, reads Bob's reply (made with a fresh ratchet key)
    sa = _alice_session(alice, bob, pairs)
    for m in msgs[:2]:
        pairwise.seal(sa, m["plaintext"].encode(), m["message_id"])
    reply = peek(b64d(msgs[2]["data"]))
    assert reply.kind is MessageKind.MESSAGE
    assert pairwise.open_message(sa, reply).decode() == msgs[2]["plaintext"]
    # Bob's committed state record (after his reply) reads Alice's next, plain message
    later = peek(b64d(msgs[3]["data"]))
    assert later.kind is MessageKind.MESSAGE
    sb_after = PairwiseSession.from_bytes(b64d(V["bob_state_after_reply"]))
    assert sb_after.session_id == sb.session_id
    assert pairwise.open_message(sb_after, later).decode() == msgs[3]["plaintext"]


def test_committed_heal_request_verifies(devices) -> None:
    _, bob, _ = _world(devices)
    req = pairwise.verify_heal_request(peek(b64d(V["heal_request"])), bob.keys.identity_public_bytes())
    assert req.session_id.hex() == V["session_id"] and req.failed_message_ids == (
        V["messages"][3]["message_id"],
    )
