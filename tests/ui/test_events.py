"""The UI's event fan-out never lets one stuck tab hold the peer back, and never loses the hint."""

from __future__ import annotations

from peer.ui.events import QUEUE_SIZE, EventHub


def test_every_tab_gets_every_event_in_order():
    hub = EventHub()
    with hub.subscribe() as first, hub.subscribe() as second:
        for i in range(3):
            hub.publish({"type": "message", "n": i})
        for queue in (first, second):
            assert [queue.get_nowait()["n"] for _ in range(3)] == [0, 1, 2]
    hub.publish({"type": "message"})  # nobody listening: nothing to do, nothing raised


def test_a_tab_that_falls_behind_is_told_to_resync_and_keeps_the_newest_event():
    hub = EventHub()
    with hub.subscribe() as stuck:
        for i in range(QUEUE_SIZE + 5):
            hub.publish({"type": "message", "n": i})
        drained = []
        while not stuck.empty():
            drained.append(stuck.get_nowait())
    assert {"type": "resync"} in drained
    assert drained[-1] == {"type": "message", "n": QUEUE_SIZE + 4}
    assert len(drained) <= QUEUE_SIZE
