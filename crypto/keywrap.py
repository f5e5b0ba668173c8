"""RSA-OAEP key wrapping exactly as the seed does it: OAEP, SHA-256, MGF1-SHA-256, no label.

Kept as plain `cryptography` calls so any tool with that library can wrap a key for a PeerPost
device or unwrap one from an envelope (tests/crypto pin this both ways).
"""

from __future__ import annotations

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from . import _publickeys
from .errors import DecryptionFailed, EnvelopeError
from .keys import DeviceKeys

OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
CONTENT_KEY_BYTES = 32


def wrap_key(encryption_key_der: bytes, key: bytes) -> bytes:
    """Wrap a 32-byte AES key for the device whose RSA-4096 public key (DER SPKI) is given."""
    if len(key) != CONTENT_KEY_BYTES:
        raise EnvelopeError(f"a content key is {CONTENT_KEY_BYTES} bytes")
    try:
        public = _publickeys.encryption_public(encryption_key_der)
    except ValueError as e:
        raise EnvelopeError(f"unusable encryption key: {e}") from e
    return public.encrypt(key, OAEP)


def unwrap_key(keys: DeviceKeys, wrapped: bytes) -> bytes:
    """Unwrap a content key with this device's RSA private key; `DecryptionFailed` on any fault."""
    try:
        key = keys.encryption.decrypt(wrapped, OAEP)
    except ValueError as e:
        raise DecryptionFailed("the wrapped key does not open with this device's encryption key") from e
    if len(key) != CONTENT_KEY_BYTES:
        raise DecryptionFailed(f"the unwrapped key is {len(key)} bytes, not {CONTENT_KEY_BYTES}")
    return key
