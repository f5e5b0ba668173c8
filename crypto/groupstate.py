"""Group membership the server cannot forge: signed, hash-chained membership records.

The server keeps a group's member list to route messages, but a member device must not trust that
list (the "ghost member" attack on server-held group state). Every change is a *record* signed by a
device identity key (Ed25519) of a user allowed to make it, and carries the SHA-256 of the record
before it. A device verifies the whole chain from the creation record with `verify_chain`, keeps
the head it verified (`GroupHead`), and then refuses:

- a member the chain does not hold (`check_roster` raises `GhostMember`);
- a record signed by someone who may not make the change (`UnauthorizedGroupChange`);
- a record that does not follow the previous one (`GroupChainBroken`: wrong group, seq or hash);
- a chain older than, or forking from, the head it already verified (`GroupRollback`: a server
  that drops a removal or replays an old state).

The server stores and serves records as opaque bytes. This module is pure: bytes in, state out.

Record layout (integers big-endian)::

    "PPGR" u8 version=1
    u32 n, body[n]     canonical JSON (sorted keys, no spaces, UTF-8); fields in docs/protocol.md
    signature[64]      Ed25519 over "peerpost/group-record/v1\\0" || all bytes above

The record's hash (what the next record's `prev` names) is SHA-256 over all of its bytes,
signature included. Rules of each operation:

- `create` (seq 0, prev = 32 zero bytes): the signer becomes the only admin; `members` join in
  list order.
- `add` / `remove` / `promote` / `rename`: signed by an admin. `remove` cannot remove the signer
  (that is `leave`).
- `leave`: signed by the leaving member. When the last admin leaves, the oldest remaining member
  (the earliest added) becomes admin — the server applies the same rule, so both agree.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature

from . import _publickeys
from ._codec import Reader, canonical_json
from .bundle import DEVICE_ID_PATTERN
from .errors import (
    GhostMember,
    GroupChainBroken,
    GroupRecordSignatureInvalid,
    GroupRollback,
    MalformedGroupRecord,
    UnauthorizedGroupChange,
)
from .keys import DeviceKeys

RECORD_MAGIC = b"PPGR"
RECORD_VERSION = 1
RECORD_DOMAIN = b"peerpost/group-record/v1\x00"
SIGNATURE_BYTES = 64
GENESIS_PREV = bytes(32)
MAX_RECORD_BYTES = 64 * 1024
MAX_NAME_CHARS = 64
MAX_USERS_PER_RECORD = 1000
DEFAULT_MAX_MEMBERS = 1000
GROUP_ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
_U32 = struct.Struct(">I")


class GroupOp(StrEnum):
    CREATE = "create"
    ADD = "add"
    REMOVE = "remove"
    PROMOTE = "promote"
    RENAME = "rename"
    LEAVE = "leave"


class Role(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"


# Fields of each operation beside the common ones.
_OP_FIELDS: dict[GroupOp, frozenset[str]] = {
    GroupOp.CREATE: frozenset({"name", "members"}),
    GroupOp.ADD: frozenset({"users"}),
    GroupOp.REMOVE: frozenset({"users"}),
    GroupOp.PROMOTE: frozenset({"user"}),
    GroupOp.RENAME: frozenset({"name"}),
    GroupOp.LEAVE: frozenset(),
}
_COMMON = frozenset({"v", "group", "seq", "prev", "op", "by_user", "by_device", "at_ms"})


class Signer(Protocol):
    """This device as a signer (crypto.envelope.LocalDevice fits)."""

    @property
    def user_id(self) -> int: ...

    @property
    def device_id(self) -> str: ...

    @property
    def keys(self) -> DeviceKeys: ...


class DeviceDirectory(Protocol):
    """The verifier's source of device keys: the peer's pinned, bundle-verified keys."""

    def identity_key(self, user_id: int, device_id: str) -> bytes | None:
        """The 32-byte Ed25519 key of that device of that user, or None when unknown."""
        ...


@dataclass(frozen=True)
class MapDirectory:
    """A `DeviceDirectory` over a dict {(user id, device id): identity key} (tests, tools)."""

    keys: Mapping[tuple[int, str], bytes]

    def identity_key(self, user_id: int, device_id: str) -> bytes | None:
        return self.keys.get((user_id, device_id))


@dataclass(frozen=True)
class GroupRecord:
    """One verified-shape record (its signature is checked by the chain, against the directory)."""

    group_id: str
    seq: int
    prev: bytes
    op: GroupOp
    by_user: int
    by_device: str
    at_ms: int
    name: str | None = None
    users: tuple[int, ...] = ()
    raw: bytes = field(default=b"", repr=False)

    @property
    def hash(self) -> bytes:
        return hashlib.sha256(self.raw).digest()

    @property
    def signed(self) -> bytes:
        return self.raw[:-SIGNATURE_BYTES]

    @property
    def signature(self) -> bytes:
        return self.raw[-SIGNATURE_BYTES:]


@dataclass(frozen=True)
class Member:
    user_id: int
    role: Role
    since_seq: int  # the record that added them
    order: int  # position in joining order: the oldest member has the lowest


@dataclass(frozen=True)
class GroupHead:
    """What a device remembers of the last state it verified: enough to refuse a rollback."""

    group_id: str
    seq: int
    hash: bytes

    def to_dict(self) -> dict[str, Any]:
        return {"group_id": self.group_id, "seq": self.seq, "hash": self.hash.hex()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GroupHead:
        return cls(str(d["group_id"]), int(d["seq"]), bytes.fromhex(str(d["hash"])))


@dataclass(frozen=True)
class GroupState:
    """The membership a verified chain arrives at. Immutable: `apply` returns the next state."""

    group_id: str
    name: str
    seq: int
    head_hash: bytes
    members: Mapping[int, Member]
    creator: int
    next_order: int
    max_members: int = DEFAULT_MAX_MEMBERS

    @property
    def head(self) -> GroupHead:
        return GroupHead(self.group_id, self.seq, self.head_hash)

    def is_member(self, user_id: int) -> bool:
        return user_id in self.members

    def is_admin(self, user_id: int) -> bool:
        m = self.members.get(user_id)
        return m is not None and m.role is Role.ADMIN

    @property
    def member_ids(self) -> list[int]:
        return sorted(self.members)

    @property
    def admin_ids(self) -> list[int]:
        return sorted(u for u, m in self.members.items() if m.role is Role.ADMIN)

    def oldest_member(self) -> int | None:
        if not self.members:
            return None
        return min(self.members.values(), key=lambda m: m.order).user_id


# --------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_user(value: object, what: str) -> int:
    if not _is_int(value) or not 0 < value < 2**63:  # type: ignore[operator]
        raise MalformedGroupRecord(f"{what} must be a positive user id")
    return value  # type: ignore[return-value]


def _check_name(value: object) -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_CHARS:
        raise MalformedGroupRecord(f"group name must be 1-{MAX_NAME_CHARS} characters, not blank")
    if any(ord(c) < 32 for c in value):
        raise MalformedGroupRecord("group name must not hold control characters")
    return value


def _check_users(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or len(value) > MAX_USERS_PER_RECORD:
        raise MalformedGroupRecord(f"{what} must list at most {MAX_USERS_PER_RECORD} user ids")
    users = tuple(_check_user(u, what) for u in value)
    if len(set(users)) != len(users):
        raise MalformedGroupRecord(f"{what} repeats a user id")
    return users


def _body(record: GroupRecord) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": RECORD_VERSION,
        "group": record.group_id,
        "seq": record.seq,
        "prev": record.prev.hex(),
        "op": record.op.value,
        "by_user": record.by_user,
        "by_device": record.by_device,
        "at_ms": record.at_ms,
    }
    if record.op is GroupOp.CREATE:
        body["name"] = record.name
        body["members"] = list(record.users)
    elif record.op in (GroupOp.ADD, GroupOp.REMOVE):
        body["users"] = list(record.users)
    elif record.op is GroupOp.PROMOTE:
        body["user"] = record.users[0]
    elif record.op is GroupOp.RENAME:
        body["name"] = record.name
    return body


def parse_record(data: bytes) -> GroupRecord:
    """The record in `data`, checked for shape and canonical form (not for its signature)."""
    if not isinstance(data, bytes) or len(data) > MAX_RECORD_BYTES:
        raise MalformedGroupRecord(f"a membership record is bytes of at most {MAX_RECORD_BYTES}")
    r = Reader(data)
    try:
        if r.take(4) != RECORD_MAGIC:
            raise MalformedGroupRecord("not a PeerPost membership record (bad magic)")
        version = r.u8()
        if version != RECORD_VERSION:
            raise MalformedGroupRecord(f"membership record version {version} is not {RECORD_VERSION}")
        body_bytes = r.take(r.u32())
        r.take(SIGNATURE_BYTES)
    except ValueError as e:
        raise MalformedGroupRecord(f"membership record is truncated: {e}") from e
    if r.remaining():
        raise MalformedGroupRecord("membership record has trailing bytes")
    try:
        d = json.loads(body_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise MalformedGroupRecord("membership record body is not UTF-8 JSON") from e
    if not isinstance(d, dict):
        raise MalformedGroupRecord("membership record body must be a JSON object")
    try:
        op = GroupOp(str(d.get("op")))
    except ValueError as e:
        raise MalformedGroupRecord(f"unknown membership operation {d.get('op')!r}") from e
    if set(d) != _COMMON | _OP_FIELDS[op]:
        raise MalformedGroupRecord(
            f"a {op.value} record has exactly the fields {sorted(_COMMON | _OP_FIELDS[op])}"
        )
    if d["v"] != RECORD_VERSION or not _is_int(d["v"]):
        raise MalformedGroupRecord("membership record body version must be 1")
    if not isinstance(d["group"], str) or not GROUP_ID_PATTERN.match(d["group"]):
        raise MalformedGroupRecord("group id must be 32 lowercase hex digits")
    if not _is_int(d["seq"]) or not 0 <= d["seq"] < 2**32:
        raise MalformedGroupRecord("record seq must be an integer from 0")
    if not isinstance(d["prev"], str) or not re.fullmatch(r"[0-9a-f]{64}", d["prev"]):
        raise MalformedGroupRecord("record prev must be 64 lowercase hex digits")
    by_user = _check_user(d["by_user"], "by_user")
    if not isinstance(d["by_device"], str) or not DEVICE_ID_PATTERN.match(d["by_device"]):
        raise MalformedGroupRecord("by_device is not a device id")
    if not _is_int(d["at_ms"]) or not 0 <= d["at_ms"] < 2**63:
        raise MalformedGroupRecord("at_ms must be non-negative integer milliseconds")
    name: str | None = None
    users: tuple[int, ...] = ()
    if op is GroupOp.CREATE:
        name = _check_name(d["name"])
        users = _check_users(d["members"], "members")
    elif op in (GroupOp.ADD, GroupOp.REMOVE):
        users = _check_users(d["users"], "users")
        if not users:
            raise MalformedGroupRecord(f"a {op.value} record names at least one user")
    elif op is GroupOp.PROMOTE:
        users = (_check_user(d["user"], "user"),)
    elif op is GroupOp.RENAME:
        name = _check_name(d["name"])
    record = GroupRecord(
        d["group"], d["seq"], bytes.fromhex(d["prev"]), op, by_user, d["by_device"], d["at_ms"],
        name, users, data,
    )  # fmt: skip
    if canonical_json(_body(record)) != body_bytes:
        raise MalformedGroupRecord("membership record body is not in canonical form")
    return record


def sign_record(
    signer: Signer,
    state: GroupState | None,
    op: GroupOp,
    *,
    group_id: str | None = None,
    name: str | None = None,
    users: Sequence[int] = (),
    at_ms: int | None = None,
) -> bytes:
    """A new record after `state` (None for `create`, which then needs `group_id`), signed by
    `signer`. It is checked against the rules before it is returned, so a device never publishes
    a record its peers would refuse."""
    if op is GroupOp.CREATE:
        if state is not None or group_id is None:
            raise MalformedGroupRecord("a create record starts a chain: give group_id and no state")
        gid, seq, prev = group_id, 0, GENESIS_PREV
    else:
        if state is None:
            raise MalformedGroupRecord(f"a {op.value} record follows a verified state")
        gid, seq, prev = state.group_id, state.seq + 1, state.head_hash
    draft = GroupRecord(
        gid, seq, prev, op, signer.user_id, signer.device_id,
        at_ms if at_ms is not None else int(time.time() * 1000),
        name, tuple(users),
    )  # fmt: skip
    body = canonical_json(_body(draft))
    unsigned = RECORD_MAGIC + bytes([RECORD_VERSION]) + _U32.pack(len(body)) + body
    raw = unsigned + signer.keys.sign(RECORD_DOMAIN + unsigned)
    record = parse_record(raw)
    key = signer.keys.identity_public_bytes()
    _apply(state, record, _OneKey(signer.user_id, signer.device_id, key), DEFAULT_MAX_MEMBERS)
    return raw


@dataclass(frozen=True)
class _OneKey:
    user_id: int
    device_id: str
    key: bytes

    def identity_key(self, user_id: int, device_id: str) -> bytes | None:
        return self.key if (user_id, device_id) == (self.user_id, self.device_id) else None


# --------------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------------


def _check_signature(record: GroupRecord, directory: DeviceDirectory) -> None:
    key = directory.identity_key(record.by_user, record.by_device)
    if key is None:
        raise UnauthorizedGroupChange(
            f"record {record.seq} of group {record.group_id} is signed by device {record.by_device} "
            f"of user {record.by_user}, whose key this device does not know"
        )
    try:
        _publickeys.identity_public(key).verify(record.signature, RECORD_DOMAIN + record.signed)
    except (InvalidSignature, ValueError) as e:
        raise GroupRecordSignatureInvalid(
            f"record {record.seq} of group {record.group_id} does not verify against the key of "
            f"device {record.by_device}: it was forged or altered"
        ) from e


def _apply(
    state: GroupState | None, record: GroupRecord, directory: DeviceDirectory, max_members: int
) -> GroupState:
    where = f"record {record.seq} of group {record.group_id}"
    if state is None:
        if record.op is not GroupOp.CREATE or record.seq != 0 or record.prev != GENESIS_PREV:
            raise GroupChainBroken(f"{where}: a chain starts with a create record at seq 0")
    else:
        if record.group_id != state.group_id:
            raise GroupChainBroken(f"{where} belongs to another group than {state.group_id}")
        if record.seq != state.seq + 1:
            raise GroupChainBroken(f"{where}: expected seq {state.seq + 1}")
        if record.prev != state.head_hash:
            raise GroupChainBroken(f"{where} does not name the previous record's hash")
        if record.op is GroupOp.CREATE:
            raise GroupChainBroken(f"{where}: only the first record creates the group")
    _check_signature(record, directory)
    signer = record.by_user

    if state is None:
        if signer in record.users:
            raise MalformedGroupRecord(f"{where}: the creator is not listed among the members")
        if 1 + len(record.users) > max_members:
            raise UnauthorizedGroupChange(f"{where}: more than {max_members} members")
        members = {signer: Member(signer, Role.ADMIN, 0, 0)}
        for i, u in enumerate(record.users, start=1):
            members[u] = Member(u, Role.MEMBER, 0, i)
        return GroupState(
            record.group_id, record.name or "", 0, record.hash, members, signer,
            1 + len(record.users), max_members,
        )  # fmt: skip

    members = dict(state.members)
    name = state.name
    next_order = state.next_order
    if record.op is GroupOp.LEAVE:
        if signer not in members:
            raise UnauthorizedGroupChange(f"{where}: user {signer} leaves a group they are not in")
        del members[signer]
        _promote_oldest_if_no_admin(members)
    else:
        if not state.is_admin(signer):
            raise UnauthorizedGroupChange(
                f"{where}: user {signer} is not an admin and may not {record.op.value}"
            )
        if record.op is GroupOp.ADD:
            already = [u for u in record.users if u in members]
            if already:
                raise UnauthorizedGroupChange(f"{where}: user(s) {already} are members already")
            if len(members) + len(record.users) > state.max_members:
                raise UnauthorizedGroupChange(f"{where}: more than {state.max_members} members")
            for u in record.users:
                members[u] = Member(u, Role.MEMBER, record.seq, next_order)
                next_order += 1
        elif record.op is GroupOp.REMOVE:
            missing = [u for u in record.users if u not in members]
            if missing:
                raise UnauthorizedGroupChange(f"{where}: user(s) {missing} are not members")
            if signer in record.users:
                raise UnauthorizedGroupChange(f"{where}: an admin leaves with a leave record")
            for u in record.users:
                del members[u]
        elif record.op is GroupOp.PROMOTE:
            (u,) = record.users
            m = members.get(u)
            if m is None or m.role is Role.ADMIN:
                raise UnauthorizedGroupChange(f"{where}: user {u} is not a member to promote")
            members[u] = Member(u, Role.ADMIN, m.since_seq, m.order)
        elif record.op is GroupOp.RENAME:
            name = record.name or name
    return GroupState(
        state.group_id, name, record.seq, record.hash, members, state.creator, next_order,
        state.max_members,
    )  # fmt: skip


def _promote_oldest_if_no_admin(members: dict[int, Member]) -> None:
    if members and not any(m.role is Role.ADMIN for m in members.values()):
        oldest = min(members.values(), key=lambda m: m.order)
        members[oldest.user_id] = Member(oldest.user_id, Role.ADMIN, oldest.since_seq, oldest.order)


def _check_known(records: Sequence[GroupRecord], known: GroupHead | None) -> None:
    if known is None:
        return
    if records and records[0].group_id != known.group_id:
        raise GroupChainBroken(f"the chain served is of group {records[0].group_id}, not {known.group_id}")
    if len(records) <= known.seq:
        raise GroupRollback(
            f"group {known.group_id}: the server serves {len(records)} records, but this device has "
            f"verified {known.seq + 1}: it is replaying an old state or dropping changes"
        )
    if records[known.seq].hash != known.hash:
        raise GroupRollback(
            f"group {known.group_id}: record {known.seq} differs from the one this device verified "
            "(the chain forks)"
        )


def verify_chain(
    records: Iterable[bytes],
    directory: DeviceDirectory,
    *,
    known: GroupHead | None = None,
    expect_group: str | None = None,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> GroupState:
    """Verify a whole chain from its create record and return the state it arrives at.

    `known` is the head this device verified before: the chain must contain it unchanged and may
    only extend it. `expect_group` pins which group the chain must be of.
    """
    parsed = [parse_record(r) for r in records]
    if not parsed:
        raise GroupChainBroken("an empty chain holds no group")
    if expect_group is not None and parsed[0].group_id != expect_group:
        raise GroupChainBroken(f"the chain served is of group {parsed[0].group_id}, not {expect_group}")
    _check_known(parsed, known)
    state: GroupState | None = None
    for record in parsed:
        state = _apply(state, record, directory, max_members)
    assert state is not None
    return state


def extend(state: GroupState, records: Iterable[bytes], directory: DeviceDirectory) -> GroupState:
    """Apply records that follow `state` (the incremental form of `verify_chain`)."""
    for raw in records:
        state = _apply(state, parse_record(raw), directory, state.max_members)
    return state


@dataclass(frozen=True)
class RosterCheck:
    """How the server's member list compares with the verified chain."""

    verified: list[int]
    missing: list[int]  # in the chain, not listed by the server (it withholds them: routing only)


def check_roster(state: GroupState, server_members: Iterable[int]) -> RosterCheck:
    """Raise GhostMember when the server lists anyone the chain does not hold."""
    listed = set(server_members)
    ghosts = sorted(listed - set(state.members))
    if ghosts:
        raise GhostMember(state.group_id, ghosts)
    return RosterCheck(sorted(listed), sorted(set(state.members) - listed))


def removed_between(before: GroupState, after: GroupState) -> list[int]:
    """Users in `before` and not in `after`: whose departure forces a sender-key rotation."""
    return sorted(set(before.members) - set(after.members))
