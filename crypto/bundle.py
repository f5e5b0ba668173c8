"""Device bundles: the public half of a device, self-signed by its identity key.

The server stores bundles and hands them out; it cannot forge one for a device it does not hold the
identity key of. `verify_bundle` is the only way to get a `DeviceBundle` from untrusted bytes, so a
`DeviceBundle` object is always one whose signature verified. Trusting *which* identity key belongs
to a user (pinning, safety numbers) is the peer's job, not this module's.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature

from . import _publickeys
from ._codec import lp, u64
from .errors import BundleInvalid
from .keys import DeviceKeys

BUNDLE_DOMAIN = b"peerpost/bundle/v1\x00"
DEVICE_ID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{8,64}$")
SIGNATURE_BYTES = 64


@dataclass(frozen=True)
class DeviceBundle:
    user_id: int
    device_id: str
    identity_key: bytes
    encryption_key: bytes
    created_at: int
    signature: bytes

    @property
    def fingerprint(self) -> str:
        """Hex SHA-256 over both public keys: a short name for this exact key pair."""
        return hashlib.sha256(
            b"peerpost/device-fingerprint/v1\x00" + lp(self.identity_key) + lp(self.encryption_key)
        ).hexdigest()


def bundle_signed_bytes(
    user_id: int, device_id: str, identity_key: bytes, encryption_key: bytes, created_at: int
) -> bytes:
    """The canonical bytes a bundle signature covers (documented in docs/protocol.md)."""
    return (
        BUNDLE_DOMAIN
        + u64(user_id)
        + lp(device_id.encode("ascii"))
        + lp(identity_key)
        + lp(encryption_key)
        + u64(created_at)
    )


def _check_ids(user_id: int, device_id: str, created_at: int) -> None:
    if not isinstance(user_id, int) or isinstance(user_id, bool) or not 0 <= user_id < 2**63:
        raise BundleInvalid(f"user id must be a non-negative integer, got {user_id!r}")
    if not isinstance(device_id, str) or not DEVICE_ID_PATTERN.match(device_id):
        raise BundleInvalid("device id must be 8-64 characters of A-Z a-z 0-9 _ -")
    if not isinstance(created_at, int) or isinstance(created_at, bool) or not 0 <= created_at < 2**63:
        raise BundleInvalid(f"created-at must be unix seconds, got {created_at!r}")


def make_bundle(
    keys: DeviceKeys, user_id: int, device_id: str, created_at: int | None = None
) -> DeviceBundle:
    """Sign this device's public keys under its user and device id."""
    if created_at is None:
        created_at = int(time.time())
    _check_ids(user_id, device_id, created_at)
    identity_key = keys.identity_public_bytes()
    encryption_key = keys.encryption_public_der()
    signature = keys.sign(bundle_signed_bytes(user_id, device_id, identity_key, encryption_key, created_at))
    return DeviceBundle(user_id, device_id, identity_key, encryption_key, created_at, signature)


def verify_bundle(
    user_id: int,
    device_id: str,
    identity_key: bytes,
    encryption_key: bytes,
    created_at: int,
    signature: bytes,
) -> DeviceBundle:
    """Parse and verify a published bundle in one step; any fault is `BundleInvalid`."""
    _check_ids(user_id, device_id, created_at)
    for name, value in (
        ("identity key", identity_key),
        ("encryption key", encryption_key),
        ("signature", signature),
    ):
        if not isinstance(value, bytes):
            raise BundleInvalid(f"{name} must be bytes")
    try:
        ident = _publickeys.identity_public(identity_key)
    except ValueError as e:
        raise BundleInvalid(f"device {device_id}: bad identity key: {e}") from e
    try:
        _publickeys.encryption_public(encryption_key)
    except ValueError as e:
        raise BundleInvalid(f"device {device_id}: bad encryption key: {e}") from e
    if len(signature) != SIGNATURE_BYTES:
        raise BundleInvalid(f"device {device_id}: signature must be {SIGNATURE_BYTES} bytes")
    try:
        ident.verify(
            signature, bundle_signed_bytes(user_id, device_id, identity_key, encryption_key, created_at)
        )
    except InvalidSignature as e:
        raise BundleInvalid(
            f"device {device_id} of user {user_id}: the bundle's self-signature does not verify"
        ) from e
    return DeviceBundle(user_id, device_id, identity_key, encryption_key, created_at, signature)
