"""One group on this device: the membership it verified, its own sender key, the sender keys it
received, and the rules that join them. The node drives it; it does no I/O of its own.

What this module decides, so the node cannot get it wrong:

- membership comes only from a verified chain (`apply_chain`); the server's member and device
  lists are routing hints, filtered through it (`route`): a device of a user no admin added is
  never encrypted to (it is reported as a ghost), and a message from one is never opened;
- a chain older than, or forking from, what this device verified is refused (`GroupRollback`);
- when a member leaves or is removed, this device's sender key is dropped and the removed users'
  keys forgotten: the next `encrypt` makes a new key that only the remaining devices get;
- the sender key is also replaced on schedule (messages sent, age);
- a device gets this device's sender key once per key (`distribution_for`): a member added later
  gets it at its current position, so it cannot read what came before;
- a distribution is accepted only from the very device it names, inside a verified pairwise
  envelope, and only from a verified member.

States (explicit, see `GroupSessionState`): UNVERIFIED (created from an id or a server hint, no
chain verified yet) → ACTIVE (this user is a member of the verified chain) → LEFT (left, removed
or deleted; keys forgotten). A LEFT group becomes ACTIVE again only through a verified chain that
adds this user back.

Save `to_dict()` after every change (with the message it produced, for `encrypt`): a sender key
reused from a stale copy would repeat chain positions.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from crypto import groupstate as gs
from crypto.envelope import LocalDevice
from crypto.errors import GhostMember, SenderKeyError
from crypto.payload import Payload, SenderKey, SenderKeyRequest
from crypto.senderkeys import (
    DEFAULT_ROTATE_AFTER_MESSAGES,
    DEFAULT_ROTATE_AFTER_MS,
    OpenedGroupMessage,
    OwnSenderKey,
    SenderKeyDistribution,
    SenderKeyStore,
    peek_group_message,
)
from peer.errors import PeerError
from signalling.protocol import b64decode as b64d
from signalling.protocol import b64encode as b64e

log = logging.getLogger(__name__)


class GroupSessionError(PeerError):
    """The group cannot do that in its current state (not verified yet, or this user is out)."""


class GroupSessionState(StrEnum):
    UNVERIFIED = "unverified"
    ACTIVE = "active"
    LEFT = "left"


@dataclass(frozen=True)
class MembershipUpdate:
    """What a verified chain changed, for the timeline ("bob added carol") and for the node."""

    added: list[int]
    removed: list[int]
    promoted: list[int]
    renamed_to: str | None
    state: GroupSessionState
    rotate: bool  # this device's sender key was dropped: the next message goes under a new one


@dataclass(frozen=True)
class Route:
    """Where a group message may go: verified members' devices (never this device), and the
    devices the server listed for users no admin added."""

    devices: list[tuple[int, str]]
    ghosts: list[int]


@dataclass(frozen=True)
class OutgoingGroupMessage:
    message_id: str
    data: bytes  # the crypto.senderkeys group message: one ciphertext, one signature
    key_id: int
    new_key: bool  # made for this message: every recipient needs the distribution first


class GroupSession:
    """The group `group_id` as this device holds it."""

    def __init__(
        self,
        group_id: str,
        me: LocalDevice,
        directory: gs.DeviceDirectory,
        *,
        rotate_after_messages: int = DEFAULT_ROTATE_AFTER_MESSAGES,
        rotate_after_ms: int = DEFAULT_ROTATE_AFTER_MS,
        max_members: int = gs.DEFAULT_MAX_MEMBERS,
    ) -> None:
        if not gs.GROUP_ID_PATTERN.match(group_id):
            raise GroupSessionError(f"{group_id!r} is not a group id (32 lowercase hex digits)")
        self.group_id = group_id
        self.me = me
        self.directory = directory
        self.rotate_after_messages = rotate_after_messages
        self.rotate_after_ms = rotate_after_ms
        self.max_members = max_members
        self._state = GroupSessionState.UNVERIFIED
        self._records: list[bytes] = []
        self.membership: gs.GroupState | None = None
        self._own: OwnSenderKey | None = None
        self._distributed: set[str] = set()  # devices that have the current own key
        self.received = SenderKeyStore()

    # -- state ------------------------------------------------------------------------------------

    @property
    def state(self) -> GroupSessionState:
        return self._state

    def _set_state(self, state: GroupSessionState) -> None:
        if state is not self._state:
            log.debug("group %s: %s -> %s", self.group_id, self._state.value, state.value)
            self._state = state

    @property
    def head(self) -> gs.GroupHead | None:
        return self.membership.head if self.membership is not None else None

    @property
    def version(self) -> int:
        """Records verified: what the server's `version` must equal for this device's next change."""
        return 0 if self.membership is None else self.membership.seq + 1

    @property
    def name(self) -> str | None:
        return self.membership.name if self.membership is not None else None

    def _require_active(self, what: str) -> gs.GroupState:
        if self._state is not GroupSessionState.ACTIVE or self.membership is None:
            raise GroupSessionError(f"cannot {what} in group {self.group_id}: it is {self._state.value}")
        return self.membership

    # -- membership -------------------------------------------------------------------------------

    @classmethod
    def create(
        cls, name: str, members: Sequence[int], me: LocalDevice, directory: gs.DeviceDirectory, **kw: Any
    ) -> tuple[GroupSession, bytes]:
        """A new group with a fresh random id; returns it (ACTIVE) and the create record to publish."""
        group_id = os.urandom(16).hex()
        record = gs.sign_record(
            me, None, gs.GroupOp.CREATE, group_id=group_id, name=name, users=list(members)
        )
        session = cls(group_id, me, directory, **kw)
        session.apply_chain([record])
        return session, record

    def apply_chain(self, records: Sequence[bytes]) -> MembershipUpdate:
        """Verify the whole chain as served (from seq 0) and move to the state it arrives at.

        Raises the crypto errors of `crypto.groupstate` (forged, unauthorised, broken, rolled
        back); on any of them nothing here changes.
        """
        before = self.membership
        after = gs.verify_chain(
            records, self.directory, known=self.head, expect_group=self.group_id, max_members=self.max_members
        )
        return self._adopt(before, after, list(records))

    def extend_chain(self, new_records: Sequence[bytes]) -> MembershipUpdate:
        """Apply records that follow the verified head (what `GET /records?after=` returns)."""
        if self.membership is None:
            return self.apply_chain(new_records)
        after = gs.extend(self.membership, new_records, self.directory)
        return self._adopt(self.membership, after, [*self._records, *new_records])

    def _adopt(
        self, before: gs.GroupState | None, after: gs.GroupState, records: list[bytes]
    ) -> MembershipUpdate:
        old_members = set(before.members) if before is not None else set()
        removed = sorted(old_members - set(after.members))
        added = sorted(set(after.members) - old_members) if before is not None else []
        old_admins = set(before.admin_ids) if before is not None else set()
        promoted = sorted(set(after.admin_ids) - old_admins - set(added)) if before is not None else []
        renamed = after.name if before is not None and after.name != before.name else None
        self.membership = after
        self._records = records
        rotate = False
        if removed:
            for user_id in removed:
                self.received.forget_user(self.group_id, user_id)
            if self._own is not None:
                self._own = None  # the removed must not read what follows
                self._distributed.clear()
                rotate = True
        if after.is_member(self.me.user_id):
            self._set_state(GroupSessionState.ACTIVE)
        else:
            self._forget_keys()
            self._set_state(GroupSessionState.LEFT)
        return MembershipUpdate(added, removed, promoted, renamed, self._state, rotate)

    def server_says_gone(self) -> None:
        """The server no longer lists this group for this user (a `groups` frame without it, or a
        404): stop sending and opening at once; a verified chain may bring it back."""
        self._forget_keys()
        self._set_state(GroupSessionState.LEFT)

    def _forget_keys(self) -> None:
        self._own = None
        self._distributed.clear()
        self.received.forget_group(self.group_id)

    def sign_change(
        self, op: gs.GroupOp, *, users: Sequence[int] = (), name: str | None = None
    ) -> tuple[bytes, int]:
        """(record, version) for a REST change; apply it with `extend_chain([record])` once the
        server took it (a 409 means the group moved on: fetch, verify, and sign again)."""
        state = self._require_active(f"change membership ({op.value})")
        record = gs.sign_record(self.me, state, op, users=users, name=name)
        return record, self.version

    def needs_chain(self, server_version: int) -> bool:
        """The server announces `server_version` records (a `group`/`groups` frame): fetch more?"""
        return server_version != self.version

    # -- routing ----------------------------------------------------------------------------------

    def route(self, server_devices: Iterable[tuple[int, str]]) -> Route:
        """Filter the server's device list through the verified membership."""
        state = self._require_active("send")
        devices, ghosts = [], set()
        for user_id, device_id in server_devices:
            if device_id == self.me.device_id:
                continue
            if state.is_member(user_id):
                devices.append((user_id, device_id))
            else:
                ghosts.add(user_id)
        if ghosts:
            log.warning("%s", GhostMember(self.group_id, sorted(ghosts)))
        return Route(devices, sorted(ghosts))

    # -- sending ----------------------------------------------------------------------------------

    def _current_key(self, now_ms: int) -> tuple[OwnSenderKey, bool]:
        own = self._own
        if own is None or own.needs_rotation(
            now_ms, max_messages=self.rotate_after_messages, max_age_ms=self.rotate_after_ms
        ):
            own = OwnSenderKey.create(self.group_id, self.me.user_id, self.me.device_id, now_ms=now_ms)
            self._own = own
            self._distributed.clear()
            return own, True
        return own, False

    def distribution_for(
        self, devices: Iterable[tuple[int, str]], now_ms: int | None = None
    ) -> tuple[SenderKey, list[tuple[int, str]]]:
        """The sender-key payload and the devices (of `devices`) that do not have the current key
        yet; seal it pairwise to them before the group message, then call `mark_distributed`."""
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        self._require_active("send")
        own, _ = self._current_key(now_ms)
        missing = [d for d in devices if d[1] not in self._distributed]
        return SenderKey(own.distribution().to_bytes()), missing

    def mark_distributed(self, devices: Iterable[tuple[int, str]]) -> None:
        self._distributed.update(d for _, d in devices)

    def encrypt(
        self, payload: Payload, *, message_id: str | None = None, now_ms: int | None = None
    ) -> OutgoingGroupMessage:
        """One group message under the current sender key (a new one when rotation is due)."""
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
        self._require_active("send")
        own, new_key = self._current_key(now_ms)
        data = own.encrypt(payload, message_id=message_id, sent_at_ms=now_ms)
        return OutgoingGroupMessage(peek_group_message(data).message_id, data, own.key_id, new_key)

    # -- receiving --------------------------------------------------------------------------------

    def accept_distribution(self, sender_user: int, sender_device: str, payload: SenderKey) -> bool:
        """Keep a sender key that came in a verified pairwise envelope from (`sender_user`,
        `sender_device`); False when it was known already. Raises SenderKeyError or GhostMember."""
        state = self._require_active("accept a sender key")
        dist = SenderKeyDistribution.from_bytes(payload.distribution)
        if (dist.sender_user, dist.sender_device) != (sender_user, sender_device):
            raise SenderKeyError(
                f"device {sender_device} sent a sender key naming device {dist.sender_device} "
                f"of user {dist.sender_user}: refused"
            )
        if dist.group_id != self.group_id:
            raise SenderKeyError(f"a sender key for group {dist.group_id} is not for group {self.group_id}")
        if not state.is_member(sender_user):
            raise GhostMember(self.group_id, [sender_user])
        return self.received.add(dist)

    def decrypt(self, data: bytes) -> OpenedGroupMessage:
        """Open a group message from a verified member; raises GhostMember for anyone else,
        UnknownSenderKey when its key has not arrived (ask the sender for it)."""
        state = self._require_active("open messages")
        header = peek_group_message(data)
        if header.group_id != self.group_id:
            raise SenderKeyError(f"a message for group {header.group_id} is not for group {self.group_id}")
        if not state.is_member(header.sender_user):
            raise GhostMember(self.group_id, [header.sender_user])
        return self.received.decrypt(data)

    def request_for(self, data: bytes) -> SenderKeyRequest:
        """What to send the sender of `data` (pairwise) when it raised UnknownSenderKey."""
        header = peek_group_message(data)
        return SenderKeyRequest(header.group_id, header.key_id)

    def answer_request(
        self, requester_user: int, requester_device: str, request: SenderKeyRequest, now_ms: int | None = None
    ) -> SenderKey | None:
        """The current sender key for a verified member's device that lost it (None: not ours to
        answer — another group, or this device has no key yet); GhostMember for a non-member."""
        state = self._require_active("answer a sender-key request")
        if request.group_id != self.group_id or self._own is None:
            return None
        if not state.is_member(requester_user):
            raise GhostMember(self.group_id, [requester_user])
        key, _ = self.distribution_for([(requester_user, requester_device)], now_ms)
        return key

    # -- saving -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "group_id": self.group_id,
            "state": self._state.value,
            "records": [b64e(r) for r in self._records],
            "own": self._own.to_dict() if self._own is not None else None,
            "distributed": sorted(self._distributed),
            "received": self.received.to_dict(),
        }

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any], me: LocalDevice, directory: gs.DeviceDirectory, **kw: Any
    ) -> GroupSession:
        """Rebuild from `to_dict`; the saved chain is verified again (a tampered file does not load)."""
        session = cls(str(d["group_id"]), me, directory, **kw)
        records = [b64d(r) for r in d["records"]]
        if records:
            session.apply_chain(records)
        if GroupSessionState(d["state"]) is GroupSessionState.LEFT:
            session.server_says_gone()
            return session
        session._own = OwnSenderKey.from_dict(d["own"]) if d.get("own") else None
        session._distributed = set(d.get("distributed", ()))
        session.received = SenderKeyStore.from_dict(d["received"])
        return session
