"""Disappearing messages: a timer agreed in the conversation, and the sweeper that enforces it.

Either person sets the conversation's timer (`Timer` payload, to the other person's devices and
to mine); every device keeps the latest one set (by its sent-at) and shows the change in the
conversation ("Disappearing messages set to 1 hour"), so both see the same. From then on each text
or file stored in that conversation gets an expiry (sent-at + timer, written in the same
transaction as the message: peer/localstore.py), and the sweeper removes it from this device's
store when it runs out, with a received file's sealed and decrypted copies; every device of both
people does the same for its own copy.

Not done here: the server's mailbox keeps a copy for a device that stays offline until the
mailbox retention ends (envelope expiry honoured by the server is not built yet; the receiving
device removes such a message as soon as it is stored, since its time has already run out).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from crypto.payload import MAX_TIMER_SECONDS, Timer
from peer.errors import ConfigError
from peer.events import Event, MessageDeleted, MessageReceived
from peer.history import History
from peer.localstore import LocalStore, StoredMessage, now_ms
from peer.views import MessageView

log = logging.getLogger(__name__)

MIN_TIMER_SECONDS = 5
SWEEP_AT_MOST_EVERY_S = 2.0  # a message stored meanwhile with an earlier expiry waits at most this


def describe(seconds: int) -> str:
    if seconds == 0:
        return "Disappearing messages turned off"
    for unit, size in (("week", 604800), ("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1)):
        if seconds % size == 0:
            n = seconds // size
            return f"Disappearing messages set to {n} {unit}{'s' if n != 1 else ''}"
    return f"Disappearing messages set to {seconds} seconds"


class Disappearing:
    def __init__(
        self,
        *,
        me_user: int,
        me_device: str,
        store: LocalStore,
        history: History,
        send: Callable[[str, Timer, str], Awaitable[object]],
        remove_file: Callable[[str], Awaitable[None]],
        publish: Callable[[Event], None],
        drop_blob: Callable[[StoredMessage], Awaitable[None]] | None = None,
    ) -> None:
        self._me = me_user
        self._device = me_device
        self._store = store
        self._history = history
        self._send = send  # (conversation, payload, message id)
        self._remove_file = remove_file
        self._drop_blob = drop_blob  # the server's copy of a file this device sent (MessageEdits)
        self._publish = publish
        self._wake = asyncio.Event()

    async def set_timer(self, conversation: str, seconds: int, message_id: str) -> MessageView:
        if seconds != 0 and not MIN_TIMER_SECONDS <= seconds <= MAX_TIMER_SECONDS:
            most = MAX_TIMER_SECONDS // 86400
            raise ConfigError(f"a disappearing timer is off (0) or {MIN_TIMER_SECONDS} s to {most} days")
        await self._send(conversation, Timer(seconds), message_id)
        at = now_ms()
        view = await self._record(message_id, conversation, self._me, self._device, True, seconds, at)
        assert view is not None
        return view

    async def timer(self, conversation: str) -> int:
        found = await self._store.timer(conversation)
        return found[0] if found else 0

    async def on_timer(
        self,
        message_id: str,
        conversation: str,
        sender_user: int,
        sender_device: str,
        sent_at_ms: int,
        t: Timer,
    ) -> None:
        outgoing = sender_user == self._me
        view = await self._record(
            message_id, conversation, sender_user, sender_device, outgoing, t.seconds, sent_at_ms
        )
        if view is not None:
            self._publish(MessageReceived(view))

    async def _record(
        self,
        message_id: str,
        conversation: str,
        sender_user: int,
        sender_device: str,
        outgoing: bool,
        seconds: int,
        at_ms: int,
    ) -> MessageView | None:
        if not await self._store.set_timer(conversation, seconds, sender_user, at_ms):
            return None  # a later timer is already in force (messages crossed)
        self._wake.set()
        message = StoredMessage(
            message_id=message_id,
            conversation=conversation,
            sender_user=sender_user,
            sender_device=sender_device,
            outgoing=outgoing,
            content_type="timer",
            payload={"type": "timer", "seconds": seconds, "body": describe(seconds)},
            sent_at_ms=at_ms,
            stored_at_ms=now_ms(),
            path=None,
            state="read" if not outgoing else "sent",  # a notice, never an unread message
            reason=None,
        )
        await self._store.save_message(message)
        return await self._history.view(message)

    async def sweep(self) -> int | None:
        """Remove what ran out; the next expiry (ms) or None."""
        while True:
            ids, upcoming = await self._store.expired(now_ms())
            for message_id in ids:
                message = await self._store.get_message(message_id)
                await self._remove_file(message_id)
                if message is not None and message.sender_device == self._device and self._drop_blob:
                    await self._drop_blob(message)  # the blob's own expiry is the backstop
                await self._store.delete_message(message_id)
                if message is not None:
                    self._publish(MessageDeleted(message_id, message.conversation, for_everyone=False))
            if len(ids) < 500:
                return upcoming

    async def run(self) -> None:
        """The sweeper: the Peer runs it as its "disappearing" task until it closes."""
        while True:
            upcoming = await self.sweep()
            wait = SWEEP_AT_MOST_EVERY_S
            if upcoming is not None:
                wait = min(wait, max(0.0, (upcoming - now_ms()) / 1000))
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()


__all__ = ["Disappearing", "StoredMessage", "describe"]
