"""The history search index (peer/search.py) over a real, sealed local store."""

from __future__ import annotations

import os
from pathlib import Path

from peer.localstore import LocalStore, StoredMessage
from peer.search import SearchIndex


def _message(n: int, text: str, conversation: str = "u:2", kind: str = "text") -> StoredMessage:
    payload = {"type": "text", "body": text} if kind == "text" else {"type": "file", "name": text, "size": 1}
    return StoredMessage(
        message_id=f"{n:032x}",
        conversation=conversation,
        sender_user=2,
        sender_device="dev",
        outgoing=False,
        content_type=kind,
        payload=payload,
        sent_at_ms=1_000 + n,
        stored_at_ms=1_000 + n,
        path="direct",
        state="received",
        reason=None,
    )


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.iterdir()}


async def _store(tmp_path: Path) -> LocalStore:
    store = LocalStore(tmp_path / "store.db", os.urandom(32))
    await store.open()
    return store


async def test_every_word_matches_as_a_prefix_case_insensitive_newest_first(tmp_path: Path):
    store = await _store(tmp_path)
    try:
        await store.save_message(_message(1, "Lunch on Friday?"))
        await store.save_message(_message(2, "the report is due friday", conversation="u:3"))
        await store.save_message(_message(3, "FRIDAY lunch it is"))
        await store.save_message(_message(4, "holiday-photos.png", kind="file"))
        index = SearchIndex(store)
        assert await index.search("fri lun") == [f"{3:032x}", f"{1:032x}"]
        assert await index.search("friday") == [f"{3:032x}", f"{2:032x}", f"{1:032x}"]
        assert await index.search("friday", conversation="u:3") == [f"{2:032x}"]
        assert await index.search("photos") == [f"{4:032x}"]  # a file by its name
        assert await index.search("nothing here") == []
        assert await index.search("  ?! ") == []
    finally:
        await store.close()


async def test_new_edited_and_deleted_messages_are_followed_without_a_rebuild(tmp_path: Path):
    store = await _store(tmp_path)
    try:
        await store.save_message(_message(1, "first words"))
        await store.save_message(_message(2, "last words"))
        index = SearchIndex(store)
        assert len(await index.search("words")) == 2
        await store.replace_payload(f"{1:032x}", "text", {"type": "text", "body": "changed text"})
        await store.delete_message(f"{2:032x}")  # the last row: SQLite reuses its rowid next
        await store.save_message(_message(3, "newer words"))
        assert await index.search("words") == [f"{3:032x}"]
        assert await index.search("changed") == [f"{1:032x}"]
        assert await index.search("first") == []
        await store.replace_payload(f"{3:032x}", "deleted", {"type": "deleted", "was": "text"})
        assert await index.search("newer") == []  # a tombstone has no words
        assert index.size == 2
    finally:
        await store.close()


async def test_the_index_writes_nothing_to_disk(tmp_path: Path):
    store = await _store(tmp_path)
    try:
        await store.save_message(_message(1, "a secretword inside"))
        before = _files(tmp_path)
        assert await SearchIndex(store).search("secretw") == [f"{1:032x}"]
        after = _files(tmp_path)
        assert {p: len(b) for p, b in after.items()} == {p: len(b) for p, b in before.items()}
        assert not [p for p, data in after.items() if b"secretword" in data]
    finally:
        await store.close()
