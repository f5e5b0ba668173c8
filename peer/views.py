"""What a `Peer` hands out and is configured with: its settings and the plain views of the user,
devices, safety numbers and messages that the CLI, the UI and tests read.

Plain data only: nothing here talks to the network, the store or the keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aiortc import RTCIceServer

from crypto.keys import DeviceKeys
from crypto.keystore import DEFAULT_SCRYPT_N
from crypto.payload import FileOffer, Payload, Text
from peer.localstore import StoredMessage
from peer.records import DeviceInfo, GroupMemberView, GroupView, Me, MessageView, SafetyNumber
from peer.vocab import ConversationId, MessageState
from signalling.protocol import ContactOut

__all__ = [
    "STATE_RANK",
    "ContactBook",
    "ConversationSummary",
    "DeviceInfo",
    "GroupMemberView",
    "GroupView",
    "Me",
    "MessageView",
    "PeerSettings",
    "SafetyNumber",
    "conversation_of",
    "payload_record",
]

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
    forward_secrecy: bool = True  # publish prekeys; 1:1 traffic as ratchet (PPR) messages where possible
    download_dir: Path | None = None  # None: the platform's downloads folder, "PeerPost" in it
    auto_export: bool = True  # put a decrypted copy of each received file in download_dir
    device_keys: DeviceKeys | None = None  # tests: fixed keys instead of generating
    scrypt_n: int = DEFAULT_SCRYPT_N
    key_refresh_after: float = 30.0  # seconds a user's fetched device list is reused before sending
    edit_window: float = 48 * 3600.0  # seconds after sending that its sender may edit or delete it for all


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


def received_message(
    *,
    message_id: str,
    conversation: str,
    sender_user: int,
    sender_device: str,
    me_user: int,
    payload: Payload,
    sent_at_ms: int,
    via: str | None,
    stored_at_ms: int,
) -> StoredMessage:
    """A text or file that just arrived, as the store keeps it: one builder for every way in
    (envelope, ratchet, group), so they store the same fields the same way."""
    return StoredMessage(
        message_id=message_id,
        conversation=conversation,
        sender_user=sender_user,
        sender_device=sender_device,
        outgoing=sender_user == me_user,  # my own other device's message
        content_type=payload.kind,
        payload=payload_record(payload),
        sent_at_ms=sent_at_ms,
        stored_at_ms=stored_at_ms,
        path=via,
        state=MessageState.RECEIVED.value,
        reason=None,
    )


def sending_message(
    *, message_id: str, conversation: str, me_user: int, me_device: str, payload: Payload, at_ms: int
) -> StoredMessage:
    """A text or file of mine as the store keeps it before it is out (1:1 or group)."""
    return StoredMessage(
        message_id=message_id,
        conversation=conversation,
        sender_user=me_user,
        sender_device=me_device,
        outgoing=True,
        content_type=payload.kind,
        payload=payload_record(payload),
        sent_at_ms=at_ms,
        stored_at_ms=at_ms,
        path=None,
        state=MessageState.SENDING.value,
        reason=None,
    )
