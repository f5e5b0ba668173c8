"""What travels on a direct link's data channel: one binary message per frame, a type byte first.

Only framing lives here (bytes in, typed frames out): the link moves frames, the router and the
file transfer give them meaning. A malformed frame raises `FrameError`; the link drops it and keeps
going, because a bad frame from a peer must not take down the connection for good messages.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from peer.errors import FrameError


class FrameType(IntEnum):
    ENVELOPE = 1  # a sealed envelope, byte-for-byte as sent to the server
    ACK = 2  # the receiver stored the envelope with this message id
    PING = 3
    PONG = 4
    CHUNK = 5  # one encrypted file chunk of a transfer
    CHUNK_ACK = 6  # the receiver has written chunks up to and including this index
    FILE_ABORT = 7  # the receiver gives up a transfer (bad chunk, disk full); the reason follows


_ID = struct.Struct("!16s")
_ID_INDEX = struct.Struct("!16sI")
_NONCE = struct.Struct("!Q")


@dataclass(frozen=True, slots=True)
class Envelope:
    data: bytes


@dataclass(frozen=True, slots=True)
class Ack:
    message_id: str  # 32 hex


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: int


@dataclass(frozen=True, slots=True)
class Chunk:
    transfer_id: str  # the message id of the envelope that carried the file offer
    index: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ChunkAck:
    transfer_id: str
    index: int


@dataclass(frozen=True, slots=True)
class FileAbort:
    transfer_id: str
    reason: str


Frame = Envelope | Ack | Ping | Pong | Chunk | ChunkAck | FileAbort


def _id_bytes(hex_id: str) -> bytes:
    try:
        raw = bytes.fromhex(hex_id)
    except ValueError as e:
        raise FrameError(f"id {hex_id!r} is not hex") from e
    if len(raw) != 16:
        raise FrameError(f"id {hex_id!r} is not 128 bits")
    return raw


def encode(frame: Frame) -> bytes:
    match frame:
        case Envelope(data):
            return bytes([FrameType.ENVELOPE]) + data
        case Ack(message_id):
            return bytes([FrameType.ACK]) + _id_bytes(message_id)
        case Ping(nonce):
            return bytes([FrameType.PING]) + _NONCE.pack(nonce)
        case Pong(nonce):
            return bytes([FrameType.PONG]) + _NONCE.pack(nonce)
        case Chunk(transfer_id, index, data):
            return bytes([FrameType.CHUNK]) + _ID_INDEX.pack(_id_bytes(transfer_id), index) + data
        case ChunkAck(transfer_id, index):
            return bytes([FrameType.CHUNK_ACK]) + _ID_INDEX.pack(_id_bytes(transfer_id), index)
        case FileAbort(transfer_id, reason):
            return bytes([FrameType.FILE_ABORT]) + _id_bytes(transfer_id) + reason.encode()[:512]
    raise FrameError(f"cannot encode {type(frame).__name__}")


def decode(message: bytes | str) -> Frame:
    if isinstance(message, str) or not message:
        raise FrameError("frames are non-empty binary messages")
    kind, body = message[0], memoryview(message)[1:]
    try:
        match kind:
            case FrameType.ENVELOPE:
                return Envelope(bytes(body))
            case FrameType.ACK:
                (raw,) = _ID.unpack(body)
                return Ack(raw.hex())
            case FrameType.PING:
                return Ping(_NONCE.unpack(body)[0])
            case FrameType.PONG:
                return Pong(_NONCE.unpack(body)[0])
            case FrameType.CHUNK:
                raw, index = _ID_INDEX.unpack_from(body)
                return Chunk(raw.hex(), index, bytes(body[_ID_INDEX.size :]))
            case FrameType.CHUNK_ACK:
                raw, index = _ID_INDEX.unpack(body)
                return ChunkAck(raw.hex(), index)
            case FrameType.FILE_ABORT:
                (raw,) = _ID.unpack_from(body)
                return FileAbort(raw.hex(), bytes(body[_ID.size :]).decode(errors="replace"))
    except struct.error as e:
        raise FrameError(f"frame type {kind} has a malformed body ({len(body)} bytes)") from e
    raise FrameError(f"unknown frame type {kind}")
