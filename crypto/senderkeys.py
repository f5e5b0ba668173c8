"""Sender keys: one encryption and one signature per group message, whatever the group's size.

Each sender device has, per group, a *sender key*: a random 32-byte chain key that hash-ratchets
forward with every message (Signal's sender keys, Matrix's Megolm), and an Ed25519 signing key
made for it alone. The sender hands the current chain key, its position and the public signing key
to every member device in a *distribution message*, inside the pairwise envelopes (which
authenticate the sender device). A group message is then one AES-256-GCM ciphertext under the
message key of the chain's current position, signed once with the signing key.

What follows from the ratchet, and what the peer must do:

- A member given a distribution at position i can derive keys for positions >= i only: a member
  added later cannot read what came before.
- When a member leaves or is removed, every remaining sender makes a new sender key (new key id,
  chain and signing key) and distributes it to the remaining devices only: the removed member
  cannot read what follows. `OwnSenderKey.needs_rotation` also says when the schedule (messages,
  age) asks for a new one.
- Receivers keep the keys of skipped positions (reordering, loss) up to `MAX_SKIP` ahead, and at
  most `MAX_SKIPPED_KEYS` of them; a position already opened is refused (`GroupMessageReplayed`).
  State changes only after the signature and the ciphertext verified: a forged message never
  moves the chain.

Key schedule (HMAC-SHA256, as Signal's sender keys)::

    message_seed_i = HMAC(chain_key_i, 0x01)
    chain_key_i+1  = HMAC(chain_key_i, 0x02)
    aes_key_i      = HKDF-SHA256(ikm=message_seed_i, salt=none, info="peerpost/group-message-key/v1", 32)

Group message layout (integers big-endian)::

    "PPG" u8 version=1
    u8 g, group_id[g]           ASCII, 32 lowercase hex
    u64 sender_user
    u8 d, sender_device[d]      ASCII
    u32 key_id
    u32 iteration               position of the chain this message used
    message_id[16]
    u64 sent_at_ms
    nonce[12]                   random
    u32 c, ciphertext[c]        AES-256-GCM(aes_key_i, nonce, padded payload, AAD = domain || header)
    signature[64]               Ed25519(signing key) over domain || all bytes above

with domain = "peerpost/group-message/v1\\0" and header = every byte from the magic to sent_at_ms.
Distribution layout::

    "PPSK" u8 version=1
    u8 g, group_id[g]; u64 sender_user; u8 d, sender_device[d]
    u32 key_id; u32 iteration; chain_key[32]; signing_public_key[32]
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import struct
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._codec import Reader, b64d, b64e
from .bundle import DEVICE_ID_PATTERN
from .errors import (
    GroupMessageInvalid,
    GroupMessageReplayed,
    GroupMessageTooFarAhead,
    MalformedEnvelope,
    MalformedGroupMessage,
    SenderKeyError,
    UnknownSenderKey,
)
from .groupstate import GROUP_ID_PATTERN
from .payload import Payload, decode_payload, encode_payload

MESSAGE_MAGIC = b"PPG"
DISTRIBUTION_MAGIC = b"PPSK"
VERSION = 1
MESSAGE_DOMAIN = b"peerpost/group-message/v1\x00"
KEY_INFO = b"peerpost/group-message-key/v1"
NONCE_BYTES = 12
SIGNATURE_BYTES = 64
CHAIN_KEY_BYTES = 32
MAX_SKIP = 2000  # positions one message may jump ahead of the last one opened
MAX_SKIPPED_KEYS = 2000  # message keys kept for positions skipped (reordered or lost)
MAX_KEYS_PER_SENDER = 4  # earlier sender keys of a device kept for messages still in flight
MAX_ITERATION = 2**32 - 1
MAX_GROUP_MESSAGE_BYTES = 256 * 1024
DEFAULT_ROTATE_AFTER_MESSAGES = 1000
DEFAULT_ROTATE_AFTER_MS = 7 * 24 * 3600 * 1000
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


def _message_seed(chain_key: bytes) -> bytes:
    return hmac.new(chain_key, b"\x01", hashlib.sha256).digest()


def _next_chain(chain_key: bytes) -> bytes:
    return hmac.new(chain_key, b"\x02", hashlib.sha256).digest()


def _aes_key(seed: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=KEY_INFO).derive(seed)


def _ascii(value: str) -> bytes:
    raw = value.encode("ascii")
    if len(raw) > 255:
        raise MalformedGroupMessage("identifier longer than 255 bytes")
    return bytes([len(raw)]) + raw


def _check_ids(group_id: str, sender_user: int, sender_device: str) -> None:
    if not isinstance(group_id, str) or not GROUP_ID_PATTERN.match(group_id):
        raise MalformedGroupMessage("group id must be 32 lowercase hex digits")
    if isinstance(sender_user, bool) or not isinstance(sender_user, int) or not 0 < sender_user < 2**63:
        raise MalformedGroupMessage("sender user must be a positive user id")
    if not isinstance(sender_device, str) or not DEVICE_ID_PATTERN.match(sender_device):
        raise MalformedGroupMessage("sender device id is malformed")


def _public_raw(key: ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


# --------------------------------------------------------------------------------------------------
# Distribution
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SenderKeyDistribution:
    """A sender key as its owner hands it to one member device (inside a pairwise envelope)."""

    group_id: str
    sender_user: int
    sender_device: str
    key_id: int
    iteration: int
    chain_key: bytes = field(repr=False)
    signing_key: bytes

    def to_bytes(self) -> bytes:
        _check_ids(self.group_id, self.sender_user, self.sender_device)
        return b"".join(
            [
                DISTRIBUTION_MAGIC,
                bytes([VERSION]),
                _ascii(self.group_id),
                _U64.pack(self.sender_user),
                _ascii(self.sender_device),
                _U32.pack(self.key_id),
                _U32.pack(self.iteration),
                self.chain_key,
                self.signing_key,
            ]
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> SenderKeyDistribution:
        r = Reader(data)
        try:
            if r.take(4) != DISTRIBUTION_MAGIC:
                raise MalformedGroupMessage("not a sender-key distribution (bad magic)")
            if r.u8() != VERSION:
                raise MalformedGroupMessage("sender-key distribution version is not 1")
            group_id = r.take(r.u8()).decode("ascii")
            sender_user = _U64.unpack(r.take(8))[0]
            sender_device = r.take(r.u8()).decode("ascii")
            key_id = r.u32()
            iteration = r.u32()
            chain_key = r.take(CHAIN_KEY_BYTES)
            signing_key = r.take(32)
        except (ValueError, UnicodeDecodeError) as e:
            raise MalformedGroupMessage(f"sender-key distribution is truncated or garbled: {e}") from e
        if r.remaining():
            raise MalformedGroupMessage("sender-key distribution has trailing bytes")
        _check_ids(group_id, sender_user, sender_device)
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(signing_key)
        except ValueError as e:
            raise MalformedGroupMessage("sender-key signing key is not an Ed25519 key") from e
        return cls(group_id, sender_user, sender_device, key_id, iteration, chain_key, signing_key)


# --------------------------------------------------------------------------------------------------
# Group messages
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupMessageHeader:
    group_id: str
    sender_user: int
    sender_device: str
    key_id: int
    iteration: int
    message_id: str
    sent_at_ms: int


@dataclass(frozen=True)
class OpenedGroupMessage:
    header: GroupMessageHeader
    payload: Payload


@dataclass(frozen=True)
class _ParsedMessage:
    header: GroupMessageHeader
    header_bytes: bytes
    nonce: bytes
    ciphertext: bytes
    signed: bytes
    signature: bytes


def _header_bytes(h: GroupMessageHeader) -> bytes:
    _check_ids(h.group_id, h.sender_user, h.sender_device)
    return b"".join(
        [
            MESSAGE_MAGIC,
            bytes([VERSION]),
            _ascii(h.group_id),
            _U64.pack(h.sender_user),
            _ascii(h.sender_device),
            _U32.pack(h.key_id),
            _U32.pack(h.iteration),
            bytes.fromhex(h.message_id),
            _U64.pack(h.sent_at_ms),
        ]
    )


def _parse_message(data: bytes) -> _ParsedMessage:
    if not isinstance(data, bytes) or len(data) > MAX_GROUP_MESSAGE_BYTES:
        raise MalformedGroupMessage(f"a group message is bytes of at most {MAX_GROUP_MESSAGE_BYTES}")
    r = Reader(data)
    try:
        if r.take(3) != MESSAGE_MAGIC:
            raise MalformedGroupMessage("not a PeerPost group message (bad magic)")
        version = r.u8()
        if version != VERSION:
            raise MalformedGroupMessage(f"group message version {version} is not {VERSION}")
        group_id = r.take(r.u8()).decode("ascii")
        sender_user = _U64.unpack(r.take(8))[0]
        sender_device = r.take(r.u8()).decode("ascii")
        key_id = r.u32()
        iteration = r.u32()
        message_id = r.take(16).hex()
        sent_at_ms = _U64.unpack(r.take(8))[0]
        header_end = r.pos
        nonce = r.take(NONCE_BYTES)
        ciphertext = r.take(r.u32())
        signed_end = r.pos
        signature = r.take(SIGNATURE_BYTES)
    except (ValueError, UnicodeDecodeError) as e:
        raise MalformedGroupMessage(f"group message is truncated or garbled: {e}") from e
    if r.remaining():
        raise MalformedGroupMessage("group message has trailing bytes")
    _check_ids(group_id, sender_user, sender_device)
    header = GroupMessageHeader(
        group_id, sender_user, sender_device, key_id, iteration, message_id, sent_at_ms
    )
    return _ParsedMessage(header, data[:header_end], nonce, ciphertext, data[:signed_end], signature)


def peek_group_message(data: bytes) -> GroupMessageHeader:
    """The unauthenticated header of a group message (to route it, or to look up its sender key)."""
    return _parse_message(data).header


def is_group_message(data: bytes) -> bool:
    return data[:3] == MESSAGE_MAGIC


# --------------------------------------------------------------------------------------------------
# The sender's side
# --------------------------------------------------------------------------------------------------


@dataclass
class OwnSenderKey:
    """This device's sender key for one group. Mutable: every `encrypt` moves it forward; save it
    (`to_dict`) with the message it produced, so a restart never reuses a position."""

    group_id: str
    sender_user: int
    sender_device: str
    key_id: int
    chain_key: bytes = field(repr=False)
    iteration: int
    signing: ed25519.Ed25519PrivateKey = field(repr=False)
    created_at_ms: int
    messages: int = 0

    @classmethod
    def create(
        cls, group_id: str, sender_user: int, sender_device: str, *, now_ms: int | None = None
    ) -> OwnSenderKey:
        _check_ids(group_id, sender_user, sender_device)
        return cls(
            group_id,
            sender_user,
            sender_device,
            int.from_bytes(os.urandom(4), "big"),
            os.urandom(CHAIN_KEY_BYTES),
            0,
            ed25519.Ed25519PrivateKey.generate(),
            now_ms if now_ms is not None else int(time.time() * 1000),
        )

    def distribution(self) -> SenderKeyDistribution:
        """The key at its current position: who receives this can read from here on, not before."""
        return SenderKeyDistribution(
            self.group_id,
            self.sender_user,
            self.sender_device,
            self.key_id,
            self.iteration,
            self.chain_key,
            _public_raw(self.signing.public_key()),
        )

    def needs_rotation(
        self,
        now_ms: int | None = None,
        *,
        max_messages: int = DEFAULT_ROTATE_AFTER_MESSAGES,
        max_age_ms: int = DEFAULT_ROTATE_AFTER_MS,
    ) -> bool:
        """True when the schedule asks for a new sender key (message count or age)."""
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        return (
            self.messages >= max_messages
            or now_ms - self.created_at_ms >= max_age_ms
            or self.iteration >= MAX_ITERATION
        )

    def encrypt(
        self, payload: Payload, *, message_id: str | None = None, sent_at_ms: int | None = None
    ) -> bytes:
        """One group message of `payload` at the current position; the chain moves on."""
        if self.iteration >= MAX_ITERATION:
            raise SenderKeyError("this sender key is used up: rotate it")
        header = GroupMessageHeader(
            self.group_id,
            self.sender_user,
            self.sender_device,
            self.key_id,
            self.iteration,
            message_id if message_id is not None else os.urandom(16).hex(),
            sent_at_ms if sent_at_ms is not None else int(time.time() * 1000),
        )
        if not re.fullmatch(r"[0-9a-f]{32}", header.message_id):
            raise MalformedGroupMessage("message id must be 32 lowercase hex digits")
        header_bytes = _header_bytes(header)
        key = _aes_key(_message_seed(self.chain_key))
        nonce = os.urandom(NONCE_BYTES)
        ciphertext = AESGCM(key).encrypt(nonce, encode_payload(payload), MESSAGE_DOMAIN + header_bytes)
        signed = header_bytes + nonce + _U32.pack(len(ciphertext)) + ciphertext
        signature = self.signing.sign(MESSAGE_DOMAIN + signed)
        self.chain_key = _next_chain(self.chain_key)
        self.iteration += 1
        self.messages += 1
        return signed + signature

    def to_dict(self) -> dict[str, Any]:
        return {
            "group_id": self.group_id,
            "sender_user": self.sender_user,
            "sender_device": self.sender_device,
            "key_id": self.key_id,
            "chain_key": b64e(self.chain_key),
            "iteration": self.iteration,
            "signing": b64e(
                self.signing.private_bytes(
                    serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
                )
            ),
            "created_at_ms": self.created_at_ms,
            "messages": self.messages,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> OwnSenderKey:
        try:
            return cls(
                str(d["group_id"]),
                int(d["sender_user"]),
                str(d["sender_device"]),
                int(d["key_id"]),
                b64d(d["chain_key"]),
                int(d["iteration"]),
                ed25519.Ed25519PrivateKey.from_private_bytes(b64d(d["signing"])),
                int(d["created_at_ms"]),
                int(d["messages"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise SenderKeyError(f"saved sender key is damaged: {e}") from e


# --------------------------------------------------------------------------------------------------
# The receivers' side
# --------------------------------------------------------------------------------------------------


@dataclass
class ReceivedSenderKey:
    """Another device's sender key as this device holds it: the next position and skipped keys."""

    key_id: int
    signing_key: bytes
    chain_key: bytes = field(repr=False)
    iteration: int  # the next position not yet derived
    skipped: OrderedDict[int, bytes] = field(default_factory=OrderedDict, repr=False)

    def _message_key(self, iteration: int) -> tuple[bytes, bytes | None, int, OrderedDict[int, bytes]]:
        """(aes key, new chain key, new iteration, new skipped) for `iteration`, not yet committed."""
        if iteration < self.iteration:
            seed = self.skipped.get(iteration)
            if seed is None:
                raise GroupMessageReplayed(
                    f"position {iteration} of sender key {self.key_id} was opened already or is "
                    "older than the window"
                )
            skipped = OrderedDict(self.skipped)
            del skipped[iteration]
            return _aes_key(seed), None, self.iteration, skipped
        if iteration - self.iteration > MAX_SKIP:
            raise GroupMessageTooFarAhead(
                f"position {iteration} is {iteration - self.iteration} past the last one of sender key "
                f"{self.key_id}; at most {MAX_SKIP} may be skipped"
            )
        chain = self.chain_key
        skipped = OrderedDict(self.skipped)
        for i in range(self.iteration, iteration):
            skipped[i] = _message_seed(chain)
            chain = _next_chain(chain)
        while len(skipped) > MAX_SKIPPED_KEYS:
            skipped.popitem(last=False)
        seed = _message_seed(chain)
        return _aes_key(seed), _next_chain(chain), iteration + 1, skipped

    def open(self, p: _ParsedMessage) -> bytes:
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(self.signing_key).verify(
                p.signature, MESSAGE_DOMAIN + p.signed
            )
        except InvalidSignature as e:
            raise GroupMessageInvalid(
                f"group message {p.header.message_id} from device {p.header.sender_device} does not "
                "verify against its sender key: it was forged or altered"
            ) from e
        key, chain, iteration, skipped = self._message_key(p.header.iteration)
        try:
            plaintext = AESGCM(key).decrypt(p.nonce, p.ciphertext, MESSAGE_DOMAIN + p.header_bytes)
        except InvalidTag as e:
            raise GroupMessageInvalid(
                f"group message {p.header.message_id} did not decrypt under its sender key"
            ) from e
        if chain is not None:
            self.chain_key = chain
        self.iteration = iteration
        self.skipped = skipped
        return plaintext

    def to_dict(self) -> dict[str, Any]:
        return {
            "key_id": self.key_id,
            "signing_key": b64e(self.signing_key),
            "chain_key": b64e(self.chain_key),
            "iteration": self.iteration,
            "skipped": [[i, b64e(s)] for i, s in self.skipped.items()],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReceivedSenderKey:
        return cls(
            int(d["key_id"]),
            b64d(d["signing_key"]),
            b64d(d["chain_key"]),
            int(d["iteration"]),
            OrderedDict((int(i), b64d(s)) for i, s in d["skipped"]),
        )


class SenderKeyStore:
    """Every sender key this device received, per (group, sender device), the newest few per device.

    The peer decides *whether* to accept a distribution (it came in a verified pairwise envelope
    from that very device, whose user the verified chain lists as a member) and *whether* to open a
    message (its sender is still a member); this class does the cryptography and keeps the state.
    """

    def __init__(self) -> None:
        self._keys: dict[tuple[str, str], OrderedDict[int, ReceivedSenderKey]] = {}
        self._users: dict[tuple[str, str], int] = {}

    def add(self, dist: SenderKeyDistribution) -> bool:
        """Keep `dist`; False when that key was known already (a repeat changes nothing)."""
        slot = (dist.group_id, dist.sender_device)
        known_user = self._users.get(slot)
        if known_user is not None and known_user != dist.sender_user:
            raise SenderKeyError(
                f"device {dist.sender_device} sent a sender key as user {dist.sender_user}, "
                f"but it belongs to user {known_user}"
            )
        keys = self._keys.setdefault(slot, OrderedDict())
        self._users[slot] = dist.sender_user
        existing = keys.get(dist.key_id)
        if existing is not None:
            if existing.signing_key != dist.signing_key:
                raise SenderKeyError(
                    f"device {dist.sender_device} sent two different sender keys with id {dist.key_id}"
                )
            return False
        keys[dist.key_id] = ReceivedSenderKey(dist.key_id, dist.signing_key, dist.chain_key, dist.iteration)
        while len(keys) > MAX_KEYS_PER_SENDER:
            keys.popitem(last=False)
        return True

    def has(self, group_id: str, sender_device: str, key_id: int | None = None) -> bool:
        keys = self._keys.get((group_id, sender_device))
        return bool(keys) and (key_id is None or key_id in keys)  # type: ignore[operator]

    def decrypt(self, data: bytes) -> OpenedGroupMessage:
        """Verify and open one group message; the chain moves only when it verified."""
        p = _parse_message(data)
        h = p.header
        keys = self._keys.get((h.group_id, h.sender_device))
        key = keys.get(h.key_id) if keys else None
        if key is None or self._users.get((h.group_id, h.sender_device)) != h.sender_user:
            raise UnknownSenderKey(
                f"no sender key {h.key_id} of device {h.sender_device} in group {h.group_id}: "
                "ask the sender for its distribution"
            )
        plaintext = key.open(p)
        try:
            return OpenedGroupMessage(h, decode_payload(plaintext))
        except MalformedEnvelope as e:
            raise GroupMessageInvalid(f"group message {h.message_id} holds a malformed payload: {e}") from e

    def forget_sender(self, group_id: str, sender_device: str) -> None:
        self._keys.pop((group_id, sender_device), None)
        self._users.pop((group_id, sender_device), None)

    def forget_user(self, group_id: str, user_id: int) -> None:
        """A member left: their devices' keys go, so nothing more of theirs is opened."""
        for slot in [s for s, u in self._users.items() if s[0] == group_id and u == user_id]:
            self.forget_sender(*slot)

    def forget_group(self, group_id: str) -> None:
        for slot in [s for s in self._keys if s[0] == group_id]:
            self.forget_sender(*slot)

    def to_dict(self) -> dict[str, Any]:
        return {
            "senders": [
                {
                    "group_id": g,
                    "sender_device": d,
                    "sender_user": self._users[(g, d)],
                    "keys": [k.to_dict() for k in keys.values()],
                }
                for (g, d), keys in self._keys.items()
            ]
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SenderKeyStore:
        store = cls()
        try:
            for s in d["senders"]:
                slot = (str(s["group_id"]), str(s["sender_device"]))
                store._users[slot] = int(s["sender_user"])
                store._keys[slot] = OrderedDict(
                    (k.key_id, k) for k in (ReceivedSenderKey.from_dict(x) for x in s["keys"])
                )
        except (KeyError, TypeError, ValueError) as e:
            raise SenderKeyError(f"saved sender keys are damaged: {e}") from e
        return store
