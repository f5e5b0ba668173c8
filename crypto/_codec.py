"""Byte-level building blocks shared by the canonical encodings (private).

Everything signed in PeerPost is built from fixed-width big-endian integers and length-prefixed byte
strings behind a domain-separation label, so two different messages can never encode to the same
bytes and a signature made for one purpose can never be replayed for another.
"""

from __future__ import annotations

import base64
import json
import re
import struct
from typing import Any

_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def b64e(data: bytes) -> str:
    """Unpadded base64url (the same text form the wire protocol uses)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64d(text: str) -> bytes:
    """Strict inverse of `b64e`: rejects padding, foreign characters and non-canonical tails."""
    if not isinstance(text, str) or not _B64URL.match(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64e(data) != text:
        raise ValueError("non-canonical base64url")
    return data


def lp(data: bytes) -> bytes:
    """A byte string prefixed with its 4-byte big-endian length."""
    return struct.pack(">I", len(data)) + data


def u64(value: int) -> bytes:
    return struct.pack(">Q", value)


def canonical_json(value: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: one byte form per value."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


class Reader:
    """A bounds-checked cursor over bytes; any overrun raises ValueError."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    @property
    def pos(self) -> int:
        return self._pos

    def take(self, n: int) -> bytes:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise ValueError(f"truncated: wanted {n} bytes at offset {self._pos}")
        out = self._data[self._pos : end].tobytes()
        self._pos = end
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack(">H", self.take(2))[0]
        return value

    def u32(self) -> int:
        value: int = struct.unpack(">I", self.take(4))[0]
        return value

    def remaining(self) -> int:
        return len(self._data) - self._pos
