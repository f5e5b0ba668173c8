"""What a `Peer` hands out and is configured with: its settings and the plain views of the user,
devices, safety numbers and messages that the CLI, the UI and tests read.

Plain data only: nothing here talks to the network, the store or the keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aiortc import RTCIceServer

from crypto.keys import DeviceKeys
from crypto.keystore import DEFAULT_SCRYPT_N
from crypto.payload import FileOffer, Payload, Text
from peer.vocab import ConversationId, DeliveryPath, MessageState
from signalling.protocol import ContactOut

# How far a message has got; a receipt only ever moves it forward (see MessageState.rank).
STATE_RANK = {
    s.value: s.rank
    for s in (MessageState.SENDING, MessageState.SENT, MessageState.DELIVERED, MessageState.READ)
}


@dataclass(frozen=True)
class PeerSettings:
    online: bool = True  # connect the hub socket (False: REST-only commands)
    ice_servers: tuple[RTCIceServer, ...] | None = None  # None: ask the server (GET /ice)
    host_addresses: tuple[str, ...] | None = None  # None: every interface aioice finds
    link_deadline: float = 5.0
    link_retry_after: float = 10.0  # after a failed link attempt: server only, then retry in background
    ack_deadline: float = 2.0
    server_deadline: float = 15.0
    keepalive: float = 2.0
    dead_after: float = 10.0
    reconnect_base: float = 0.25
    reconnect_cap: float = 1.6  # back within 2 s of the server (a refused connect costs it little)
    direct: bool = True  # False: never try links (server only)
    answer_offers: bool = True  # False: ignore every offer (tests of the fallback path)
    receipts: bool = True
    download_dir: Path | None = None  # None: the platform's downloads folder, "PeerPost" in it
    auto_export: bool = True  # put a decrypted copy of each received file in download_dir
    device_keys: DeviceKeys | None = None  # tests: fixed keys instead of generating
    scrypt_n: int = DEFAULT_SCRYPT_N
    key_refresh_after: float = 30.0  # seconds a user's fetched device list is reused before sending


@dataclass(frozen=True)
class Me:
    user_id: int
    username: str
    device_id: str
    server_url: str


@dataclass(frozen=True)
class DeviceInfo:
    user_id: int
    device_id: str
    fingerprint: str
    confirmed: bool
    revoked: bool
    key_changed: bool
    this_device: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SafetyNumber:
    user_id: int
    digits: str
    formatted: str
    qr_text: str
    qr_svg: str
    verified: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MessageView:
    message_id: str
    conversation: ConversationId
    sender_user: int
    sender_device: str
    outgoing: bool
    kind: str
    text: str | None
    file: dict[str, Any] | None
    sent_at_ms: int
    path: DeliveryPath | None
    state: MessageState
    reason: str | None
    devices: list[dict[str, Any]] = field(default_factory=list)
    unread: bool = False  # incoming and not yet marked read on this device

    @property
    def other_user(self) -> int | None:
        """The other person of a one-to-one conversation (None in a group)."""
        return self.conversation.user_id

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ContactBook:
    """This user's contacts and open requests, as the server last said (or the local cache, when
    `cached`: the server could not be reached)."""

    accepted: list[ContactOut]
    incoming: list[ContactOut]
    outgoing: list[ContactOut]
    cached: bool = False


@dataclass(frozen=True)
class ConversationSummary:
    """One conversation at a glance: the contact list's line (last message, unread count)."""

    conversation: ConversationId
    last: MessageView | None
    last_at_ms: int
    unread: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def conversation_of(to: int | str) -> ConversationId:
    return ConversationId.of(to)


def payload_record(payload: Payload) -> dict[str, Any]:
    if isinstance(payload, Text):
        return {"type": "text", "body": payload.body}
    if isinstance(payload, FileOffer):
        m = payload.manifest
        return {
            "type": "file",
            "name": m.name,
            "size": m.size,
            "sha256": m.sha256,
            "blob_id": payload.blob_id,
        }
    raise TypeError(f"{payload.kind} payloads are not stored as messages")
