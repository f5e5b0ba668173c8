"""`Inbox`: how a logged-in peer receives — the same whichever way an envelope came.

Peek the header, make sure the sender's device key is pinned, open (verify, decrypt, replay
check), store, acknowledge on the path it came by, emit an event; receipts move an outgoing
message's state forward, and a delivered message is answered with a receipt.

Link frames arrive inside aiortc's callbacks: acks are handled there, everything else is queued
and processed in order by `run`, which the Peer owns as its "inbox" task. It never sends a
message of its own except receipts (through the `Outbox`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Literal

from crypto.envelope import LocalDevice, open_envelope, peek_header
from crypto.errors import CryptoError, EnvelopeError, ReplayDetected
from crypto.pairwise import is_pairwise, peek
from crypto.payload import (
    Delete,
    Edit,
    FileOffer,
    HistoryChunk,
    Payload,
    Receipt,
    SenderKey,
    SenderKeyRequest,
    Text,
    Timer,
    Typing,
)
from crypto.senderkeys import is_group_message
from crypto.sessionkeys import UnwrapCache
from peer import frames
from peer.disappearing import Disappearing
from peer.edits import MessageEdits
from peer.errors import LinkFailed, ServerError
from peer.events import (
    DuplicateDropped,
    ErrorEvent,
    Event,
    MessageReceived,
    MessageStateChanged,
    ReceiptReceived,
    SessionReestablished,
    TypingChanged,
)
from peer.history import History
from peer.history_transfer import HistoryTransfer
from peer.keyring import Keyring
from peer.link import Link
from peer.localstore import LocalStore, StoredMessage, now_ms
from peer.outbox import Outbox
from peer.pairwise_path import Inner, Opened, PairwisePath
from peer.router import DIRECT, QUEUED, Router
from peer.session import HubSession
from peer.sessions import Outcome, Received
from peer.transfer import FileTransfers
from peer.views import STATE_RANK, Me, received_message
from peer.vocab import ReceiptStatus
from signalling.protocol import b64decode

if TYPE_CHECKING:
    from peer.group_chat import GroupChat

log = logging.getLogger(__name__)


class Inbox:
    def __init__(
        self,
        *,
        me: Me,
        local_device: LocalDevice,
        store: LocalStore,
        keyring: Keyring,
        router: Router,
        session: HubSession,
        transfers: FileTransfers,
        history: History,
        outbox: Outbox,
        unwrap_cache: UnwrapCache,
        publish: Callable[[Event], None],
        spawn: Callable[[Coroutine[Any, Any, Any], str], object],
        receipts: bool,
        edit_window: float = 48 * 3600.0,
        pairwise: PairwisePath | None = None,
    ) -> None:
        self._me = me
        self._local_device = local_device
        self._store = store
        self._keyring = keyring
        self._router = router
        self._session = session
        self._transfers = transfers
        self._history = history
        self._outbox = outbox
        self._unwrap_cache = unwrap_cache
        self._publish = publish
        self._spawn = spawn  # the Peer's: its tasks are owned (and cancelled) by the Peer
        self._receipts = receipts
        self._pairwise = pairwise
        self._queue: asyncio.Queue[tuple[Link, frames.Frame] | None] = asyncio.Queue()
        self.groups: GroupChat | None = None  # set by the Peer: group messages and sender keys go there
        self.edits = MessageEdits(
            me_user=me.user_id,
            store=store,
            history=history,
            send=lambda conversation, payload: outbox.send(conversation, payload, record=False),
            publish=publish,
            window=edit_window,
            delete_blob=lambda blob_id: transfers.delete_blob(blob_id),
        )
        self.disappearing = Disappearing(
            me_user=me.user_id,
            me_device=me.device_id,
            store=store,
            history=history,
            send=lambda conversation, payload, message_id: outbox.send(
                conversation, payload, record=False, message_id=message_id
            ),
            remove_file=self.edits.remove_file,
            publish=publish,
            drop_blob=self.edits.drop_blob_of,
        )
        self.history_transfer = HistoryTransfer(
            me=me, local_device=local_device, store=store, keyring=keyring, router=router, publish=publish
        )

    def close(self) -> None:
        """Stop `run` when it reaches this point of the queue (the Peer cancels it right after)."""
        self._queue.put_nowait(None)

    def on_link_frame(self, link: Link, frame: frames.Frame) -> None:
        """Runs inside aiortc's callback: quick things now, the rest in order on the inbox task."""
        if isinstance(frame, frames.Ack):
            self._router.on_ack(link.remote_device, frame.message_id)
        elif isinstance(frame, frames.ChunkAck):
            self._transfers.on_chunk_ack(link.remote_device, frame)
        elif isinstance(frame, frames.FileAbort):
            self._transfers.on_abort(link.remote_device, frame)
        else:
            self._queue.put_nowait((link, frame))

    async def run(self) -> None:
        """Process queued link frames in order until `close` (the Peer runs this as its inbox task)."""
        while (item := await self._queue.get()) is not None:
            link, frame = item
            try:
                if isinstance(frame, frames.Envelope):
                    await self.receive(frame.data, via=DIRECT, link=link, server_id=None)
                elif isinstance(frame, frames.Chunk):
                    await self._transfers.on_chunk(link, frame)
            except Exception:
                log.exception("processing a frame from %s failed", link.remote_device)

    async def _ack(self, message_id: str, link: Link | None) -> None:
        if link is not None:
            with contextlib.suppress(LinkFailed):
                link.send(frames.Ack(message_id))
        else:
            with contextlib.suppress(ServerError):
                await self._session.ack(message_id)

    async def receive(self, data: bytes | str, *, via: str, link: Link | None, server_id: str | None) -> None:
        store, keyring, transfers = self._store, self._keyring, self._transfers
        try:
            raw = b64decode(data) if isinstance(data, str) else data
            if self._pairwise is not None and is_pairwise(raw):
                await self._receive_pairwise(raw, via, link, server_id)
                return
            if self.groups is not None and is_group_message(raw):
                settled = await self.groups.receive(raw, via, server_id)
                if settled is not None:
                    await self._ack(settled, link)
                return
            header = peek_header(raw)
        except (ValueError, EnvelopeError) as e:
            self._publish(ErrorEvent(f"a message that is not a valid envelope was dropped: {e}"))
            if server_id is not None:
                await self._ack(server_id, None)
            return
        if server_id is not None and header.message_id != server_id:
            # The server's row is keyed by the frame's id: acking the header's id would leave the
            # row to come back on every connect (and count against the quota). Drop it, ack the row.
            self._publish(
                ErrorEvent(
                    f"a message from user {header.sender_user} was dropped: its id {header.message_id} "
                    f"is not the id {server_id} it was delivered under"
                )
            )
            await self._ack(server_id, None)
            return
        who = f"user {header.sender_user}"
        try:
            await keyring.ensure_sender(header.sender_user, header.sender_device)
        except ServerError as e:
            # Cannot verify now: not acknowledged, so it comes again (mailbox) or goes to the server.
            log.info("cannot fetch keys of %s now: %s", who, e)
            return
        try:
            opened = open_envelope(
                raw, self._local_device, keyring.identity_key, store, unwrap_cache=self._unwrap_cache
            )
        except ReplayDetected:
            await self._ack(header.message_id, link)  # shown once; the other path is done too
            self._publish(DuplicateDropped(header.message_id, via))
            return
        except CryptoError as e:
            self._publish(ErrorEvent(f"message {header.message_id} from {who} could not be verified: {e}"))
            await self._ack(header.message_id, link)
            return
        h, payload = opened.header, opened.payload
        conversation = self._conversation(h.sender_user, h.conversation)
        if isinstance(payload, Text | FileOffer):
            if isinstance(payload, FileOffer):
                await transfers.expect(
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
            fresh = await store.save_message(message)
            if fresh:  # saved: shown now, acknowledged right after (the ack always follows the save)
                self._publish(MessageReceived(await self._history.view(message)))
            await self._ack(h.message_id, link)
            if not fresh:
                return
            await self.edits.on_stored(message)  # an edit or delete that came before it
            if isinstance(payload, FileOffer) and payload.blob_id is not None:
                self._spawn(transfers.download_blob(h.message_id), f"download-{h.message_id[:8]}")
            if self._receipts and h.sender_user != self._me.user_id:
                self._spawn(self._send_receipt(h.sender_user, "delivered", [h.message_id]), "receipt")
            return
        await store.mark_seen(h.sender_device, h.message_id)
        await self._ack(h.message_id, link)
        await self._apply_control(
            payload,
            message_id=h.message_id,
            conversation=conversation,
            sender_user=h.sender_user,
            sender_device=h.sender_device,
            sent_at_ms=h.sent_at_ms,
            via=via,
        )

    async def _receive_pairwise(self, raw: bytes, via: str, link: Link | None, server_id: str | None) -> None:
        """A PPR message (`peer.pairwise_path`): the same steps as an envelope, plus healing."""
        assert self._pairwise is not None
        try:
            parsed = peek(raw)
        except CryptoError as e:
            self._publish(ErrorEvent(f"a ratchet message that is not valid was dropped: {e}"))
            if server_id is not None:
                await self._ack(server_id, None)
            return
        if server_id is not None and parsed.message_id != server_id:
            self._publish(
                ErrorEvent(
                    f"a message from user {parsed.sender_user} was dropped: its id {parsed.message_id} "
                    f"is not the id {server_id} it was delivered under"
                )
            )
            await self._ack(server_id, None)
            return
        try:
            await self._keyring.ensure_sender(parsed.sender_user, parsed.sender_device)
        except ServerError as e:
            log.info("cannot fetch keys of user %s now: %s", parsed.sender_user, e)
            return  # not acknowledged: it comes again

        def stored(r: Received, inner: Inner) -> StoredMessage | None:
            payload = inner.payload
            if not isinstance(payload, Text | FileOffer):
                return None
            return received_message(
                message_id=r.message_id,
                conversation=self._conversation(r.sender_user, inner.conversation),
                sender_user=r.sender_user,
                sender_device=r.sender_device,
                me_user=self._me.user_id,
                payload=payload,
                sent_at_ms=inner.sent_at_ms,
                via=via,
                stored_at_ms=now_ms(),
            )

        try:
            opened = await self._pairwise.receive(raw, stored=stored)
        except ServerError as e:  # a heal needs a bundle the server cannot give now: comes again
            log.info("cannot heal with %s now: %s", parsed.sender_device, e)
            return
        except CryptoError as e:
            self._publish(
                ErrorEvent(f"message {parsed.message_id} from user {parsed.sender_user} was dropped: {e}")
            )
            await self._ack(parsed.message_id, link)
            return
        try:
            await self._after_pairwise(opened, via)
        finally:  # shown first, acknowledged right after (as for an envelope)
            await self._ack(parsed.message_id, link)

    async def _after_pairwise(self, opened: Opened, via: str) -> None:
        assert self._pairwise is not None
        r = opened.received
        if opened.outgoing_traffic:
            self._spawn(self._pairwise.send_traffic(opened.outgoing_traffic), "heal")
        if r.outcome is Outcome.DUPLICATE:
            self._publish(DuplicateDropped(r.message_id, via))
            message = await self._store.get_message(r.message_id)
            if self._receipts and message is not None and not message.outgoing:
                self._spawn(self._send_receipt(r.sender_user, "delivered", [r.message_id]), "receipt")
            return
        if r.outcome is Outcome.UNDECRYPTABLE:
            log.info("message %s from %s could not be decrypted: %s", r.message_id, r.sender_device, r.reason)
            if r.reply is None and "belongs to user" in (r.reason or ""):
                self._publish(ErrorEvent(f"message {r.message_id} could not be decrypted: {r.reason}"))
            return
        if r.outcome is not Outcome.DELIVERED or opened.inner is None:
            return
        if r.reestablished:
            self._publish(SessionReestablished(r.sender_user, r.sender_device))
        inner, payload = opened.inner, opened.inner.payload
        conversation = self._conversation(r.sender_user, inner.conversation)
        if isinstance(payload, Text | FileOffer):
            if isinstance(payload, FileOffer):
                await self._transfers.expect(
                    r.message_id, conversation, payload.manifest, r.sender_device, payload.blob_id
                )
            if opened.stored is None:
                return
            self._publish(MessageReceived(await self._history.view(opened.stored)))
            await self.edits.on_stored(opened.stored)  # an edit or delete that came before it
            if isinstance(payload, FileOffer) and payload.blob_id is not None:
                self._spawn(self._transfers.download_blob(r.message_id), f"download-{r.message_id[:8]}")
            if self._receipts and r.sender_user != self._me.user_id:
                self._spawn(self._send_receipt(r.sender_user, "delivered", [r.message_id]), "receipt")
            return
        if isinstance(payload, Receipt) and payload.status == "delivered":
            # The ratchet's record of what is still unacknowledged (resent after a heal).
            await self._pairwise.sessions.acknowledge(r.sender_device, list(payload.message_ids))
        await self._apply_control(
            payload,
            message_id=r.message_id,
            conversation=conversation,
            sender_user=r.sender_user,
            sender_device=r.sender_device,
            sent_at_ms=inner.sent_at_ms,
            via=via,
        )

    async def _apply_control(
        self,
        payload: Payload,
        *,
        message_id: str,
        conversation: str,
        sender_user: int,
        sender_device: str,
        sent_at_ms: int,
        via: str,
    ) -> None:
        """Act on a payload that is not a message (receipt, typing, edit, delete, history, timer).

        One place for both ways in (envelope v2 and pairwise ratchet), so they cannot drift apart;
        the caller has already opened, de-duplicated and acknowledged it.
        """
        if isinstance(payload, Receipt):
            for receipted in payload.message_ids:
                await self._apply_receipt(receipted, payload.status, sender_user, sender_device)
            self._publish(
                ReceiptReceived(sender_user, ReceiptStatus(payload.status), list(payload.message_ids))
            )
        elif isinstance(payload, SenderKey | SenderKeyRequest):
            await self._on_group_control(sender_user, sender_device, payload)
        elif isinstance(payload, Typing):
            if via != QUEUED:  # read from a mailbox later, a typing is stale (as in a group)
                self._publish(TypingChanged(sender_user, conversation, payload.active))
        elif isinstance(payload, Edit):
            await self.edits.on_edit(conversation, sender_user, sent_at_ms, payload)
        elif isinstance(payload, Delete):
            await self.edits.on_delete(conversation, sender_user, sent_at_ms, payload)
        elif isinstance(payload, HistoryChunk):
            await self.history_transfer.receive(sender_user, sender_device, via == DIRECT, payload)
        elif isinstance(payload, Timer):
            await self.disappearing.on_timer(
                message_id, conversation, sender_user, sender_device, sent_at_ms, payload
            )

    def _conversation(self, sender_user: int, named: str) -> str:
        if sender_user != self._me.user_id and named == f"u:{self._me.user_id}":
            return f"u:{sender_user}"
        return named

    async def _on_group_control(
        self, user_id: int, device_id: str, payload: SenderKey | SenderKeyRequest
    ) -> None:
        """A sender key (or a request for ours), authenticated by the pairwise path it came on."""
        if self.groups is None:
            return
        if isinstance(payload, SenderKey):
            await self.groups.on_sender_key(user_id, device_id, payload)
        else:
            await self.groups.on_sender_key_request(user_id, device_id, payload)

    async def _apply_receipt(self, message_id: str, status: str, from_user: int, from_device: str) -> None:
        store = self._store
        message = await store.get_message(message_id)
        if message is None or not message.outgoing:
            return
        if self.groups is not None and message.conversation.startswith("g:"):
            await self.groups.on_receipt(message, status, from_user, from_device)  # per device, rolled up
            return
        if STATE_RANK.get(status, 0) > STATE_RANK.get(message.state, 0):
            await store.set_message_state(message_id, status, reason=None)
            self._publish(MessageStateChanged.of(message_id, status, message.path, None))

    async def _send_receipt(
        self, user_id: int, status: Literal["delivered", "read"], message_ids: list[str]
    ) -> None:
        await self._outbox.send(f"u:{user_id}", Receipt(status, message_ids), record=False, own_devices=False)
