"""Device keys and self-signed bundles: known answers, and every fault is `BundleInvalid`."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from crypto._codec import b64d
from crypto.bundle import make_bundle, verify_bundle
from crypto.errors import BundleInvalid, CryptoError
from crypto.keys import DeviceKeys, generate_device_keys
from tests.crypto.conftest import few, vector


def bundle_args(v):
    return (
        v["user_id"],
        v["device_id"],
        b64d(v["identity_key"]),
        b64d(v["encryption_key"]),
        v["created_at"],
        b64d(v["signature"]),
    )


def test_committed_bundles_are_reproduced_byte_for_byte(devices):
    for i, v in enumerate(vector("bundles.json")):
        b = make_bundle(devices[i].keys, v["user_id"], v["device_id"], created_at=v["created_at"])
        assert (
            b.user_id,
            b.device_id,
            b.identity_key,
            b.encryption_key,
            b.created_at,
            b.signature,
        ) == bundle_args(v)
        assert b.fingerprint == v["fingerprint"]
        assert verify_bundle(*bundle_args(v)) == b


@few
@given(field=st.integers(0, 5), data=st.data())
def test_changing_any_field_of_a_bundle_breaks_it(field, data):
    v = vector("bundles.json")[1]
    args = list(bundle_args(v))
    if field == 0:
        args[0] += data.draw(st.integers(1, 1000))
    elif field == 1:
        args[1] = args[1][:-1] + ("x" if args[1][-1] != "x" else "y")
    elif field in (2, 5):
        raw = bytearray(args[field])
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
        args[field] = bytes(raw)
    elif field == 3:
        args[3] = b64d(vector("bundles.json")[2]["encryption_key"])  # another device's key
    else:
        args[4] += data.draw(st.integers(1, 10**6))
    with pytest.raises(BundleInvalid):
        verify_bundle(*args)


def test_bundle_with_a_short_rsa_key_is_refused(devices):
    small = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    der = small.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    v = vector("bundles.json")[0]
    args = list(bundle_args(v))
    args[3] = der
    with pytest.raises(BundleInvalid, match="RSA-4096"):
        verify_bundle(*args)


@pytest.mark.parametrize(
    ("index", "value", "message"),
    [
        (1, "bad id!", "device id"),
        (0, -1, "user id"),
        (4, "soon", "created-at"),
        (2, b"\x01" * 31, "identity key"),
    ],
)
def test_malformed_bundle_fields_are_named(index, value, message):
    args = list(bundle_args(vector("bundles.json")[0]))
    args[index] = value
    with pytest.raises(BundleInvalid, match=message):
        verify_bundle(*args)


def test_fingerprint_differs_between_devices(devices):
    prints = {make_bundle(d.keys, d.user_id, d.device_id, created_at=1).fingerprint for d in devices}
    assert len(prints) == len(devices)


def test_keygen_reports_progress_from_zero_to_one_and_makes_usable_keys():
    seen: list[tuple[float, str]] = []
    keys = generate_device_keys(lambda fraction, label: seen.append((fraction, label)))
    fractions = [f for f, _ in seen]
    assert fractions[0] == 0.0 and fractions[-1] == 1.0
    assert fractions == sorted(fractions)
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert any("RSA-4096" in label for _, label in seen)
    assert keys.encryption.key_size == 4096 and len(keys.identity_public_bytes()) == 32
    b = make_bundle(keys, 7, "fresh-device-1")
    assert (
        verify_bundle(b.user_id, b.device_id, b.identity_key, b.encryption_key, b.created_at, b.signature)
        == b
    )


def test_pem_round_trip_keeps_both_keys(devices):
    keys = devices[0].keys
    again = DeviceKeys.from_pem(keys.to_pem())
    assert again.identity_public_bytes() == keys.identity_public_bytes()
    assert again.encryption_public_der() == keys.encryption_public_der()


def test_device_keys_never_print_private_material(devices):
    keys = devices[0].keys
    text = repr(keys)
    assert keys.identity_private_raw().hex() not in text
    assert "PRIVATE" not in text


def test_pem_with_one_key_is_refused(devices):
    with pytest.raises(CryptoError, match="two PEM"):
        DeviceKeys.from_pem(devices[0].keys.to_pem().split(b"-----END PRIVATE KEY-----")[0])


@few
@given(
    user_id=st.integers(0, 2**63 - 1),
    device_id=st.from_regex(r"[A-Za-z0-9_-]{8,64}", fullmatch=True),
    created_at=st.integers(0, 2**63 - 1),
    device=st.integers(0, 5),
)
def test_any_bundle_made_verifies(devices, user_id, device_id, created_at, device):
    b = make_bundle(devices[device].keys, user_id, device_id, created_at=created_at)
    assert (
        verify_bundle(b.user_id, b.device_id, b.identity_key, b.encryption_key, b.created_at, b.signature)
        == b
    )
