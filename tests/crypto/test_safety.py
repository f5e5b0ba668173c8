"""Safety numbers: libsignal's vector, our committed vectors, symmetry, and sensitivity to keys."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto.errors import CryptoError
from crypto.safety import fingerprint_half, format_safety_number, safety_number, safety_qr_svg, safety_qr_text
from tests.crypto.conftest import few, vector


def test_libsignal_v1_vector_is_reproduced():
    v = vector("safety.json")["signal_v1"]
    alice = fingerprint_half(bytes.fromhex(v["alice_key"]), v["alice_id"].encode())
    bob = fingerprint_half(bytes.fromhex(v["bob_key"]), v["bob_id"].encode())
    assert min(alice, bob) + max(alice, bob) == v["digits"]


def test_committed_peerpost_vectors(devices):
    keys = [d.keys.identity_public_bytes() for d in devices]
    for case in vector("safety.json")["peerpost"]:
        (lu, li), (ru, ri) = case["local"], case["remote"]
        assert safety_number(lu, [keys[i] for i in li], ru, [keys[i] for i in ri]) == case["digits"]


keys32 = st.lists(st.binary(min_size=32, max_size=32), min_size=1, max_size=3, unique=True)


@few
@given(a=keys32, b=keys32, ua=st.integers(1, 10**9), ub=st.integers(1, 10**9))
def test_both_sides_compute_the_same_60_digits(a, b, ua, ub):
    s = safety_number(ua, a, ub, b)
    assert s == safety_number(ub, b, ua, a) == safety_number(ua, list(reversed(a)), ub, b)
    assert len(s) == 60 and s.isdigit()


def test_changing_adding_or_removing_a_device_key_changes_the_number(devices):
    k = [d.keys.identity_public_bytes() for d in devices]
    base = safety_number(1, [k[0]], 2, [k[1], k[2]])
    assert safety_number(1, [k[0]], 2, [k[1], k[3]]) != base  # a key swapped
    assert safety_number(1, [k[0]], 2, [k[1], k[2], k[3]]) != base  # a device added
    assert safety_number(1, [k[0]], 2, [k[1]]) != base  # a device removed
    assert safety_number(1, [k[0]], 3, [k[1], k[2]]) != base  # another user id


def test_format_is_twelve_groups_of_five():
    s = "0123456789" * 6
    assert format_safety_number(s) == " ".join(s[i : i + 5] for i in range(0, 60, 5))
    assert len(format_safety_number(s).split()) == 12


def test_qr_forms_carry_the_number_and_refuse_non_numbers():
    s = vector("safety.json")["peerpost"][0]["digits"]
    svg = safety_qr_svg(s)
    assert svg.startswith("<svg") and "path" in svg
    text = safety_qr_text(s)
    assert len(text.splitlines()) > 10 and "█" in text
    assert safety_qr_text(s) != safety_qr_text(s[::-1])
    with pytest.raises(CryptoError, match="60 digits"):
        safety_qr_svg("12345")
