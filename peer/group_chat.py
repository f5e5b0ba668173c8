"""`GroupChat`: the node's groups — one `peer.groups.GroupSession` per group, driven over the
server's group routes, the hub's fan-out and the direct links.

What it decides (the crypto rules themselves live in `GroupSession`):

- membership is what this device verified: every `group`/`groups` frame is only a hint to fetch
  the chain (`sync`), verify it whole, and only then say so (`GroupChanged`, and a timeline item
  "alice added carol" in the group's history). A chain that does not verify (forged, rolled back,
  broken) is refused: the old state stays, a `GroupWarning` says why;
- a group message goes to the verified members' devices only (`GroupSession.route`: a device of a
  user no admin added is never encrypted to, a `GroupWarning` names the ghost);
- the sender key reaches each device that lacks it through the node's per-device path for 1:1
  control payloads (`Outbox.send(..., devices=...)`): a ratchet (PPR) message where the device has
  a forward-secret session or prekeys, envelope v2 otherwise;
- fan-out follows the 1:1 rule per device: an open direct link carries it (the receiver's ack),
  every other device is in ONE `group_send`; what the server could not take waits in the group
  outbox and goes after the next connect. Receivers drop what they have (same message id);
- a message whose sender key has not arrived is held (sealed in the store) and a
  `SenderKeyRequest` goes to its sender; it opens when the key comes;
- receipts of a group message go pairwise to its sender; the sender keeps them per device and
  rolls them up ("delivered to 3 of 5");
- an edit or a delete for everyone is one group message like a text (`peer.edits` decides, on
  every member device, that only the original's sender may make it).

Every change of a `GroupSession` is saved at once (`peer.groupstore`, sealed at rest): a sender
key reused from a stale copy would repeat chain positions.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crypto import groupstate as gs
from crypto.envelope import LocalDevice
from crypto.errors import (
    CryptoError,
    GhostMember,
    GroupMessageReplayed,
    SenderKeyError,
    UnknownSenderKey,
)
from crypto.filestream import FileManifest, prepare_file
from crypto.payload import (
    Delete,
    Edit,
    FileOffer,
    Payload,
    Receipt,
    SenderKey,
    SenderKeyRequest,
    Text,
    Typing,
)
from crypto.senderkeys import GroupMessageHeader, SenderKeyDistribution, peek_group_message
from peer.edits import LASTING_CONTROLS
from peer.errors import ConfigError, DeliveryTimeout, PeerError, ServerError, ServerUnavailable
from peer.events import (
    DuplicateDropped,
    ErrorEvent,
    Event,
    GroupChanged,
    GroupWarning,
    MessageReceived,
    MessageStateChanged,
    TypingChanged,
)
from peer.groups import GroupSession, GroupSessionState
from peer.groupstore import GroupStore
from peer.history import History
from peer.keyring import Keyring
from peer.linkset import LinkSet
from peer.localstore import LocalStore, StoredMessage, now_ms
from peer.presence import Presence
from peer.records import GroupMemberView, GroupView, Me, MessageView
from peer.router import DIRECT, FAILED, PENDING, QUEUED, RELAYED, SENT, DeviceOutcome, Router
from peer.transfer import FileTransfers
from peer.views import STATE_RANK, received_message, sending_message
from peer.vocab import ConversationId, DeliveryPath, DeliveryState, GroupChange, GroupRole, MessageState
from signalling.protocol import GroupEvent, GroupFrame, GroupsFrame, b64decode, b64encode

if TYPE_CHECKING:
    from peer.client import ServerClient
    from peer.edits import MessageEdits
    from peer.outbox import Outbox
    from peer.session import HubSession

log = logging.getLogger(__name__)

_GROUP_ID = re.compile(r"[0-9a-f]{32}")
_CHANGE = {
    gs.GroupOp.CREATE: GroupChange.CREATED,
    gs.GroupOp.ADD: GroupChange.ADDED,
    gs.GroupOp.REMOVE: GroupChange.REMOVED,
    gs.GroupOp.LEAVE: GroupChange.LEFT,
    gs.GroupOp.RENAME: GroupChange.RENAMED,
    gs.GroupOp.PROMOTE: GroupChange.PROMOTED,
}
SYNC_RETRIES = (0.5, 1.0, 2.0, 4.0)  # seconds between fetches of a chain the server failed to serve
KEY_REQUEST_AFTER = 5.0  # seconds a held message waits for its sender key before we ask for it
TYPING_QUIET_S = 60.0  # a device a typing of ours waited for gets no typing for this long
TIMELINE_KIND = "group_event"  # content_type of a membership change in a group's history


class GroupNotFound(PeerError):
    """No group of this device has that name or id (or the name is shared: the ids are listed)."""


class GroupChat:
    def __init__(
        self,
        *,
        me: Me,
        local_device: LocalDevice,
        store: LocalStore,
        keyring: Keyring,
        client: ServerClient,
        hub: HubSession,
        links: LinkSet,
        router: Router,
        outbox: Outbox,
        transfers: FileTransfers,
        history: History,
        publish: Callable[[Event], None],
        spawn: Callable[[Coroutine[Any, Any, Any], str], object],
        server_deadline: float,
        receipts: bool = True,
        presence: Presence | None = None,
    ) -> None:
        self._me = me
        # What the server told of who is online (contacts only): typing is not sent through the
        # server where it would wait in a mailbox (`_typing_targets`).
        self._presence = presence or Presence()
        self._typing_stored: dict[str, float] = {}  # device -> loop time a typing of ours waited for it
        self._local = local_device
        self._store = store
        self.groupstore = GroupStore(store)
        self._keyring = keyring
        self._client = client
        self._hub = hub
        self._links = links
        self._router = router
        self._outbox = outbox
        self._transfers = transfers
        self._history = history
        self._publish = publish
        self._spawn = spawn
        self._server_deadline = server_deadline
        self._receipts = receipts
        self.direct = True  # Peer.set_direct changes it while running
        self._sessions: dict[str, GroupSession] = {}
        self._names: dict[str, dict[int, str]] = {}  # per group: user id -> username (for lines, lists)
        self._locks: dict[str, asyncio.Lock] = {}
        self._asked: set[tuple[str, int]] = set()  # (sender device, key id) asked for this run
        self.edits: MessageEdits | None = None  # set by the Peer (the inbox's): group edits and deletes

    # -- lifetime ---------------------------------------------------------------------------------

    async def load(self) -> None:
        """Make the tables and load every saved group (each chain is verified again)."""
        await self.groupstore.prepare()
        for group_id, record in (await self.groupstore.load_all()).items():
            try:
                self._sessions[group_id] = GroupSession.from_dict(
                    record["session"], self._local, self._keyring
                )
            except (CryptoError, KeyError, ValueError) as e:
                log.warning("group %s: the saved state does not verify and is not used: %s", group_id, e)
                continue
            self._names[group_id] = {int(k): str(v) for k, v in record.get("names", {}).items()}

    def _lock(self, group_id: str) -> asyncio.Lock:
        return self._locks.setdefault(group_id, asyncio.Lock())

    async def _save(self, session: GroupSession) -> None:
        names = {str(k): v for k, v in self._names.get(session.group_id, {}).items()}
        await self.groupstore.save(session.group_id, {"session": session.to_dict(), "names": names})

    # -- views ------------------------------------------------------------------------------------

    def _view(self, session: GroupSession) -> GroupView:
        state = session.membership
        admin = state is not None and state.is_admin(self._me.user_id)
        return GroupView(
            group_id=session.group_id,
            name=session.name or session.group_id,
            role=(GroupRole.ADMIN if admin else GroupRole.MEMBER).value,
            members=len(state.members) if state is not None else 0,
            version=session.version,
            active=session.state is GroupSessionState.ACTIVE,
        )

    def usernames(self) -> dict[int, str]:
        """Every member name this device learnt, over all its groups (for transcripts)."""
        return {u: n for names in self._names.values() for u, n in names.items()}

    def name_of(self, group_id: str) -> str | None:
        session = self._sessions.get(group_id)
        return session.name if session is not None else None

    def groups(self) -> list[GroupView]:
        views = [self._view(s) for s in self._sessions.values() if s.membership is not None]
        return sorted(views, key=lambda v: (not v.active, v.name.lower(), v.group_id))

    def view(self, group_id: str) -> GroupView:
        return self._view(self._known(group_id))

    async def members(self, group_id: str) -> list[GroupMemberView]:
        session = self._known(group_id)
        state = session.membership
        if state is None:
            return []
        with contextlib.suppress(ServerError):
            await self._learn_names(session)
        return [
            GroupMemberView(
                user_id=u,
                username=self._username(group_id, u),
                display_name=None,
                role=(GroupRole.ADMIN if state.is_admin(u) else GroupRole.MEMBER).value,
                is_me=u == self._me.user_id,
            )
            for u in sorted(state.members, key=lambda u: (state.members[u].order, u))
        ]

    def resolve(self, ref: str) -> str:
        """A group id from "#NAME", "NAME", "#<id>" or "g:<id>"; names are labels, not unique."""
        text = ref.strip()
        text = text[2:] if text.startswith("g:") else text.removeprefix("#")
        if _GROUP_ID.fullmatch(text) and text in self._sessions:
            return text
        found = [s for s in self._sessions.values() if s.name is not None and s.name.lower() == text.lower()]
        active = [s for s in found if s.state is GroupSessionState.ACTIVE]
        found = active or found
        if len(found) == 1:
            return found[0].group_id
        if not found:
            raise GroupNotFound(f"you are in no group called {text!r} (see `peerpost group list`)")
        ids = ", ".join(f"#{s.group_id}" for s in found)
        raise GroupNotFound(f"more than one group is called {text!r}: say which with its id ({ids})")

    def _known(self, group_id: str) -> GroupSession:
        session = self._sessions.get(group_id)
        if session is None:
            raise GroupNotFound(f"this device knows no group {group_id}")
        return session

    def _active(self, group_id: str) -> GroupSession:
        session = self._known(group_id)
        if session.state is not GroupSessionState.ACTIVE:
            raise GroupNotFound(f"you are no longer in the group {session.name or group_id}")
        return session

    def _username(self, group_id: str, user_id: int) -> str:
        if user_id == self._me.user_id:
            return self._me.username
        return self._names.get(group_id, {}).get(user_id) or f"user {user_id}"

    async def _learn_names(self, session: GroupSession) -> None:
        """Usernames of the verified members, from the server's member list (raises ServerError)."""
        state = session.membership
        if state is None or session.state is not GroupSessionState.ACTIVE:
            return
        names = self._names.setdefault(session.group_id, {})
        for m in await self._client.all_group_members(session.group_id):
            if state.is_member(m.user_id):
                names[m.user_id] = m.username

    # -- membership changes made here -------------------------------------------------------------

    async def create(self, name: str, members: list[int]) -> GroupView:
        members = [u for u in dict.fromkeys(members) if u != self._me.user_id]
        try:
            session, record = GroupSession.create(name, members, self._local, self._keyring)
        except CryptoError as e:
            raise ConfigError(f"cannot make that group: {e}") from e
        async with self._lock(session.group_id):  # held over the call: the server's `group`
            # frame for it (fetched by `sync`) then finds the group here and has nothing new
            await self._client.create_group(session.group_id, name, members, record)
            self._sessions[session.group_id] = session
            with contextlib.suppress(ServerError):
                await self._learn_names(session)
            await self._save(session)
        await self._announce(session, [gs.parse_record(record)])
        return self._view(session)

    async def _change(
        self,
        group_id: str,
        op: gs.GroupOp,
        send: Callable[[bytes, int, list[int]], Any],
        *,
        users: Sequence[int] = (),
        name: str | None = None,
    ) -> GroupView:
        """Sign the change on the verified head and hand it to the server; when the group moved on
        meanwhile (`_maybe_stale`), fetch and verify the chain, and sign again on the new head, for
        what is still to do then: another admin may have added (removed, promoted) the same people,
        and that is no error for this one (nothing more is signed when nothing is left)."""
        todo = list(users)
        for attempt in range(3):
            stale = False
            async with self._lock(group_id):
                session = self._active(group_id)
                if attempt and users:
                    todo = _still_to_do(session, op, todo)
                    if not todo:
                        return self._view(session)
                record, version = session.sign_change(op, users=todo, name=name)
                try:
                    await send(record, version, todo)
                except ServerError as e:
                    if not _maybe_stale(op, e) or attempt == 2:
                        raise
                    log.info(
                        "group %s moved on meanwhile (%s): verifying its chain, signing again",
                        group_id,
                        e.status,
                    )
                    stale = True
                else:
                    session.extend_chain([record])
                    with contextlib.suppress(ServerError):
                        await self._learn_names(session)
                    await self._save(session)
            if stale:
                await self.sync(group_id)
                continue
            await self._announce(session, [gs.parse_record(record)])
            return self._view(session)
        raise AssertionError("unreachable")

    async def add(self, group_id: str, user_ids: list[int]) -> GroupView:
        return await self._change(
            group_id,
            gs.GroupOp.ADD,
            lambda r, v, users: self._client.add_group_members(group_id, users, r, v),
            users=list(dict.fromkeys(user_ids)),
        )

    async def remove(self, group_id: str, user_id: int) -> GroupView:
        if user_id == self._me.user_id:
            raise ConfigError("to leave a group use leave, not remove")
        return await self._change(
            group_id,
            gs.GroupOp.REMOVE,
            lambda r, v, users: self._client.remove_group_members(group_id, users, r, v),
            users=[user_id],
        )

    async def rename(self, group_id: str, name: str) -> GroupView:
        return await self._change(
            group_id,
            gs.GroupOp.RENAME,
            lambda r, v, _: self._client.rename_group(group_id, name, r, v),
            name=name,
        )

    async def promote(self, group_id: str, user_id: int) -> GroupView:
        return await self._change(
            group_id,
            gs.GroupOp.PROMOTE,
            lambda r, v, _: self._client.promote_group_member(group_id, user_id, r, v),
            users=[user_id],
        )

    async def leave(self, group_id: str) -> None:
        await self._change(
            group_id, gs.GroupOp.LEAVE, lambda r, v, _: self._client.leave_group(group_id, r, v)
        )

    # -- membership news from the server (hints: the chain is the truth) --------------------------

    def on_group_frame(self, frame: GroupFrame) -> None:
        gone = GroupChange.DELETED if frame.event is GroupEvent.DELETED else GroupChange.REMOVED
        if frame.group is None and frame.record is not None:  # this user is out: the frame says why
            self._spawn(self._departed(frame.group_id, frame.record, gone), f"group-{frame.group_id[:8]}")
            return
        self._spawn(self._sync_retrying(frame.group_id, gone), f"group-{frame.group_id[:8]}")

    async def _departed(self, group_id: str, text: str, gone: GroupChange) -> None:
        """The change that put this user out, from its frame (the records route no longer answers
        a non-member). Adopted only when it verifies as the next link of this device's chain;
        otherwise the server is asked as for any frame (its 404 says "out", without who or why)."""
        if not await self._extend_from_frame(group_id, text):
            await self._sync_retrying(group_id, gone)

    async def _extend_from_frame(self, group_id: str, text: str) -> bool:
        """Extend the verified chain with the frame's record (the admin's signature, the hash link,
        the position): True when this device now knows, verified, that it is out of the group."""
        try:
            raw = b64decode(text)
            record = gs.parse_record(raw)
        except (ValueError, CryptoError) as e:
            self._refuse(group_id, f"the server's record of the change that put you out is malformed: {e}")
            return False
        async with self._lock(group_id):
            session = self._sessions.get(group_id)
            if session is None or session.membership is None or record.seq > session.version:
                return False  # nothing verified to extend, or changes in between it never saw
            if record.seq == session.version:
                with contextlib.suppress(PeerError, CryptoError):
                    await self._keyring.ensure_sender(record.by_user, record.by_device)
                try:
                    session.extend_chain([raw])
                except CryptoError as e:
                    self._refuse(
                        group_id, f"the server's record of the change that put you out does not verify: {e}"
                    )
                    return False
                await self._save(session)
                announce = [record]
            else:
                announce = []  # verified already (this device made the change, or synced it)
            out = session.state is GroupSessionState.LEFT
        await self._announce(session, announce)
        return out

    async def _sync_retrying(self, group_id: str, gone: GroupChange = GroupChange.REMOVED) -> None:
        """`sync` for a frame: a server that fails for a moment (busy, restarting) is asked again a
        few times, else this device would learn of the change only at its next connect."""
        for delay in SYNC_RETRIES:
            try:
                await self.sync(group_id, gone=gone)
                return
            except ServerError as e:
                if isinstance(e, ServerUnavailable) or (e.status is not None and e.status < 500):
                    raise
                log.info("group %s: fetching its chain failed (%s); again in %.1f s", group_id, e, delay)
            await asyncio.sleep(delay)  # the back-off itself, not a synchronisation
        await self.sync(group_id, gone=gone)

    def on_groups_frame(self, frame: GroupsFrame) -> None:
        listed = {g.group_id: g for g in frame.groups}
        for group_id, summary in listed.items():
            session = self._sessions.get(group_id)
            if (
                session is None
                or session.needs_chain(summary.version)
                or session.state is not GroupSessionState.ACTIVE
            ):
                self._spawn(self._sync_retrying(group_id), f"group-{group_id[:8]}")
        for group_id, session in list(self._sessions.items()):
            if group_id not in listed and session.state is GroupSessionState.ACTIVE:
                self._spawn(self._sync_retrying(group_id), f"group-{group_id[:8]}")
        # (The group outbox is flushed by the Peer after the 1:1 outboxes, so that a sender key
        # waiting there goes before the group message that needs it.)

    async def sync(self, group_id: str, *, gone: GroupChange = GroupChange.REMOVED) -> None:
        """Fetch the whole chain, verify it against what this device verified before, adopt it.
        When the server no longer shows the group to this user (404), it is over here at once,
        announced as `gone` (what the server's frame said; its chain is out of reach now)."""
        if not _GROUP_ID.fullmatch(group_id):
            return
        async with self._lock(group_id):
            session = self._sessions.get(group_id)
            try:
                records = await self._client.group_records(group_id)
            except ServerUnavailable:
                raise
            except ServerError as e:
                if (
                    e.status in (403, 404)
                    and session is not None
                    and session.state is not GroupSessionState.LEFT
                ):
                    session.server_says_gone()  # removed, or the group was deleted: stop at once
                    await self._save(session)
                    self._publish(
                        GroupChanged(group_id, session.name or group_id, gone, None, [self._me.user_id])
                    )
                    return
                raise
            for raw in records:
                with contextlib.suppress(CryptoError):
                    r = gs.parse_record(raw)
                    await self._keyring.ensure_sender(r.by_user, r.by_device)
            fresh = session is None
            if session is None:
                session = GroupSession(group_id, self._local, self._keyring)
            before = session.membership.seq if session.membership is not None else -1
            try:
                session.apply_chain(records)
            except CryptoError as e:
                self._refuse(group_id, f"the server's membership chain does not verify: {e}")
                return
            if fresh:
                self._sessions[group_id] = session
            with contextlib.suppress(ServerError):
                await self._learn_names(session)
            await self._save(session)
            new = [gs.parse_record(raw) for raw in records[before + 1 :]]
        await self._announce(session, new)
        if session.state is GroupSessionState.ACTIVE:
            await self._release_held(session)

    def _refuse(self, group_id: str, reason: str, users: list[int] | None = None) -> None:
        log.warning("group %s: %s", group_id, reason)
        self._publish(GroupWarning(group_id, reason, users or []))

    async def _announce(self, session: GroupSession, records: list[gs.GroupRecord]) -> None:
        """Each verified record: a `GroupChanged` and a line in the group's history."""
        gid = session.group_id
        for r in records:
            change = _CHANGE[r.op]
            users = [r.by_user] if r.op is gs.GroupOp.LEAVE else list(r.users)
            line = self._line(gid, r)
            message = StoredMessage(
                message_id=hashlib.sha256(r.raw).hexdigest()[:32],
                conversation=f"g:{gid}",
                sender_user=r.by_user,
                sender_device=r.by_device,
                outgoing=r.by_user == self._me.user_id,
                content_type=TIMELINE_KIND,
                payload={"type": TIMELINE_KIND, "body": line, "change": change.value, "users": users},
                sent_at_ms=r.at_ms,
                stored_at_ms=now_ms(),
                path=None,
                state=MessageState.RECEIVED.value
                if r.by_user != self._me.user_id
                else MessageState.SENT.value,
                reason=None,
            )
            await self._store.save_message(message)
            name = r.name if r.name is not None and r.op in (gs.GroupOp.CREATE, gs.GroupOp.RENAME) else None
            self._publish(GroupChanged(gid, name or session.name or gid, change, r.by_user, users))

    def _line(self, gid: str, r: gs.GroupRecord) -> str:
        who = self._username(gid, r.by_user)
        them = ", ".join(
            "you" if r.op is gs.GroupOp.REMOVE and u == self._me.user_id else self._username(gid, u)
            for u in r.users
        )
        if r.op is gs.GroupOp.CREATE:
            return f"{who} created the group {r.name}" + (f" with {them}" if them else "")
        if r.op is gs.GroupOp.ADD:
            return f"{who} added {them}"
        if r.op is gs.GroupOp.REMOVE:
            return f"{who} removed {them}"
        if r.op is gs.GroupOp.LEAVE:
            return f"{who} left"
        if r.op is gs.GroupOp.RENAME:
            return f"{who} renamed the group to {r.name}"
        return f"{who} made {them} admin"

    # -- sending ----------------------------------------------------------------------------------

    async def _route(self, session: GroupSession) -> list[tuple[int, str]]:
        """The verified members' devices this device can seal for (never a ghost's)."""
        state = session.membership
        assert state is not None
        try:
            server = [(d.user_id, d.device_id) for d in await self._client.group_devices(session.group_id)]
        except ServerUnavailable:  # offline: the pinned devices of the verified members
            server = [
                (d.user_id, d.device_id)
                for u in state.members
                for d in self._keyring.devices_of(u)
                if not d.revoked
            ]
        route = session.route(server)
        if route.ghosts:
            self._refuse(
                session.group_id,
                f"the server lists users no admin added ({', '.join(map(str, route.ghosts))}): "
                "nothing is sent to them",
                route.ghosts,
            )
        devices: list[tuple[int, str]] = []
        for user_id in sorted({u for u, _ in route.devices}):
            try:
                sealable = {r.device_id for r in await self._keyring.recipients(user_id)}
            except (PeerError, CryptoError) as e:  # a changed key waits for trust; offline: the pinned
                log.info("group %s: not sending to user %s: %s", session.group_id, user_id, e)
                continue
            devices += [(u, d) for u, d in route.devices if u == user_id and d in sealable]
        return devices

    async def send(
        self,
        conversation: str,
        payload: Payload,
        *,
        record: bool = True,
        message_id: str | None = None,
        persistent: bool = True,
    ) -> MessageView | None:
        group_id = ConversationId(conversation).group_id
        assert group_id is not None
        async with self._lock(group_id):
            session = self._active(group_id)
            devices = await self._route(session)
            if isinstance(payload, Typing):
                devices = self._typing_targets(devices)
                if not devices:
                    return None
            at = now_ms()  # one clock for both: a rotation falling due in between is not missed
            key, missing = session.distribution_for(devices, at)
            if missing:
                # The sender key over the per-device path (ratchet where there is a session).
                await self._outbox.send(conversation, key, record=False, devices=missing, connect=False)
                session.mark_distributed(missing)
            out = session.encrypt(payload, message_id=message_id, now_ms=at)
            await self._save(session)
        message_id = out.message_id
        keep = persistent and (record or isinstance(payload, LASTING_CONTROLS))  # an edit waits too
        if record:
            sent_at = at  # the time the message itself carries
            await self._store.save_message(
                sending_message(
                    message_id=message_id,
                    conversation=conversation,
                    me_user=self._me.user_id,
                    me_device=self._me.device_id,
                    payload=payload,
                    at_ms=sent_at,
                )
            )
        outcomes = await self._fan_out(group_id, message_id, out.data, devices, keep)
        if isinstance(payload, Typing):
            self._typing_waited(outcomes)
        if not record:
            return None
        state, path, reason = _summary(outcomes)
        await self._store.set_message_state(message_id, state, path, reason)
        self._publish(MessageStateChanged.of(message_id, state, path, reason))
        return await self._history.message(message_id)

    def _typing_targets(self, devices: list[tuple[int, str]]) -> list[tuple[int, str]]:
        """The devices a typing notice goes to. The hub's `group_send` has no live-only mode: it
        stores a row for every device it cannot push to, and a typing read from a mailbox later is
        worthless (receivers drop a queued one). So: other members' devices with an open link, or
        that presence says are online; not those it says are offline. A co-member who is not a
        contact has no presence here (the server tells it to contacts only): it is sent, unless a
        typing of ours waited for that device within `TYPING_QUIET_S` and nothing came from it since
        (docs/decisions-peer.md)."""
        now = asyncio.get_running_loop().time()
        presence = self._presence

        def reachable(u: int, d: str) -> bool:
            if (self.direct and self._links.open_link(d) is not None) or presence.known_online(u, d):
                return True
            quiet = d in self._typing_stored and now - self._typing_stored[d] < TYPING_QUIET_S
            return presence.device_online(u, d) and not quiet  # unknown (not a contact): optimistic

        # my own devices show no typing of mine
        return [(u, d) for u, d in devices if u != self._me.user_id and reachable(u, d)]

    def _typing_waited(self, outcomes: list[DeviceOutcome]) -> None:
        now = asyncio.get_running_loop().time()
        for o in outcomes:
            if o.path == QUEUED:
                self._typing_stored[o.device_id] = now

    async def _fan_out(
        self, group_id: str, message_id: str, data: bytes, devices: list[tuple[int, str]], persistent: bool
    ) -> list[DeviceOutcome]:
        """Open links first (with the receiver's ack), every other device in one `group_send`."""
        linked = [(u, d) for u, d in devices if self.direct and self._links.open_link(d) is not None]
        acked = await asyncio.gather(
            *(self._router.send_direct(message_id, data, u, d, connect=False) for u, d in linked)
        )
        direct = {d for (_, d), ok in zip(linked, acked, strict=True) if ok}
        outcomes = [DeviceOutcome(u, d, DIRECT, SENT) for u, d in devices if d in direct]
        if persistent:
            for o in outcomes:
                await self._store.set_delivery(message_id, o.user_id, o.device_id, DIRECT, SENT)
        rest = [(u, d) for u, d in devices if d not in direct]
        if rest:
            outcomes += await self._via_server(group_id, message_id, data, rest, persistent)
        return outcomes

    async def _via_server(
        self, group_id: str, message_id: str, data: bytes, targets: list[tuple[int, str]], persistent: bool
    ) -> list[DeviceOutcome]:
        if persistent:
            await self.groupstore.outbox_put(group_id, message_id, targets, data)
            for u, d in targets:
                await self._store.set_delivery(message_id, u, d, None, PENDING)
        try:
            accepted = await self._hub.send_group(
                group_id, message_id, b64encode(data), [d for _, d in targets], self._server_deadline
            )
        except (ServerUnavailable, DeliveryTimeout) as e:
            return [DeviceOutcome(u, d, None, PENDING, str(e)) for u, d in targets]  # after the next connect
        except ServerError as e:
            outcomes = [DeviceOutcome(u, d, None, FAILED, str(e)) for u, d in targets]
        else:
            outcomes = []
            for u, d in targets:
                if d in accepted.full:
                    outcomes.append(DeviceOutcome(u, d, None, FAILED, "the device's mailbox is full"))
                else:
                    outcomes.append(DeviceOutcome(u, d, RELAYED if d in accepted.live else QUEUED, SENT))
        if persistent:
            for o in outcomes:
                await self._store.set_delivery(message_id, o.user_id, o.device_id, o.path, o.state)
            await self.groupstore.outbox_done(message_id)
        return outcomes

    async def flush(self) -> None:
        """After a connect: the group messages the server did not take yet."""
        for message_id, group_id, devices, data in await self.groupstore.outbox():
            outcomes = await self._via_server(group_id, message_id, data, devices, True)
            if any(o.state == PENDING for o in outcomes):
                return  # the connection dropped again: the next connect resumes here
            message = await self._store.get_message(message_id)
            if message is None or STATE_RANK.get(message.state, 0) >= STATE_RANK["sent"]:
                continue  # a receipt got here first: keep its state
            rows = await self._store.deliveries(message_id)
            state, path, reason = _summary(
                [
                    DeviceOutcome(u, d, DeliveryPath(p) if p else None, DeliveryState(st))
                    for u, d, p, st in rows
                ]
            )
            await self._store.set_message_state(message_id, state, path, reason)
            self._publish(MessageStateChanged.of(message_id, state, path, reason))

    async def send_file(
        self, conversation: str, path: str | os.PathLike[str], message_id: str | None
    ) -> MessageView:
        """A group file: encrypted once, uploaded once with every member as reader, offered in
        one group message."""
        group_id = ConversationId(conversation).group_id
        assert group_id is not None
        self._active(group_id)
        source = Path(path)
        try:
            manifest: FileManifest = await asyncio.to_thread(prepare_file, source)
        except OSError as e:
            raise ConfigError(f"cannot read {source}: {e.strerror or e}") from e
        message_id = message_id or os.urandom(16).hex()
        blob_id = await self._transfers.upload_blob(manifest, source, [], message_id, group_id=group_id)
        view = await self.send(conversation, FileOffer(manifest, blob_id), message_id=message_id)
        assert view is not None
        return view

    async def mark_read(self, conversation: str, message_ids: list[str]) -> None:
        """Read receipts of group messages go to each message's sender, pairwise."""
        by_sender: dict[int, list[str]] = {}
        for message_id in message_ids:
            m = await self._store.get_message(message_id)
            if m is not None and m.conversation == conversation and not m.outgoing:
                by_sender.setdefault(m.sender_user, []).append(message_id)
        for user_id, ids in by_sender.items():
            with contextlib.suppress(PeerError):
                await self._outbox.send(f"u:{user_id}", Receipt("read", ids), record=False, own_devices=False)

    # -- receiving --------------------------------------------------------------------------------

    async def receive(self, raw: bytes, via: str, server_id: str | None) -> str | None:
        """One group message, from the server or a link: the id to acknowledge once settled;
        None when it cannot be decided now (not acknowledged: it comes again)."""
        try:
            header = peek_group_message(raw)
        except CryptoError as e:
            self._publish(ErrorEvent(f"a group message that is not valid was dropped: {e}"))
            return server_id
        if server_id is not None and server_id != header.message_id:
            self._publish(ErrorEvent(f"group message {header.message_id} came under another id; dropped"))
            return server_id
        try:
            settled = await self._receive(header, raw, via)
        except ServerError as e:  # keys or the chain cannot be fetched now: not acknowledged, comes again
            log.info("group message %s waits: %s", header.message_id, e)
            return None
        except (PeerError, CryptoError) as e:  # never up into the hub session's reader
            self._publish(ErrorEvent(f"group message {header.message_id} was dropped: {e}"))
            return header.message_id
        return header.message_id if settled else None

    async def _receive(self, header: GroupMessageHeader, raw: bytes, via: str) -> bool:
        gid = header.group_id
        session = self._sessions.get(gid)
        if session is None or session.state is not GroupSessionState.ACTIVE:
            try:
                await self.sync(gid)  # a group this device has not heard of yet
            except ServerUnavailable:
                return False
            except ServerError as e:
                log.info("group %s: cannot fetch its chain: %s", gid, e)
            session = self._sessions.get(gid)
            if session is None or session.state is not GroupSessionState.ACTIVE:
                self._publish(ErrorEvent(f"a message for group {gid}, which you are not in, was dropped"))
                return True
        if await self._store.get_message(header.message_id) is not None:
            self._publish(DuplicateDropped(header.message_id, via))
            return True
        return await self._open(session, header, raw, via, retry=True)

    async def _open(
        self, session: GroupSession, header: GroupMessageHeader, raw: bytes, via: str, *, retry: bool
    ) -> bool:
        gid = session.group_id
        async with self._lock(gid):
            try:
                opened = session.decrypt(raw)
            except UnknownSenderKey:
                await self.groupstore.hold(gid, header.message_id, via, raw)
                self._spawn(self._ask_for_key(session, header), "sender-key-request")
                return True
            except GhostMember as e:
                if not retry:
                    self._refuse(
                        gid,
                        f"a message from user {header.sender_user}, whom no admin added, was refused",
                        e.user_ids,
                    )
                    return True
                # else: maybe added a moment ago: verify the chain again (below), then decide
            except GroupMessageReplayed:
                self._publish(DuplicateDropped(header.message_id, via))
                return True
            except SenderKeyError as e:
                self._publish(ErrorEvent(f"group message {header.message_id} could not be opened: {e}"))
                return True
            else:
                await self._save(session)
                await self._deliver(gid, header, opened.payload, via)
                return True
        with contextlib.suppress(ServerError):
            await self.sync(gid)
        return await self._open(session, header, raw, via, retry=False)

    async def _deliver(self, gid: str, h: GroupMessageHeader, payload: Payload, via: str) -> None:
        conversation = f"g:{gid}"
        self._typing_stored.pop(h.sender_device, None)  # it is back: typing may go to it again
        if isinstance(payload, Text | FileOffer):
            if isinstance(payload, FileOffer):
                await self._transfers.expect(
                    h.message_id, conversation, payload.manifest, h.sender_device, payload.blob_id
                )
            message = received_message(
                message_id=h.message_id,
                conversation=conversation,
                sender_user=h.sender_user,
                sender_device=h.sender_device,
                me_user=self._me.user_id,
                payload=payload,
                sent_at_ms=h.sent_at_ms,
                via=via,
                stored_at_ms=now_ms(),
            )
            if not await self._store.save_message(message):
                self._publish(DuplicateDropped(h.message_id, via))
                return
            self._publish(MessageReceived(await self._history.view(message)))
            if self.edits is not None:
                await self.edits.on_stored(message)  # an edit or delete that came before it
            if isinstance(payload, FileOffer) and payload.blob_id is not None:
                self._spawn(self._transfers.download_blob(h.message_id), f"download-{h.message_id[:8]}")
            if self._receipts and h.sender_user != self._me.user_id:
                self._spawn(
                    self._outbox.send(
                        f"u:{h.sender_user}",
                        Receipt("delivered", [h.message_id]),
                        record=False,
                        own_devices=False,
                    ),
                    "receipt",
                )
        elif isinstance(payload, Typing):
            if h.sender_user != self._me.user_id and via != QUEUED:  # a stored one is stale
                self._publish(TypingChanged(h.sender_user, conversation, payload.active))
        elif isinstance(payload, Edit) and self.edits is not None:
            # h.sender_user is the member whose sender key signed it: only the original's sender
            # may change it (`MessageEdits` refuses anyone else, and says so).
            await self.edits.on_edit(conversation, h.sender_user, h.sent_at_ms, payload)
        elif isinstance(payload, Delete) and self.edits is not None:
            await self.edits.on_delete(conversation, h.sender_user, h.sent_at_ms, payload)
        else:
            log.info("group %s: a %s payload is not handled in groups", gid, payload.kind)

    async def _ask_for_key(self, session: GroupSession, h: GroupMessageHeader) -> None:
        """Ask the sender for its key, unless the key it sent is still on its way: the answer is the
        key at the sender's *current* position, and once it is here the original (earlier)
        distribution no longer opens the held message. So wait a moment first."""
        if (h.sender_device, h.key_id) in self._asked or h.sender_device == self._me.device_id:
            return
        self._asked.add((h.sender_device, h.key_id))
        await asyncio.sleep(KEY_REQUEST_AFTER)  # a grace period, not a synchronisation
        still_held = [peek_group_message(raw) for _, _, raw in await self.groupstore.held(session.group_id)]
        if not any((m.sender_device, m.key_id) == (h.sender_device, h.key_id) for m in still_held):
            return
        request = SenderKeyRequest(session.group_id, h.key_id)
        await self._outbox.send(
            f"g:{session.group_id}", request, record=False, devices=[(h.sender_user, h.sender_device)]
        )

    async def _release_held(self, session: GroupSession) -> None:
        for message_id, via, raw in await self.groupstore.held(session.group_id):
            header = peek_group_message(raw)
            async with self._lock(session.group_id):
                try:
                    opened = session.decrypt(raw)
                except UnknownSenderKey:
                    continue  # still waiting for its key
                except (CryptoError, PeerError) as e:
                    await self.groupstore.release(message_id)
                    self._publish(ErrorEvent(_lost(header, e)))
                    continue
                await self._save(session)
                await self.groupstore.release(message_id)
            await self._deliver(session.group_id, header, opened.payload, via)

    async def on_sender_key(self, sender_user: int, sender_device: str, payload: SenderKey) -> None:
        """A sender key that came inside a verified pairwise message from (`sender_user`, `sender_device`)."""
        try:
            gid = SenderKeyDistribution.from_bytes(payload.distribution).group_id
        except CryptoError as e:
            self._publish(ErrorEvent(f"a sender key from user {sender_user} was not valid: {e}"))
            return
        session = self._sessions.get(gid)
        if (
            session is None
            or session.state is not GroupSessionState.ACTIVE
            or not session.membership
            or not session.membership.is_member(sender_user)
        ):
            with contextlib.suppress(ServerError):
                await self.sync(gid)
            session = self._sessions.get(gid)
            if session is None or session.state is not GroupSessionState.ACTIVE:
                return
        async with self._lock(gid):
            try:
                session.accept_distribution(sender_user, sender_device, payload)
            except GhostMember as e:
                self._refuse(
                    gid, f"a sender key from user {sender_user}, whom no admin added, was refused", e.user_ids
                )
                return
            except SenderKeyError as e:
                self._publish(ErrorEvent(f"a sender key from user {sender_user} was refused: {e}"))
                return
            await self._save(session)
        await self._release_held(session)

    async def on_sender_key_request(self, user_id: int, device_id: str, request: SenderKeyRequest) -> None:
        session = self._sessions.get(request.group_id)
        if session is None or session.state is not GroupSessionState.ACTIVE:
            return
        async with self._lock(session.group_id):
            try:
                key = session.answer_request(user_id, device_id, request)
            except GhostMember as e:
                self._refuse(
                    session.group_id,
                    f"user {user_id}, whom no admin added, asked for the sender key",
                    e.user_ids,
                )
                return
            if key is None:
                return
            try:
                await self._outbox.send(
                    f"g:{session.group_id}", key, record=False, devices=[(user_id, device_id)], connect=False
                )
            except (PeerError, CryptoError) as e:  # e.g. a device this one has not pinned
                self._publish(ErrorEvent(f"the sender key asked for by user {user_id} could not go: {e}"))
                return
            session.mark_distributed([(user_id, device_id)])
            await self._save(session)

    async def on_receipt(self, message: StoredMessage, status: str, user_id: int, device_id: str) -> None:
        """A member device's receipt of this device's group message: rolled up per device."""
        if not message.outgoing or user_id == self._me.user_id:
            return
        if not await self.groupstore.receipt(message.message_id, user_id, device_id, status):
            return
        others = [r for r in await self._store.deliveries(message.message_id) if r[0] != self._me.user_id]
        delivered, read = await self.groupstore.rollup(message.message_id)
        state, everyone = message.state, len(others)
        target = (
            MessageState.READ.value
            if everyone and read >= everyone
            else MessageState.DELIVERED.value
            if everyone and delivered >= everyone
            else state
        )
        if STATE_RANK.get(target, 0) > STATE_RANK.get(state, 0):
            await self._store.set_message_state(message.message_id, target, reason=None)
            state = target
        # Published on every step of the roll-up (same state or not): the UI re-reads "N of M".
        self._publish(MessageStateChanged.of(message.message_id, state, message.path, None))


def _maybe_stale(op: gs.GroupOp, e: ServerError) -> bool:
    """The server refused a change because the group moved on since this device verified it:
    409 (another record took this version, or the people are members already: the server checks
    that before the version), or 404 for a member another admin removed a moment ago. This
    device signed on its verified state, so a refusal like this means that state is old."""
    return e.status == 409 or (e.status == 404 and op in (gs.GroupOp.REMOVE, gs.GroupOp.PROMOTE))


def _still_to_do(session: GroupSession, op: gs.GroupOp, users: list[int]) -> list[int]:
    """Of `users`, those the verified state does not show `op` done to yet (after a stale refusal)."""
    state = session.membership
    assert state is not None
    if op is gs.GroupOp.ADD:
        return [u for u in users if not state.is_member(u)]
    if op is gs.GroupOp.REMOVE:
        return [u for u in users if state.is_member(u)]
    if op is gs.GroupOp.PROMOTE:
        return [u for u in users if state.is_member(u) and not state.is_admin(u)]
    return users


def _lost(h: GroupMessageHeader, e: CryptoError | PeerError) -> str:
    """Why a held group message could not be opened once a sender key came (said, not dropped
    in silence: the user sees a message is missing)."""
    if isinstance(e, GroupMessageReplayed):
        # The usual case: a key asked for again comes at the sender's current position, after it.
        return (
            f"group message {h.message_id} from user {h.sender_user} is lost: the sender key that "
            "came for it starts after it"
        )
    return f"group message {h.message_id} from user {h.sender_user} could not be opened: {e}"


def _summary(outcomes: list[DeviceOutcome]) -> tuple[str, str | None, str | None]:
    """One state and path for a group message from its per-device outcomes (none: only me)."""
    if not outcomes:
        return MessageState.SENT.value, None, None
    if all(o.state == FAILED for o in outcomes):
        return MessageState.FAILED.value, None, outcomes[0].reason
    state = MessageState.SENT if all(o.state == SENT for o in outcomes) else MessageState.SENDING
    paths = {o.path for o in outcomes if o.path}
    path = QUEUED if QUEUED in paths else RELAYED if RELAYED in paths else DIRECT if paths else None
    reason = next((o.reason for o in outcomes if o.state in (FAILED, PENDING) and o.reason), None)
    return state.value, path.value if path else None, reason
