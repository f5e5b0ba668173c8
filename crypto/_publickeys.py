"""Parsing of peers' public keys, validated and cached (private).

Peers' keys arrive as bytes from the server; parsing validates size and type once and caches the
key object so sealing to the same devices again costs nothing extra.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from .keys import IDENTITY_KEY_BYTES, RSA_KEY_BITS, RSA_PUBLIC_EXPONENT


@lru_cache(maxsize=1024)
def identity_public(raw: bytes) -> ed25519.Ed25519PublicKey:
    """Raises ValueError on anything but a 32-byte Ed25519 public key."""
    if not isinstance(raw, bytes) or len(raw) != IDENTITY_KEY_BYTES:
        raise ValueError(f"identity key must be {IDENTITY_KEY_BYTES} raw bytes")
    return ed25519.Ed25519PublicKey.from_public_bytes(raw)


@lru_cache(maxsize=1024)
def encryption_public(der: bytes) -> rsa.RSAPublicKey:
    """Raises ValueError on anything but an RSA-4096 (e=65537) DER SubjectPublicKeyInfo."""
    if not isinstance(der, bytes):
        raise ValueError("encryption key must be bytes")
    key = serialization.load_der_public_key(der)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("encryption key is not an RSA key")
    if key.key_size != RSA_KEY_BITS or key.public_numbers().e != RSA_PUBLIC_EXPONENT:
        raise ValueError(f"encryption key must be RSA-{RSA_KEY_BITS} with e={RSA_PUBLIC_EXPONENT}")
    if key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo) != der:
        raise ValueError("encryption key DER is not canonical")
    return key
