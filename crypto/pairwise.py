"""Pairwise sessions: encrypt payload bytes for one (my device, their device) pair, and open them.

This is the API the peer (and later group sender-key distribution) uses: `start_session` from a
verified prekey bundle (PQXDH), `seal` bytes into a self-contained "PPR" message, `peek` a
received message to find its session, `accept_session` for the first message of a new session,
`open_message` to decrypt, and heal requests for a device that cannot decrypt. `PairwiseSession`
serialises to bytes so the caller can store it in the same transaction as the message.

Wire format (docs/protocol.md has it byte by byte; integers big-endian)::

    "PPR" u8 version(1) u8 kind            kind 1 = prekey message, 2 = message, 3 = heal request
    u64 sender_user  u8 n sender_device[n]  u8 m recipient_device[m]
    message_id[16]  session_id[16]
    kind 1:  identity_key[32] ephemeral_key[32] u32 spk_id u32 opk_id u8 kem_kind u32 kem_id kem_ct[1088]
    kind 1, 2:  ratchet_key[32] u32 pn u32 n  u32 c ciphertext[c]
    kind 3:  u64 at_ms  u8 h  h × have message_id[16]  u8 k  k × failed message_id[16]  signature[64]

The AEAD is AES-256-GCM with (key, nonce) = HKDF(message key, info = label || message_id) and
AAD = the session's PQXDH associated data || every byte before `u32 c`. Until the initiator has
received a message on the session, every message it sends is a prekey message, so any one of them
starts the session at the responder on its own (mailbox delivery in any order).

This module never decides *when* to heal or resend: that is the session manager's job (the peer).
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import _publickeys
from ._codec import Reader, lp
from ._kdf import hkdf_sha256
from .bundle import DEVICE_ID_PATTERN
from .errors import (
    IdentityMismatch,
    MalformedSessionMessage,
    NoSession,
    SessionDecryptionFailed,
    SessionError,
    SignatureInvalid,
)
from .keys import DeviceKeys
from .pqxdh import SESSION_ID_BYTES, Agreement, PrekeyHeader, initiate, respond
from .prekeys import MLKEM768_CIPHERTEXT_BYTES, PrekeyBundle, PrekeyKind, PrekeyPair
from .ratchet import RatchetHeader, RatchetState

MAGIC = b"PPR"
VERSION = 1
MESSAGE_KEYS_INFO = b"PeerPost_MessageKeys"
HEAL_DOMAIN = b"peerpost/heal-request/v1\x00"
SESSION_RECORD_VERSION = 1
MAX_PLAINTEXT_BYTES = 160 * 1024  # as the envelope's padded payload
MAX_MESSAGE_BYTES = 512 * 1024
MAX_HEAL_IDS = 255
MAX_HAVE_IDS = 64
_MESSAGE_ID = re.compile(r"^[0-9a-f]{32}$")


class MessageKind(IntEnum):
    PREKEY = 1
    MESSAGE = 2
    HEAL_REQUEST = 3


@dataclass(frozen=True)
class ParsedMessage:
    """A received PPR message, parsed but not authenticated (route and look up with it only)."""

    kind: MessageKind
    sender_user: int
    sender_device: str
    recipient_device: str
    message_id: str  # 32 hex
    session_id: bytes
    prekey: PrekeyHeader | None = None
    ratchet: RatchetHeader | None = None
    ciphertext: bytes = b""
    authenticated_prefix: bytes = field(default=b"", repr=False)  # AAD (messages), signed bytes (heal)
    heal_at_ms: int = 0
    heal_have_ids: tuple[str, ...] = ()
    heal_failed_ids: tuple[str, ...] = ()
    signature: bytes = b""


@dataclass(frozen=True)
class HealRequest:
    """A verified request from `requester` to start a new session and resend what it missed."""

    requester_user: int
    requester_device: str
    request_id: str
    session_id: bytes  # the session it could not decrypt (zeros: none known)
    failed_message_ids: tuple[str, ...]
    at_ms: int
    have_message_ids: tuple[str, ...]  # the newest messages it still has from us, newest first


@dataclass(eq=False)
class PairwiseSession:
    """One side of one session between two devices; mutable, serialisable with `to_bytes`."""

    session_id: bytes
    local_user: int
    local_device: str
    remote_user: int
    remote_device: str
    remote_identity: bytes
    associated_data: bytes
    ratchet: RatchetState
    prekey_header: PrekeyHeader | None  # set on the initiator until the first answer arrives
    created_at_ms: int

    def __repr__(self) -> str:
        return f"PairwiseSession({self.local_device}->{self.remote_device}, id={self.session_id.hex()})"

    @property
    def initiated_here(self) -> bool:
        return self.prekey_header is not None

    def to_bytes(self) -> bytes:
        ph = self.prekey_header
        out = (
            struct.pack(">B", SESSION_RECORD_VERSION)
            + self.session_id
            + struct.pack(">Q", self.local_user)
            + lp(self.local_device.encode("ascii"))
            + struct.pack(">Q", self.remote_user)
            + lp(self.remote_device.encode("ascii"))
            + lp(self.remote_identity)
            + lp(self.associated_data)
            + struct.pack(">Q", self.created_at_ms)
            + lp(self.ratchet.to_bytes())
        )
        return out + (b"\x00" if ph is None else b"\x01" + _prekey_bytes(ph))

    @classmethod
    def from_bytes(cls, data: bytes) -> PairwiseSession:
        try:
            r = Reader(data)
            if r.u8() != SESSION_RECORD_VERSION:
                raise ValueError("unknown session record version")
            session_id = r.take(SESSION_ID_BYTES)
            local_user = struct.unpack(">Q", r.take(8))[0]
            local_device = r.take(r.u32()).decode("ascii")
            remote_user = struct.unpack(">Q", r.take(8))[0]
            remote_device = r.take(r.u32()).decode("ascii")
            remote_identity = r.take(r.u32())
            ad = r.take(r.u32())
            created = struct.unpack(">Q", r.take(8))[0]
            ratchet = RatchetState.from_bytes(r.take(r.u32()))
            ph = _read_prekey(r) if r.u8() else None
            if r.remaining():
                raise ValueError("trailing bytes")
        except (ValueError, UnicodeDecodeError) as e:
            raise MalformedSessionMessage(f"stored session record is damaged: {e}") from e
        return cls(
            session_id,
            local_user,
            local_device,
            remote_user,
            remote_device,
            remote_identity,
            ad,
            ratchet,
            ph,
            created,
        )


# --- encoding helpers -----------------------------------------------------------------------------


def _prekey_bytes(ph: PrekeyHeader) -> bytes:
    return (
        ph.identity_key
        + ph.ephemeral_key
        + struct.pack(">IIBI", ph.signed_prekey_id, ph.one_time_prekey_id, ph.kem_kind, ph.kem_prekey_id)
        + ph.kem_ciphertext
    )


def _read_prekey(r: Reader) -> PrekeyHeader:
    ik, ek = r.take(32), r.take(32)
    spk, opk = r.u32(), r.u32()
    kem_kind = r.u8()
    if kem_kind not in (PrekeyKind.KEM_ONE_TIME, PrekeyKind.KEM_LAST_RESORT):
        raise ValueError(f"kem prekey kind {kem_kind} is not an ML-KEM kind")
    kem_id = r.u32()
    return PrekeyHeader(ik, ek, spk, opk, PrekeyKind(kem_kind), kem_id, r.take(MLKEM768_CIPHERTEXT_BYTES))


def _device(name: str) -> bytes:
    if not isinstance(name, str) or not DEVICE_ID_PATTERN.match(name):
        raise SessionError(f"device id {name!r} is malformed")
    raw = name.encode("ascii")
    return bytes([len(raw)]) + raw


def _message_id(message_id: str) -> bytes:
    if not isinstance(message_id, str) or not _MESSAGE_ID.match(message_id):
        raise SessionError("message id must be 32 lowercase hex digits")
    return bytes.fromhex(message_id)


def _common(
    kind: MessageKind, sender_user: int, sender: str, recipient: str, message_id: str, sid: bytes
) -> bytes:
    return (
        MAGIC
        + struct.pack(">BBQ", VERSION, kind, sender_user)
        + _device(sender)
        + _device(recipient)
        + _message_id(message_id)
        + sid
    )


def _aead(message_key: bytes, message_id: str) -> tuple[AESGCM, bytes]:
    okm = hkdf_sha256(message_key, b"", MESSAGE_KEYS_INFO + bytes.fromhex(message_id), 44)
    return AESGCM(okm[:32]), okm[32:]


# --- starting a session ---------------------------------------------------------------------------


def start_session(
    keys: DeviceKeys,
    user_id: int,
    device_id: str,
    bundle: PrekeyBundle,
    *,
    now_ms: int | None = None,
    _agreement: tuple[Agreement, PrekeyHeader] | None = None,
    _ratchet_pair: tuple[bytes, bytes] | None = None,
) -> PairwiseSession:
    """A new session to the device of `bundle` (verified with `verify_prekey_bundle` first).

    The underscore arguments fix the random parts for the known-answer vectors only."""
    agreement, header = _agreement or initiate(keys, user_id, device_id, bundle)
    ratchet = RatchetState.initiator(
        agreement.shared_secret, agreement.responder_ratchet_key, own_pair=_ratchet_pair
    )
    return PairwiseSession(
        session_id=agreement.session_id,
        local_user=user_id,
        local_device=device_id,
        remote_user=bundle.user_id,
        remote_device=bundle.device_id,
        remote_identity=bundle.identity_key,
        associated_data=agreement.associated_data,
        ratchet=ratchet,
        prekey_header=header,
        created_at_ms=int(time.time() * 1000) if now_ms is None else now_ms,
    )


PrekeyLookup = Callable[[PrekeyKind, int], PrekeyPair | None]


def accept_session(
    keys: DeviceKeys,
    user_id: int,
    device_id: str,
    message: ParsedMessage,
    pinned_identity: bytes | None,
    prekeys: PrekeyLookup,
    *,
    now_ms: int | None = None,
) -> PairwiseSession:
    """The responder's session for a prekey message (not yet used to decrypt it: `open_message`).

    `pinned_identity` is the identity key pinned for the sender device (None: not pinned); a
    message naming another key, or from an unpinned device, is `IdentityMismatch` (a key change to
    show, not a state to heal). A prekey this device no longer has is `NoSession` (heal)."""
    ph = message.prekey
    if message.kind is not MessageKind.PREKEY or ph is None:
        raise SessionError("only a prekey message starts a session")
    if message.recipient_device != device_id:
        raise SessionError(f"message is for device {message.recipient_device}, not this one")
    if pinned_identity is None or ph.identity_key != pinned_identity:
        raise IdentityMismatch(
            f"device {message.sender_device} of user {message.sender_user} "
            "starts a session with an identity key that is not the pinned one"
        )
    agreement = respond(
        keys,
        user_id,
        device_id,
        message.sender_user,
        message.sender_device,
        ph,
        signed_prekey=prekeys(PrekeyKind.SIGNED, ph.signed_prekey_id),
        one_time_prekey=prekeys(PrekeyKind.ONE_TIME, ph.one_time_prekey_id)
        if ph.one_time_prekey_id
        else None,
        kem_prekey=prekeys(ph.kem_kind, ph.kem_prekey_id),
    )
    if agreement.session_id != message.session_id:
        raise MalformedSessionMessage("the message's session id does not match its prekey header")
    spk = prekeys(PrekeyKind.SIGNED, ph.signed_prekey_id)
    assert spk is not None  # respond() checked it
    ratchet = RatchetState.responder(agreement.shared_secret, spk.private, spk.public.public_key)
    return PairwiseSession(
        session_id=agreement.session_id,
        local_user=user_id,
        local_device=device_id,
        remote_user=message.sender_user,
        remote_device=message.sender_device,
        remote_identity=ph.identity_key,
        associated_data=agreement.associated_data,
        ratchet=ratchet,
        prekey_header=None,
        created_at_ms=int(time.time() * 1000) if now_ms is None else now_ms,
    )


# --- messages -------------------------------------------------------------------------------------


def seal(session: PairwiseSession, plaintext: bytes, message_id: str) -> bytes:
    """Encrypt `plaintext` as the next message of `session` (advances it: save it with the message)."""
    if not isinstance(plaintext, bytes) or len(plaintext) > MAX_PLAINTEXT_BYTES:
        raise SessionError(f"plaintext must be bytes of at most {MAX_PLAINTEXT_BYTES}")
    ph = session.prekey_header
    kind = MessageKind.PREKEY if ph is not None else MessageKind.MESSAGE
    header, message_key = session.ratchet.send_key()
    prefix = (
        _common(
            kind,
            session.local_user,
            session.local_device,
            session.remote_device,
            message_id,
            session.session_id,
        )
        + (b"" if ph is None else _prekey_bytes(ph))
        + header.ratchet_key
        + struct.pack(">II", header.previous_count, header.number)
    )
    aead, nonce = _aead(message_key, message_id)
    ciphertext = aead.encrypt(nonce, plaintext, session.associated_data + prefix)
    return prefix + struct.pack(">I", len(ciphertext)) + ciphertext


def is_pairwise(data: bytes) -> bool:
    """True for a PPR message (what `peek` parses), False for anything else (e.g. a "PPE" envelope)."""
    return data[:3] == MAGIC


def peek(data: bytes) -> ParsedMessage:
    """Parse a PPR message without any key (for routing, session look-up and dedup by id)."""
    if not isinstance(data, bytes) or len(data) > MAX_MESSAGE_BYTES:
        raise MalformedSessionMessage(f"a pairwise message is bytes of at most {MAX_MESSAGE_BYTES}")
    try:
        r = Reader(data)
        if r.take(3) != MAGIC:
            raise ValueError("not a PPR message")
        if r.u8() != VERSION:
            raise ValueError("unknown PPR version")
        kind = MessageKind(r.u8())
        sender_user = struct.unpack(">Q", r.take(8))[0]
        sender = r.take(r.u8()).decode("ascii")
        recipient = r.take(r.u8()).decode("ascii")
        for name in (sender, recipient):
            if not DEVICE_ID_PATTERN.match(name):
                raise ValueError("device id is malformed")
        message_id = r.take(16).hex()
        session_id = r.take(SESSION_ID_BYTES)
        if kind is MessageKind.HEAL_REQUEST:
            at_ms = struct.unpack(">Q", r.take(8))[0]
            have = tuple(r.take(16).hex() for _ in range(r.u8()))
            ids = tuple(r.take(16).hex() for _ in range(r.u8()))
            signed = data[: r.pos]
            signature = r.take(64)
            if r.remaining():
                raise ValueError("trailing bytes")
            return ParsedMessage(
                kind, sender_user, sender, recipient, message_id, session_id,
                authenticated_prefix=signed, heal_at_ms=at_ms, heal_failed_ids=ids, signature=signature,
                heal_have_ids=have,
            )  # fmt: skip
        ph = _read_prekey(r) if kind is MessageKind.PREKEY else None
        ratchet = RatchetHeader(r.take(32), r.u32(), r.u32())
        prefix = data[: r.pos]
        ciphertext = r.take(r.u32())
        if r.remaining():
            raise ValueError("trailing bytes")
        if len(ciphertext) < 16:
            raise ValueError("ciphertext shorter than its tag")
    except (ValueError, UnicodeDecodeError) as e:
        raise MalformedSessionMessage(f"malformed pairwise message: {e}") from e
    return ParsedMessage(
        kind, sender_user, sender, recipient, message_id, session_id, ph, ratchet, ciphertext, prefix
    )


def open_message(session: PairwiseSession, message: ParsedMessage, *, now_s: int | None = None) -> bytes:
    """Decrypt `message` with `session`. On success the session advanced (save it with the message);
    on any failure it is exactly as before."""
    if message.kind is MessageKind.HEAL_REQUEST or message.ratchet is None:
        raise SessionError("a heal request carries no message")
    if message.session_id != session.session_id or message.sender_device != session.remote_device:
        raise NoSession("the message belongs to another session")
    trial = session.ratchet.copy()
    message_key = trial.receive_key(message.ratchet, int(time.time()) if now_s is None else now_s)
    aead, nonce = _aead(message_key, message.message_id)
    try:
        plaintext = aead.decrypt(
            nonce, message.ciphertext, session.associated_data + message.authenticated_prefix
        )
    except InvalidTag as e:
        raise SessionDecryptionFailed(
            f"message {message.message_id} from device {message.sender_device} does not authenticate "
            "in its session (altered, or the two sides' states diverged)"
        ) from e
    session.ratchet = trial
    if message.kind is MessageKind.MESSAGE and session.prekey_header is not None:
        session.prekey_header = None  # the responder answered: it has the session
    return plaintext


# --- healing --------------------------------------------------------------------------------------


def make_heal_request(
    keys: DeviceKeys,
    user_id: int,
    device_id: str,
    recipient_device: str,
    request_id: str,
    session_id: bytes | None,
    failed_message_ids: list[str],
    *,
    have_message_ids: list[str] | None = None,
    at_ms: int | None = None,
) -> bytes:
    """A signed, self-contained request: "start a new session with me, and resend what I lack":
    `have_message_ids` are the newest messages (≤ 64, newest first) this device still has from
    the recipient, so a gap among them (a restore from an older copy) shows; empty: it has nothing."""
    ids = failed_message_ids[-MAX_HEAL_IDS:]
    have = (have_message_ids or [])[:MAX_HAVE_IDS]
    sid = session_id or bytes(SESSION_ID_BYTES)
    if len(sid) != SESSION_ID_BYTES:
        raise SessionError(f"session id must be {SESSION_ID_BYTES} bytes")
    body = (
        _common(MessageKind.HEAL_REQUEST, user_id, device_id, recipient_device, request_id, sid)
        + struct.pack(">Q", int(time.time() * 1000) if at_ms is None else at_ms)
        + bytes([len(have)])
        + b"".join(_message_id(i) for i in have)
        + bytes([len(ids)])
        + b"".join(_message_id(i) for i in ids)
    )
    return body + keys.sign(HEAL_DOMAIN + body)


def verify_heal_request(message: ParsedMessage, identity_key: bytes | None) -> HealRequest:
    """Check a parsed heal request against the requester's pinned identity key."""
    if message.kind is not MessageKind.HEAL_REQUEST:
        raise SessionError("not a heal request")
    if identity_key is None:
        raise IdentityMismatch(f"no pinned identity key for device {message.sender_device}")
    try:
        _publickeys.identity_public(identity_key).verify(
            message.signature, HEAL_DOMAIN + message.authenticated_prefix
        )
    except (InvalidSignature, ValueError) as e:
        raise SignatureInvalid(
            f"heal request from device {message.sender_device} is not signed by its pinned identity key"
        ) from e
    return HealRequest(
        message.sender_user,
        message.sender_device,
        message.message_id,
        message.session_id,
        message.heal_failed_ids,
        message.heal_at_ms,
        message.heal_have_ids,
    )
