"""Signatures over WebRTC signalling (offer, answer, candidates, bye).

The signature binds the kind, both device ids, a fresh nonce and the exact body bytes, so the
signalling server can neither splice its own SDP (and DTLS fingerprint) into a link nor replay one
device's offer to another. Nonce freshness is checked by the caller, who chose or remembers it.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature

from . import _publickeys
from ._codec import lp
from .errors import SignatureInvalid
from .keys import DeviceKeys

SIGNAL_DOMAIN = b"peerpost/signal/v1\x00"


def _text(value: object) -> bytes:
    # StrEnum members (signalling.protocol.SignalKind) are str, so they encode as their value.
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise TypeError(f"expected str or bytes, got {type(value).__name__}")


def signal_signed_bytes(
    kind: str, from_device: str, to_device: str, nonce: str | bytes, body: bytes
) -> bytes:
    return (
        SIGNAL_DOMAIN
        + lp(_text(kind))
        + lp(_text(from_device))
        + lp(_text(to_device))
        + lp(_text(nonce))
        + lp(bytes(body))
    )


def sign_signal(
    keys: DeviceKeys, kind: str, from_device: str, to_device: str, nonce: str | bytes, body: bytes
) -> bytes:
    """64-byte Ed25519 signature by this device over one signalling message."""
    return keys.sign(signal_signed_bytes(kind, from_device, to_device, nonce, body))


def verify_signal(
    identity_key: bytes,
    signature: bytes,
    kind: str,
    from_device: str,
    to_device: str,
    nonce: str | bytes,
    body: bytes,
) -> None:
    """Raises `SignatureInvalid` unless `identity_key` (the pinned sender key) signed exactly this."""
    try:
        public = _publickeys.identity_public(identity_key)
    except ValueError as e:
        raise SignatureInvalid(f"signal from device {from_device}: pinned identity key unusable: {e}") from e
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise SignatureInvalid(f"signal from device {from_device}: signature must be 64 bytes")
    try:
        public.verify(signature, signal_signed_bytes(kind, from_device, to_device, nonce, body))
    except InvalidSignature as e:
        raise SignatureInvalid(
            f"{kind!s} from device {from_device} is not signed by its pinned identity key"
        ) from e
