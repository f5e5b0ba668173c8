"""The one contract between the signalling server and its peers.

Every REST body and every WebSocket frame is a pydantic model here; nothing else crosses between
`signalling` and `peer`. This module imports nothing of ours and must never grow server logic: the
peer imports it, so anything here ships to every client.

Binary values (envelopes, public keys, signatures) travel as unpadded base64url strings (`B64`).
The server never decodes an envelope: it checks that the string is base64url and within the size
limit, stores the bytes, and hands them on unchanged.
"""

from __future__ import annotations

import base64
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    TypeAdapter,
    field_validator,
    model_serializer,
    model_validator,
)

PROTOCOL_VERSION = 1

USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{3,32}$"
DEVICE_ID_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"
MESSAGE_ID_PATTERN = r"^[0-9a-f]{32}$"
GROUP_ID_PATTERN = r"^[0-9a-f]{32}$"
PASSWORD_MIN_BYTES = 8
PASSWORD_MAX_BYTES = 72  # bcrypt's hard limit; longer passwords are refused, never truncated

_B64URL = re.compile(r"^[A-Za-z0-9_-]*$")


def b64encode(data: bytes) -> str:
    """Unpadded base64url: the one text form of bytes on the wire."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    """Inverse of `b64encode`; raises ValueError on anything that is not unpadded base64url."""
    if not _B64URL.match(text):
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _check_b64(value: str) -> str:
    if not _B64URL.match(value):
        raise ValueError("must be unpadded base64url (A-Z a-z 0-9 - _)")
    return value


B64 = Annotated[str, Field(description="unpadded base64url bytes")]
Username = Annotated[str, Field(pattern=USERNAME_PATTERN, description="3-32 of A-Z a-z 0-9 _ . -")]
DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
MessageId = Annotated[str, Field(pattern=MESSAGE_ID_PATTERN, description="128-bit random id, hex")]
GroupId = Annotated[
    str, Field(pattern=GROUP_ID_PATTERN, description="128-bit random id, hex, chosen by the creating device")
]
MAX_GROUP_RECORD_CHARS = 128 * 1024  # base64url of crypto.groupstate.MAX_RECORD_BYTES (64 KiB)
MAX_GROUP_DEVICES_PER_SEND = 4096


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Response(BaseModel):
    """Server answers: tolerant of added fields so old peers keep working against newer servers."""

    model_config = ConfigDict(extra="ignore", frozen=True, from_attributes=True)


def _check_password(value: str) -> str:
    size = len(value.encode("utf-8"))
    if size < PASSWORD_MIN_BYTES or size > PASSWORD_MAX_BYTES:
        raise ValueError(
            f"password must be {PASSWORD_MIN_BYTES} to {PASSWORD_MAX_BYTES} bytes in UTF-8, got {size}"
        )
    return value


# --------------------------------------------------------------------------------------------------
# Accounts and tokens
# --------------------------------------------------------------------------------------------------


class UserCreate(_Model):
    username: Username
    email: EmailStr
    password: str
    public_key: str | None = Field(default=None, description="accepted for the seed's clients, unused")

    _password = field_validator("password")(_check_password)


class UserOut(_Response):
    id: int
    username: str
    email: str
    created_at: datetime


class UserMe(UserOut):
    display_name: str | None = None
    updated_at: datetime | None = None
    last_seen: datetime | None = None


class UserUpdate(_Model):
    email: EmailStr | None = None
    password: str | None = Field(default=None, description="new password; needs current_password")
    current_password: str | None = None
    display_name: str | None = Field(
        default=None, max_length=64, description="shown beside the username; empty clears it"
    )

    @field_validator("password")
    @classmethod
    def _new_password(cls, value: str | None) -> str | None:
        return None if value is None else _check_password(value)


class UserPublic(_Response):
    """What a stranger may see of another account: enough to add it, nothing more."""

    id: int
    username: str


class TokenPair(_Response):
    access_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 scheme name, not a secret
    refresh_token: str | None = None
    expires_in: int = Field(description="access token lifetime in seconds")


class RefreshRequest(_Model):
    refresh_token: str


# --------------------------------------------------------------------------------------------------
# Contacts and presence
# --------------------------------------------------------------------------------------------------


class ContactStatus(StrEnum):
    PENDING = "pending"
    ACCEPTED = "accepted"
    DECLINED = "declined"
    BLOCKED = "blocked"


class ContactDirection(StrEnum):
    OUTGOING = "outgoing"  # I asked them
    INCOMING = "incoming"  # they asked me


class ContactAdd(_Model):
    """Add by id (the seed's `friend_id`) or by username; exactly one of the two."""

    friend_id: int | None = None
    username: str | None = None


class ContactUpdate(_Model):
    group: str | None = Field(default=None, max_length=64)
    remark: str | None = Field(default=None, max_length=256)


class BlockAdd(_Model):
    """Block someone by id or by username; exactly one of the two."""

    user_id: int | None = None
    username: str | None = None


class BlockOut(_Response):
    user_id: int
    username: str
    created_at: datetime


class ContactOut(_Response):
    user_id: int
    username: str
    display_name: str | None = None
    status: ContactStatus
    direction: ContactDirection
    group: str | None = None
    remark: str | None = None
    online: bool = False
    last_seen: datetime | None = None
    created_at: datetime


# --------------------------------------------------------------------------------------------------
# Device key bundles (the server stores them; peers verify the signature, see docs/protocol.md)
# --------------------------------------------------------------------------------------------------


class DeviceBundleIn(_Model):
    device_id: DeviceId
    identity_key: B64 = Field(description="Ed25519 public key, 32 raw bytes")
    encryption_key: B64 = Field(description="RSA-4096 public key, DER SubjectPublicKeyInfo")
    created_at: int = Field(description="unix seconds, as signed")
    signature: B64 = Field(description="Ed25519 self-signature over the canonical bundle bytes")

    _b64 = field_validator("identity_key", "encryption_key", "signature")(_check_b64)


class DeviceOut(_Response):
    user_id: int
    device_id: str
    identity_key: str
    encryption_key: str
    created_at: int
    signature: str
    revoked: bool = False
    name: str | None = None
    added_at: datetime | None = None
    last_seen: datetime | None = None


class DeviceRename(_Model):
    name: str | None = Field(default=None, max_length=64, description="a label; null or empty clears it")


# --------------------------------------------------------------------------------------------------
# ICE configuration handed to logged-in peers (TURN REST credentials are time-limited)
# --------------------------------------------------------------------------------------------------


class IceServer(_Response):
    urls: list[str]
    username: str | None = None
    credential: str | None = None


class IceConfig(_Response):
    ice_servers: list[IceServer]
    ttl: int = Field(description="seconds the credentials stay valid")


# --------------------------------------------------------------------------------------------------
# Mailbox and blobs over REST (the WebSocket is the live path; these serve scripts and fallbacks)
# --------------------------------------------------------------------------------------------------


class RecipientDevice(_Model):
    user_id: int
    device_id: DeviceId


class MailboxItem(_Response):
    message_id: str
    sender_user: int
    sender_device: str
    envelope: str
    queued_at: datetime


class MailboxAck(_Model):
    """REST twin of the `ack` frame: these messages are saved on `device_id`; delete their rows."""

    device_id: DeviceId
    message_ids: list[MessageId] = Field(min_length=1, max_length=1000)


class BlobOut(_Response):
    blob_id: str
    size: int
    sha256: str
    created_at: datetime


# --------------------------------------------------------------------------------------------------
# Groups (docs/server.md "Groups"; the records are crypto.groupstate bytes, opaque to the server)
# --------------------------------------------------------------------------------------------------


class GroupRole(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"


def _check_group_name(value: str) -> str:
    if not value.strip() or any(ord(c) < 32 for c in value):
        raise ValueError("a group name must not be blank or hold control characters")
    return value


GroupName = Annotated[str, Field(min_length=1, max_length=64)]
GroupRecordText = Annotated[
    str, Field(min_length=1, max_length=MAX_GROUP_RECORD_CHARS, description="a signed membership record")
]


class GroupCreate(_Model):
    """A new group; `record` is its create record, signed on the creator's device."""

    group_id: GroupId
    name: GroupName
    members: list[int] = Field(default_factory=list, max_length=999, description="accepted contacts")
    record: GroupRecordText

    _name = field_validator("name")(_check_group_name)
    _b64 = field_validator("record")(_check_b64)


class GroupChange(_Model):
    """Every change carries its signed record and the number of records the signing device had
    verified (`version`): the record goes at that position, or the call fails with 409."""

    record: GroupRecordText
    version: int = Field(ge=1, le=2**31 - 1)

    _b64 = field_validator("record")(_check_b64)


class GroupRename(GroupChange):
    name: GroupName

    _name = field_validator("name")(_check_group_name)


class GroupMembersChange(GroupChange):
    user_ids: list[int] = Field(min_length=1, max_length=1000)


class GroupPromote(GroupChange):
    user_id: int


class GroupOut(_Response):
    group_id: str
    name: str
    role: GroupRole = Field(description="your role in it")
    member_count: int
    version: int = Field(description="membership records stored; compare with the chain you verified")
    created_by: int | None = None
    created_at: datetime


class GroupMemberOut(_Response):
    user_id: int
    username: str
    role: GroupRole
    joined_at: datetime
    added_by: int | None = None


class GroupRecordOut(_Response):
    seq: int
    record: str


class GroupSummary(_Response):
    group_id: str
    name: str
    version: int
    role: GroupRole


class ErrorBody(_Response):
    """Every REST error: `detail` is a sentence for a person, `code` a stable word for a program."""

    detail: str
    code: str | None = None


# --------------------------------------------------------------------------------------------------
# WebSocket frames: a discriminated union on `type`
# --------------------------------------------------------------------------------------------------


class SignalKind(StrEnum):
    OFFER = "offer"
    ANSWER = "answer"
    CANDIDATE = "candidate"
    BYE = "bye"


class AuthFrame(_Model):
    """First frame for clients that cannot set an Authorization header (browsers)."""

    type: Literal["auth"] = "auth"
    token: str
    device_id: DeviceId


class SignalFrame(_Model):
    """WebRTC signalling relayed to one device of an accepted contact.

    The sender fills `to_*`; the server fills `from_*` from the authenticated socket, overwriting
    whatever the client put there. `payload` is opaque to the server (the peer signs it).
    """

    type: Literal["signal"] = "signal"
    kind: SignalKind
    to_user: int
    to_device: DeviceId
    from_user: int | None = None
    from_device: str | None = None
    payload: dict[str, Any] = Field(default_factory=dict)


class SendFrame(_Model):
    """One envelope for one or more devices. `ref` pairs the `accepted` or `error` answer."""

    type: Literal["send"] = "send"
    ref: str = Field(max_length=64)
    message_id: MessageId
    envelope: B64
    recipients: list[RecipientDevice] = Field(min_length=1, max_length=256)
    # A disappearing message: the mailbox keeps it at most this long (never past its retention).
    expires_in: int | None = Field(default=None, ge=1, le=28 * 24 * 3600)

    _b64 = field_validator("envelope")(_check_b64)


class AcceptedFrame(_Model):
    """Sent only after every stored row is committed: from here on the server owns delivery."""

    type: Literal["accepted"] = "accepted"
    ref: str
    message_id: str
    live: list[str] = Field(default_factory=list, description="device ids it was pushed to now")
    queued: list[str] = Field(default_factory=list, description="device ids it was stored for")
    full: list[str] = Field(
        default_factory=list, description="group sends: devices whose mailbox is full (not stored for them)"
    )


class GroupSendFrame(_Model):
    """One group message (crypto.senderkeys bytes) for the devices of a group's members.

    The server fans it out to every active device of every member but the sending device, or
    only to `devices` (the ones the sender could not reach directly), storing the envelope once
    with a mailbox row per device. The answer is an `accepted` frame (or an `error`).
    """

    type: Literal["group_send"] = "group_send"
    ref: str = Field(max_length=64)
    group_id: GroupId
    message_id: MessageId
    envelope: B64
    devices: list[DeviceId] | None = Field(default=None, min_length=1, max_length=MAX_GROUP_DEVICES_PER_SEND)

    _b64 = field_validator("envelope")(_check_b64)


class AcceptedBatchFrame(_Model):
    """Several `accepted` answers in one frame, in the order they would have come one by one.

    Only for sockets that asked for it with `?accepted_batch=1` on the /ws URL: a busy sender
    then reads one frame per burst of commits or live acks instead of one per envelope. Other
    sockets never see this frame.
    """

    type: Literal["accepted_batch"] = "accepted_batch"
    items: list[AcceptedFrame] = Field(min_length=1)


class DeliverFrame(_Model):
    type: Literal["deliver"] = "deliver"
    message_id: str
    sender_user: int
    sender_device: str
    envelope: B64
    queued: bool = Field(description="true when it comes out of the mailbox")
    queued_at: datetime | None = None
    group_id: str | None = Field(default=None, description="set for a group message (a group_send)")


MAX_ACK_IDS = 1000


class AckFrame(_Model):
    """The receiving device has stored these messages: the server may delete their mailbox rows.

    `message_id` acks one; `message_ids` (added later, up to MAX_ACK_IDS) acks many in one frame,
    as a device draining a backlog or a busy live stream does; a frame may carry both. A frame
    with a bad id is refused whole (nothing deleted) with an error naming it. Fields left out are
    not written, so a single-id ack is the same JSON as before `message_ids` existed.
    """

    type: Literal["ack"] = "ack"
    message_id: MessageId | None = None
    message_ids: list[MessageId] | None = Field(default=None, min_length=1, max_length=MAX_ACK_IDS)

    @model_validator(mode="after")
    def _some_id(self) -> AckFrame:
        if self.message_id is None and not self.message_ids:
            raise ValueError("an ack needs message_id or message_ids")
        return self

    @model_serializer(mode="wrap")
    def _without_unset_ids(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        for key in ("message_id", "message_ids"):
            if data.get(key) is None:
                data.pop(key, None)
        return data

    def ids(self) -> list[str]:
        """Every acked id, single and batched, in frame order."""
        ids = [self.message_id] if self.message_id is not None else []
        return ids + list(self.message_ids or ())


class PresenceFrame(_Model):
    type: Literal["presence"] = "presence"
    user_id: int
    device_id: str | None = None
    online: bool
    last_seen: datetime | None = None


class ContactEvent(StrEnum):
    """What happened to a contact relationship, as the receiving user sees it."""

    REQUESTED = "requested"  # a request was made (to you, or by one of your own devices)
    ACCEPTED = "accepted"  # you are now accepted contacts (either side accepted, or both asked)
    DECLINED = "declined"  # a request was declined (yours, or one you declined on another device)
    REMOVED = "removed"  # the relationship or request is gone (removed, withdrawn, account deleted)
    UPDATED = "updated"  # your own group or remark changed (on another device); never sent to them
    BLOCKED = "blocked"  # you blocked them (on one of your devices); never sent to them
    UNBLOCKED = "unblocked"  # you lifted the block; never sent to them


class ContactFrame(_Model):
    """A contact change, pushed after it is committed to every live device of both users
    (the actor's own devices included), so contact lists and request lists need no polling.

    `user_id`/`username` name the *other* person from the receiver's point of view. `contact` is the
    receiver's row after the change (as `GET /me/contacts/` or the request lists would show it), or
    None when the receiver has no row left (removed; a request the receiver declined). `by_me` is
    true when the change was made by the receiving user (on this or another device).
    """

    type: Literal["contact"] = "contact"
    event: ContactEvent
    user_id: int
    username: str
    by_me: bool = False
    contact: ContactOut | None = None


class GroupEvent(StrEnum):
    CREATED = "created"  # you were made a member of a new group (or created it)
    MEMBERS_ADDED = "members_added"
    MEMBERS_REMOVED = "members_removed"  # `user_ids` were removed (you, if you are among them)
    PROMOTED = "promoted"
    RENAMED = "renamed"
    LEFT = "left"  # `user_ids` left; `promoted` became admin if the last admin left
    DELETED = "deleted"


class GroupFrame(_Model):
    """A membership change, pushed after it is committed to every live device of every member
    (and of whoever left or was removed). `group` is the receiver's view after the change, None
    when they are no longer in it. Devices fetch the new records (`GET /groups/{id}/records`)
    and verify them before they act on the change: this frame is a hint, the chain is the truth."""

    type: Literal["group"] = "group"
    event: GroupEvent
    group_id: str
    name: str
    version: int
    by_user: int
    user_ids: list[int] = Field(default_factory=list)
    promoted: list[int] = Field(default_factory=list)
    group: GroupOut | None = None


class GroupsFrame(_Model):
    """Right after a socket's mailbox drain (before `drained`), for sockets that asked for it with
    `?groups=1` on the /ws URL: every group the user is in, with
    its version, so a device that was away catches up on membership changes it missed; a group it
    knew and does not see here it has left, been removed from, or was deleted."""

    type: Literal["groups"] = "groups"
    groups: list[GroupSummary]


class ReadyFrame(_Model):
    """After auth: who the socket is, and how many mailbox rows will follow."""

    type: Literal["ready"] = "ready"
    user_id: int
    device_id: str
    pending: int


class DrainedFrame(_Model):
    """The mailbox backlog has been pushed; what follows is live traffic."""

    type: Literal["drained"] = "drained"


class ErrorFrame(_Model):
    type: Literal["error"] = "error"
    code: str
    message: str
    ref: str | None = None


class PingFrame(_Model):
    type: Literal["ping"] = "ping"
    nonce: str | None = Field(default=None, max_length=64)


class PongFrame(_Model):
    type: Literal["pong"] = "pong"
    nonce: str | None = None


ClientFrame = Annotated[
    AuthFrame | SignalFrame | SendFrame | AckFrame | PingFrame | GroupSendFrame,
    Field(discriminator="type"),
]
ServerFrame = Annotated[
    SignalFrame
    | AcceptedFrame
    | AcceptedBatchFrame
    | DeliverFrame
    | PresenceFrame
    | ReadyFrame
    | DrainedFrame
    | ErrorFrame
    | PongFrame
    | ContactFrame
    | GroupFrame
    | GroupsFrame,
    Field(discriminator="type"),
]

CLIENT_FRAME: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)
SERVER_FRAME: TypeAdapter[ServerFrame] = TypeAdapter(ServerFrame)


class ErrorCode(StrEnum):
    """Stable `code` values of ErrorFrame; the message beside each says the specifics."""

    MALFORMED = "malformed"  # not JSON, or fails validation
    TOO_LARGE = "too_large"
    UNAUTHORIZED = "unauthorized"
    NOT_A_CONTACT = "not_a_contact"
    UNKNOWN_DEVICE = "unknown_device"
    QUOTA = "quota"
    NOT_A_MEMBER = "not_a_member"
    DUPLICATE = "duplicate"
    INTERNAL = "internal"


class CloseCode:
    """WebSocket close codes the hub uses (4000-4999 are ours)."""

    UNAUTHORIZED = 4401
    REPLACED = 4409  # another socket for the same device took over
    ACCOUNT_GONE = 4410  # logged out or deleted
    RATE_LIMITED = 4429
    SERVER_SHUTDOWN = 1001
