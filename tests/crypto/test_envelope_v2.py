"""Envelope version 2: session keys reused across messages, caches on both sides, still self-contained."""

from __future__ import annotations

import hashlib
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given
from hypothesis import strategies as st

from crypto import envelope as env
from crypto._codec import b64d
from crypto.errors import DecryptionFailed, EnvelopeError, NoKeyForDevice, SignatureInvalid
from crypto.payload import Text, decode_payload
from crypto.sessionkeys import SessionKeyCache, UnwrapCache
from tests.crypto.conftest import few, pinned, some, vector
from tests.crypto.test_envelope import NOW, payloads

OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def seal_v2(devices, body="hi", sender=0, to=(1, 2), sessions=None, **kw):
    kw.setdefault("sent_at_ms", NOW)
    return env.seal(
        Text(body),
        devices[sender].local,
        [devices[i].recipient for i in to],
        "u:2",
        session_keys=sessions,
        **kw,
    )


def open_as(devices, data, reader, cache=None, **kw):
    kw.setdefault("now_ms", NOW)
    return env.open_envelope(
        data, devices[reader].local, pinned(devices), env.MemorySeenIds(), unwrap_cache=cache, **kw
    )


def slots(data: bytes) -> list[tuple[int, int]]:
    """(offset of the RSA-wrapped session key, offset of the wrapped content key) per slot."""
    (hlen,) = struct.unpack_from(">I", data, 4)
    pos = 8 + hlen
    (count,) = struct.unpack_from(">H", data, pos)
    pos += 2
    out = []
    for _ in range(count):
        (n,) = struct.unpack_from(">H", data, pos)
        out.append((pos + 2, pos + 2 + n))
        pos += 2 + n + 60
    return out


def resigned(devices, data: bytes, signer: int = 0) -> bytes:
    """The envelope re-signed by its (honest-but-buggy or compromised) sender after an edit."""
    body = data[:-64]
    return body + devices[signer].keys.sign(b"peerpost/envelope/v2\x00" + body)


def flipped(data: bytes, position: int) -> bytes:
    out = bytearray(data)
    out[position] ^= 0x01
    return bytes(out)


# --- known answers ---------------------------------------------------------------------------------


def test_committed_v2_envelopes_open_on_their_own_for_their_readers_only(devices):
    for case in vector("envelopes-v2.json"):
        data = b64d(case["envelope"])
        assert data[3] == 2 and env.peek_header(data).to_dict() == case["header"]
        for reader in case["readers"]:
            opened = open_as(devices, data, reader)  # no cache: self-contained
            assert opened.header.to_dict() == case["header"]
            if case["payload_encoded"] is not None:
                assert opened.payload == decode_payload(b64d(case["payload_encoded"]))
        for other in case["non_readers"]:
            with pytest.raises(NoKeyForDevice):
                open_as(devices, data, other)


def test_committed_v2_session_is_unwrapped_once_per_reader_until_rotation(devices):
    cases = vector("envelopes-v2.json")
    for reader, slot in ((1, 0), (2, 1)):
        cache = UnwrapCache()
        for case in cases:
            open_as(devices, b64d(case["envelope"]), reader, cache)
        # four envelopes of one session, then one after rotation: two RSA operations in all
        assert (cache.misses, cache.hits) == (2, 3)
        blobs = [(d := b64d(c["envelope"]))[slots(d)[slot][0] : slots(d)[slot][1]] for c in cases]
        assert len(set(blobs[:4])) == 1 and blobs[4] != blobs[0]


def test_committed_v2_envelope_is_rsa_oaep_hkdf_and_aes_gcm_underneath(devices):
    """The layout of docs/protocol.md, opened with nothing but `cryptography`."""
    case = vector("envelopes-v2.json")[0]
    data = b64d(case["envelope"])
    (hlen,) = struct.unpack_from(">I", data, 4)
    header = data[8 : 8 + hlen]
    rsa_at, wk_at = slots(data)[0]  # device 1's slot
    session_key = devices[1].keys.encryption.decrypt(data[rsa_at:wk_at], OAEP)
    sender_id, reader_id = devices[0].device_id.encode(), devices[1].device_id.encode()
    info = b"peerpost/envelope-session/v2\x00" + struct.pack(">I", len(sender_id)) + sender_id
    info += struct.pack(">I", len(reader_id)) + reader_id
    kek = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(session_key)
    aad = b"peerpost/envelope-key/v2\x00" + hashlib.sha256(header).digest()
    aad += struct.pack(">I", len(reader_id)) + reader_id
    content_key = AESGCM(kek).decrypt(data[wk_at : wk_at + 12], data[wk_at + 12 : wk_at + 60], aad)
    pos = slots(data)[-1][1] + 60
    nonce = data[pos : pos + 12]
    (clen,) = struct.unpack_from(">I", data, pos + 12)
    assert len(data) == pos + 16 + clen + 64
    plain = AESGCM(content_key).decrypt(nonce, data[pos + 16 : pos + 16 + clen], header)
    assert decode_payload(plain) == Text("hello bob — ünïcødé ✓")
    devices[0].keys.identity.public_key().verify(data[-64:], b"peerpost/envelope/v2\x00" + data[:-64])


def test_committed_v1_envelopes_still_open_with_a_cache_given(devices):
    cache = UnwrapCache()
    for case in vector("envelopes.json"):
        data = b64d(case["envelope"])
        assert data[3] == 1
        assert open_as(devices, data, 1, cache).header.version == 1
    assert len(cache) == 0  # v1 has no session to remember


# --- round trips -----------------------------------------------------------------------------------


@few
@given(
    items=st.lists(payloads, min_size=1, max_size=4),
    readers=st.lists(st.sampled_from([1, 2, 3, 4, 5]), min_size=1, max_size=4, unique=True),
)
def test_every_reader_opens_a_session_of_envelopes_with_and_without_its_cache(devices, items, readers):
    sessions = SessionKeyCache()
    caches = {r: UnwrapCache() for r in readers}
    for payload in items:
        data = env.seal(
            payload,
            devices[0].local,
            [devices[i].recipient for i in readers],
            "g:team-1",
            sent_at_ms=NOW,
            session_keys=sessions,
        )
        for reader in readers:
            assert open_as(devices, data, reader, caches[reader]).payload == payload
            assert open_as(devices, data, reader).payload == payload
    assert sessions.created == len(readers)
    for cache in caches.values():
        assert (cache.misses, cache.hits) == (1, len(items) - 1)


@pytest.fixture(scope="module")
def session_pair(devices):
    """An envelope of a session whose key device 1's cache already holds (the hit case)."""
    sessions, cache = SessionKeyCache(), UnwrapCache()
    open_as(devices, seal_v2(devices, "warm-up", sessions=sessions), 1, cache)
    return seal_v2(devices, "tamper target", sessions=sessions, message_id="cd" * 16), cache


@some
@given(data=st.data())
def test_flipping_any_single_byte_of_a_v2_envelope_is_refused_even_on_a_cache_hit(
    devices, session_pair, data
):
    sealed, cache = session_pair
    position = data.draw(st.integers(0, len(sealed) - 1))
    tampered = bytearray(sealed)
    tampered[position] ^= data.draw(st.integers(1, 255))
    with pytest.raises(EnvelopeError):
        open_as(devices, bytes(tampered), 1, cache)
    with pytest.raises(EnvelopeError):
        open_as(devices, bytes(tampered), 1)


# --- tampering with the key slots ------------------------------------------------------------------


def test_edited_key_slot_is_a_signature_failure_before_any_key_work(devices):
    sessions, cache = SessionKeyCache(), UnwrapCache()
    data = seal_v2(devices, sessions=sessions)
    rsa_at, wk_at = slots(data)[0]
    for position in (rsa_at + 5, wk_at + 20):
        with pytest.raises(SignatureInvalid):
            open_as(devices, flipped(data, position), 1, cache)
    assert (cache.hits, cache.misses, len(cache)) == (0, 0, 0)  # the cache was never consulted


def test_tampered_wrapped_session_key_signed_by_the_sender_is_decryption_failed(devices):
    sessions, cache = SessionKeyCache(), UnwrapCache()
    open_as(devices, seal_v2(devices, sessions=sessions), 1, cache)  # the genuine session is cached
    data = seal_v2(devices, sessions=sessions)
    rsa_at, _ = slots(data)[0]
    bad = resigned(devices, flipped(data, rsa_at + 100))
    for c in (cache, None):  # a different wrap misses the cache; RSA-OAEP refuses it
        with pytest.raises(DecryptionFailed, match="session key does not unwrap"):
            open_as(devices, bad, 1, c)
    assert len(cache) == 1


def test_tampered_wrapped_content_key_signed_by_the_sender_is_decryption_failed(devices):
    sessions, cache = SessionKeyCache(), UnwrapCache()
    open_as(devices, seal_v2(devices, sessions=sessions), 1, cache)
    data = seal_v2(devices, sessions=sessions)
    _, wk_at = slots(data)[0]
    for position in (wk_at, wk_at + 12, wk_at + 59):  # nonce, key, tag
        bad = resigned(devices, flipped(data, position))
        for c in (cache, None):
            with pytest.raises(DecryptionFailed, match="content key does not open"):
                open_as(devices, bad, 1, c)


def test_swapped_key_slots_signed_by_the_sender_do_not_open(devices):
    """Each slot belongs to its device (its RSA key, and the device id in the KEK and the AAD)."""
    data = seal_v2(devices, to=(1, 2))
    (a_rsa, a_wk), (b_rsa, b_wk) = slots(data)
    slot_a, slot_b = data[a_rsa - 2 : a_wk + 60], data[b_rsa - 2 : b_wk + 60]
    swapped = data[: a_rsa - 2] + slot_b + slot_a + data[b_wk + 60 :]
    with pytest.raises(DecryptionFailed):
        open_as(devices, resigned(devices, swapped), 1)


def test_a_failed_open_leaves_nothing_in_the_cache(devices):
    cache = UnwrapCache()
    data = seal_v2(devices, sessions=SessionKeyCache())
    _, wk_at = slots(data)[0]
    with pytest.raises(DecryptionFailed):
        open_as(devices, resigned(devices, flipped(data, wk_at + 30)), 1, cache)
    assert len(cache) == 0
    open_as(devices, data, 1, cache)
    assert len(cache) == 1


def test_a_cache_filled_by_one_sender_does_not_open_another_senders_envelope(devices):
    """Mallory (device 5) puts Alice's wrapped session key into her own signed envelope and wraps
    her content key under Alice's KEK (as if it had leaked). Bob's cache holds that wrap for Alice
    only; unwrapping it afresh for Mallory derives a different KEK, so nothing opens."""
    alice_sessions, bob_cache = SessionKeyCache(), UnwrapCache()
    alice_env = seal_v2(devices, "from alice", to=(1,), sessions=alice_sessions)
    open_as(devices, alice_env, 1, bob_cache)
    bob = devices[1]
    alice_session = alice_sessions.session(devices[0].device_id, bob.device_id, bob.recipient.encryption_key)

    mallory_env = seal_v2(devices, "from mallory", sender=5, to=(1,))
    content_key = _content_key(devices, mallory_env, 1)
    rsa_at, wk_at = slots(mallory_env)[0]
    forged = bytearray(mallory_env)
    forged[rsa_at:wk_at] = _wrap_of(alice_env)
    nonce = bytes(12)
    forged[wk_at : wk_at + 60] = nonce + alice_session.aead.encrypt(
        nonce, content_key, _key_aad(mallory_env, bob.device_id)
    )
    forged_env = resigned(devices, bytes(forged), signer=5)

    hits = bob_cache.hits
    with pytest.raises(DecryptionFailed):
        open_as(devices, forged_env, 1, bob_cache)
    assert bob_cache.hits == hits  # Alice's entry was not used for Mallory
    assert len(bob_cache) == 1
    assert open_as(devices, alice_env, 1, bob_cache).payload == Text("from alice")


def _key_aad(data: bytes, reader_device: str) -> bytes:
    (hlen,) = struct.unpack_from(">I", data, 4)
    rid = reader_device.encode()
    header_hash = hashlib.sha256(data[8 : 8 + hlen]).digest()
    return b"peerpost/envelope-key/v2\x00" + header_hash + struct.pack(">I", len(rid)) + rid


def _content_key(devices, data: bytes, reader: int) -> bytes:
    """The content key in the first slot, opened by `reader` by the documented layout (no cache)."""
    from crypto.sessionkeys import recover_kek

    rsa_at, wk_at = slots(data)[0]
    sender = env.peek_header(data).sender_device
    aead = recover_kek(devices[reader].keys, data[rsa_at:wk_at], sender, devices[reader].device_id)
    aad = _key_aad(data, devices[reader].device_id)
    return aead.decrypt(data[wk_at : wk_at + 12], data[wk_at + 12 : wk_at + 60], aad)


def test_a_cache_of_one_local_device_is_not_used_for_another(devices):
    cache = UnwrapCache()
    data = seal_v2(devices, to=(1, 2), sessions=SessionKeyCache())
    open_as(devices, data, 1, cache)
    open_as(devices, data, 2, cache)
    assert (cache.misses, cache.hits, len(cache)) == (2, 0, 2)


# --- rotation and bounds ---------------------------------------------------------------------------


def _wrap_of(data: bytes, slot: int = 0) -> bytes:
    rsa_at, wk_at = slots(data)[slot]
    return data[rsa_at:wk_at]


def test_session_key_rotates_after_the_message_limit(devices):
    sessions = SessionKeyCache(max_messages=3)
    wraps = [_wrap_of(seal_v2(devices, to=(1,), sessions=sessions)) for _ in range(7)]
    assert wraps[0] == wraps[1] == wraps[2] != wraps[3]
    assert wraps[3] == wraps[4] == wraps[5] != wraps[6]
    assert sessions.created == 3


def test_session_key_rotates_after_its_lifetime(devices):
    now = [1000.0]
    sessions = SessionKeyCache(max_age_s=60, clock=lambda: now[0])
    first = _wrap_of(seal_v2(devices, to=(1,), sessions=sessions))
    now[0] += 59
    assert _wrap_of(seal_v2(devices, to=(1,), sessions=sessions)) == first
    now[0] += 1
    rotated = seal_v2(devices, to=(1,), sessions=sessions)
    assert _wrap_of(rotated) != first
    assert open_as(devices, rotated, 1, UnwrapCache()).payload == Text("hi")


def test_each_recipient_device_has_its_own_session_and_a_new_key_gets_a_new_one(devices):
    sessions = SessionKeyCache()
    data = seal_v2(devices, to=(1, 2, 3), sessions=sessions)
    assert len({_wrap_of(data, i) for i in range(3)}) == 3
    assert sessions.created == 3
    # device 1's id now carries device 4's key (re-published): a fresh session, never the old wrap
    moved = env.Recipient(devices[1].user_id, devices[1].device_id, devices[4].keys.encryption_public_der())
    again = env.seal(Text("x"), devices[0].local, [moved], "u:2", sent_at_ms=NOW, session_keys=sessions)
    assert _wrap_of(again) != _wrap_of(data, 0) and sessions.created == 4
    sessions.forget(devices[2].device_id)
    assert _wrap_of(seal_v2(devices, to=(2,), sessions=sessions)) != _wrap_of(data, 1)


def test_without_caches_every_envelope_has_fresh_session_keys(devices):
    a, b = seal_v2(devices, to=(1,)), seal_v2(devices, to=(1,))
    assert _wrap_of(a) != _wrap_of(b)


def test_caches_are_bounded_least_recently_used_first(devices):
    sessions = SessionKeyCache(capacity=2)
    for i in (1, 2, 3):
        seal_v2(devices, to=(i,), sessions=sessions)
    assert len(sessions) == 2
    cache = UnwrapCache(capacity=2)
    for sender in (0, 3, 5):
        open_as(devices, seal_v2(devices, sender=sender, to=(1,), sessions=sessions), 1, cache)
    assert len(cache) == 2
    cache.forget_sender(devices[5].device_id)
    assert len(cache) == 1
    assert "hits" in repr(cache) and "sessions" in repr(sessions)


# --- session caches --------------------------------------------------------------------------------


def test_v2_a_cache_hit_skips_rsa_for_every_envelope_of_the_session(devices):
    """With a warm UnwrapCache only the first envelope of a session costs an RSA decryption.
    (The seal/open time budget is reported by bench/crypto.py, not asserted here.)"""
    sessions, cache = SessionKeyCache(), UnwrapCache()
    recipients = [devices[1].recipient, devices[2].recipient]
    sealed = [
        env.seal(Text("hello"), devices[0].local, recipients, "u:2", sent_at_ms=NOW, session_keys=sessions)
        for _ in range(100)
    ]
    for data in sealed[:20]:
        assert open_as(devices, data, 1).payload == Text("hello")
    open_as(devices, sealed[0], 1, cache)
    for data in sealed:
        assert open_as(devices, data, 1, cache).payload == Text("hello")
    assert cache.misses == 1
