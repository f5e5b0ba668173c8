"""Signed hybrid envelopes (version 1): one message, many recipient devices.

One random AES-256-GCM content key encrypts the padded payload with AAD = the canonical header
bytes; the key is wrapped with RSA-OAEP-SHA256 for every recipient device; the sender's Ed25519
identity key signs everything before the signature. The envelope is one canonical byte string:
what is signed is a prefix of what is stored and sent, so nothing is ever re-serialised on the way.

Binary layout (integers big-endian)::

    "PPE" 0x01                      magic and format version
    u32 n, header[n]                canonical JSON (sorted keys, no spaces, UTF-8)
    u16 k, k × (u16 m, wrapped[m])  wrapped content keys, in the order of header.recipients
    nonce[12]
    u32 c, ciphertext[c]            AES-256-GCM(payload) || tag
    signature[64]                   Ed25519 over "peerpost/envelope/v1\\0" || all bytes above

`open_envelope` checks in the order of docs/protocol.md and raises one typed error per fault.
"""

from __future__ import annotations

import json
import os
import re
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from . import _publickeys
from ._codec import Reader, canonical_json
from .bundle import DEVICE_ID_PATTERN
from .errors import (
    ClockSkew,
    DecryptionFailed,
    EnvelopeError,
    EnvelopeTooLarge,
    MalformedEnvelope,
    NoKeyForDevice,
    ReplayDetected,
    SignatureInvalid,
    UnknownSenderDevice,
    UnknownVersion,
)
from .keys import DeviceKeys
from .keywrap import unwrap_key, wrap_key
from .payload import PAYLOAD_KINDS, Payload, decode_payload, encode_payload

ENVELOPE_VERSION = 1
MAGIC = b"PPE"
SIGNATURE_DOMAIN = b"peerpost/envelope/v1\x00"
MAX_RECIPIENTS = 256  # as many as signalling.protocol.SendFrame carries
MAX_HEADER_BYTES = 64 * 1024
MAX_ENVELOPE_BYTES = 512 * 1024
NONCE_BYTES = 12
SIGNATURE_BYTES = 64
WRAPPED_KEY_BYTES = 512  # RSA-4096
DEFAULT_TOLERANCE_S = 300.0  # future skew allowed for sent-at
DEFAULT_MAX_AGE_S = 30 * 24 * 3600.0  # oldest sent-at accepted (mailbox retention and replay memory)

_MESSAGE_ID = re.compile(r"^[0-9a-f]{32}$")
_CONVERSATION = re.compile(r"^[ug]:[A-Za-z0-9_-]{1,64}$")
_CONTENT_TYPE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")


@dataclass(frozen=True)
class LocalDevice:
    """This device: who it is and its private keys."""

    user_id: int
    device_id: str
    keys: DeviceKeys


@dataclass(frozen=True)
class Recipient:
    """A device to seal for; `encryption_key` comes from its verified bundle (DER)."""

    user_id: int
    device_id: str
    encryption_key: bytes


@dataclass(frozen=True)
class EnvelopeHeader:
    version: int
    message_id: str
    sender_user: int
    sender_device: str
    conversation: str
    content_type: str
    sent_at_ms: int
    recipients: list[str]

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "message_id": self.message_id,
            "sender_user": self.sender_user,
            "sender_device": self.sender_device,
            "conversation": self.conversation,
            "content_type": self.content_type,
            "sent_at_ms": self.sent_at_ms,
            "recipients": list(self.recipients),
        }


@dataclass(frozen=True)
class OpenedEnvelope:
    header: EnvelopeHeader
    payload: Payload


class SeenIds(Protocol):
    """Replay memory, per sender device; the peer backs it with its local store."""

    def seen_before(self, sender_device: str, message_id: str) -> bool: ...

    def remember(self, sender_device: str, message_id: str) -> None: ...


class MemorySeenIds:
    """In-memory `SeenIds` holding the most recent `capacity` ids (tests, short-lived tools)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._ids: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._capacity = capacity

    def seen_before(self, sender_device: str, message_id: str) -> bool:
        return (sender_device, message_id) in self._ids

    def remember(self, sender_device: str, message_id: str) -> None:
        self._ids[(sender_device, message_id)] = None
        self._ids.move_to_end((sender_device, message_id))
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _header_from_dict(d: object) -> EnvelopeHeader:
    """Validates every field; raises MalformedEnvelope naming the first bad one."""
    if not isinstance(d, dict):
        raise MalformedEnvelope("envelope header is not a JSON object")
    fields = {
        "version", "message_id", "sender_user", "sender_device",
        "conversation", "content_type", "sent_at_ms", "recipients",
    }  # fmt: skip
    if set(d) != fields:
        raise MalformedEnvelope(f"envelope header fields must be exactly {sorted(fields)}")
    if d["version"] != ENVELOPE_VERSION or not _is_int(d["version"]):
        raise UnknownVersion(f"envelope header version {d['version']!r} is not {ENVELOPE_VERSION}")
    if not isinstance(d["message_id"], str) or not _MESSAGE_ID.match(d["message_id"]):
        raise MalformedEnvelope("message id must be 32 lowercase hex digits")
    if not _is_int(d["sender_user"]) or not 0 <= d["sender_user"] < 2**63:
        raise MalformedEnvelope("sender user must be a non-negative integer")
    if not isinstance(d["sender_device"], str) or not DEVICE_ID_PATTERN.match(d["sender_device"]):
        raise MalformedEnvelope("sender device id is malformed")
    if not isinstance(d["conversation"], str) or not _CONVERSATION.match(d["conversation"]):
        raise MalformedEnvelope("conversation must be u:<id> or g:<id>")
    if not isinstance(d["content_type"], str) or not _CONTENT_TYPE.match(d["content_type"]):
        raise MalformedEnvelope("content type is malformed")
    if not _is_int(d["sent_at_ms"]) or not 0 <= d["sent_at_ms"] < 2**63:
        raise MalformedEnvelope("sent-at must be non-negative integer milliseconds")
    recipients = d["recipients"]
    if not isinstance(recipients, list) or not 1 <= len(recipients) <= MAX_RECIPIENTS:
        raise MalformedEnvelope(f"recipients must list 1-{MAX_RECIPIENTS} device ids")
    for r in recipients:
        if not isinstance(r, str) or not DEVICE_ID_PATTERN.match(r):
            raise MalformedEnvelope(f"recipient device id {r!r} is malformed")
    if len(set(recipients)) != len(recipients):
        raise MalformedEnvelope("recipient device ids repeat")
    return EnvelopeHeader(**d)


def seal(
    payload: Payload,
    sender: LocalDevice,
    recipients: Sequence[Recipient],
    conversation: str,
    message_id: str | None = None,
    sent_at_ms: int | None = None,
) -> bytes:
    """Encrypt `payload` once for every recipient device and sign it as `sender`."""
    if not 1 <= len(recipients) <= MAX_RECIPIENTS:
        raise EnvelopeTooLarge(
            f"an envelope carries 1-{MAX_RECIPIENTS} recipient devices, not {len(recipients)}"
        )
    header = _header_from_dict(
        {
            "version": ENVELOPE_VERSION,
            "message_id": message_id if message_id is not None else os.urandom(16).hex(),
            "sender_user": sender.user_id,
            "sender_device": sender.device_id,
            "conversation": conversation,
            "content_type": payload.kind,
            "sent_at_ms": sent_at_ms if sent_at_ms is not None else int(time.time() * 1000),
            "recipients": [r.device_id for r in recipients],
        }
    )
    header_bytes = canonical_json(header.to_dict())
    if len(header_bytes) > MAX_HEADER_BYTES:
        raise EnvelopeTooLarge(
            f"envelope header is {len(header_bytes)} bytes; the limit is {MAX_HEADER_BYTES}"
        )
    plaintext = encode_payload(payload)

    content_key = AESGCM.generate_key(256)
    parts = [
        MAGIC,
        bytes([ENVELOPE_VERSION]),
        _U32.pack(len(header_bytes)),
        header_bytes,
        _U16.pack(len(recipients)),
    ]
    for r in recipients:
        try:
            wrapped = wrap_key(r.encryption_key, content_key)
        except EnvelopeError as e:
            raise EnvelopeError(f"recipient device {r.device_id}: {e}") from e
        parts += (_U16.pack(len(wrapped)), wrapped)
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = AESGCM(content_key).encrypt(nonce, plaintext, header_bytes)
    parts += (nonce, _U32.pack(len(ciphertext)), ciphertext)
    body = b"".join(parts)
    envelope = body + sender.keys.sign(SIGNATURE_DOMAIN + body)
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise EnvelopeTooLarge(f"envelope is {len(envelope)} bytes; the limit is {MAX_ENVELOPE_BYTES}")
    return envelope


@dataclass(frozen=True)
class _Parsed:
    header: EnvelopeHeader
    header_bytes: bytes
    wrapped: list[bytes]
    nonce: bytes
    ciphertext: bytes
    signed: bytes
    signature: bytes


def _parse(data: bytes) -> _Parsed:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedEnvelope("an envelope is bytes")
    data = bytes(data)
    if len(data) > MAX_ENVELOPE_BYTES:
        raise EnvelopeTooLarge(f"envelope is {len(data)} bytes; the limit is {MAX_ENVELOPE_BYTES}")
    if len(data) < len(MAGIC) + 1 or data[: len(MAGIC)] != MAGIC:
        raise MalformedEnvelope("not a PeerPost envelope (bad magic)")
    if data[len(MAGIC)] != ENVELOPE_VERSION:
        raise UnknownVersion(
            f"envelope format version {data[len(MAGIC)]} is not supported "
            f"(this build speaks {ENVELOPE_VERSION})"
        )
    reader = Reader(data)
    try:
        reader.take(len(MAGIC) + 1)
        header_len = reader.u32()
        if header_len > MAX_HEADER_BYTES:
            raise MalformedEnvelope(f"envelope header length {header_len} is over the limit")
        header_bytes = reader.take(header_len)
        try:
            header_obj = json.loads(header_bytes.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            # RecursionError: "[[[[…" nested past the parser's limit; anyone can send that.
            raise MalformedEnvelope("envelope header is not UTF-8 JSON") from e
        header = _header_from_dict(header_obj)
        if canonical_json(header.to_dict()) != header_bytes:
            raise MalformedEnvelope("envelope header is not in canonical form")
        count = reader.u16()
        if count != len(header.recipients):
            raise MalformedEnvelope(
                f"envelope has {count} wrapped keys for {len(header.recipients)} recipients"
            )
        wrapped = []
        for _ in range(count):
            n = reader.u16()
            if n != WRAPPED_KEY_BYTES:
                raise MalformedEnvelope(f"wrapped key is {n} bytes, expected {WRAPPED_KEY_BYTES}")
            wrapped.append(reader.take(n))
        nonce = reader.take(NONCE_BYTES)
        ciphertext = reader.take(reader.u32())
        signed_end = reader.pos
        signature = reader.take(SIGNATURE_BYTES)
    except ValueError as e:
        raise MalformedEnvelope(f"envelope is truncated or garbled: {e}") from e
    if reader.remaining():
        raise MalformedEnvelope(f"envelope has {reader.remaining()} trailing bytes")
    return _Parsed(header, header_bytes, wrapped, nonce, ciphertext, data[:signed_end], signature)


def peek_header(data: bytes) -> EnvelopeHeader:
    """The header as sent, parsed but NOT verified: for routing and storing, never for trust."""
    return _parse(data).header


def open_envelope(
    data: bytes,
    me: LocalDevice,
    lookup_sender: Callable[[int, str], bytes | None],
    seen: SeenIds,
    now_ms: int | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    max_age_s: float | None = DEFAULT_MAX_AGE_S,
) -> OpenedEnvelope:
    """Verify and decrypt an envelope addressed to `me`; remembers its id only on success.

    `lookup_sender(user_id, device_id)` returns the sender device's pinned Ed25519 key or None.
    `tolerance_s` bounds how far in the future sent-at may be; `max_age_s` how old (queued mail is
    legitimately old; past the age limit the replay memory may have forgotten the id).
    """
    p = _parse(data)  # 1. version known, well formed
    h = p.header
    who = f"device {h.sender_device} of user {h.sender_user}"

    identity_key = lookup_sender(h.sender_user, h.sender_device)  # 2. sender known
    if identity_key is None:
        raise UnknownSenderDevice(f"message {h.message_id} from unknown {who}: no pinned key to verify it")
    try:
        public = _publickeys.identity_public(identity_key)
    except ValueError as e:
        raise UnknownSenderDevice(f"pinned identity key of {who} is unusable: {e}") from e

    try:  # 3. signature
        public.verify(p.signature, SIGNATURE_DOMAIN + p.signed)
    except InvalidSignature as e:
        raise SignatureInvalid(f"message {h.message_id} from {who} could not be verified") from e

    try:  # 4. a key for this device
        slot = h.recipients.index(me.device_id)
    except ValueError as e:
        raise NoKeyForDevice(f"message {h.message_id} from {who} was not encrypted for this device") from e

    try:  # 5. decryption (exactly one RSA operation)
        content_key = unwrap_key(me.keys, p.wrapped[slot])
        plaintext = AESGCM(content_key).decrypt(p.nonce, p.ciphertext, p.header_bytes)
    except (DecryptionFailed, InvalidTag) as e:
        raise DecryptionFailed(f"message {h.message_id} from {who} could not be decrypted") from e
    payload = decode_payload(plaintext)
    if payload.kind != h.content_type:
        raise MalformedEnvelope(
            f"message {h.message_id}: header says {h.content_type}, payload is {payload.kind}"
        )

    if seen.seen_before(h.sender_device, h.message_id):  # 6. replay
        raise ReplayDetected(f"message {h.message_id} from {who} was already received")

    now = now_ms if now_ms is not None else int(time.time() * 1000)  # 7. sent-at window
    if h.sent_at_ms > now + tolerance_s * 1000:
        raise ClockSkew(
            f"message {h.message_id} from {who} claims to be sent "
            f"{(h.sent_at_ms - now) / 1000:.0f} s in the future (tolerance {tolerance_s:.0f} s)"
        )
    if max_age_s is not None and now - h.sent_at_ms > max_age_s * 1000:
        raise ClockSkew(
            f"message {h.message_id} from {who} was sent {(now - h.sent_at_ms) / 1000:.0f} s ago, "
            f"older than the {max_age_s:.0f} s limit"
        )
    seen.remember(h.sender_device, h.message_id)
    return OpenedEnvelope(h, payload)


__all__ = [
    "DEFAULT_MAX_AGE_S",
    "DEFAULT_TOLERANCE_S",
    "ENVELOPE_VERSION",
    "MAX_ENVELOPE_BYTES",
    "MAX_RECIPIENTS",
    "PAYLOAD_KINDS",
    "EnvelopeHeader",
    "LocalDevice",
    "MemorySeenIds",
    "OpenedEnvelope",
    "Recipient",
    "SeenIds",
    "open_envelope",
    "peek_header",
    "seal",
]
