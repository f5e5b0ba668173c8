"""The single-consumer queue behind each socket's outgoing frames and uvicorn's received ones."""

from __future__ import annotations

import asyncio

import pytest

from signalling.lean_queue import SingleReaderQueue


async def test_items_come_out_in_order_and_a_waiting_reader_is_woken() -> None:
    queue: SingleReaderQueue[int] = SingleReaderQueue()
    reader = asyncio.create_task(queue.get())
    await asyncio.sleep(0)  # one loop turn (not a wait): the reader is now waiting
    assert not reader.done()
    queue.put_nowait(1)
    queue.put_nowait(2)
    assert await asyncio.wait_for(reader, 5) == 1
    assert queue.qsize() == 1 and await queue.get() == 2
    assert queue.empty()
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


async def test_a_cancelled_reader_leaves_the_queue_usable() -> None:
    queue: SingleReaderQueue[str] = SingleReaderQueue(maxsize=2)
    reader = asyncio.create_task(queue.get())
    await asyncio.sleep(0)  # one loop turn: the reader is now waiting
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    queue.put_nowait("a")
    queue.put_nowait("b")
    assert queue.full()
    assert [await queue.get(), await queue.get()] == ["a", "b"]
