"""The local API's wire format: JSON-RPC 2.0, one JSON object per line, over a Unix socket.

Stdlib only: the CLI imports this on every command, so it must cost nothing to load. It never
touches the peer; it only says how requests, answers, errors and event notifications look.
"""

from __future__ import annotations

import json
from enum import IntEnum, StrEnum
from typing import Any

MAX_LINE_BYTES = 1 << 20  # one request or answer; a longer line is refused, the socket closed
SOCKET_NAME = "node.sock"
LOCK_NAME = "node.lock"
LOG_NAME = "node.log"
EVENT_METHOD = "event"  # the notification that carries one peer event to a subscriber


class ErrorCode(IntEnum):
    """JSON-RPC error codes: the spec's own, then ours (positive, stable, documented)."""

    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL = -32603
    PEER_ERROR = 1  # any other PeerError / CryptoError: the message says what
    LOCKED = 2  # the node holds no keys: unlock with the password first
    NOT_LOGGED_IN = 3  # this profile has no session: `peerpost login`
    SERVER_UNAVAILABLE = 4
    UNKNOWN_CONTACT = 5
    KEY_CHANGED = 6
    AUTH_FAILED = 7
    WRONG_PASSWORD = 8
    BAD_INPUT = 9  # the request was understood but its values are not acceptable
    STOPPING = 10


class NodeState(StrEnum):
    """What the node can do right now (the `state` of `status`)."""

    LOGGED_OUT = "logged_out"  # no session on this profile (the web UI can log in)
    LOCKED = "locked"  # a session, but no keys in memory
    READY = "ready"  # the peer runs: every call works


class RpcError(Exception):
    """An error answer from the node (client side), or one to send (node side)."""

    def __init__(self, code: int, message: str, kind: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.kind = kind

    def to_json(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": int(self.code), "message": self.message}
        if self.kind:
            error["data"] = {"type": self.kind}
        return error


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


def request(request_id: int, method: str, params: dict[str, Any] | None = None) -> bytes:
    return encode({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params or {}})


def result(request_id: Any, value: Any) -> bytes:
    return encode({"jsonrpc": "2.0", "id": request_id, "result": value})


def error(request_id: Any, err: RpcError) -> bytes:
    return encode({"jsonrpc": "2.0", "id": request_id, "error": err.to_json()})


def notification(method: str, params: dict[str, Any]) -> bytes:
    return encode({"jsonrpc": "2.0", "method": method, "params": params})
