"""A queue for exactly one consumer that costs next to nothing while it is empty.

Why not `asyncio.Queue`: an idle socket has two (signalling.ws_protocol's receive queue and the hub's outgoing
one), and an empty `asyncio.Queue` is three deques and an Event, ~2.3 KB (bench/scale.py's
tracemalloc, docs/hub.md "10,000 devices"). This one holds no deque while empty and at most one
future, only while its consumer waits.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleReaderQueue(Generic[T]):
    """put_nowait from anywhere; get() from one task at a time. `maxsize` 0 means unbounded."""

    __slots__ = ("_items", "_waiter", "maxsize")

    def __init__(self, maxsize: int = 0) -> None:
        self._items: collections.deque[T] | None = None  # made on the first put after empty
        self.maxsize = maxsize
        self._waiter: asyncio.Future[None] | None = None

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return 0 < self.maxsize <= self.qsize()

    def put_nowait(self, item: T) -> None:
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def get_nowait(self) -> T:
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.popleft()
        if not self._items:
            self._items = None  # an idle socket keeps no deque block (~0.7 KB)
        return item

    async def get(self) -> T:
        """The next item, waiting for one."""
        while not self._items:
            waiter = asyncio.get_running_loop().create_future()
            self._waiter = waiter
            try:
                await waiter
            finally:
                if self._waiter is waiter:
                    self._waiter = None
        return self.get_nowait()
