"""Search over this device's history, served by the node: an inverted index held in memory only.

Why in memory: the store keeps every message body sealed (AES-GCM, peer/localstore.py); an index
on disk would be a second copy of the words in plaintext unless it were sealed too, and a sealed
index costs as much to open as to rebuild. So the index is built from the store the first time a
search is asked after unlock (decrypting each message once), kept up to date from then on (new
rows by rowid, edits and deletions from `LocalStore.watch_changes`), and dropped with the peer at
lock or stop: nothing of it is ever written. bench/search.py measures the build for 100,000
messages (time and memory) against a plain decrypting scan.

A query is words; a message matches when every word is the prefix of some word of its text (or
its file name), case-insensitive, as Signal Desktop's search behaves. Newest first.
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import re
import sys
from array import array
from collections import defaultdict
from dataclasses import dataclass, field

from peer.localstore import LocalStore, StoredMessage

WORD = re.compile(r"\w+", re.UNICODE)
BATCH = 2_000
MAX_QUERY_WORDS = 8


def words(text: str) -> list[str]:
    return WORD.findall(text.casefold())


def searchable_text(message: StoredMessage) -> str:
    if message.content_type == "text":
        return str(message.payload.get("body") or "")
    if message.content_type == "file":
        return str(message.payload.get("name") or "")
    return ""  # tombstones and anything else carry no words


@dataclass(slots=True)
class _Doc:
    message_id: str
    conversation: str
    sent_at_ms: int
    rowid: int


@dataclass
class SearchIndex:
    store: LocalStore
    # word -> doc numbers, ascending; 4-byte unsigned ints (a list of ints costs ~9 times more)
    _postings: defaultdict[str, array[int]] = field(default_factory=lambda: defaultdict(lambda: array("I")))
    _docs: list[_Doc | None] = field(default_factory=list)  # doc number -> message (None: gone)
    _doc_of: dict[str, int] = field(default_factory=dict)  # message id -> its live doc number
    _vocabulary: list[str] = field(default_factory=list)  # sorted words, for prefix lookups
    _sorted: bool = True
    _last_rowid: int = 0
    _changes: set[str] | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one catch-up at a time

    @property
    def size(self) -> int:
        return len(self._doc_of)

    async def catch_up(self) -> int:
        """Index what the store gained or changed since the last call; the number of messages read."""
        if self._changes is None:
            self._changes = self.store.watch_changes()
        read = 0
        if self._changes:
            changed = set(self._changes)
            self._changes.clear()
            deleted = False
            for message_id in changed:
                doc = self._doc_of.pop(message_id, None)
                old = self._docs[doc] if doc is not None else None
                if doc is None or old is None:
                    continue
                self._docs[doc] = None
                current = await self.store.get_message(message_id)
                if current is not None:  # edited or tombstoned: the same row, new words
                    self._add(old.rowid, current)
                    read += 1
                else:
                    deleted = True
            if deleted:  # SQLite may give the next rows the rowids of deleted last rows again
                self._last_rowid = max((d.rowid for d in self._docs if d is not None), default=0)
        while True:
            batch = await self.store.messages_after(self._last_rowid, BATCH)
            if not batch:
                return read
            for rowid, message in batch:
                self._last_rowid = rowid
                if message.message_id not in self._doc_of:
                    self._add(rowid, message)
            read += len(batch)

    def _add(self, rowid: int, message: StoredMessage) -> None:
        number = len(self._docs)
        conversation = sys.intern(message.conversation)  # one string per conversation, not per message
        self._docs.append(_Doc(message.message_id, conversation, message.sent_at_ms, rowid))
        self._doc_of[message.message_id] = number
        postings = self._postings
        known = len(postings)
        for word in set(words(searchable_text(message))):
            postings[word].append(number)
        if len(postings) != known:
            self._sorted = False

    def _matching(self, prefix: str) -> set[int]:
        if not self._sorted:
            self._vocabulary = sorted(self._postings)
            self._sorted = True
        found: set[int] = set()
        start = bisect.bisect_left(self._vocabulary, prefix)
        for word in self._vocabulary[start:]:
            if not word.startswith(prefix):
                break
            found.update(self._postings[word])
        return found

    async def search(self, query: str, conversation: str | None = None, limit: int = 50) -> list[str]:
        """Message ids matching every word of `query`, newest first."""
        async with self._lock:
            await self.catch_up()
        terms = sorted(set(words(query)), key=len, reverse=True)[:MAX_QUERY_WORDS]
        if not terms:
            return []
        hits: set[int] | None = None
        for term in terms:  # the longest (rarest) first: the intersection shrinks fastest
            found = self._matching(term)
            hits = found if hits is None else hits & found
            if not hits:
                return []
        docs = [d for n in hits or () if (d := self._docs[n]) is not None]
        if conversation is not None:
            docs = [d for d in docs if d.conversation == conversation]
        newest = heapq.nlargest(limit, docs, key=lambda d: d.sent_at_ms)
        return [d.message_id for d in newest]
