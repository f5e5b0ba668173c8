"""Regenerate the known-answer vectors in this folder from the committed device keys.

Run once when a format changes on purpose (`python tests/data/crypto/make_vectors.py` from the repo
root; `... make_vectors.py envelopes-v2` for the version-2 envelopes alone) and commit the result;
the tests then pin those bytes. Deterministic parts (bundle and signal signatures, payload
encodings, file streams with a fixed key, safety numbers) regenerate identically; envelopes, the
keystore and the stego image contain fresh randomness and are pinned by opening them, not by
re-creating them. `envelopes.json` (version 1) is frozen: seal writes version 2 now.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey  # noqa: E402

from crypto import (  # noqa: E402
    envelope,
    filestream,
    groupstate,
    keystore,
    pairwise,
    payload,
    pqxdh,
    prekeys,
    safety,
    senderkeys,
    signaling,
    stego,
)
from crypto._codec import b64d, b64e  # noqa: E402
from crypto.bundle import make_bundle  # noqa: E402
from tests.support.keys import fixed_device_keys  # noqa: E402

HERE = Path(__file__).resolve().parent
DEVICES = [  # (user id, device id) of the committed keys device0..device5
    (1, "alice-laptop-0"),
    (2, "bob-phone-00001"),
    (2, "bob-laptop-0002"),
    (3, "carol-desk-0003"),
    (3, "carol-phone-004"),
    (4, "dave-tablet-005"),
]
SENT_AT_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
FILE_PLAINTEXT = bytes((i * 7 + 3) % 256 for i in range(2 * 1024 + 500))


def dump(name: str, value: object) -> None:
    (HERE / name).write_text(json.dumps(value, indent=2, sort_keys=True) + "\n")


ENVELOPE_CASES = [
    ("text", payload.Text("hello bob — ünïcødé ✓")),
    ("receipt", payload.Receipt("read", ["0" * 31 + "1", "f" * 32])),
    ("typing", payload.Typing(True)),
    ("large_text", payload.Text("x" * 65536)),
]


def envelopes_v2(keys: list) -> None:
    """Four envelopes of one session (the same RSA-wrapped session key per device in each) and a
    fifth after rotation, so the tests pin both the cached and the fresh case."""
    sender = envelope.LocalDevice(1, DEVICES[0][1], keys[0])
    recipients = [
        envelope.Recipient(u, d, keys[i].encryption_public_der())
        for i, (u, d) in enumerate(DEVICES)
        if i in (1, 2)
    ]
    sessions = envelope.SessionKeyCache(max_messages=len(ENVELOPE_CASES))
    cases = [*ENVELOPE_CASES, ("after_rotation", payload.Text("a new session key"))]
    envelopes = []
    for n, (name, p) in enumerate(cases):
        mid = f"{n + 0x201:032x}"
        sealed = envelope.seal(
            p, sender, recipients, "u:2", message_id=mid, sent_at_ms=SENT_AT_MS, session_keys=sessions
        )
        envelopes.append(
            {
                "name": name,
                "envelope": b64e(sealed),
                "header": envelope.peek_header(sealed).to_dict(),
                "payload_encoded": None if name == "large_text" else b64e(payload.encode_payload(p)),
                "readers": [1, 2],
                "non_readers": [0, 3, 4, 5],
            }
        )
    dump("envelopes-v2.json", envelopes)


def _fixed(label: str, n: int = 32) -> bytes:
    return hashlib.sha512(b"peerpost vector " + label.encode()).digest()[:n]


def pairwise_vectors(keys: list) -> None:
    """PQXDH + double ratchet: Bob's prekeys from fixed private bytes, Alice's ephemeral and first
    ratchet key fixed, so her first two (prekey) messages are fixed bytes. ML-KEM encapsulation has
    no deterministic API: the committed ciphertext is reused (fresh only on the first run) and the
    shared secret comes from decapsulating it with Bob's fixed seed. Bob's reply and the later
    message carry fresh ratchet keys: they are pinned by opening them."""
    (au, ad), (bu, bd) = DEVICES[0], DEVICES[1]
    created = 1_767_225_600
    spk = prekeys.generate_prekey(keys[1], bd, prekeys.PrekeyKind.SIGNED, 1, created, private=_fixed("spk"))
    opk = prekeys.generate_prekey(keys[1], bd, prekeys.PrekeyKind.ONE_TIME, 2, created, private=_fixed("opk"))
    kem = prekeys.generate_prekey(
        keys[1], bd, prekeys.PrekeyKind.KEM_ONE_TIME, 3, created, private=_fixed("kem", 64)
    )
    last = prekeys.generate_prekey(
        keys[1], bd, prekeys.PrekeyKind.KEM_LAST_RESORT, 4, created, private=_fixed("last", 64)
    )
    old = HERE / "pairwise.json"
    if old.exists():
        kem_ct = b64d(json.loads(old.read_text())["kem_ciphertext"])
    else:
        _, kem_ct = kem.mlkem().public_key().encapsulate()
    kem_ss = kem.mlkem().decapsulate(kem_ct)
    bundle = prekeys.verify_prekey_bundle(
        prekeys.PrekeyBundle(bu, bd, keys[1].identity_public_bytes(), spk.public, kem.public, opk.public),
        keys[1].identity_public_bytes(),
    )
    ek = X25519PrivateKey.from_private_bytes(_fixed("ephemeral"))
    agreement, header = pqxdh.initiate(
        keys[0], au, ad, bundle, ephemeral=ek, kem_encapsulation=(kem_ss, kem_ct)
    )
    rk = X25519PrivateKey.from_private_bytes(_fixed("alice-ratchet"))
    pair = (rk.private_bytes_raw(), rk.public_key().public_bytes_raw())
    alice = pairwise.start_session(
        keys[0], au, ad, bundle, now_ms=SENT_AT_MS, _agreement=(agreement, header), _ratchet_pair=pair
    )
    first = [
        pairwise.seal(alice, b"hello bob, first contact", f"{0x301:032x}"),
        pairwise.seal(alice, b"second, still a prekey message", f"{0x302:032x}"),
    ]
    lookup = {(p.public.kind, p.public.key_id): p for p in (spk, opk, kem, last)}
    bob = pairwise.accept_session(
        keys[1],
        bu,
        bd,
        pairwise.peek(first[0]),
        keys[0].identity_public_bytes(),
        lambda k, i: lookup.get((k, i)),
    )
    for m in first:
        pairwise.open_message(bob, pairwise.peek(m))
    reply = pairwise.seal(bob, b"hi alice", f"{0x303:032x}")
    bob_state = bob.to_bytes()  # pins the state record format and lets the test open `after`
    pairwise.open_message(alice, pairwise.peek(reply))
    after = pairwise.seal(alice, b"a normal message", f"{0x304:032x}")
    heal = pairwise.make_heal_request(
        keys[1],
        bu,
        bd,
        ad,
        f"{0x305:032x}",
        agreement.session_id,
        [f"{0x304:032x}"],
        have_message_ids=[f"{0x302:032x}", f"{0x301:032x}"],
        at_ms=SENT_AT_MS,
    )

    def pub(p: prekeys.PrekeyPair) -> dict:
        return {
            "kind": p.public.kind.name,
            "key_id": p.public.key_id,
            "created_at": p.public.created_at,
            "public_key": b64e(p.public.public_key),
            "signature": b64e(p.public.signature),
            "private": b64e(p.private),
        }

    dump(
        "pairwise.json",
        {
            "alice": 0,
            "bob": 1,
            "prekeys": [pub(p) for p in (spk, opk, kem, last)],
            "ephemeral_private": b64e(_fixed("ephemeral")),
            "alice_ratchet_private": b64e(_fixed("alice-ratchet")),
            "kem_ciphertext": b64e(kem_ct),
            "kem_shared_secret": b64e(kem_ss),
            "shared_secret": b64e(agreement.shared_secret),
            "associated_data": b64e(agreement.associated_data),
            "session_id": agreement.session_id.hex(),
            "messages": [
                {
                    "from": "alice",
                    "message_id": f"{0x301:032x}",
                    "plaintext": "hello bob, first contact",
                    "data": b64e(first[0]),
                    "fixed": True,
                },
                {
                    "from": "alice",
                    "message_id": f"{0x302:032x}",
                    "plaintext": "second, still a prekey message",
                    "data": b64e(first[1]),
                    "fixed": True,
                },
                {
                    "from": "bob",
                    "message_id": f"{0x303:032x}",
                    "plaintext": "hi alice",
                    "data": b64e(reply),
                    "fixed": False,
                },
                {
                    "from": "alice",
                    "message_id": f"{0x304:032x}",
                    "plaintext": "a normal message",
                    "data": b64e(after),
                    "fixed": False,
                },
            ],
            "heal_request": b64e(heal),
            "bob_state_after_reply": b64e(bob_state),
        },
    )


GROUP_ID = "0123456789abcdef" * 2
GROUP_CHAIN_KEY = bytes(range(100, 132))
GROUP_SIGNING_SEED = bytes(range(200, 232))


def groups(keys: list) -> None:
    """A membership chain (Ed25519 is deterministic: these bytes regenerate identically), the
    sender-key schedule from a fixed chain key, a distribution, and group messages (their nonces
    are random: pinned by opening them)."""
    alice = envelope.LocalDevice(1, DEVICES[0][1], keys[0])
    bob = envelope.LocalDevice(2, DEVICES[1][1], keys[1])
    at = SENT_AT_MS
    steps = [
        (alice, groupstate.GroupOp.CREATE, {"group_id": GROUP_ID, "name": "climbing", "users": [2, 3]}),
        (alice, groupstate.GroupOp.ADD, {"users": [4]}),
        (alice, groupstate.GroupOp.PROMOTE, {"users": [2]}),
        (bob, groupstate.GroupOp.REMOVE, {"users": [3]}),
        (bob, groupstate.GroupOp.RENAME, {"name": "climbing · winter"}),
        (alice, groupstate.GroupOp.LEAVE, {}),
    ]
    directory = groupstate.MapDirectory(
        {
            (1, DEVICES[0][1]): keys[0].identity_public_bytes(),
            (2, DEVICES[1][1]): keys[1].identity_public_bytes(),
        }
    )
    records: list[bytes] = []
    state = None
    for n, (signer, op, fields) in enumerate(steps):
        raw = groupstate.sign_record(signer, state, op, at_ms=at + n * 1000, **fields)
        records.append(raw)
        state = groupstate.verify_chain(records, directory)
    assert state is not None
    own = senderkeys.OwnSenderKey(
        GROUP_ID, 1, DEVICES[0][1], 0x01020304, GROUP_CHAIN_KEY, 0,
        Ed25519PrivateKey.from_private_bytes(GROUP_SIGNING_SEED), at,
    )  # fmt: skip
    distribution = own.distribution().to_bytes()
    chain, schedule = GROUP_CHAIN_KEY, []
    for _ in range(4):
        seed = senderkeys._message_seed(chain)
        schedule.append({"message_seed": seed.hex(), "aes_key": senderkeys._aes_key(seed).hex()})
        chain = senderkeys._next_chain(chain)
    texts = ["hello group", "second", "ünïcødé ✓"]
    messages = [
        {
            "iteration": i,
            "text": t,
            "message": b64e(own.encrypt(payload.Text(t), message_id=f"{i + 0x301:032x}", sent_at_ms=at)),
        }
        for i, t in enumerate(texts)
    ]
    dump(
        "groups.json",
        {
            "group_id": GROUP_ID,
            "records": [b64e(r) for r in records],
            "final": {
                "name": state.name,
                "members": state.member_ids,
                "admins": state.admin_ids,
                "seq": state.seq,
                "head": state.head_hash.hex(),
            },
            "chain_key": GROUP_CHAIN_KEY.hex(),
            "signing_seed": GROUP_SIGNING_SEED.hex(),
            "schedule": schedule,
            "distribution": b64e(distribution),
            "messages": messages,
        },
    )


def main() -> None:
    keys = [fixed_device_keys(i) for i in range(len(DEVICES))]
    if sys.argv[1:] == ["envelopes-v2"]:  # regenerate only these (the rest has fresh randomness)
        envelopes_v2(keys)
        return
    if sys.argv[1:] == ["pairwise"]:
        pairwise_vectors(keys)
        return
    if sys.argv[1:] == ["groups"]:
        groups(keys)
        return
    pairwise_vectors(keys)
    dump(
        "devices.json",
        [{"user_id": u, "device_id": d, "pem": f"devices/device{i}.pem"} for i, (u, d) in enumerate(DEVICES)],
    )

    bundles = []
    for i, (user_id, device_id) in enumerate(DEVICES):
        b = make_bundle(keys[i], user_id, device_id, created_at=1_767_225_600 + i)
        bundles.append(
            {
                "user_id": b.user_id,
                "device_id": b.device_id,
                "identity_key": b64e(b.identity_key),
                "encryption_key": b64e(b.encryption_key),
                "created_at": b.created_at,
                "signature": b64e(b.signature),
                "fingerprint": b.fingerprint,
            }
        )
    dump("bundles.json", bundles)

    # envelopes.json holds version-1 envelopes, frozen: seal writes version 2 since then, and the
    # committed v1 bytes must keep opening (stored history, queued mail). Only v2 is regenerated.
    envelopes_v2(keys)

    manifest = filestream.FileManifest(
        name="vector.bin",
        size=len(FILE_PLAINTEXT),
        sha256=__import__("hashlib").sha256(FILE_PLAINTEXT).hexdigest(),
        chunk_size=1024,
        chunk_count=3,
        key=bytes(range(32)),
        nonce_prefix=bytes(range(100, 108)),
    )
    chunks = [
        filestream.encrypt_chunk(manifest, i, FILE_PLAINTEXT[i * 1024 : (i + 1) * 1024]) for i in range(3)
    ]
    empty = filestream.FileManifest(
        name="empty.txt",
        size=0,
        sha256=__import__("hashlib").sha256(b"").hexdigest(),
        chunk_size=65536,
        chunk_count=1,
        key=bytes([7]) * 32,
        nonce_prefix=bytes(8),
    )
    dump(
        "filestream.json",
        {
            "plaintext": b64e(FILE_PLAINTEXT),
            "manifest": manifest.to_dict(),
            "chunks": [b64e(c) for c in chunks],
            "empty_manifest": empty.to_dict(),
            "empty_chunks": [b64e(filestream.encrypt_chunk(empty, 0, b""))],
        },
    )

    ik = [k.identity_public_bytes() for k in keys]
    dump(
        "safety.json",
        {
            "signal_v1": {
                "alice_key": "0506863bc66d02b40d27b8d49ca7c09e9239236f9d7d25d6fcca5ce13c7064d868",
                "alice_id": "+14152222222",
                "bob_key": "05f781b6fb32fed9ba1cf2de978d4d5da28dc34046ae814402b5c0dbd96fda907b",
                "bob_id": "+14153333333",
                "digits": "300354477692869396892869876765458257569162576843440918079131",
                "source": "libsignal rust/protocol/src/fingerprint.rs fingerprint_test_v1",
            },
            "peerpost": [
                {
                    "local": [1, [0]],
                    "remote": [2, [1, 2]],
                    "digits": safety.safety_number(1, [ik[0]], 2, [ik[1], ik[2]]),
                },
                {
                    "local": [3, [3, 4]],
                    "remote": [4, [5]],
                    "digits": safety.safety_number(3, [ik[3], ik[4]], 4, [ik[5]]),
                },
                {
                    "local": [2, [1]],
                    "remote": [1, [0]],
                    "digits": safety.safety_number(2, [ik[1]], 1, [ik[0]]),
                },
            ],
        },
    )

    dump(
        "signal.json",
        {
            "device": 0,
            "kind": "offer",
            "from_device": DEVICES[0][1],
            "to_device": DEVICES[1][1],
            "nonce": "n0nce-0001",
            "body": b64e(b'{"sdp":"v=0\\r\\n","type":"offer"}'),
            "signature": b64e(
                signaling.sign_signal(
                    keys[0],
                    "offer",
                    DEVICES[0][1],
                    DEVICES[1][1],
                    "n0nce-0001",
                    b'{"sdp":"v=0\\r\\n","type":"offer"}',
                )
            ),
        },
    )

    keystore.create_keystore(
        HERE / "keystore-v1.json",
        keys[0],
        "correct horse battery staple",
        {"user_id": 1, "device_id": DEVICES[0][1]},
        storage_key=bytes(range(32, 64)),
        scrypt_n=1 << 10,
    )

    y, x = np.mgrid[0:48, 0:64]
    img = np.stack([x * 4, y * 5, (x + y) * 2], axis=-1).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, "PNG")
    (HERE / "stego-cover.png").write_bytes(buf.getvalue())
    (HERE / "stego-hidden.png").write_bytes(stego.embed(buf.getvalue(), b"PeerPost stego vector v1"))


if __name__ == "__main__":
    main()
