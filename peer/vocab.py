"""The peer's words: message states, delivery paths and conversation ids, as types.

Each is a `StrEnum` (or a checked `str` subclass), so it compares equal to the plain string that
the local store and the JSON events carry, while code and type checkers see one closed vocabulary
instead of string literals scattered over modules. Plain data only: nothing here does I/O.
"""

from __future__ import annotations

import re
from enum import StrEnum

from peer.errors import ConfigError


class MessageState(StrEnum):
    """How far a message has got. Outgoing: sending → sent → delivered → read (or failed);
    incoming messages are stored as `received`."""

    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"
    RECEIVED = "received"

    @property
    def rank(self) -> int:
        """Order of progress: a receipt only ever moves a message forward."""
        return _RANK.get(self, 0)

    def advanced_by(self, other: str) -> bool:
        """True when `other` is further along than this state."""
        return _RANK.get(MessageState(other), 0) > self.rank


_RANK = {
    MessageState.SENDING: 0,
    MessageState.SENT: 1,
    MessageState.DELIVERED: 2,
    MessageState.READ: 3,
}


class DeliveryPath(StrEnum):
    """The way an envelope travelled to a device."""

    DIRECT = "direct"  # our own data channel, acknowledged by the receiver
    RELAYED = "relayed"  # through the hub, live to a connected device
    QUEUED = "queued"  # into the server's mailbox, for a device that is offline


class DeliveryState(StrEnum):
    """Where one envelope stands for one recipient device."""

    PENDING = "pending"  # in the local outbox, not yet committed by the server
    SENT = "sent"
    FAILED = "failed"


class ReceiptStatus(StrEnum):
    DELIVERED = "delivered"
    READ = "read"


class ConversationKind(StrEnum):
    USER = "u"
    GROUP = "g"


_GROUP_ID = re.compile(r"[0-9a-f]{32}")


class GroupChange(StrEnum):
    """What a verified membership record did (`peer.events.GroupChanged`)."""

    CREATED = "created"
    ADDED = "added"
    REMOVED = "removed"
    LEFT = "left"
    RENAMED = "renamed"
    PROMOTED = "promoted"
    DELETED = "deleted"


class GroupRole(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"


class KeyChange(StrEnum):
    """What a key warning is about."""

    NEW_DEVICE = "new_device"  # a device of a known contact this peer had not seen before
    KEY_CHANGED = "key_changed"  # a known device id offered different keys


class ConversationId(str):
    """`u:<user id>` or `g:<group id>`: the id the envelope header and the local store use.

    A `str` (so it stores, compares and serialises as before), checked once on the way in.
    """

    __slots__ = ()

    def __new__(cls, value: str) -> ConversationId:
        kind, sep, target = value.partition(":")
        ok = target.isdigit() if kind == "u" else kind == "g" and _GROUP_ID.fullmatch(target) is not None
        if sep != ":" or not ok:
            raise ConfigError(f"{value!r} is not a conversation (u:<user id> or g:<group id>)")
        return super().__new__(cls, value)

    @classmethod
    def user(cls, user_id: int) -> ConversationId:
        return cls(f"u:{int(user_id)}")

    @classmethod
    def group(cls, group_id: str) -> ConversationId:
        return cls(f"g:{group_id}")

    @classmethod
    def of(cls, to: int | str) -> ConversationId:
        """From a user id (int or digits) or a conversation id."""
        if isinstance(to, int):
            return cls.user(to)
        if to.isdigit():
            return cls(f"u:{to}")
        if to.startswith(("u:", "g:")):
            return cls(to)
        raise ConfigError(f"{to!r} is not a conversation (u:<user id>) or a user id")

    @property
    def kind(self) -> ConversationKind:
        return ConversationKind(self[0])

    @property
    def target(self) -> int:
        """The other person's user id (a one-to-one conversation only; see `group_id`)."""
        if self.kind is not ConversationKind.USER:
            raise ConfigError(f"{self} is a group conversation, not a person")
        return int(self[2:])

    @property
    def user_id(self) -> int | None:
        """The other person of a one-to-one conversation; None for a group."""
        return self.target if self.kind is ConversationKind.USER else None

    @property
    def group_id(self) -> str | None:
        """The group of a group conversation (32 lowercase hex); None for a person."""
        return self[2:] if self.kind is ConversationKind.GROUP else None
