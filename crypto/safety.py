"""Safety numbers: 60 digits both users compute alike, to compare in person or by QR code.

Signal's displayable fingerprint, unchanged: each side hashes `0x0000 || keys || user id || keys`
with SHA-512, then 5199 more times `SHA-512(previous || keys)`; the first 30 bytes give six 5-byte
big-endian numbers mod 100000, i.e. 30 digits; the two halves are concatenated smaller first, so
both ends show the same 60 digits. A user with several devices contributes all their identity keys,
sorted and concatenated, so adding, removing or changing any device key changes the number.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence

import segno

from .errors import CryptoError
from .keys import IDENTITY_KEY_BYTES

ITERATIONS = 5200
_VERSION = b"\x00\x00"


def fingerprint_half(key_bytes: bytes, stable_id: bytes, iterations: int = ITERATIONS) -> str:
    """30 digits for one side (Signal's `get_fingerprint` + `get_encoded_string`)."""
    digest = hashlib.sha512(_VERSION + key_bytes + stable_id + key_bytes).digest()
    for _ in range(iterations - 1):
        digest = hashlib.sha512(digest + key_bytes).digest()
    return "".join(f"{int.from_bytes(digest[i : i + 5], 'big') % 100000:05d}" for i in range(0, 30, 5))


def _keys_bytes(identity_keys: Sequence[bytes] | bytes, who: str) -> bytes:
    keys = [identity_keys] if isinstance(identity_keys, bytes) else list(identity_keys)
    if not keys:
        raise CryptoError(f"{who} has no identity keys to compute a safety number from")
    for k in keys:
        if not isinstance(k, bytes) or len(k) != IDENTITY_KEY_BYTES:
            raise CryptoError(f"{who}: identity keys must be {IDENTITY_KEY_BYTES} raw bytes each")
    return b"".join(sorted(set(keys)))


def safety_number(
    local_user_id: int,
    local_identity_keys: Sequence[bytes] | bytes,
    remote_user_id: int,
    remote_identity_keys: Sequence[bytes] | bytes,
) -> str:
    """The 60-digit safety number of a pair of users (same value on both sides)."""
    local = fingerprint_half(_keys_bytes(local_identity_keys, "local user"), str(local_user_id).encode())
    remote = fingerprint_half(_keys_bytes(remote_identity_keys, "remote user"), str(remote_user_id).encode())
    return local + remote if local < remote else remote + local


def _check(s: str) -> str:
    if not isinstance(s, str) or len(s) != 60 or not s.isdigit() or not s.isascii():
        raise CryptoError("a safety number is exactly 60 digits")
    return s


def format_safety_number(s: str) -> str:
    """12 groups of 5 digits, as people read them aloud."""
    s = _check(s)
    return " ".join(s[i : i + 5] for i in range(0, 60, 5))


def safety_qr_svg(s: str) -> str:
    """The safety number as an SVG QR code (numeric mode, error correction M)."""
    out = io.BytesIO()
    segno.make(_check(s), error="m", micro=False).save(out, kind="svg", scale=4, xmldecl=False)
    return out.getvalue().decode("utf-8")


def safety_qr_text(s: str) -> str:
    """The safety number as a QR code drawn with block characters, for the terminal."""
    out = io.StringIO()
    segno.make(_check(s), error="m", micro=False).terminal(out=out, compact=True)
    return out.getvalue()
