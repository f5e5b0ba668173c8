"""The X25519 form of an Ed25519 identity key (private).

PQXDH needs Diffie-Hellman with the identity key; PeerPost's identity keys are Ed25519 (they sign
bundles, envelopes and SDP). Instead of a second long-term key, the same key is used in its
Montgomery form, exactly as libsodium's `crypto_sign_ed25519_pk_to_curve25519` /
`..._sk_to_curve25519` do: the public point maps by the birational equivalence u = (1 + y) / (1 - y)
mod 2^255 - 19, and the private scalar is the clamped first half of SHA-512(seed), which is the very
scalar Ed25519 signs with. So the pinned Ed25519 key *is* the DH key: nothing extra to publish,
sign, pin or rotate, and the safety number covers it unchanged. docs/decisions-crypto.md says why
this and not XEdDSA or a separate signed X25519 identity key.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric import x25519

_P = 2**255 - 19


def x25519_public_from_ed25519(public: bytes) -> bytes:
    """The 32-byte X25519 public key of a 32-byte Ed25519 public key; ValueError if it has none."""
    if not isinstance(public, bytes) or len(public) != 32:
        raise ValueError("an Ed25519 public key is 32 bytes")
    y = int.from_bytes(public, "little") & ((1 << 255) - 1)
    if y >= _P:
        raise ValueError("Ed25519 public key is not canonical (y >= p)")
    if y == 1:  # the neutral point: no Montgomery u
        raise ValueError("Ed25519 public key is the neutral point")
    u = (1 + y) * pow(1 - y, _P - 2, _P) % _P
    return u.to_bytes(32, "little")


def x25519_private_from_ed25519(seed: bytes) -> x25519.X25519PrivateKey:
    """The X25519 private key whose public key is `x25519_public_from_ed25519(ed25519 public)`."""
    if not isinstance(seed, bytes) or len(seed) != 32:
        raise ValueError("an Ed25519 private seed is 32 bytes")
    # X25519 clamps the scalar itself, as Ed25519 does before signing.
    return x25519.X25519PrivateKey.from_private_bytes(hashlib.sha512(seed).digest()[:32])
