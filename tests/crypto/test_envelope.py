"""Envelopes: known answers, round trips, tamper detection and every typed refusal, in order."""

from __future__ import annotations

import os
import struct

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from crypto import envelope as env
from crypto._codec import b64d
from crypto.errors import (
    ClockSkew,
    DecryptionFailed,
    EnvelopeError,
    EnvelopeTooLarge,
    MalformedEnvelope,
    NoKeyForDevice,
    ReplayDetected,
    SignatureInvalid,
    UnknownSenderDevice,
    UnknownVersion,
)
from crypto.keywrap import unwrap_key, wrap_key
from crypto.payload import Delete, Edit, Receipt, Text, Typing, decode_payload
from tests.crypto.conftest import few, pinned, some, vector

NOW = 1_767_225_600_000
OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def seal_text(devices, body="hi", sender=0, to=(1, 2), **kw):
    kw.setdefault("sent_at_ms", NOW)
    return env.seal(Text(body), devices[sender].local, [devices[i].recipient for i in to], "u:2", **kw)


def open_as(devices, data, reader, seen=None, **kw):
    kw.setdefault("now_ms", NOW)
    return env.open_envelope(data, devices[reader].local, pinned(devices), seen or env.MemorySeenIds(), **kw)


# --- known answers ---------------------------------------------------------------------------------


def test_committed_envelopes_open_for_their_readers_only(devices):
    for case in vector("envelopes.json"):
        data = b64d(case["envelope"])
        assert env.peek_header(data).to_dict() == case["header"]
        for reader in case["readers"]:
            opened = open_as(devices, data, reader)
            assert opened.header.to_dict() == case["header"]
            if case["payload_encoded"] is not None:
                assert opened.payload == decode_payload(b64d(case["payload_encoded"]))
            else:
                assert opened.payload == Text("x" * 65536)
        for other in case["non_readers"]:
            with pytest.raises(NoKeyForDevice):
                open_as(devices, data, other)


def test_committed_envelope_is_plain_rsa_oaep_and_aes_gcm_underneath(devices):
    """Interop: a reader using nothing but `cryptography` can open our format by its layout."""
    data = b64d(vector("envelopes.json")[0]["envelope"])
    pos = 4
    (hlen,) = struct.unpack_from(">I", data, pos)
    header = data[pos + 4 : pos + 4 + hlen]
    pos += 4 + hlen
    (count,) = struct.unpack_from(">H", data, pos)
    pos += 2
    wrapped = []
    for _ in range(count):
        (n,) = struct.unpack_from(">H", data, pos)
        wrapped.append(data[pos + 2 : pos + 2 + n])
        pos += 2 + n
    nonce = data[pos : pos + 12]
    (clen,) = struct.unpack_from(">I", data, pos + 12)
    ciphertext = data[pos + 16 : pos + 16 + clen]
    assert len(data) == pos + 16 + clen + 64
    key = devices[1].keys.encryption.decrypt(wrapped[0], OAEP)
    plain = AESGCM(key).decrypt(nonce, ciphertext, header)
    assert decode_payload(plain) == Text("hello bob — ünïcødé ✓")
    devices[0].keys.identity.public_key().verify(data[-64:], b"peerpost/envelope/v1\x00" + data[:-64])


def test_key_wrapped_by_plain_cryptography_unwraps_with_ours(devices):
    key = AESGCM.generate_key(256)
    wrapped = devices[3].keys.encryption.public_key().encrypt(key, OAEP)
    assert unwrap_key(devices[3].keys, wrapped) == key


def test_key_wrapped_by_us_unwraps_with_plain_cryptography(devices):
    key = AESGCM.generate_key(256)
    wrapped = wrap_key(devices[3].keys.encryption_public_der(), key)
    assert devices[3].keys.encryption.decrypt(wrapped, OAEP) == key


# --- round trips -----------------------------------------------------------------------------------

payloads = st.one_of(
    st.builds(Text, st.text(max_size=300)),
    st.builds(Typing, st.booleans()),
    st.builds(
        Receipt,
        st.sampled_from(["delivered", "read"]),
        st.lists(st.binary(min_size=16, max_size=16).map(bytes.hex), min_size=1, max_size=5),
    ),
    st.builds(Edit, st.binary(min_size=16, max_size=16).map(bytes.hex), st.text(max_size=100)),
    st.builds(Delete, st.lists(st.binary(min_size=16, max_size=16).map(bytes.hex), min_size=1, max_size=3)),
)


@few
@given(
    payload=payloads, readers=st.lists(st.sampled_from([1, 2, 3, 4, 5]), min_size=1, max_size=5, unique=True)
)
def test_every_recipient_device_opens_what_was_sealed(devices, payload, readers):
    data = env.seal(
        payload, devices[0].local, [devices[i].recipient for i in readers], "g:team-1", sent_at_ms=NOW
    )
    for reader in readers:
        opened = open_as(devices, data, reader)
        assert opened.payload == payload
        assert opened.header.content_type == payload.kind
        assert opened.header.sender_device == devices[0].device_id
        assert opened.header.recipients == [devices[i].device_id for i in readers]


def test_a_64_kib_text_travels_in_one_envelope(devices):
    body = "ä" * 32768  # 64 KiB of UTF-8
    assert len(body.encode()) == 65536
    data = seal_text(devices, body)
    assert open_as(devices, data, 2).payload == Text(body)


def test_sealing_to_the_senders_other_device_lets_it_read_its_own_message(devices):
    data = env.seal(
        Text("note to self"),
        devices[1].local,
        [devices[0].recipient, devices[2].recipient],
        "u:1",
        sent_at_ms=NOW,
    )
    assert open_as(devices, data, 2).payload == Text("note to self")


# --- tamper detection ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sealed(devices):
    return seal_text(devices, "tamper target", message_id="ab" * 16)


@some
@given(data=st.data())
def test_flipping_any_single_byte_is_refused(devices, sealed, data):
    position = data.draw(st.integers(0, len(sealed) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = bytearray(sealed)
    tampered[position] ^= flip
    with pytest.raises(EnvelopeError):
        open_as(devices, bytes(tampered), 1)


@few
@given(cut=st.integers(0, 1606))
def test_truncated_envelope_is_malformed(devices, sealed, cut):
    with pytest.raises((MalformedEnvelope, UnknownVersion)):
        open_as(devices, sealed[: min(cut, len(sealed) - 1)], 1)


def test_envelope_for_device_x_cannot_be_opened_by_device_y(devices):
    data = seal_text(devices, to=(1,))
    with pytest.raises(NoKeyForDevice, match="not encrypted for this device"):
        open_as(devices, data, 2)


def test_device_claiming_another_devices_slot_cannot_decrypt(devices):
    # Sealed to device 2's id but with device 3's public key: device 2 finds its slot, cannot unwrap.
    wrong = env.Recipient(devices[2].user_id, devices[2].device_id, devices[3].keys.encryption_public_der())
    data = env.seal(Text("x"), devices[0].local, [wrong], "u:2", sent_at_ms=NOW)
    with pytest.raises(DecryptionFailed, match="could not be decrypted"):
        open_as(devices, data, 2)


# --- each check, in the documented order -----------------------------------------------------------


def test_unknown_version_is_reported_before_anything_else(devices, sealed):
    with pytest.raises(UnknownVersion, match="version 3"):
        open_as(devices, sealed[:3] + b"\x03" + sealed[4:], 1)


def test_version_byte_and_header_version_must_agree(devices, sealed):
    assert sealed[3] == 2
    with pytest.raises(UnknownVersion, match="is not 1"):
        open_as(devices, sealed[:3] + b"\x01" + sealed[4:], 1)


def test_garbage_is_malformed_not_a_crash(devices):
    for junk in (b"", b"PPE", b"hello world", os.urandom(2000)):
        with pytest.raises(MalformedEnvelope):
            open_as(devices, junk, 1)


def test_trailing_bytes_are_malformed(devices, sealed):
    with pytest.raises(MalformedEnvelope, match="trailing"):
        open_as(devices, sealed + b"\x00", 1)


def test_oversized_envelope_is_refused_before_parsing(devices):
    with pytest.raises(EnvelopeTooLarge, match="limit"):
        open_as(devices, b"PPE\x01" + bytes(env.MAX_ENVELOPE_BYTES), 1)


def test_unknown_sender_device_is_reported_before_the_signature(devices, sealed):
    with pytest.raises(UnknownSenderDevice, match="no pinned key"):
        env.open_envelope(sealed, devices[1].local, lambda u, d: None, env.MemorySeenIds(), now_ms=NOW)


def test_signature_by_another_key_is_refused(devices, sealed):
    impostor = lambda u, d: devices[5].keys.identity_public_bytes()  # noqa: E731
    with pytest.raises(SignatureInvalid, match="could not be verified"):
        env.open_envelope(sealed, devices[1].local, impostor, env.MemorySeenIds(), now_ms=NOW)


def test_replayed_message_id_is_refused(devices, sealed):
    seen = env.MemorySeenIds()
    open_as(devices, sealed, 1, seen)
    with pytest.raises(ReplayDetected, match="already received"):
        open_as(devices, sealed, 1, seen)


def test_sent_at_far_in_the_future_is_clock_skew_and_not_remembered(devices):
    data = seal_text(devices, sent_at_ms=NOW + 301_000)
    seen = env.MemorySeenIds()
    with pytest.raises(ClockSkew, match="future"):
        open_as(devices, data, 1, seen)
    assert not seen.seen_before(devices[0].device_id, env.peek_header(data).message_id)
    assert open_as(devices, data, 1, seen, now_ms=NOW + 2000).payload == Text("hi")


def test_queued_mail_is_accepted_until_the_age_limit(devices):
    data = seal_text(devices, sent_at_ms=NOW - 7 * 86400_000)
    assert open_as(devices, data, 1).payload == Text("hi")
    with pytest.raises(ClockSkew, match="older than"):
        open_as(devices, data, 1, max_age_s=86400)


def test_oversized_payload_is_refused_with_the_limit(devices):
    with pytest.raises(EnvelopeTooLarge, match="limit is"):
        seal_text(devices, "x" * 200_000)


def test_too_many_recipients_is_refused(devices):
    many = [env.Recipient(9, f"device-{i:04d}", devices[1].keys.encryption_public_der()) for i in range(257)]
    with pytest.raises(EnvelopeTooLarge, match="1-256"):
        env.seal(Text("x"), devices[0].local, many, "u:9")


def test_repeated_recipient_is_refused(devices):
    with pytest.raises(MalformedEnvelope, match="repeat"):
        seal_text(devices, to=(1, 1))


def test_bad_conversation_is_refused(devices):
    with pytest.raises(MalformedEnvelope, match="conversation"):
        env.seal(Text("x"), devices[0].local, [devices[1].recipient], "room 7")


def test_a_hundred_envelopes_for_two_devices_each_open_for_both(devices):
    """Many seals in a row stay independent: every one opens for each recipient device.
    (The seal/open time budget is reported by bench/crypto.py, not asserted here.)"""
    recipients = [devices[1].recipient, devices[2].recipient]
    sealed = [
        env.seal(Text(f"hello {i}"), devices[0].local, recipients, "u:2", sent_at_ms=NOW) for i in range(100)
    ]
    assert len({bytes(data) for data in sealed}) == 100
    for i, data in enumerate(sealed[:20]):
        assert open_as(devices, data, 1).payload == Text(f"hello {i}")
        assert open_as(devices, data, 2).payload == Text(f"hello {i}")


def test_deeply_nested_header_is_malformed_not_a_recursion_crash(devices):
    header = b"[" * 60000
    data = b"PPE\x01" + struct.pack(">I", len(header)) + header
    with pytest.raises(MalformedEnvelope, match="not UTF-8 JSON"):
        open_as(devices, data, 1)
