"""Edit and delete messages: mine for everyone (within a window), anyone's for me.

Only the sender may edit a message or delete it for everyone, and only within `edit_window`
seconds of sending it (PeerSettings; 48 hours by default, as Signal and WhatsApp do). The change
travels as an `Edit` or `Delete` payload in the same conversation, to the other person's devices
and to mine (in a group: one group message to every member device, `peer.group_chat`), so every
device shows the same thing: the latest text marked "edited", or a tombstone
("message deleted") whose content is gone. A received change is applied only when its sender sent
the original, in the original's conversation, and within the window of the original; anything
else is refused and said. A change that comes before its message (the two crossed: the change over
a direct link, the message through the mailbox) is held, bounded and sealed, until the message is
stored, and then checked the same way (`peer.heldchanges`).
A deleted file goes too: this device's sealed copy and the decrypted copy it made, and, when I
delete my own file for everyone, the server's blob (now, not at its retention).

Delete for me removes the message from this device's store only (its id stays seen, so a late
copy by another path does not bring it back).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from crypto.payload import Delete, Edit, Timer
from peer.errors import ConfigError, PeerError
from peer.events import ErrorEvent, Event, MessageDeleted, MessageEdited
from peer.heldchanges import HeldChange, HeldChanges
from peer.history import History
from peer.localstore import LocalStore, StoredMessage, now_ms
from peer.views import MessageView

log = logging.getLogger(__name__)

TOMBSTONE = "deleted"
EDITABLE = ("text",)
DELETABLE = ("text", "file")
MAX_TEXT_CHARS = 64 * 1024
_DONE = {"edit": "edited", "delete": "deleted"}
# Changes to what is already in a conversation: not stored as messages of their own, but kept in
# the persistent outbox like a text until every device has them (an edit made while the server is
# away is sent once it is back, also after a restart). Typing and receipts are not: worthless later.
LASTING_CONTROLS = (Edit, Delete, Timer)


class EditRefused(PeerError):
    """An edit or delete this user may not make (not theirs, too late, already deleted)."""


class MessageEdits:
    def __init__(
        self,
        *,
        me_user: int,
        store: LocalStore,
        history: History,
        send: Callable[[str, Edit | Delete], object],
        publish: Callable[[Event], None],
        window: float,
        delete_blob: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self._me = me_user
        self._delete_blob = delete_blob  # the server's copy of a file I sent (FileTransfers)
        self._store = store
        self._history = history
        self._send = send  # the outbox's send: (conversation, payload) -> awaitable
        self._publish = publish
        self.window = window
        self.held = HeldChanges(store)  # changes that came before their message

    async def prepare(self) -> None:
        await self.held.prepare()

    # ------------------------------------------------------------------ mine

    async def _own(self, message_id: str, kinds: tuple[str, ...], what: str) -> StoredMessage:
        message = await self._store.get_message(message_id)
        if message is None:
            raise ConfigError(f"there is no message {message_id} on this device")
        if message.sender_user != self._me:
            raise EditRefused(f"only its sender can {what} a message")
        if message.content_type == TOMBSTONE:
            raise EditRefused("that message was deleted")
        if message.content_type not in kinds:
            raise EditRefused(f"a {message.content_type} message cannot be {_DONE[what]}")
        if now_ms() - message.sent_at_ms > self.window * 1000:
            hours = self.window / 3600
            raise EditRefused(
                f"a message can be {_DONE[what]} for {hours:g} hours after sending; this one is older"
            )
        return message

    async def edit(self, message_id: str, body: str) -> MessageView:
        if not body.strip():
            raise ConfigError("the new text is empty; delete the message instead")
        if len(body) > MAX_TEXT_CHARS:
            raise ConfigError(f"the text is too long ({len(body)} characters; at most {MAX_TEXT_CHARS})")
        message = await self._own(message_id, EDITABLE, "edit")
        await self._send(message.conversation, Edit(message_id, body))  # type: ignore[misc]
        return await self._apply_edit(message, body, now_ms())

    async def delete_for_everyone(self, message_id: str) -> None:
        message = await self._own(message_id, DELETABLE, "delete")
        await self._send(message.conversation, Delete([message_id]))  # type: ignore[misc]
        await self._tombstone(message)
        await self.drop_blob_of(message)

    async def delete_for_me(self, message_id: str) -> None:
        message = await self._store.get_message(message_id)
        if message is None:
            raise ConfigError(f"there is no message {message_id} on this device")
        await self.remove_file(message_id)
        await self._store.delete_message(message_id)
        self._publish(MessageDeleted(message_id, message.conversation, for_everyone=False))

    # ------------------------------------------------------------------ theirs (or my other devices')

    async def on_edit(self, conversation: str, sender_user: int, sent_at_ms: int, edit: Edit) -> None:
        if not edit.body.strip() or len(edit.body) > MAX_TEXT_CHARS:
            return
        message = await self._target(conversation, sender_user, sent_at_ms, edit.message_id, edit.body)
        if message is not None and self._allowed(message, conversation, sender_user, sent_at_ms, "edit"):
            await self._apply_edit(message, edit.body, sent_at_ms)

    async def on_delete(self, conversation: str, sender_user: int, sent_at_ms: int, delete: Delete) -> None:
        for message_id in delete.message_ids[:100]:
            message = await self._target(conversation, sender_user, sent_at_ms, message_id, None)
            if message is None:
                continue
            if self._allowed(message, conversation, sender_user, sent_at_ms, "delete"):
                await self._tombstone(message)

    async def on_stored(self, message: StoredMessage) -> None:
        """A message just stored: the changes that came before it now apply (checked as ever)."""
        if not self.held.waits_for(message.message_id):
            return
        for change in await self.held.take(message.message_id):
            c = change
            if c.body is None:
                await self.on_delete(c.conversation, c.sender_user, c.sent_at_ms, Delete([c.target_id]))
            else:
                await self.on_edit(c.conversation, c.sender_user, c.sent_at_ms, Edit(c.target_id, c.body))

    async def _target(
        self, conversation: str, sender_user: int, sent_at_ms: int, message_id: str, body: str | None
    ) -> StoredMessage | None:
        """The message a received change is for; None when there is nothing to change now. A change
        for a message not here yet is held (`peer.heldchanges`): the two may have crossed."""
        message = await self._store.get_message(message_id)
        if message is None:
            await self.held.hold(HeldChange(message_id, conversation, sender_user, sent_at_ms, body))
            return None
        if message.content_type == TOMBSTONE:
            return None  # already gone: nothing to change
        return message

    def _allowed(
        self,
        message: StoredMessage,
        conversation: str,
        sender_user: int,
        sent_at_ms: int,
        what: str,
    ) -> bool:
        """Whether a received change may apply to `message` (a refusal is said).

        The change must come in the conversation of the original: a group message changed over a
        1:1 path would change on that person's devices only, and the group's members would differ.
        In a group, `sender_user` is the one whose sender key signed the change (`GroupSession`
        ties each key to its member), so a member cannot change another member's message.
        """
        kinds = EDITABLE if what == "edit" else DELETABLE
        message_id = message.message_id
        refused = None
        if message.sender_user != sender_user:
            refused = f"user {sender_user} tried to {what} a message they did not send; refused"
        elif message.conversation != conversation:
            refused = f"user {sender_user} tried to {what} a message of another conversation; refused"
        elif message.content_type not in kinds:
            refused = f"user {sender_user} tried to {what} a {message.content_type} message; refused"
        elif sent_at_ms - message.sent_at_ms > self.window * 1000:
            refused = f"user {sender_user} tried to {what} message {message_id} after the window; refused"
        if refused:
            self._publish(ErrorEvent(refused))
            return False
        return True

    # ------------------------------------------------------------------ both

    async def _apply_edit(self, message: StoredMessage, body: str, at_ms: int) -> MessageView:
        payload = {**message.payload, "body": body, "edited_at_ms": at_ms}
        await self._store.replace_payload(message.message_id, message.content_type, payload)
        view = await self._history.message(message.message_id)
        assert view is not None
        self._publish(MessageEdited(view))
        return view

    async def _tombstone(self, message: StoredMessage) -> None:
        await self.remove_file(message.message_id)
        payload = {"type": TOMBSTONE, "was": message.content_type, "deleted_at_ms": now_ms()}
        await self._store.replace_payload(message.message_id, TOMBSTONE, payload)
        self._publish(MessageDeleted(message.message_id, message.conversation, for_everyone=True))

    async def drop_blob_of(self, message: StoredMessage) -> None:
        """Delete the server's blob of a file I sent (deleted for everyone, or run out)."""
        blob_id = message.payload.get("blob_id") if message.content_type == "file" else None
        if blob_id and message.sender_user == self._me and self._delete_blob is not None:
            await self._delete_blob(str(blob_id))

    async def remove_file(self, message_id: str) -> None:
        """A received file's sealed copy and its decrypted copy (never a sender's own original)."""
        transfer = await self._store.get_transfer(message_id)
        if transfer is None or transfer.outgoing:
            return
        for path in (transfer.local_path, transfer.export_path):
            if path:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(Path(path).unlink, missing_ok=True)
