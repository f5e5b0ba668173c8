"""PQXDH key agreement (Signal's specification, revision 3) with X25519, SHA-256 and ML-KEM-768.

The initiator (Alice) takes a verified `PrekeyBundle` of the responder (Bob) and derives

    DH1 = DH(IK_A, SPK_B)   DH2 = DH(EK_A, IK_B)   DH3 = DH(EK_A, SPK_B)   [DH4 = DH(EK_A, OPK_B)]
    (CT, SS) = ML-KEM-768.Encaps(PQPK_B)
    SK = HKDF-SHA256(salt = 32 zero bytes, ikm = 32 × 0xFF || DH1 || DH2 || DH3 [|| DH4] || SS,
                     info = "PeerPost_X25519_SHA-256_ML-KEM-768", 32 bytes)

where IK are the devices' Ed25519 identity keys used in their X25519 form (`crypto._montgomery`),
so the pinned identity keys authenticate the agreement. The associated data binds both identity
keys and both (user, device) names; the session id names the agreement for both sides. The
responder repeats the derivation from the `PrekeyHeader` the initiator sends with its first
messages. This module only derives secrets: the ratchet and the wire format are elsewhere.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import mlkem, x25519

from ._codec import lp, u64
from ._kdf import hkdf_sha256
from ._montgomery import x25519_private_from_ed25519, x25519_public_from_ed25519
from .errors import NoSession, SessionError
from .keys import DeviceKeys
from .prekeys import MLKEM768_CIPHERTEXT_BYTES, PrekeyBundle, PrekeyKind, PrekeyPair

PQXDH_INFO = b"PeerPost_X25519_SHA-256_ML-KEM-768"
AD_DOMAIN = b"peerpost/pqxdh-ad/v1\x00"
SESSION_ID_DOMAIN = b"peerpost/session-id/v1\x00"
SESSION_ID_BYTES = 16
_F = b"\xff" * 32  # X25519's F: the first 32 bytes of the KDF input (PQXDH section 2.2)


@dataclass(frozen=True)
class PrekeyHeader:
    """What the initiator sends (in every message until answered) so the responder can agree too."""

    identity_key: bytes  # the initiator's Ed25519 identity key
    ephemeral_key: bytes  # X25519
    signed_prekey_id: int
    one_time_prekey_id: int  # 0: the bundle had no one-time curve prekey
    kem_kind: PrekeyKind  # KEM_ONE_TIME or KEM_LAST_RESORT
    kem_prekey_id: int
    kem_ciphertext: bytes


@dataclass(frozen=True, eq=False)
class Agreement:
    shared_secret: bytes
    associated_data: bytes
    session_id: bytes
    responder_ratchet_key: bytes  # SPK_B's public key: the initiator's first remote ratchet key

    def __repr__(self) -> str:
        return f"Agreement(session={self.session_id.hex()})"


def associated_data(
    initiator_user: int, initiator_device: str, initiator_ik: bytes,
    responder_user: int, responder_device: str, responder_ik: bytes,
) -> bytes:  # fmt: skip
    return (
        AD_DOMAIN
        + lp(initiator_ik)
        + lp(responder_ik)
        + u64(initiator_user)
        + lp(initiator_device.encode("ascii"))
        + u64(responder_user)
        + lp(responder_device.encode("ascii"))
    )


def _session_id(ad: bytes, header: PrekeyHeader) -> bytes:
    material = SESSION_ID_DOMAIN + lp(ad) + header.ephemeral_key + header.kem_ciphertext
    return hashlib.sha256(material).digest()[:SESSION_ID_BYTES]


def _dh(private: x25519.X25519PrivateKey, public: bytes) -> bytes:
    try:
        return private.exchange(x25519.X25519PublicKey.from_public_bytes(public))
    except ValueError as e:  # a low-order point gives an all-zero secret, which OpenSSL refuses
        raise SessionError("a prekey or identity key is a low-order point") from e


def _derive(dh_outputs: list[bytes], kem_secret: bytes) -> bytes:
    return hkdf_sha256(_F + b"".join(dh_outputs) + kem_secret, bytes(32), PQXDH_INFO, 32)


def initiate(
    keys: DeviceKeys,
    user_id: int,
    device_id: str,
    bundle: PrekeyBundle,
    *,
    ephemeral: x25519.X25519PrivateKey | None = None,
    kem_encapsulation: tuple[bytes, bytes] | None = None,
) -> tuple[Agreement, PrekeyHeader]:
    """Alice's side. `bundle` must come from `verify_prekey_bundle` against the pinned key.

    `ephemeral` and `kem_encapsulation` (shared secret, ciphertext) fix the random parts, for
    known-answer vectors only."""
    ek = ephemeral or x25519.X25519PrivateKey.generate()
    if kem_encapsulation is None:
        kem_encapsulation = mlkem.MLKEM768PublicKey.from_public_bytes(
            bundle.kem_prekey.public_key
        ).encapsulate()
    kem_secret, kem_ct = kem_encapsulation
    ik_a = x25519_private_from_ed25519(keys.identity_private_raw())
    ik_b = x25519_public_from_ed25519(bundle.identity_key)
    spk = bundle.signed_prekey.public_key
    dhs = [_dh(ik_a, spk), _dh(ek, ik_b), _dh(ek, spk)]
    if bundle.one_time_prekey is not None:
        dhs.append(_dh(ek, bundle.one_time_prekey.public_key))
    header = PrekeyHeader(
        identity_key=keys.identity_public_bytes(),
        ephemeral_key=ek.public_key().public_bytes_raw(),
        signed_prekey_id=bundle.signed_prekey.key_id,
        one_time_prekey_id=0 if bundle.one_time_prekey is None else bundle.one_time_prekey.key_id,
        kem_kind=bundle.kem_prekey.kind,
        kem_prekey_id=bundle.kem_prekey.key_id,
        kem_ciphertext=kem_ct,
    )
    ad = associated_data(
        user_id,
        device_id,
        keys.identity_public_bytes(),
        bundle.user_id,
        bundle.device_id,
        bundle.identity_key,
    )
    return Agreement(_derive(dhs, kem_secret), ad, _session_id(ad, header), spk), header


def respond(
    keys: DeviceKeys,
    user_id: int,
    device_id: str,
    initiator_user: int,
    initiator_device: str,
    header: PrekeyHeader,
    *,
    signed_prekey: PrekeyPair | None,
    one_time_prekey: PrekeyPair | None,
    kem_prekey: PrekeyPair | None,
) -> Agreement:
    """Bob's side, given the private prekeys the header names (None: this device no longer has it).

    The caller has checked `header.identity_key` against the key pinned for the initiator. A
    missing prekey is `NoSession` (the initiator must fetch a new bundle: healing)."""
    if signed_prekey is None or signed_prekey.public.kind is not PrekeyKind.SIGNED:
        raise NoSession(f"signed prekey {header.signed_prekey_id} is no longer on this device")
    if kem_prekey is None or kem_prekey.public.kind is not header.kem_kind:
        raise NoSession(f"ML-KEM prekey {header.kem_prekey_id} is no longer on this device")
    if header.one_time_prekey_id and (
        one_time_prekey is None or one_time_prekey.public.kind is not PrekeyKind.ONE_TIME
    ):
        raise NoSession(f"one-time prekey {header.one_time_prekey_id} was already used or is gone")
    if len(header.kem_ciphertext) != MLKEM768_CIPHERTEXT_BYTES:
        raise SessionError("ML-KEM ciphertext has the wrong length")
    ik_b = x25519_private_from_ed25519(keys.identity_private_raw())
    ik_a = x25519_public_from_ed25519(header.identity_key)
    spk = signed_prekey.x25519()
    dhs = [_dh(spk, ik_a), _dh(ik_b, header.ephemeral_key), _dh(spk, header.ephemeral_key)]
    if header.one_time_prekey_id and one_time_prekey is not None:
        dhs.append(_dh(one_time_prekey.x25519(), header.ephemeral_key))
    try:
        kem_secret = kem_prekey.mlkem().decapsulate(header.kem_ciphertext)
    except ValueError as e:
        raise SessionError("ML-KEM ciphertext does not decapsulate") from e
    ad = associated_data(
        initiator_user,
        initiator_device,
        header.identity_key,
        user_id,
        device_id,
        keys.identity_public_bytes(),
    )
    return Agreement(_derive(dhs, kem_secret), ad, _session_id(ad, header), signed_prekey.public.public_key)
