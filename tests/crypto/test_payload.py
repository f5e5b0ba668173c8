"""Payload encoding: canonical, padded to buckets, strict on the way in."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto._codec import b64d
from crypto.errors import EnvelopeTooLarge, MalformedEnvelope
from crypto.filestream import FileManifest
from crypto.payload import (
    MAX_PADDED_PAYLOAD,
    FileOffer,
    Receipt,
    Text,
    Typing,
    bucket_size,
    decode_payload,
    encode_payload,
)
from tests.crypto.conftest import some, vector


def test_committed_payload_encodings_are_reproduced():
    expected = {
        "text": Text("hello bob — ünïcødé ✓"),
        "receipt": Receipt("read", ["0" * 31 + "1", "f" * 32]),
        "typing": Typing(True),
    }
    for case in vector("envelopes.json"):
        if case["payload_encoded"] is not None:
            assert encode_payload(expected[case["name"]]) == b64d(case["payload_encoded"])


@some
@given(st.text(max_size=2000))
def test_text_round_trips_and_lands_in_a_bucket(body):
    encoded = encode_payload(Text(body))
    assert len(encoded) == bucket_size(len(encoded))
    assert decode_payload(encoded) == Text(body)


def test_bucket_sizes_hide_exact_lengths():
    assert {len(encode_payload(Text("a" * n))) for n in range(0, 200)} == {256}
    assert len(encode_payload(Text("a" * 300))) == 512
    assert len(encode_payload(Text("a" * 20000))) == 32768
    assert bucket_size(MAX_PADDED_PAYLOAD) == MAX_PADDED_PAYLOAD


def test_file_offer_round_trips_with_its_manifest():
    m = FileManifest.from_dict(vector("filestream.json")["manifest"])
    assert decode_payload(encode_payload(FileOffer(m, "blob-123"))) == FileOffer(m, "blob-123")


def _raw(body: bytes, size: int = 256) -> bytes:
    return struct.pack(">I", len(body)) + body + bytes(size - 4 - len(body))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (_raw(b'{"type":"poll","q":"?"}'), "unknown payload type"),
        (_raw(b'{"body":"x","type":"text","extra":1}'), "exactly the fields"),
        (_raw(b'{"type": "text", "body": "x"}'), "canonical"),
        (_raw(b'{"body":"x","type":"text"}')[:-1] + b"\x01", "padding"),
        (_raw(b'{"body":"x","type":"text"}', 300), "padding"),
        (_raw(b"\xff\xfe"), "UTF-8 JSON"),
        (_raw(b'{"active":1,"type":"typing"}'), "true or false"),
        (_raw(b'{"message_ids":["nothex"],"status":"read","type":"receipt"}'), "message id"),
    ],
)
def test_non_canonical_or_unknown_payloads_are_refused(data, message):
    with pytest.raises(MalformedEnvelope, match=message):
        decode_payload(data)


def test_payload_past_the_limit_names_the_limit():
    with pytest.raises(EnvelopeTooLarge, match=str(MAX_PADDED_PAYLOAD)):
        encode_payload(Text("y" * MAX_PADDED_PAYLOAD))


def test_text_with_a_lone_surrogate_is_refused_not_crashing():
    with pytest.raises(MalformedEnvelope, match="not valid Unicode"):
        encode_payload(Text("broken \ud800 text"))


def test_escaped_lone_surrogate_from_a_sender_is_malformed():
    with pytest.raises(MalformedEnvelope, match="not valid Unicode"):
        decode_payload(_raw(b'{"body":"\\ud800","type":"text"}'))


def test_deeply_nested_payload_is_malformed():
    with pytest.raises(MalformedEnvelope, match="not UTF-8 JSON"):
        decode_payload(_raw(b"[" * 40000, 49152))
