"""The device keystore: both private keys and the at-rest storage key, sealed under a password.

File format (UTF-8 JSON, one object)::

    {"format": "peerpost-keystore", "version": 1,
     "kdf": {"name": "scrypt", "n": 32768, "r": 8, "p": 1, "salt": b64},
     "cipher": "aes-256-gcm", "nonce": b64, "check": b64, "ciphertext": b64,
     "sha256": hex}

scrypt derives 64 bytes: the first 32 are the AES-256-GCM key, the last 32 key an HMAC that makes
`check`, so a wrong password (`KeystoreLocked`) is told apart from an edited file
(`KeystoreCorrupt`). The GCM AAD is the canonical JSON of every field except `ciphertext` and
`sha256`, so editing the parameters is detected too; `sha256` over the rest of the file catches
plain damage early. The file is replaced atomically (temp file, fsync, rename) with mode 0600, and
is either loaded whole or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ._codec import b64d, b64e, canonical_json
from .errors import CryptoError, KeystoreCorrupt, KeystoreError, KeystoreLocked
from .keys import DeviceKeys

KEYSTORE_FORMAT = "peerpost-keystore"
KEYSTORE_VERSION = 1
DEFAULT_SCRYPT_N = 1 << 15  # ~0.1 s and 32 MiB here: slow for guessing, quick for a login
SCRYPT_R = 8
SCRYPT_P = 1
MIN_SCRYPT_N = 1 << 10  # tests only; anything lower is refused
MAX_SCRYPT_N = 1 << 20  # a hostile file must not make us allocate gigabytes
MAX_KEYSTORE_BYTES = 1 << 20
_CHECK_LABEL = b"peerpost/keystore/password-check/v1"
_FIELDS = {"format", "version", "kdf", "cipher", "nonce", "check", "ciphertext", "sha256"}


@dataclass(frozen=True)
class Keystore:
    keys: DeviceKeys
    storage_key: bytes = field(repr=False)
    meta: dict[str, Any]


def _derive(password: str, salt: bytes, n: int, r: int, p: int) -> tuple[bytes, bytes]:
    if not isinstance(password, str) or not password:
        raise KeystoreError("the keystore password must be a non-empty string")
    try:
        secret = password.encode("utf-8")
    except UnicodeEncodeError as e:
        raise KeystoreError("the keystore password is not valid Unicode text") from e
    out = Scrypt(salt=salt, length=64, n=n, r=r, p=p).derive(secret)
    return out[:32], out[32:]


def _check_tag(check_key: bytes, unsealed_fields: dict[str, Any]) -> bytes:
    return hmac.new(check_key, _CHECK_LABEL + canonical_json(unsealed_fields), hashlib.sha256).digest()


def _file_digest(doc: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json({k: v for k, v in doc.items() if k != "sha256"})).hexdigest()


def _seal(keystore: Keystore, password: str, scrypt_n: int) -> bytes:
    salt = secrets.token_bytes(16)
    nonce = secrets.token_bytes(12)
    aes_key, check_key = _derive(password, salt, scrypt_n, SCRYPT_R, SCRYPT_P)
    header: dict[str, Any] = {
        "format": KEYSTORE_FORMAT,
        "version": KEYSTORE_VERSION,
        "kdf": {"name": "scrypt", "n": scrypt_n, "r": SCRYPT_R, "p": SCRYPT_P, "salt": b64e(salt)},
        "cipher": "aes-256-gcm",
        "nonce": b64e(nonce),
    }
    secret = canonical_json(
        {
            "identity": b64e(keystore.keys.identity_private_raw()),
            "encryption": b64e(keystore.keys.encryption_private_der()),
            "storage_key": b64e(keystore.storage_key),
            "meta": keystore.meta,
        }
    )
    doc = dict(header)
    doc["check"] = b64e(_check_tag(check_key, header))
    aad = canonical_json(doc)
    doc["ciphertext"] = b64e(AESGCM(aes_key).encrypt(nonce, secret, aad))
    doc["sha256"] = _file_digest(doc)
    return canonical_json(doc) + b"\n"


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so a crash leaves either the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # the umask cannot widen it, but an odd filesystem might ignore O_CREAT's mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def create_keystore(
    path: str | os.PathLike[str],
    keys: DeviceKeys,
    password: str,
    meta: dict[str, Any] | None = None,
    *,
    storage_key: bytes | None = None,
    scrypt_n: int = DEFAULT_SCRYPT_N,
) -> Keystore:
    """Write a new keystore (replacing any file at `path`) and return what it holds.

    Blocking (~0.1 s of scrypt): async callers use `asyncio.to_thread`.
    """
    if not MIN_SCRYPT_N <= scrypt_n <= MAX_SCRYPT_N or scrypt_n & (scrypt_n - 1):
        raise KeystoreError(f"scrypt n must be a power of two in {MIN_SCRYPT_N}..{MAX_SCRYPT_N}")
    if storage_key is None:
        storage_key = secrets.token_bytes(32)
    if len(storage_key) != 32:
        raise KeystoreError("storage key must be 32 bytes")
    meta = dict(meta or {})
    try:
        canonical_json(meta)
    except (TypeError, ValueError) as e:
        raise KeystoreError(f"keystore meta must be JSON-serialisable: {e}") from e
    keystore = Keystore(keys=keys, storage_key=storage_key, meta=meta)
    _write_atomic(Path(path), _seal(keystore, password, scrypt_n))
    return keystore


def _corrupt(path: Path, why: str) -> KeystoreCorrupt:
    return KeystoreCorrupt(
        f"keystore {path} is damaged or not a PeerPost keystore ({why}); nothing was loaded"
    )


def _read_doc(path: Path) -> dict[str, Any]:
    try:
        size = path.stat().st_size
    except FileNotFoundError as e:
        raise KeystoreError(f"no keystore at {path}") from e
    if size > MAX_KEYSTORE_BYTES:
        raise _corrupt(path, f"{size} bytes is far larger than a keystore")
    raw = path.read_bytes()
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise _corrupt(path, "not valid JSON, perhaps truncated") from e
    if not isinstance(doc, dict) or set(doc) != _FIELDS:
        raise _corrupt(path, "fields missing or unexpected")
    if doc["format"] != KEYSTORE_FORMAT:
        raise _corrupt(path, "wrong format marker")
    try:
        digest = _file_digest(doc)
    except (UnicodeEncodeError, ValueError) as e:  # escaped lone surrogates, NaN and the like
        raise _corrupt(path, "content cannot be re-encoded") from e
    if doc["sha256"] != digest:
        raise _corrupt(path, "checksum mismatch")
    if doc["version"] != KEYSTORE_VERSION:
        raise KeystoreCorrupt(
            f"keystore {path} has format version {doc['version']!r}; "
            f"this build reads version {KEYSTORE_VERSION}"
        )
    return doc


def load_keystore(path: str | os.PathLike[str], password: str) -> Keystore:
    """Open the keystore; `KeystoreLocked` on a wrong password, `KeystoreCorrupt` on damage.

    Blocking (~0.1 s of scrypt): async callers use `asyncio.to_thread`.
    """
    path = Path(path)
    doc = _read_doc(path)
    kdf = doc["kdf"]
    try:
        if (
            not isinstance(kdf, dict)
            or set(kdf) != {"name", "n", "r", "p", "salt"}
            or kdf["name"] != "scrypt"
        ):
            raise ValueError("unknown key derivation")
        n, r, p = kdf["n"], kdf["r"], kdf["p"]
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (n, r, p)):
            raise ValueError("scrypt parameters must be integers")
        if not MIN_SCRYPT_N <= n <= MAX_SCRYPT_N or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
            raise ValueError("scrypt parameters out of range")
        salt = b64d(kdf["salt"])
        nonce = b64d(doc["nonce"])
        check = b64d(doc["check"])
        ciphertext = b64d(doc["ciphertext"])
        if doc["cipher"] != "aes-256-gcm" or len(nonce) != 12 or len(salt) < 16:
            raise ValueError("unknown cipher or bad nonce / salt")
    except (ValueError, TypeError) as e:
        raise _corrupt(path, str(e)) from e

    aes_key, check_key = _derive(password, salt, n, r, p)
    header = {k: doc[k] for k in ("format", "version", "kdf", "cipher", "nonce")}
    if not hmac.compare_digest(_check_tag(check_key, header), check):
        raise KeystoreLocked(f"wrong password for the keystore at {path}")
    aad = canonical_json({**header, "check": doc["check"]})
    try:
        secret = json.loads(AESGCM(aes_key).decrypt(nonce, ciphertext, aad))
        # GCM just authenticated these bytes as written by us: skip the slow RSA re-validation.
        keys = DeviceKeys.from_private_bytes(
            b64d(secret["identity"]), b64d(secret["encryption"]), validate=False
        )
        storage_key = b64d(secret["storage_key"])
        meta = secret["meta"]
        if len(storage_key) != 32 or not isinstance(meta, dict) or set(secret) != {
            "identity", "encryption", "storage_key", "meta",
        }:  # fmt: skip
            raise ValueError("sealed content has the wrong shape")
    except (InvalidTag, ValueError, TypeError, KeyError, CryptoError) as e:
        raise _corrupt(path, "sealed content does not authenticate") from e
    return Keystore(keys=keys, storage_key=storage_key, meta=meta)


def change_keystore_password(
    path: str | os.PathLike[str], old: str, new: str, *, scrypt_n: int | None = None
) -> Keystore:
    """Re-seal the same keys, storage key and meta under `new` (fresh salt and nonce), atomically."""
    path = Path(path)
    current = load_keystore(path, old)
    if scrypt_n is None:
        scrypt_n = json.loads(path.read_bytes())["kdf"]["n"]
    return create_keystore(
        path, current.keys, new, current.meta, storage_key=current.storage_key, scrypt_n=scrypt_n
    )
