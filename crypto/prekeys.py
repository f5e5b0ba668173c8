"""Prekeys: the public keys a device publishes so others can start a session while it is offline.

Four kinds, every one signed by the device's Ed25519 identity key (PQXDH only requires signatures
on the signed and the post-quantum prekeys; signing the one-time curve keys too costs nothing and
stops a server from handing out curve keys of its own):

| kind | algorithm | use |
|---|---|---|
| `SIGNED` | X25519 | medium-term, rotated on a schedule; the responder's first ratchet key |
| `ONE_TIME` | X25519 | handed out once by the server, then deleted |
| `KEM_ONE_TIME` | ML-KEM-768 | handed out once by the server, then deleted |
| `KEM_LAST_RESORT` | ML-KEM-768 | rotated like `SIGNED`; handed out when no one-time KEM key is left |

`verify_prekey_bundle` is the only way to get a `PrekeyBundle` from untrusted data; whether its
identity key is the right one for that device (pinning) is the caller's decision. Private halves
(`PrekeyPair`) never leave the device: the peer keeps them in its encrypted local store.
"""

from __future__ import annotations

import os
import struct
import time
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from . import _publickeys
from ._codec import Reader, lp, u64
from .bundle import DEVICE_ID_PATTERN
from .errors import PrekeyInvalid
from .keys import DeviceKeys

PREKEY_DOMAIN = b"peerpost/prekey/v1\x00"
X25519_KEY_BYTES = 32
MLKEM768_PUBLIC_BYTES = 1184
MLKEM768_SEED_BYTES = 64
MLKEM768_CIPHERTEXT_BYTES = 1088
SIGNATURE_BYTES = 64
MAX_KEY_ID = 2**32 - 1


class PrekeyKind(IntEnum):
    SIGNED = 1
    ONE_TIME = 2
    KEM_LAST_RESORT = 3
    KEM_ONE_TIME = 4

    @property
    def is_kem(self) -> bool:
        return self in (PrekeyKind.KEM_LAST_RESORT, PrekeyKind.KEM_ONE_TIME)

    @property
    def is_one_time(self) -> bool:
        return self in (PrekeyKind.ONE_TIME, PrekeyKind.KEM_ONE_TIME)

    @property
    def public_bytes(self) -> int:
        return MLKEM768_PUBLIC_BYTES if self.is_kem else X25519_KEY_BYTES


@dataclass(frozen=True)
class PublicPrekey:
    """One published prekey as the server stores and hands it out."""

    kind: PrekeyKind
    key_id: int
    created_at: int
    public_key: bytes
    signature: bytes


@dataclass(frozen=True, eq=False)
class PrekeyPair:
    """A prekey with its private half: 32 raw X25519 bytes, or the 64-byte ML-KEM seed."""

    public: PublicPrekey
    private: bytes

    def __repr__(self) -> str:  # never print key material
        return f"PrekeyPair({self.public.kind.name}, id={self.public.key_id})"

    def x25519(self) -> x25519.X25519PrivateKey:
        if self.public.kind.is_kem:
            raise PrekeyInvalid(f"prekey {self.public.key_id} is an ML-KEM key, not X25519")
        return x25519.X25519PrivateKey.from_private_bytes(self.private)

    def mlkem(self) -> mlkem.MLKEM768PrivateKey:
        if not self.public.kind.is_kem:
            raise PrekeyInvalid(f"prekey {self.public.key_id} is an X25519 key, not ML-KEM")
        return mlkem.MLKEM768PrivateKey.from_seed_bytes(self.private)

    def to_bytes(self) -> bytes:
        p = self.public
        return (
            struct.pack(">BBIQ", 1, p.kind, p.key_id, p.created_at)
            + lp(p.public_key)
            + lp(p.signature)
            + lp(self.private)
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> PrekeyPair:
        try:
            r = Reader(data)
            if r.u8() != 1:
                raise ValueError("unknown prekey record version")
            kind = PrekeyKind(r.u8())
            key_id = r.u32()
            created_at = struct.unpack(">Q", r.take(8))[0]
            public_key, signature, private = r.take(r.u32()), r.take(r.u32()), r.take(r.u32())
            if r.remaining():
                raise ValueError("trailing bytes")
        except ValueError as e:
            raise PrekeyInvalid(f"stored prekey record is damaged: {e}") from e
        return cls(PublicPrekey(kind, key_id, created_at, public_key, signature), private)


def prekey_signed_bytes(
    device_id: str, kind: PrekeyKind, key_id: int, created_at: int, public_key: bytes
) -> bytes:
    """What a prekey signature covers (docs/protocol.md): kind, id, time and the owning device."""
    return (
        PREKEY_DOMAIN
        + lp(device_id.encode("ascii"))
        + bytes([kind])
        + struct.pack(">I", key_id)
        + u64(created_at)
        + lp(public_key)
    )


def generate_prekey(
    keys: DeviceKeys,
    device_id: str,
    kind: PrekeyKind,
    key_id: int,
    created_at: int | None = None,
    *,
    private: bytes | None = None,
) -> PrekeyPair:
    """A fresh prekey of `kind`, signed by this device. `private` fixes the key (test vectors)."""
    if not 1 <= key_id <= MAX_KEY_ID:
        raise PrekeyInvalid(f"prekey id must be 1..{MAX_KEY_ID}, got {key_id}")
    if created_at is None:
        created_at = int(time.time())
    if kind.is_kem:
        seed = private if private is not None else os.urandom(MLKEM768_SEED_BYTES)
        public_key = mlkem.MLKEM768PrivateKey.from_seed_bytes(seed).public_key().public_bytes_raw()
    else:
        seed = private if private is not None else os.urandom(X25519_KEY_BYTES)
        public_key = x25519.X25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    signature = keys.sign(prekey_signed_bytes(device_id, kind, key_id, created_at, public_key))
    return PrekeyPair(PublicPrekey(kind, key_id, created_at, public_key, signature), seed)


def verify_prekey(
    identity_key: bytes, device_id: str, prekey: PublicPrekey, *kinds: PrekeyKind
) -> PublicPrekey:
    """Check shape, kind (one of `kinds`) and signature; any fault is `PrekeyInvalid`."""
    if not isinstance(device_id, str) or not DEVICE_ID_PATTERN.match(device_id):
        raise PrekeyInvalid("device id is malformed")
    try:
        kind = PrekeyKind(prekey.kind)
    except ValueError as e:
        raise PrekeyInvalid(f"unknown prekey kind {prekey.kind!r}") from e
    if kinds and kind not in kinds:
        raise PrekeyInvalid(
            f"prekey {prekey.key_id} is a {kind.name} key, "
            f"where {'/'.join(k.name for k in kinds)} was expected"
        )
    if not isinstance(prekey.key_id, int) or not 1 <= prekey.key_id <= MAX_KEY_ID:
        raise PrekeyInvalid("prekey id must be a 32-bit integer above 0")
    if not isinstance(prekey.created_at, int) or not 0 <= prekey.created_at < 2**63:
        raise PrekeyInvalid("prekey created-at must be unix seconds")
    if not isinstance(prekey.public_key, bytes) or len(prekey.public_key) != kind.public_bytes:
        raise PrekeyInvalid(f"{kind.name} prekey must be {kind.public_bytes} bytes")
    if not isinstance(prekey.signature, bytes) or len(prekey.signature) != SIGNATURE_BYTES:
        raise PrekeyInvalid(f"prekey signature must be {SIGNATURE_BYTES} bytes")
    try:
        ident = _publickeys.identity_public(identity_key)
        ident.verify(
            prekey.signature,
            prekey_signed_bytes(device_id, kind, prekey.key_id, prekey.created_at, prekey.public_key),
        )
    except ValueError as e:
        raise PrekeyInvalid(f"device {device_id}: bad identity key: {e}") from e
    except InvalidSignature as e:
        raise PrekeyInvalid(
            f"device {device_id}: {kind.name} prekey {prekey.key_id} "
            "is not signed by the device's identity key"
        ) from e
    if kind.is_kem:
        try:
            mlkem.MLKEM768PublicKey.from_public_bytes(prekey.public_key)
        except ValueError as e:
            raise PrekeyInvalid(
                f"device {device_id}: ML-KEM prekey {prekey.key_id} is not a valid key"
            ) from e
    if kind is not prekey.kind:
        prekey = PublicPrekey(kind, prekey.key_id, prekey.created_at, prekey.public_key, prekey.signature)
    return prekey


@dataclass(frozen=True)
class PrekeyBundle:
    """What one claim returns for one device: enough to start a PQXDH session with it."""

    user_id: int
    device_id: str
    identity_key: bytes
    signed_prekey: PublicPrekey
    kem_prekey: PublicPrekey  # one-time when the server had one, else the last-resort key
    one_time_prekey: PublicPrekey | None  # None when the stock ran out (PQXDH allows it)


def verify_prekey_bundle(bundle: PrekeyBundle, identity_key: bytes) -> PrekeyBundle:
    """Verify every prekey against `identity_key` (the pinned key, not the one the server sent)."""
    if bundle.identity_key != identity_key:
        raise PrekeyInvalid(f"device {bundle.device_id}: the bundle's identity key is not the pinned one")
    return PrekeyBundle(
        bundle.user_id,
        bundle.device_id,
        identity_key,
        verify_prekey(identity_key, bundle.device_id, bundle.signed_prekey, PrekeyKind.SIGNED),
        verify_prekey(
            identity_key,
            bundle.device_id,
            bundle.kem_prekey,
            PrekeyKind.KEM_ONE_TIME,
            PrekeyKind.KEM_LAST_RESORT,
        ),
        None
        if bundle.one_time_prekey is None
        else verify_prekey(identity_key, bundle.device_id, bundle.one_time_prekey, PrekeyKind.ONE_TIME),
    )
