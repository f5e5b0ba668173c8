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
from enum import IntEnum, StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    model_serializer,
    model_validator,
)

# The frame protocol's version. A client may name the one it speaks (`?protocol=` on /ws, or
# `protocol` in the auth frame; absent means 1); the server closes with
# CloseCode.UNSUPPORTED_PROTOCOL when it does not speak it, and names its own in `ready`.
PROTOCOL_VERSION = 1
SUPPORTED_PROTOCOLS = frozenset({1})

USERNAME_PATTERN = r"^[A-Za-z0-9_.-]{3,32}$"
DEVICE_ID_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"
MESSAGE_ID_PATTERN = r"^[0-9a-f]{32}$"
# Counted in characters (as JSON Schema's minLength/maxLength count), so the published schema says
# exactly what the server accepts. The server pre-hashes a password longer than bcrypt's 72 bytes
# (signalling/passwords.py), so nothing is truncated and nothing accepted here is refused later.
PASSWORD_MIN_CHARS = 8
PASSWORD_MAX_CHARS = 128
GROUP_ID_PATTERN = r"^[0-9a-f]{32}$"

# Every integer the store keeps is a signed 64-bit column: a larger one is refused at the door (422
# naming the field) instead of overflowing in the database.
MAX_INT64 = 2**63 - 1

# Unpadded base64url: groups of 4, then 0, 2 or 3 characters (a length of 1 mod 4 encodes nothing).
B64_PATTERN = r"^(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2,3})?$"
_B64URL = re.compile(B64_PATTERN)


def b64encode(data: bytes) -> str:
    """Unpadded base64url: the one text form of bytes on the wire."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    """Inverse of `b64encode`; raises ValueError on anything that is not unpadded base64url."""
    if not _B64URL.match(text):
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64_length(size: int) -> int:
    """Characters of the unpadded base64url form of `size` bytes."""
    return (size * 4 + 2) // 3


B64 = Annotated[str, Field(pattern=B64_PATTERN, description="unpadded base64url bytes (RFC 4648 §5, no '=')")]
Username = Annotated[str, Field(pattern=USERNAME_PATTERN, description="3-32 of A-Z a-z 0-9 _ . -")]
DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN, description="8-64 of A-Z a-z 0-9 _ -")]
MessageId = Annotated[str, Field(pattern=MESSAGE_ID_PATTERN, description="128-bit random id, 32 hex")]
UserId = Annotated[int, Field(ge=1, le=MAX_INT64, description="a user's id")]
# The server never sends mail, so an address is checked for shape only, by a rule the schema states
# exactly: one '@', a local part of 1-64 characters, a dotted domain, no spaces or control
# characters (C0, C1, DEL). Written without `\s`, whose meaning differs between Python, ECMA (the
# schema's dialect) and Rust (pydantic's) regular expressions.
_EMAIL_CHAR = r"[^@\x00-\x20\x7f-\xa0]"
_EMAIL_LABEL = r"[^@.\x00-\x20\x7f-\xa0]+"
EMAIL_PATTERN = rf"^{_EMAIL_CHAR}{{1,64}}@{_EMAIL_LABEL}(?:\.{_EMAIL_LABEL})+$"
Email = Annotated[
    str, Field(pattern=EMAIL_PATTERN, max_length=254, description="an e-mail address (compared lower-case)")
]
Password = Annotated[
    str,
    Field(
        min_length=PASSWORD_MIN_CHARS,
        max_length=PASSWORD_MAX_CHARS,
        description=f"{PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} characters",
    ),
]
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


# --------------------------------------------------------------------------------------------------
# Accounts and tokens
# --------------------------------------------------------------------------------------------------


class UserCreate(_Model):
    username: Username
    email: Email
    password: Password
    public_key: str | None = Field(default=None, description="accepted for the seed's clients, unused")


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
    email: Email | None = None
    password: Password | None = Field(default=None, description="new password; needs current_password")
    current_password: str | None = None
    display_name: str | None = Field(
        default=None, max_length=64, description="shown beside the username; empty clears it"
    )


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
    """Add by id (the seed's `friend_id`) or by username; exactly one of the two (null = not given)."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": ["friend_id"], "properties": {"friend_id": {"type": "integer"}}},
                {"required": ["username"], "properties": {"username": {"type": "string"}}},
            ]
        }
    )

    friend_id: UserId | None = None
    username: str | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _exactly_one(self) -> ContactAdd:
        if (self.friend_id is None) == (self.username is None):
            raise ValueError("give exactly one of friend_id or username")
        return self


class ContactUpdate(_Model):
    group: str | None = Field(default=None, max_length=64)
    remark: str | None = Field(default=None, max_length=256)


class BlockAdd(_Model):
    """Block someone by id or by username; exactly one of the two (null = not given)."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {"required": ["user_id"], "properties": {"user_id": {"type": "integer"}}},
                {"required": ["username"], "properties": {"username": {"type": "string"}}},
            ]
        }
    )

    user_id: UserId | None = None
    username: str | None = Field(default=None, max_length=64)

    @model_validator(mode="after")
    def _exactly_one(self) -> BlockAdd:
        if (self.user_id is None) == (self.username is None):
            raise ValueError("give exactly one of user_id or username")
        return self


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


IDENTITY_KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAX_ENCRYPTION_KEY_BYTES = 1024


class DeviceBundleIn(_Model):
    """A device's public bundle. Sizes are checked here (and so in the schema); the signature is
    checked by peers against the identity key they pin, never by the server."""

    device_id: DeviceId
    identity_key: B64 = Field(
        min_length=b64_length(IDENTITY_KEY_BYTES),
        max_length=b64_length(IDENTITY_KEY_BYTES),
        description=f"Ed25519 public key, {IDENTITY_KEY_BYTES} raw bytes",
    )
    encryption_key: B64 = Field(
        min_length=2,
        max_length=b64_length(MAX_ENCRYPTION_KEY_BYTES),
        description=f"RSA-4096 public key, DER SubjectPublicKeyInfo (1 to {MAX_ENCRYPTION_KEY_BYTES} bytes)",
    )
    created_at: int = Field(ge=0, le=MAX_INT64, description="unix seconds, as signed")
    signature: B64 = Field(
        min_length=b64_length(SIGNATURE_BYTES),
        max_length=b64_length(SIGNATURE_BYTES),
        description=f"Ed25519 self-signature over the canonical bundle bytes ({SIGNATURE_BYTES} bytes)",
    )


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
# Prekeys (PQXDH): published per device, claimed as a bundle with one one-time key per kind
# --------------------------------------------------------------------------------------------------


class PrekeyKindName(StrEnum):
    """`crypto.prekeys.PrekeyKind` by name: signed X25519, one-time X25519, ML-KEM last-resort/one-time."""

    SIGNED = "signed"
    ONE_TIME = "one_time"
    KEM_LAST_RESORT = "kem_last_resort"
    KEM_ONE_TIME = "kem_one_time"


class PrekeyIn(_Model):
    kind: PrekeyKindName
    key_id: int = Field(ge=1, le=2**32 - 1)
    public_key: B64 = Field(
        min_length=b64_length(32),
        max_length=b64_length(1184),
        description="X25519 (32 bytes) or ML-KEM-768 (1184 bytes) public key",
    )
    created_at: int = Field(ge=0, lt=2**63, description="unix seconds, as signed")
    signature: B64 = Field(
        min_length=b64_length(SIGNATURE_BYTES),
        max_length=b64_length(SIGNATURE_BYTES),
        description="Ed25519 signature by the device's identity key",
    )


class PrekeysIn(_Model):
    """Publish or refill: any mix of kinds; ids already published with the same bytes are ignored."""

    prekeys: list[PrekeyIn] = Field(min_length=1, max_length=400)
    replace: bool = Field(
        default=False,
        description="drop every prekey the server holds for this device first (a fresh local store)",
    )


class PrekeyOut(_Response):
    kind: PrekeyKindName
    key_id: int
    public_key: str
    created_at: int
    signature: str


class PrekeyStockOut(_Response):
    """What the server holds for a device: the device refills when a count runs low."""

    device_id: str
    one_time: int
    kem_one_time: int
    signed_prekey_id: int | None
    kem_last_resort_id: int | None
    held_ids: list[int] = Field(
        default_factory=list,
        description="every key id held for the device, any kind (a device finds out it lost keys)",
    )


class PrekeyClaimIn(_Model):
    device_ids: list[DeviceId] | None = Field(
        default=None, max_length=64, description="only these devices (default: every active device)"
    )


class PrekeyBundleOut(_Response):
    """One device's bundle: the one-time key in it was handed out to this claim only."""

    user_id: int
    device_id: str
    identity_key: str
    signed_prekey: PrekeyOut
    kem_prekey: PrekeyOut = Field(description="one-time ML-KEM key, or the last-resort one when none is left")
    one_time_prekey: PrekeyOut | None = Field(description="null when the device's stock ran out")


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
    user_id: UserId
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


# The longest a disappearing message's file may ask to be kept (`POST /blobs?expires_in=`): the
# longest disappearing timer. The server keeps it no longer than its own blob retention either.
MAX_BLOB_EXPIRES_IN = 28 * 24 * 3600


class BlobOut(_Response):
    blob_id: str
    size: int
    sha256: str
    created_at: datetime
    expires_at: datetime = Field(description="when the server deletes it (its retention, or `expires_in`)")


# --------------------------------------------------------------------------------------------------
# Groups (docs/server.md "Groups"; the records are crypto.groupstate bytes, opaque to the server)
# --------------------------------------------------------------------------------------------------


class GroupRole(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"


# 1-64 characters, no control characters, not blank (some character other than a space): stated
# as a pattern so the schema says exactly what the server takes.
GROUP_NAME_PATTERN = r"^[^\x00-\x1f]*[^\x00-\x20][^\x00-\x1f]*$"
GroupName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=GROUP_NAME_PATTERN,
        description="1-64 characters, not blank, no control characters",
    ),
]
GroupRecordText = Annotated[
    str,
    Field(
        min_length=2,
        max_length=MAX_GROUP_RECORD_CHARS,
        pattern=B64_PATTERN,
        description="a signed membership record, unpadded base64url",
    ),
]


class GroupCreate(_Model):
    """A new group; `record` is its create record, signed on the creator's device."""

    group_id: GroupId
    name: GroupName
    members: list[UserId] = Field(default_factory=list, max_length=999, description="accepted contacts")
    record: GroupRecordText


class GroupChange(_Model):
    """Every change carries its signed record and the number of records the signing device had
    verified (`version`): the record goes at that position, or the call fails with 409."""

    record: GroupRecordText
    version: int = Field(ge=1, le=2**31 - 1)


class GroupRename(GroupChange):
    name: GroupName


class GroupMembersChange(GroupChange):
    user_ids: list[UserId] = Field(min_length=1, max_length=1000)


class GroupPromote(GroupChange):
    user_id: UserId


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


class ApiErrorCode(StrEnum):
    """Stable `code` values of every REST error (ErrorBody); `detail` beside it says the specifics."""

    # generic, by HTTP status
    BAD_REQUEST = "bad_request"  # 400: the body could not be parsed at all
    UNAUTHORIZED = "unauthorized"  # 401: no bearer token
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    CONFLICT = "conflict"
    TOO_LARGE = "too_large"
    INVALID = "invalid"  # 422: a field is wrong; `field` names it
    RATE_LIMITED = "rate_limited"  # 429, with Retry-After
    INTERNAL = "internal"
    DATABASE_UNAVAILABLE = "database_unavailable"  # 503 from /health
    # accounts and tokens
    BAD_CREDENTIALS = "bad_credentials"
    INVALID_TOKEN = "invalid_token"  # noqa: S105 - a code word, not a secret
    TOKEN_EXPIRED = "token_expired"  # noqa: S105
    TOKEN_REVOKED = "token_revoked"  # noqa: S105
    INVALID_REFRESH = "invalid_refresh"
    REFRESH_REUSED = "refresh_reused"
    ACCOUNT_GONE = "account_gone"
    USERNAME_TAKEN = "username_taken"
    EMAIL_TAKEN = "email_taken"
    CURRENT_PASSWORD_REQUIRED = "current_password_required"  # noqa: S105
    WRONG_PASSWORD = "wrong_password"  # noqa: S105
    USER_NOT_FOUND = "user_not_found"
    # contacts
    SELF_CONTACT = "self_contact"
    DUPLICATE = "duplicate"
    NO_REQUEST = "no_request"
    NOT_A_CONTACT = "not_a_contact"
    # groups
    NOT_A_MEMBER = "not_a_member"
    NOT_AN_ADMIN = "not_an_admin"
    REMOVE_SELF = "remove_self"
    STALE_VERSION = "stale_version"
    GROUP_ID_TAKEN = "group_id_taken"
    ALREADY = "already"
    GROUP_FULL = "group_full"
    # devices, mailbox, blobs
    DEVICE_TAKEN = "device_taken"
    TOO_MANY_DEVICES = "too_many_devices"
    DEVICE_NOT_FOUND = "device_not_found"
    DEVICE_REVOKED = "device_revoked"  # 401: the token's device was revoked (its tokens died with it)
    UNKNOWN_DEVICE = "unknown_device"
    QUOTA = "quota"
    STORAGE_FULL = "storage_full"  # 507: the disk guard refuses new writes
    BUSY = "busy"  # 503 + Retry-After: the password-hashing queue is full
    # blocks
    BLOCKED = "blocked"
    SELF_BLOCK = "self_block"
    ALREADY_BLOCKED = "already_blocked"
    NOT_BLOCKED = "not_blocked"
    # prekeys
    PREKEY_ID_TAKEN = "prekey_id_taken"
    PREKEY_STOCK_FULL = "prekey_stock_full"
    PREKEYS_NOT_PUBLISHED = "prekeys_not_published"


class ErrorBody(_Response):
    """Every REST error: `detail` is a sentence for a person, `code` a stable word for a program,
    `field` the request field at fault (dotted, e.g. `recipients.0.device_id`) when one is."""

    detail: str
    code: ApiErrorCode
    field: str | None = None


# --------------------------------------------------------------------------------------------------
# WebSocket frames: a discriminated union on `type`
# --------------------------------------------------------------------------------------------------


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


class SignalKind(StrEnum):
    OFFER = "offer"
    ANSWER = "answer"
    CANDIDATE = "candidate"
    BYE = "bye"


class AuthFrame(_Model):
    """First frame for clients that cannot set an Authorization header (browsers)."""

    type: Literal["auth"] = "auth"
    token: str = Field(description="an access token from POST /token")
    device_id: DeviceId
    protocol: int = Field(default=1, ge=1, le=MAX_INT64, description="the frame protocol version spoken")


class SignalFrame(_Model):
    """WebRTC signalling relayed to one device of an accepted contact.

    The sender fills `to_*`; the server fills `from_*` from the authenticated socket, overwriting
    whatever the client put there. `payload` is opaque to the server (the peer signs it).
    """

    type: Literal["signal"] = "signal"
    kind: SignalKind
    to_user: UserId = Field(description="the user whose device this is for")
    to_device: DeviceId
    from_user: int | None = Field(default=None, description="filled in by the server")
    from_device: str | None = Field(default=None, description="filled in by the server")
    payload: dict[str, Any] = Field(
        default_factory=dict,
        description="opaque to the server; PeerPost peers sign it (docs/protocol.md, Signalling)",
    )


class SendFrame(_Model):
    """One envelope for one or more devices. `ref` pairs the `accepted` or `error` answer."""

    type: Literal["send"] = "send"
    ref: str = Field(max_length=64, description="the client's tag, echoed in `accepted` or `error`")
    message_id: MessageId = Field(description="must equal the envelope header's message_id")
    envelope: B64 = Field(description="the sealed envelope (docs/protocol.md), unpadded base64url")
    recipients: list[RecipientDevice] = Field(
        min_length=1, max_length=256, description="every device it is for, distinct"
    )
    expires_in: int | None = Field(
        default=None,
        ge=1,
        le=28 * 24 * 3600,
        description="a disappearing message: the mailbox keeps it at most this many seconds",
    )


class AcceptedFrame(_Model):
    """Sent only after every stored row is committed: from here on the server owns delivery."""

    type: Literal["accepted"] = "accepted"
    ref: str = Field(description="the `send`'s ref")
    message_id: str = Field(description="the `send`'s message_id")
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


class AcceptedBatchFrame(_Model):
    """Several `accepted` answers in one frame, in the order they would have come one by one.

    Only for sockets that asked for it with `?accepted_batch=1` on the /ws URL: a busy sender
    then reads one frame per burst of commits or live acks instead of one per envelope. Other
    sockets never see this frame.
    """

    type: Literal["accepted_batch"] = "accepted_batch"
    items: list[AcceptedFrame] = Field(min_length=1)


class DeliverFrame(_Model):
    """An envelope for this device: live, or from the mailbox during the drain. Ack it once saved."""

    type: Literal["deliver"] = "deliver"
    message_id: str = Field(description="the sender's `send` message_id; ack this id")
    sender_user: int = Field(description="who sent it, as the server authenticated them")
    sender_device: str = Field(description="the sending device, as the server authenticated it")
    envelope: B64 = Field(description="the envelope exactly as sent")
    queued: bool = Field(description="true when it comes out of the mailbox")
    queued_at: datetime | None = Field(default=None, description="when the mailbox stored it (queued only)")
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
        data: dict[str, Any] = handler(self)
        for key in ("message_id", "message_ids"):
            if data.get(key) is None:
                data.pop(key, None)
        return data

    def ids(self) -> list[str]:
        """Every acked id, single and batched, in frame order."""
        ids = [self.message_id] if self.message_id is not None else []
        return ids + list(self.message_ids or ())


class PresenceFrame(_Model):
    """A contact's device (or the contact) came online or went away (after a short grace)."""

    type: Literal["presence"] = "presence"
    user_id: int = Field(description="an accepted contact (or you, for your other devices)")
    device_id: str | None = Field(default=None, description="the device; null: the user as a whole")
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
    and verify them before they act on the change: this frame is a hint, the chain is the truth.
    A receiver the change put out of the group (removed, or left) can no longer fetch records, so
    its frame carries `record`, the change's own signed record: the device verifies it by
    extending the chain it holds (admin signature, hash link) before it says why it is out."""

    type: Literal["group"] = "group"
    event: GroupEvent
    group_id: str
    name: str
    version: int
    by_user: int
    user_ids: list[int] = Field(default_factory=list)
    promoted: list[int] = Field(default_factory=list)
    group: GroupOut | None = None
    record: str | None = Field(
        default=None,
        description="for a receiver out of the group after this change: the change's signed "
        "membership record (base64url), record number `version` - 1; verify it against your chain",
    )


class GroupsFrame(_Model):
    """Right after a socket's mailbox drain (before `drained`), for sockets that asked for it with
    `?groups=1` on the /ws URL: every group the user is in, with
    its version, so a device that was away catches up on membership changes it missed; a group it
    knew and does not see here it has left, been removed from, or was deleted."""

    type: Literal["groups"] = "groups"
    groups: list[GroupSummary]


class ReadyFrame(_Model):
    """After auth: who the socket is, how many mailbox rows will follow, the protocol it speaks."""

    type: Literal["ready"] = "ready"
    user_id: int = Field(description="who the token belongs to")
    device_id: str = Field(description="this socket's device")
    pending: int = Field(description="mailbox rows that the drain will push before `drained`")
    protocol: int = Field(default=PROTOCOL_VERSION, description="the frame protocol the server speaks")


class DrainedFrame(_Model):
    """The mailbox backlog has been pushed; what follows is live traffic."""

    type: Literal["drained"] = "drained"


class ErrorFrame(_Model):
    """A frame the server did not act on; the socket stays up. `ref` is the refused `send`'s ref;
    `device_id` names the device at fault when there is one (`unknown_device`: a signal or send to a
    device that is not connected, not active, or not the named user's)."""

    type: Literal["error"] = "error"
    code: ErrorCode
    message: str = Field(description="what was wrong, for a person")
    ref: str | None = Field(default=None, description="the refused `send`'s ref (null for other frames)")
    device_id: str | None = Field(default=None, description="the device at fault, when there is one")


class PingFrame(_Model):
    """Keep-alive and barrier: answered `pong` after every earlier send and ack is committed."""

    type: Literal["ping"] = "ping"
    nonce: str | None = Field(default=None, max_length=64, description="echoed in the `pong`")


class PongFrame(_Model):
    """The answer to a `ping`, with its nonce."""

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


class CloseCode(IntEnum):
    """WebSocket close codes the hub uses (4000-4999 are ours; the reason text says the specifics)."""

    SERVER_SHUTDOWN = 1001
    TOO_SLOW = 1013  # "try again later": the client stopped reading; it reconnects and drains
    UNAUTHORIZED = 4401
    REPLACED = 4409  # another socket for the same device took over
    ACCOUNT_GONE = 4410  # logged out, deleted, or this device revoked
    UNSUPPORTED_PROTOCOL = 4426  # the client named a protocol version this server does not speak
    RATE_LIMITED = 4429
