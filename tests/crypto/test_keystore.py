"""The keystore file: round trip, wrong password vs damage, atomic replacement, mode 0600."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto import keystore as ks
from crypto.errors import KeystoreCorrupt, KeystoreError, KeystoreLocked
from tests.crypto.conftest import DATA, few

FAST_N = 1 << 10  # the real default (2^15) is exercised once below; the rest stay quick
COMMITTED = DATA / "keystore-v1.json"
COMMITTED_PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def store_bytes(devices, tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("ks") / "keystore.json"
    ks.create_keystore(path, devices[1].keys, "pa55word", {"user_id": 2}, scrypt_n=FAST_N)
    return path.read_bytes()


def test_committed_v1_keystore_still_loads(devices):
    loaded = ks.load_keystore(COMMITTED, COMMITTED_PASSWORD)
    assert loaded.keys.identity_public_bytes() == devices[0].keys.identity_public_bytes()
    assert loaded.keys.encryption_public_der() == devices[0].keys.encryption_public_der()
    assert loaded.storage_key == bytes(range(32, 64))
    assert loaded.meta == {"user_id": 1, "device_id": devices[0].device_id}


def test_round_trip_with_default_parameters_and_mode_0600(devices, tmp_path):
    path = tmp_path / "device.keystore"
    made = ks.create_keystore(path, devices[2].keys, "s3cret pass", {"server": "http://127.0.0.1:1"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert doc["kdf"]["n"] == ks.DEFAULT_SCRYPT_N and doc["version"] == ks.KEYSTORE_VERSION
    loaded = ks.load_keystore(path, "s3cret pass")
    assert loaded.keys.encryption_private_der() == devices[2].keys.encryption_private_der()
    assert loaded.keys.identity_private_raw() == devices[2].keys.identity_private_raw()
    assert loaded.storage_key == made.storage_key and len(loaded.storage_key) == 32
    assert loaded.meta == {"server": "http://127.0.0.1:1"}
    assert b"s3cret" not in path.read_bytes()


def test_wrong_password_is_locked_with_a_clear_message(tmp_path, store_bytes):
    path = tmp_path / "k.json"
    path.write_bytes(store_bytes)
    with pytest.raises(KeystoreLocked, match="wrong password"):
        ks.load_keystore(path, "pa55wOrd")


@few
@given(data=st.data())
def test_any_edit_or_truncation_is_corrupt_never_half_loaded(tmp_path_factory, store_bytes, data):
    path = tmp_path_factory.mktemp("edit") / "k.json"
    raw = bytearray(store_bytes)
    if data.draw(st.booleans()):
        raw[data.draw(st.integers(0, len(raw) - 2))] ^= data.draw(st.integers(1, 255))
    else:
        del raw[data.draw(st.integers(0, len(raw) - 2)) :]
    path.write_bytes(bytes(raw))
    with pytest.raises(KeystoreCorrupt, match="nothing was loaded"):
        ks.load_keystore(path, "pa55word")


def test_edited_ciphertext_with_a_fixed_checksum_is_still_corrupt(tmp_path, store_bytes):
    doc = json.loads(store_bytes)
    ct = bytearray(doc["ciphertext"].encode())
    ct[10] = ord("A") if ct[10] != ord("A") else ord("B")
    doc["ciphertext"] = ct.decode()
    doc["sha256"] = ks._file_digest(doc)
    path = tmp_path / "k.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(KeystoreCorrupt, match="does not authenticate"):
        ks.load_keystore(path, "pa55word")


def test_hostile_scrypt_parameters_are_refused_before_deriving(tmp_path, store_bytes):
    doc = json.loads(store_bytes)
    doc["kdf"]["n"] = 1 << 30
    doc["sha256"] = ks._file_digest(doc)
    path = tmp_path / "k.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(KeystoreCorrupt, match="out of range"):
        ks.load_keystore(path, "pa55word")


def test_unknown_format_version_is_named(tmp_path, store_bytes):
    doc = json.loads(store_bytes)
    doc["version"] = 9
    doc["sha256"] = ks._file_digest(doc)
    path = tmp_path / "k.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(KeystoreCorrupt, match="format version 9"):
        ks.load_keystore(path, "pa55word")


def test_missing_keystore_is_a_keystore_error(tmp_path):
    with pytest.raises(KeystoreError, match="no keystore"):
        ks.load_keystore(tmp_path / "absent.json", "x")


def test_password_change_reseals_under_a_fresh_salt(devices, tmp_path, store_bytes):
    path = tmp_path / "k.json"
    path.write_bytes(store_bytes)
    before = ks.load_keystore(path, "pa55word")
    ks.change_keystore_password(path, "pa55word", "n3w pass")
    with pytest.raises(KeystoreLocked):
        ks.load_keystore(path, "pa55word")
    after = ks.load_keystore(path, "n3w pass")
    assert after.storage_key == before.storage_key and after.meta == before.meta
    assert after.keys.identity_public_bytes() == devices[1].keys.identity_public_bytes()
    assert json.loads(path.read_bytes())["kdf"]["salt"] != json.loads(store_bytes)["kdf"]["salt"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_password_change_with_the_wrong_old_password_changes_nothing(tmp_path, store_bytes):
    path = tmp_path / "k.json"
    path.write_bytes(store_bytes)
    with pytest.raises(KeystoreLocked):
        ks.change_keystore_password(path, "guess", "n3w pass")
    assert path.read_bytes() == store_bytes


def test_a_crash_before_rename_leaves_the_old_file_and_no_temp(devices, tmp_path, store_bytes, monkeypatch):
    path = tmp_path / "k.json"
    path.write_bytes(store_bytes)

    def crash(src, dst):
        raise OSError("simulated power cut")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        ks.change_keystore_password(path, "pa55word", "n3w pass")
    monkeypatch.undo()
    assert path.read_bytes() == store_bytes
    assert [p.name for p in Path(tmp_path).iterdir()] == ["k.json"]


def test_meta_that_is_not_json_is_refused(devices, tmp_path):
    with pytest.raises(KeystoreError, match="JSON"):
        ks.create_keystore(tmp_path / "k.json", devices[0].keys, "pw", {"when": object()}, scrypt_n=FAST_N)
    assert not (tmp_path / "k.json").exists()


json_meta = st.dictionaries(
    st.text(max_size=10),
    st.one_of(st.integers(-(2**53), 2**53), st.text(max_size=20), st.booleans(), st.none()),
    max_size=4,
)


@few
@given(password=st.text(min_size=1, max_size=40), meta=json_meta, device=st.integers(0, 5))
def test_any_password_and_meta_round_trip(devices, tmp_path_factory, password, meta, device):
    path = tmp_path_factory.mktemp("rt") / "k.json"
    made = ks.create_keystore(path, devices[device].keys, password, meta, scrypt_n=FAST_N)
    loaded = ks.load_keystore(path, password)
    assert loaded.meta == meta and loaded.storage_key == made.storage_key
    assert loaded.keys.identity_private_raw() == devices[device].keys.identity_private_raw()


def test_keystore_with_escaped_surrogates_is_corrupt(tmp_path, store_bytes):
    doc = json.loads(store_bytes)
    text = json.dumps(doc).replace('"aes-256-gcm"', '"\\ud800"')
    path = tmp_path / "k.json"
    path.write_text(text)
    with pytest.raises(KeystoreCorrupt, match="cannot be re-encoded"):
        ks.load_keystore(path, "pa55word")
