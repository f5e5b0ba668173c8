"""History on a new device: one of my devices sends my history to another of mine, after I
confirm it on the sending (old) device, over a direct link only, end to end encrypted.

Signal's device transfer is the model: nothing of it goes through the server. Each chunk is a
`HistoryChunk` payload in an ordinary envelope sealed for that one device (so encrypted to its
pinned key and signed by mine), sent with `Router.send_direct`: a direct link or nothing, and
acknowledged. The receiving device takes a chunk only from its own user and only when it came
over a link, and stores the messages under their own ids (a message it already has stays as it
is). Files come as their entries (name, size), not their contents. Without a transfer a new
device starts empty, and says so.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

from crypto.envelope import LocalDevice, seal
from crypto.payload import MAX_HISTORY_RECORDS, HistoryChunk
from peer.errors import ConfigError, LinkFailed
from peer.events import ErrorEvent, Event, HistoryReceived
from peer.keyring import Keyring
from peer.localstore import LocalStore, StoredMessage, now_ms
from peer.router import Router
from peer.views import Me

CHUNK_BYTES = 96 * 1024  # well under the 160 KiB payload limit, JSON escaping included
KINDS = ("text", "file", "timer", "deleted")


def _record(m: StoredMessage) -> dict[str, object]:
    return {
        "message_id": m.message_id,
        "conversation": m.conversation,
        "sender_user": m.sender_user,
        "sender_device": m.sender_device,
        "kind": m.content_type,
        "payload": m.payload,
        "sent_at_ms": m.sent_at_ms,
        "state": m.state,
    }


class HistoryTransfer:
    def __init__(
        self,
        *,
        me: Me,
        local_device: LocalDevice,
        store: LocalStore,
        keyring: Keyring,
        router: Router,
        publish: Callable[[Event], None],
    ) -> None:
        self._me = me
        self._local_device = local_device
        self._store = store
        self._keyring = keyring
        self._router = router
        self._publish = publish

    async def send_to(self, device_id: str) -> int:
        """Send every stored message to my device `device_id`; the number of messages sent."""
        if device_id == self._me.device_id:
            raise ConfigError("that is this device")
        await self._keyring.refresh(self._me.user_id, force=True)
        recipients = [r for r in await self._keyring.recipients(self._me.user_id) if r.device_id == device_id]
        if not recipients:
            raise ConfigError(f"{device_id} is not an active device of yours")
        sent, rowid = 0, 0
        chunk: list[dict[str, object]] = []
        size = 0
        while batch := await self._store.messages_after(rowid, 500):
            rowid = batch[-1][0]
            for _, message in batch:
                if message.content_type not in KINDS:
                    continue
                record = _record(message)
                length = len(json.dumps(record))
                if chunk and (size + length > CHUNK_BYTES or len(chunk) == MAX_HISTORY_RECORDS):
                    sent += await self._send(recipients, chunk)
                    chunk, size = [], 0
                if length <= CHUNK_BYTES:
                    chunk.append(record)
                    size += length
        if chunk:
            sent += await self._send(recipients, chunk)
        return sent

    async def _send(self, recipients: list, records: list[dict[str, object]]) -> int:
        message_id = os.urandom(16).hex()
        device_id = recipients[0].device_id
        envelope = seal(
            HistoryChunk(records), self._local_device, recipients, f"u:{self._me.user_id}", message_id
        )
        if not await self._router.send_direct(message_id, envelope, self._me.user_id, device_id):
            raise LinkFailed(
                f"no direct link to {device_id}: both devices must be online and able to reach each other"
            )
        return len(records)

    async def receive(
        self, sender_user: int, sender_device: str, over_link: bool, chunk: HistoryChunk
    ) -> None:
        if sender_user != self._me.user_id or not over_link:
            self._publish(
                ErrorEvent(
                    f"history from user {sender_user} device {sender_device} was refused: "
                    "only your own devices, over a direct link, may send it"
                )
            )
            return
        stored = 0
        for r in chunk.records:
            if r["kind"] not in KINDS:
                continue
            message = StoredMessage(
                message_id=str(r["message_id"]),
                conversation=str(r["conversation"]),
                sender_user=int(r["sender_user"]),
                sender_device=str(r["sender_device"]),
                outgoing=int(r["sender_user"]) == self._me.user_id,
                content_type=str(r["kind"]),
                payload=dict(r["payload"]),
                sent_at_ms=int(r["sent_at_ms"]),
                stored_at_ms=now_ms(),
                path=None,
                state=str(r["state"]),
                reason=None,
            )
            stored += bool(await self._store.save_message(message))
        self._publish(HistoryReceived(sender_device, stored))
