"""Fan-out of live events from the peer to every open UI WebSocket.

Each socket gets its own bounded queue, so a slow or stuck browser tab cannot hold the peer back:
when its queue is full the oldest events are dropped and the tab is told to reload its state.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

QUEUE_SIZE = 1000


class EventHub:
    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[dict[str, Any]]] = set()

    def publish(self, event: dict[str, Any]) -> None:
        for queue in self._queues:
            if queue.full():
                # The tab fell behind: drop the backlog and ask it to fetch fresh state instead.
                while not queue.empty():
                    queue.get_nowait()
                queue.put_nowait({"type": "resync"})
            queue.put_nowait(event)

    @contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        try:
            yield queue
        finally:
            self._queues.discard(queue)
