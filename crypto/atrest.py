"""Sealing the peer's local data (history, pinned keys) under the keystore's storage key.

Format: version byte 0x01 || 12-byte random nonce || AES-256-GCM ciphertext+tag, with the caller's
`aad` (e.g. table and row id) authenticated so a sealed value cannot be moved to another row.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .errors import AtRestError

AT_REST_VERSION = 1
_NONCE_BYTES = 12
_OVERHEAD = 1 + _NONCE_BYTES + 16
_DOMAIN = b"peerpost/at-rest/v1\x00"


def _aead(key: bytes) -> AESGCM:
    if not isinstance(key, bytes) or len(key) != 32:
        raise AtRestError("the at-rest key must be 32 bytes")
    return AESGCM(key)


def seal_at_rest(key: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    nonce = os.urandom(_NONCE_BYTES)
    return bytes([AT_REST_VERSION]) + nonce + _aead(key).encrypt(nonce, plaintext, _DOMAIN + aad)


def open_at_rest(key: bytes, blob: bytes, aad: bytes = b"") -> bytes:
    aead = _aead(key)
    if len(blob) < _OVERHEAD:
        raise AtRestError(f"sealed value is {len(blob)} bytes, shorter than the {_OVERHEAD}-byte minimum")
    if blob[0] != AT_REST_VERSION:
        raise AtRestError(f"sealed value has unknown format version {blob[0]}")
    try:
        return aead.decrypt(blob[1 : 1 + _NONCE_BYTES], blob[1 + _NONCE_BYTES :], _DOMAIN + aad)
    except InvalidTag as e:
        raise AtRestError("sealed value does not open: wrong key or context, or it was altered") from e
