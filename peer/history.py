"""`History`: the stored messages of a logged-in peer, read back as `MessageView`s.

Read-only: it never writes to the store, sends or emits anything.
"""

from __future__ import annotations

from peer.groupstore import GroupStore
from peer.localstore import LocalStore, StoredMessage
from peer.views import ConversationSummary, MessageView
from peer.vocab import ConversationId, DeliveryPath, MessageState


class History:
    def __init__(self, store: LocalStore, device_id: str) -> None:
        self._store = store
        self._device_id = device_id  # this device: only its own sends carry per-device outcomes
        self._groups = GroupStore(store)  # receipts per device of own group messages

    async def view(self, m: StoredMessage) -> MessageView:
        store = self._store
        file = None
        if m.content_type == "file":
            file = dict(m.payload)
            file.pop("type", None)
            transfer = await store.get_transfer(m.message_id)
            if transfer is not None and not transfer.outgoing:
                file["state"] = transfer.state
                file["path"] = transfer.export_path if transfer.state == "done" else None
        devices = (
            [
                {"user_id": u, "device_id": d, "path": p, "state": s}
                for u, d, p, s in await store.deliveries(m.message_id)
            ]
            if m.outgoing and m.sender_device == self._device_id
            else []
        )
        rollup = {}
        if devices and m.conversation.startswith("g:"):
            others = [d for d in devices if d["user_id"] != m.sender_user]
            delivered, read = await self._groups.rollup(m.message_id)
            rollup = {"recipients": len(others), "delivered": delivered, "read": read}
        return MessageView(
            message_id=m.message_id,
            conversation=ConversationId(m.conversation),
            sender_user=m.sender_user,
            sender_device=m.sender_device,
            outgoing=m.outgoing,
            kind=m.content_type,
            text=m.payload.get("body") if m.content_type in ("text", "timer", "group_event") else None,
            file=file,
            sent_at_ms=m.sent_at_ms,
            path=DeliveryPath(m.path) if m.path else None,
            state=MessageState(m.state),
            reason=m.reason,
            devices=devices,
            unread=not m.outgoing and m.state == MessageState.RECEIVED,
            edited_at_ms=m.payload.get("edited_at_ms"),
            **rollup,
        )

    async def history(
        self, conversation: str | None, limit: int = 100, before_ms: int | None = None
    ) -> list[MessageView]:
        return [await self.view(m) for m in await self._store.history(conversation, limit, before_ms)]

    async def message(self, message_id: str) -> MessageView | None:
        m = await self._store.get_message(message_id)
        return await self.view(m) if m is not None else None

    async def conversations(self) -> list[tuple[str, int]]:
        return await self._store.conversations()

    async def summaries(self) -> list[ConversationSummary]:
        """Every conversation with its last message and unread count, most recent first."""
        result = []
        for conversation, last_id, last_at_ms, unread in await self._store.conversation_summaries():
            last = await self.message(last_id) if last_id else None
            result.append(ConversationSummary(ConversationId(conversation), last, last_at_ms, unread))
        return result

    async def summary(self, conversation: ConversationId) -> ConversationSummary:
        for found in await self.summaries():
            if found.conversation == conversation:
                return found
        return ConversationSummary(conversation, None, 0, 0)
