"""The plain records a `Peer` hands out (who it is, devices, safety numbers, messages).

Stdlib and `peer.vocab` only, so a thin client of the resident node can rebuild them from the
local API's JSON (`from_dict`) without loading aiortc or the crypto stack.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from peer.vocab import ConversationId, DeliveryPath, MessageState


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
    edited_at_ms: int | None = None  # set when its sender edited it (the text is the latest)
    # Outgoing group messages: per-device states rolled up ("delivered to 3 of 5", "read by 2 of 5").
    recipients: int | None = None
    delivered: int | None = None
    read: int | None = None

    @property
    def other_user(self) -> int | None:
        """The other person of a one-to-one conversation (None in a group)."""
        return self.conversation.user_id

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GroupView:
    """A group as this device verified it (`active`: this user is in it)."""

    group_id: str
    name: str
    role: str  # peer.vocab.GroupRole
    members: int
    version: int
    active: bool

    @property
    def conversation(self) -> ConversationId:
        return ConversationId(f"g:{self.group_id}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "conversation": str(self.conversation)}


@dataclass(frozen=True)
class GroupMemberView:
    user_id: int
    username: str
    display_name: str | None
    role: str  # peer.vocab.GroupRole
    is_me: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def message_from_dict(data: dict[str, Any]) -> MessageView:
    """A `MessageView` from its `to_dict()` JSON (unknown keys ignored, vocabularies checked)."""
    known = {f.name for f in fields(MessageView)}
    values = {k: v for k, v in data.items() if k in known}
    values["conversation"] = ConversationId(values["conversation"])
    values["state"] = MessageState(values["state"])
    values["path"] = DeliveryPath(values["path"]) if values.get("path") else None
    return MessageView(**values)
