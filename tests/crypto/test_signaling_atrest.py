"""Signed signalling messages and at-rest sealing."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto._codec import b64d
from crypto.atrest import open_at_rest, seal_at_rest
from crypto.errors import AtRestError, SignatureInvalid
from crypto.signaling import sign_signal, verify_signal
from tests.crypto.conftest import few, some, vector


def test_committed_signal_signature_is_reproduced_and_verifies(devices):
    v = vector("signal.json")
    keys = devices[v["device"]].keys
    args = (v["kind"], v["from_device"], v["to_device"], v["nonce"], b64d(v["body"]))
    assert sign_signal(keys, *args) == b64d(v["signature"])
    verify_signal(keys.identity_public_bytes(), b64d(v["signature"]), *args)


@few
@given(field=st.integers(0, 4), tweak=st.text(min_size=1, max_size=5))
def test_changing_any_signed_field_breaks_the_signature(devices, field, tweak):
    v = vector("signal.json")
    args = [v["kind"], v["from_device"], v["to_device"], v["nonce"], b64d(v["body"])]
    args[field] = args[field] + (tweak.encode() if field == 4 else tweak)
    with pytest.raises(SignatureInvalid):
        verify_signal(devices[0].keys.identity_public_bytes(), b64d(v["signature"]), *args)


def test_signal_signed_by_another_device_is_refused(devices):
    v = vector("signal.json")
    args = (v["kind"], v["from_device"], v["to_device"], v["nonce"], b64d(v["body"]))
    with pytest.raises(SignatureInvalid, match="not signed by its pinned identity key"):
        verify_signal(devices[1].keys.identity_public_bytes(), b64d(v["signature"]), *args)


@some
@given(plaintext=st.binary(max_size=3000), aad=st.binary(max_size=40))
def test_at_rest_round_trips(plaintext, aad):
    key = os.urandom(32)
    assert open_at_rest(key, seal_at_rest(key, plaintext, aad), aad) == plaintext


@few
@given(data=st.data())
def test_at_rest_refuses_flips_wrong_key_and_moved_values(data):
    key = os.urandom(32)
    blob = seal_at_rest(key, b"contact: bob, verified", b"contacts/7")
    tampered = bytearray(blob)
    tampered[data.draw(st.integers(0, len(blob) - 1))] ^= data.draw(st.integers(1, 255))
    for bad_blob, bad_key, bad_aad in (
        (bytes(tampered), key, b"contacts/7"),
        (blob, os.urandom(32), b"contacts/7"),
        (blob, key, b"contacts/8"),
        (blob[:20], key, b"contacts/7"),
    ):
        with pytest.raises(AtRestError):
            open_at_rest(bad_key, bad_blob, bad_aad)


@few
@given(
    kind=st.sampled_from(["offer", "answer", "candidate", "bye"]),
    ids=st.lists(st.from_regex(r"[A-Za-z0-9_-]{8,20}", fullmatch=True), min_size=2, max_size=2),
    nonce=st.text(min_size=1, max_size=40),
    body=st.binary(max_size=2000),
)
def test_any_signal_signed_verifies(devices, kind, ids, nonce, body):
    keys = devices[4].keys
    signature = sign_signal(keys, kind, ids[0], ids[1], nonce, body)
    verify_signal(keys.identity_public_bytes(), signature, kind, ids[0], ids[1], nonce, body)
    with pytest.raises(SignatureInvalid):  # the same message the other way round is not signed
        verify_signal(keys.identity_public_bytes(), signature, kind, ids[1], ids[0] + "x", nonce, body)
