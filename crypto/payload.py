"""What travels inside an envelope: typed payloads, encoded canonically and padded to buckets.

Encoded form: `u32 length || canonical JSON || zero bytes` up to the next bucket size, so the
ciphertext length reveals only the bucket (256 B, 512 B, … 16 KiB, then 16 KiB steps), not the
exact length of a message. Decoding is strict: unknown types or fields, non-zero padding or a
non-canonical JSON body are refused.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Literal

from ._codec import b64d, b64e, canonical_json
from .errors import EnvelopeTooLarge, FileStreamError, MalformedEnvelope
from .filestream import FileManifest

MIN_BUCKET = 256
SMALL_BUCKET_LIMIT = 16384
LARGE_BUCKET_STEP = 16384
MAX_PADDED_PAYLOAD = 160 * 1024  # a 64 KiB text fits with room for JSON escaping
MAX_RECEIPT_IDS = 1000
_LEN = struct.Struct(">I")
_MESSAGE_ID = re.compile(r"^[0-9a-f]{32}$")


@dataclass(frozen=True)
class Text:
    body: str
    kind: Literal["text"] = field(default="text", init=False, repr=False)


@dataclass(frozen=True)
class FileOffer:
    manifest: FileManifest
    blob_id: str | None = None
    kind: Literal["file"] = field(default="file", init=False, repr=False)


@dataclass(frozen=True)
class Receipt:
    status: Literal["delivered", "read"]
    message_ids: list[str]
    kind: Literal["receipt"] = field(default="receipt", init=False, repr=False)


@dataclass(frozen=True)
class Typing:
    active: bool
    kind: Literal["typing"] = field(default="typing", init=False, repr=False)


@dataclass(frozen=True)
class Edit:
    """Replaces the text of an earlier message of the same sender."""

    message_id: str
    body: str
    kind: Literal["edit"] = field(default="edit", init=False, repr=False)


@dataclass(frozen=True)
class Delete:
    """Withdraws earlier messages of the same sender."""

    message_ids: list[str]
    kind: Literal["delete"] = field(default="delete", init=False, repr=False)


@dataclass(frozen=True)
class SenderKey:
    """A group sender key for the receiving device (`crypto.senderkeys.SenderKeyDistribution`
    bytes). It travels only inside a pairwise envelope, which authenticates the sending device."""

    distribution: bytes
    kind: Literal["sender_key"] = field(default="sender_key", init=False, repr=False)


@dataclass(frozen=True)
class SenderKeyRequest:
    """ "I cannot open your group messages under key `key_id`": the sender answers with its current
    sender key (messages before that position stay unreadable: the chain only moves forward)."""

    group_id: str
    key_id: int
    kind: Literal["sender_key_request"] = field(default="sender_key_request", init=False, repr=False)


@dataclass(frozen=True)
class Timer:
    """Disappearing messages for this conversation from now on: each message is removed
    `seconds` after it was sent (0: off). Both sides keep the latest timer either of them set."""

    seconds: int
    kind: Literal["timer"] = field(default="timer", init=False, repr=False)


MAX_TIMER_SECONDS = 28 * 24 * 3600
MAX_HISTORY_RECORDS = 500
HISTORY_FIELDS = frozenset(
    {"message_id", "conversation", "sender_user", "sender_device", "kind", "payload", "sent_at_ms", "state"}
)


@dataclass(frozen=True)
class HistoryChunk:
    """Part of my history, from one of my devices to another (device transfer): stored messages
    as records with exactly `HISTORY_FIELDS`; the receiver takes them only from its own user and
    only over a direct link."""

    records: list[dict[str, Any]]
    kind: Literal["history"] = field(default="history", init=False, repr=False)


Payload = (
    Text | FileOffer | Receipt | Typing | Edit | Delete | SenderKey | SenderKeyRequest | Timer | HistoryChunk
)
PAYLOAD_KINDS = (
    "text",
    "file",
    "receipt",
    "typing",
    "edit",
    "delete",
    "sender_key",
    "sender_key_request",
    "timer",
    "history",
)
_GROUP_ID = re.compile(r"^[0-9a-f]{32}$")
MAX_DISTRIBUTION_BYTES = 1024


def bucket_size(n: int) -> int:
    """The padded size for `n` bytes of length-prefixed payload."""
    if n <= MIN_BUCKET:
        return MIN_BUCKET
    if n <= SMALL_BUCKET_LIMIT:
        return 1 << (n - 1).bit_length()
    return -(-n // LARGE_BUCKET_STEP) * LARGE_BUCKET_STEP


def _check_ids(ids: object, what: str) -> list[str]:
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_RECEIPT_IDS:
        raise MalformedEnvelope(f"{what} must list 1-{MAX_RECEIPT_IDS} message ids")
    for mid in ids:
        if not isinstance(mid, str) or not _MESSAGE_ID.match(mid):
            raise MalformedEnvelope(f"{what}: {mid!r} is not a 32-hex message id")
    return ids


def _check_group(value: object) -> str:
    if not isinstance(value, str) or not _GROUP_ID.match(value):
        raise MalformedEnvelope("group id must be 32 lowercase hex digits")
    return value


def _check_key_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise MalformedEnvelope("sender key id must be an integer from 0 to 2^32 - 1")
    return value


def _check_records(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_HISTORY_RECORDS:
        raise MalformedEnvelope(f"a history chunk holds 1-{MAX_HISTORY_RECORDS} records")
    for record in value:
        if not isinstance(record, dict) or set(record) != HISTORY_FIELDS:
            raise MalformedEnvelope(f"a history record has exactly the fields {sorted(HISTORY_FIELDS)}")
        _check_ids([record["message_id"]], "history record")
        if not isinstance(record["payload"], dict) or not isinstance(record["conversation"], str):
            raise MalformedEnvelope("a history record's payload is an object, its conversation text")
        for name in ("sender_user", "sent_at_ms"):
            if isinstance(record[name], bool) or not isinstance(record[name], int):
                raise MalformedEnvelope(f"a history record's {name} is a whole number")
        for name in ("sender_device", "kind", "state"):
            if not isinstance(record[name], str):
                raise MalformedEnvelope(f"a history record's {name} is text")
    return value


def _check_timer(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TIMER_SECONDS:
        raise MalformedEnvelope(f"a disappearing timer must be 0 to {MAX_TIMER_SECONDS} seconds")
    return value


def _to_dict(p: Payload) -> dict[str, Any]:
    match p:
        case Text(body=body):
            if not isinstance(body, str):
                raise MalformedEnvelope("text body must be a string")
            return {"type": "text", "body": body}
        case FileOffer(manifest=manifest, blob_id=blob_id):
            return {"type": "file", "manifest": manifest.to_dict(), "blob_id": blob_id}
        case Receipt(status=status, message_ids=ids):
            if status not in ("delivered", "read"):
                raise MalformedEnvelope(f"receipt status must be delivered or read, not {status!r}")
            return {"type": "receipt", "status": status, "message_ids": _check_ids(list(ids), "receipt")}
        case Typing(active=active):
            return {"type": "typing", "active": bool(active)}
        case Edit(message_id=mid, body=body):
            _check_ids([mid], "edit")
            if not isinstance(body, str):
                raise MalformedEnvelope("edit body must be a string")
            return {"type": "edit", "message_id": mid, "body": body}
        case Delete(message_ids=ids):
            return {"type": "delete", "message_ids": _check_ids(list(ids), "delete")}
        case SenderKey(distribution=raw):
            if not isinstance(raw, bytes) or not 0 < len(raw) <= MAX_DISTRIBUTION_BYTES:
                raise MalformedEnvelope(f"sender key must be 1-{MAX_DISTRIBUTION_BYTES} bytes")
            return {"type": "sender_key", "distribution": b64e(raw)}
        case SenderKeyRequest(group_id=gid, key_id=key_id):
            return {
                "type": "sender_key_request",
                "group_id": _check_group(gid),
                "key_id": _check_key_id(key_id),
            }
        case Timer(seconds=seconds):
            return {"type": "timer", "seconds": _check_timer(seconds)}
        case HistoryChunk(records=records):
            return {"type": "history", "records": _check_records(list(records))}
    raise MalformedEnvelope(f"not a payload: {type(p).__name__}")


def encode_payload(p: Payload) -> bytes:
    """Canonical bytes of `p`, padded to its bucket; `EnvelopeTooLarge` past the limit."""
    try:
        body = canonical_json(_to_dict(p))
    except UnicodeEncodeError as e:
        raise MalformedEnvelope(
            f"{p.kind} payload holds text that is not valid Unicode (a lone surrogate)"
        ) from e
    n = _LEN.size + len(body)
    if n > MAX_PADDED_PAYLOAD:
        raise EnvelopeTooLarge(
            f"{p.kind} payload encodes to {n} bytes; the limit is {MAX_PADDED_PAYLOAD} bytes"
        )
    size = bucket_size(n)
    return _LEN.pack(len(body)) + body + bytes(size - n)


def _fields(d: dict[str, Any], *names: str) -> None:
    if set(d) != {"type", *names}:
        raise MalformedEnvelope(f"{d.get('type')} payload must have exactly the fields {sorted(names)}")


def _from_dict(d: dict[str, Any]) -> Payload:
    kind = d.get("type")
    if kind == "text":
        _fields(d, "body")
        if not isinstance(d["body"], str):
            raise MalformedEnvelope("text body must be a string")
        return Text(d["body"])
    if kind == "file":
        _fields(d, "manifest", "blob_id")
        if d["blob_id"] is not None and not isinstance(d["blob_id"], str):
            raise MalformedEnvelope("file offer blob id must be a string or null")
        try:
            manifest = FileManifest.from_dict(d["manifest"])
        except FileStreamError as e:
            raise MalformedEnvelope(f"file offer carries a bad manifest: {e}") from e
        return FileOffer(manifest, d["blob_id"])
    if kind == "receipt":
        _fields(d, "status", "message_ids")
        if d["status"] not in ("delivered", "read"):
            raise MalformedEnvelope("receipt status must be delivered or read")
        return Receipt(d["status"], _check_ids(d["message_ids"], "receipt"))
    if kind == "typing":
        _fields(d, "active")
        if not isinstance(d["active"], bool):
            raise MalformedEnvelope("typing flag must be true or false")
        return Typing(d["active"])
    if kind == "edit":
        _fields(d, "message_id", "body")
        _check_ids([d["message_id"]], "edit")
        if not isinstance(d["body"], str):
            raise MalformedEnvelope("edit body must be a string")
        return Edit(d["message_id"], d["body"])
    if kind == "delete":
        _fields(d, "message_ids")
        return Delete(_check_ids(d["message_ids"], "delete"))
    if kind == "sender_key":
        _fields(d, "distribution")
        try:
            raw = b64d(d["distribution"])
        except ValueError as e:
            raise MalformedEnvelope("sender key distribution is not base64url") from e
        if not 0 < len(raw) <= MAX_DISTRIBUTION_BYTES:
            raise MalformedEnvelope(f"sender key must be 1-{MAX_DISTRIBUTION_BYTES} bytes")
        return SenderKey(raw)
    if kind == "sender_key_request":
        _fields(d, "group_id", "key_id")
        return SenderKeyRequest(_check_group(d["group_id"]), _check_key_id(d["key_id"]))
    if kind == "timer":
        _fields(d, "seconds")
        return Timer(_check_timer(d["seconds"]))
    if kind == "history":
        _fields(d, "records")
        return HistoryChunk(_check_records(d["records"]))
    raise MalformedEnvelope(f"unknown payload type {kind!r}")


def decode_payload(data: bytes) -> Payload:
    """Inverse of `encode_payload`; any deviation from the canonical form is `MalformedEnvelope`."""
    if len(data) < _LEN.size:
        raise MalformedEnvelope(f"payload of {len(data)} bytes is too short")
    (n,) = _LEN.unpack_from(data)
    end = _LEN.size + n
    if end > len(data) or bucket_size(end) != len(data):
        raise MalformedEnvelope("payload length prefix does not match its padding")
    if any(data[end:]):
        raise MalformedEnvelope("payload padding is not all zero")
    body = data[_LEN.size : end]
    try:
        d = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise MalformedEnvelope("payload is not UTF-8 JSON") from e
    if not isinstance(d, dict):
        raise MalformedEnvelope("payload must be a JSON object")
    p = _from_dict(d)
    try:
        canonical = canonical_json(_to_dict(p))
    except UnicodeEncodeError as e:  # an escaped lone surrogate ("\ud800") decodes but cannot re-encode
        raise MalformedEnvelope("payload text is not valid Unicode") from e
    if canonical != body:
        raise MalformedEnvelope("payload JSON is not in canonical form")
    return p
