"""`Outbox`: how a logged-in peer sends — seal once for every device of the recipient (and of
this user's other devices), record the message, let `peer.router` deliver per device, and keep
the message's state in step with the per-device outcomes.

It never receives or opens an envelope (that is `peer.inbox`), and owns no task of its own.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from crypto.envelope import LocalDevice, seal
from crypto.filestream import FileManifest, prepare_file
from crypto.payload import FileOffer, Payload, Receipt, Text, Typing
from crypto.sessionkeys import SessionKeyCache
from peer.edits import LASTING_CONTROLS
from peer.errors import ConfigError, LinkFailed, UnknownContact
from peer.events import Event, MessageStateChanged
from peer.history import History
from peer.keyring import Keyring
from peer.link import Link
from peer.linkset import LinkSet
from peer.localstore import LocalStore, StoredMessage, now_ms
from peer.pairwise_path import PairwisePath
from peer.router import DIRECT, FAILED, PENDING, QUEUED, RELAYED, SENT, DeviceOutcome, Router
from peer.sessions import Outbound
from peer.transfer import FileTransfers
from peer.views import STATE_RANK, Me, MessageView, sending_message
from peer.vocab import DeliveryPath, DeliveryState, MessageState

if TYPE_CHECKING:
    from peer.group_chat import GroupChat


class Outbox:
    def __init__(
        self,
        *,
        me: Me,
        local_device: LocalDevice,
        store: LocalStore,
        keyring: Keyring,
        links: LinkSet,
        router: Router,
        transfers: FileTransfers,
        history: History,
        session_keys: SessionKeyCache,
        publish: Callable[[Event], None],
        device_online: Callable[[int, str], bool],
        direct: bool,
        link_deadline: float,
        pairwise: PairwisePath | None = None,
    ) -> None:
        self._me = me
        self._local_device = local_device
        self._store = store
        self._keyring = keyring
        self._links = links
        self._router = router
        self._transfers = transfers
        self._history = history
        self._session_keys = session_keys
        self._publish = publish
        self._device_online = device_online
        self.direct = direct  # files: try links first (Peer.set_direct changes it while running)
        self._link_deadline = link_deadline
        self._pairwise = pairwise  # None: envelope v2 only
        self.groups: GroupChat | None = None  # set by the Peer: g: conversations go there

    def _groups(self) -> GroupChat:
        if self.groups is None:
            raise ConfigError("group conversations are not available on this peer")
        return self.groups

    def _target_user(self, conversation: str) -> int:
        if conversation.startswith("g:"):
            raise ConfigError(f"{conversation} is a group conversation, not a person")
        try:
            return int(conversation[2:])
        except ValueError as e:
            raise ConfigError(f"{conversation!r} is not a conversation") from e

    async def send(
        self,
        conversation: str,
        payload: Payload,
        *,
        record: bool = True,
        own_devices: bool = True,
        connect: bool = True,
        persistent: bool = True,
        message_id: str | None = None,
        devices: list[tuple[int, str]] | None = None,
    ) -> MessageView | None:
        """Seal `payload` once per device and deliver it. A group conversation goes to the group
        (`peer.group_chat`) unless `devices` names the devices: then it is a control payload
        (a sender key, a request for one) for exactly those, on the 1:1 per-device path."""
        store, keyring, router = self._store, self._keyring, self._router
        if devices is None and conversation.startswith("g:"):
            return await self._groups().send(
                conversation, payload, record=record, message_id=message_id, persistent=persistent
            )
        if devices is not None:
            wanted = set(devices)
            user_id = devices[0][0] if devices else self._me.user_id
            recipients = [
                r
                for u in sorted({u for u, _ in devices})
                for r in await keyring.recipients(u)
                if (r.user_id, r.device_id) in wanted
            ]
            record = False
        else:
            user_id = self._target_user(conversation)
            recipients = list(await keyring.recipients(user_id))
        if own_devices and devices is None and user_id != self._me.user_id:
            recipients += await keyring.recipients(self._me.user_id)
        if not recipients:
            raise UnknownContact(f"user {user_id} has no device this peer can send to")
        message_id = message_id or os.urandom(16).hex()
        sent_at_ms = now_ms()
        message: StoredMessage | None = None
        if record:
            message = sending_message(
                message_id=message_id,
                conversation=conversation,
                me_user=self._me.user_id,
                me_device=self._me.device_id,
                payload=payload,
                at_ms=sent_at_ms,
            )
        # Kept until a device has it: what is recorded, a change to it (edit, delete, timer), and a
        # control payload for named devices (a sender key must reach them even when the server is
        # away now).
        keep = persistent and (record or devices is not None or isinstance(payload, LASTING_CONTROLS))
        sealed: list[Outbound] = []
        saved = False
        if self._pairwise is not None:  # ratchet (PPR) for every device with prekeys, v2 for the rest
            # (the message row commits with the first ratchet state it produced)
            sealed, recipients, saved = await self._pairwise.seal(
                recipients, conversation, payload, message_id, sent_at_ms, persistent=keep, message=message
            )
        if message is not None and not saved:
            # Committed before the envelope leaves. (Overlapping the two was measured: no gain on
            # this 2-core box, where the writer thread competes with aiortc for the CPU and the GIL.)
            await store.save_message(message)
        timer = await store.timer(conversation) if record else None  # disappearing messages
        expiry = {"expires_in": timer[0]} if timer and timer[0] > 0 else {}
        outcomes: list[DeviceOutcome] = []
        if recipients:
            envelope = seal(
                payload,
                self._local_device,
                recipients,
                conversation,
                message_id,
                sent_at_ms=sent_at_ms,
                session_keys=self._session_keys,
            )
            outcomes = await router.deliver(
                message_id,
                envelope,
                [(r.user_id, r.device_id) for r in recipients],
                connect=connect,
                persistent=keep,
                **expiry,
            )
        if sealed:
            assert self._pairwise is not None
            outcomes += await self._pairwise.deliver(sealed, connect=connect, persistent=keep, **expiry)
        if not record:
            return None
        state, path, reason = _summary(outcomes, user_id)
        await store.set_message_state(message_id, state, path, reason)
        self._publish(MessageStateChanged.of(message_id, state, path, reason))
        return await self._history.message(message_id)

    async def refresh_state(self, message_id: str) -> None:
        store = self._store
        message = await store.get_message(message_id)
        if message is None:
            return
        rows = await store.deliveries(message_id)
        outcomes = [
            DeviceOutcome(u, d, DeliveryPath(p) if p else None, DeliveryState(s)) for u, d, p, s in rows
        ]
        if message.conversation.startswith("g:"):
            return  # a group message's state follows its group fan-out (peer.group_chat)
        state, path, reason = _summary(outcomes, self._target_user(message.conversation))
        if STATE_RANK.get(message.state, 0) >= STATE_RANK["sent"]:
            # A receipt got here first (delivered before the flush's bookkeeping): keep its state,
            # but the message still gets the path it travelled.
            if path is not None and message.path is None:
                await store.set_message_state(message_id, message.state, path, message.reason)
                self._publish(MessageStateChanged.of(message_id, message.state, path, None))
            return
        await store.set_message_state(message_id, state, path, reason)
        self._publish(MessageStateChanged.of(message_id, state, path, reason))

    async def send_text(self, conversation: str, body: str) -> MessageView:
        view = await self.send(conversation, Text(body))
        assert view is not None
        return view

    async def send_typing(self, conversation: str, active: bool) -> None:
        """Best effort, live only: to the other person's devices with an open link or that presence
        does not say are offline (the server would store it for those, and a typing read later is
        worthless); never to my own devices. A group's typing: `GroupChat` picks its devices."""
        if conversation.startswith("g:"):
            await self.send(conversation, Typing(active), record=False, connect=False, persistent=False)
            return
        user_id = self._target_user(conversation)
        recipients = await self._keyring.recipients(user_id)
        if not recipients:
            raise UnknownContact(f"user {user_id} has no device this peer can send to")
        devices = [
            (r.user_id, r.device_id)
            for r in recipients
            if self._links.open_link(r.device_id) is not None or self._device_online(r.user_id, r.device_id)
        ]
        if devices and user_id != self._me.user_id:
            await self.send(conversation, Typing(active), connect=False, persistent=False, devices=devices)

    async def mark_read(self, conversation: str, message_ids: list[str]) -> None:
        if conversation.startswith("g:"):
            await self._groups().mark_read(conversation, message_ids)
            return
        await self.send(conversation, Receipt("read", message_ids), record=False, own_devices=False)

    async def send_file(
        self, conversation: str, path: str | os.PathLike[str], message_id: str | None = None
    ) -> MessageView:
        """Offer a file and move it: direct over links when every device has one, else a blob."""
        store, keyring, transfers = self._store, self._keyring, self._transfers
        if conversation.startswith("g:"):
            return await self._groups().send_file(conversation, path, message_id)
        user_id = self._target_user(conversation)
        source = Path(path)
        try:
            manifest: FileManifest = await asyncio.to_thread(prepare_file, source)
        except OSError as e:
            raise ConfigError(f"cannot read {source}: {e.strerror or e}") from e
        recipients = list(await keyring.recipients(user_id))
        if user_id != self._me.user_id:
            recipients += await keyring.recipients(self._me.user_id)
        if not recipients:
            raise UnknownContact(f"user {user_id} has no device this peer can send to")
        message_id = message_id or os.urandom(16).hex()
        direct = False
        if self.direct:
            attempts = await asyncio.gather(
                *(self._try_link(r.user_id, r.device_id) for r in recipients), return_exceptions=True
            )
            direct = all(isinstance(a, Link) for a in attempts)
        blob_id = None
        timer = await store.timer(conversation)  # a disappearing file: the server's copy goes too
        expires_in = timer[0] if timer and timer[0] > 0 else None
        if not direct:
            readers = sorted({r.user_id for r in recipients} - {self._me.user_id}) or [self._me.user_id]
            blob_id = await transfers.upload_blob(manifest, source, readers, message_id, expires_in)
        view = await self.send(conversation, FileOffer(manifest, blob_id), message_id=message_id)
        assert view is not None
        if direct:
            results = await asyncio.gather(
                *(
                    transfers.send_direct(message_id, manifest, source, r.user_id, r.device_id)
                    for r in recipients
                ),
                return_exceptions=True,
            )
            failures = [str(r) for r in results if isinstance(r, BaseException)]
            if failures:
                # The direct path gave out for good: the file goes again as a blob, in a new
                # message (the first one stays, marked failed, pointing at the second).
                readers = sorted({r.user_id for r in recipients} - {self._me.user_id}) or [self._me.user_id]
                again_id = os.urandom(16).hex()
                blob_id = await transfers.upload_blob(manifest, source, readers, again_id, expires_in)
                again = await self.send(conversation, FileOffer(manifest, blob_id), message_id=again_id)
                reason = (
                    f"direct transfer failed ({failures[0]}); sent again through the server as {again_id}"
                )
                await store.set_message_state(message_id, FAILED, reason=reason)
                self._publish(MessageStateChanged.of(message_id, FAILED, DIRECT, reason))
                assert again is not None
                return again
        return await self._history.message(message_id) or view

    async def _try_link(self, user_id: int, device_id: str) -> Link:
        links = self._links
        link = links.open_link(device_id)
        if link is not None:
            return link
        if not self._device_online(user_id, device_id):
            raise LinkFailed(f"device {device_id} is offline")
        return await links.connect(user_id, device_id, within=self._link_deadline)


def _summary(
    outcomes: list[DeviceOutcome], peer_user: int
) -> tuple[MessageState, DeliveryPath | None, str | None]:
    """One state and path for a message from its per-device outcomes."""
    if not outcomes:
        return MessageState.FAILED, None, "no recipient device"
    theirs = [o for o in outcomes if o.user_id == peer_user] or outcomes
    if all(o.state == FAILED for o in theirs):
        return MessageState.FAILED, None, theirs[0].reason
    state = MessageState.SENT if all(o.state == SENT for o in theirs) else MessageState.SENDING
    paths = {o.path for o in theirs if o.path}
    path = QUEUED if QUEUED in paths else RELAYED if RELAYED in paths else DIRECT if paths else None
    reason = next((o.reason for o in theirs if o.state in (FAILED, PENDING) and o.reason), None)
    return state, path, reason
