"""HKDF-SHA256 and HMAC-SHA256 on the standard library (private).

The ratchet derives several keys per message; `hmac.digest` is the C fast path, several times
quicker per call than building `cryptography` HKDF objects, and gives the same bytes (RFC 5869;
tests check it against `cryptography`'s HKDF and the RFC's test vector).
"""

from __future__ import annotations

import hmac

_HASH = "sha256"
HASH_BYTES = 32


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, _HASH)


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    if not 0 < length <= 255 * HASH_BYTES:
        raise ValueError("HKDF length out of range")
    prk = hmac.digest(salt or bytes(HASH_BYTES), ikm, _HASH)
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.digest(prk, block + info + bytes([counter]), _HASH)
        out += block
        counter += 1
    return out[:length]
