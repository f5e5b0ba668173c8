"""The hub session: back-off with jitter, reconnect after a server crash, and the outbox flushed."""

from __future__ import annotations

import asyncio
import random

from peer.session import Backoff
from tests.peer.conftest import World


def test_backoff_grows_exponentially_with_jitter_and_a_cap():
    backoff = Backoff(base=0.5, cap=8.0)
    rng = random.Random(7)
    delays = [[backoff.delay(attempt, rng) for _ in range(200)] for attempt in range(8)]
    for attempt, values in enumerate(delays):
        ceiling = min(8.0, 0.5 * 2**attempt)
        assert all(ceiling / 4 <= v <= ceiling for v in values)
        assert len({round(v, 6) for v in values}) > 150  # jittered, not one fixed value
    assert max(delays[7]) <= 8.0


async def test_message_sent_while_server_is_down_is_delivered_after_reconnect(world: World):
    alice, bob = await world.pair()
    await alice.set_direct(False)  # only the server path: what is tested here is the outbox
    alice_events = world.record(alice)
    bob_events = world.record(bob)
    await alice.send_text(bob.me.user_id, "keys pinned from here on")
    await bob_events.wait_for(lambda e: e.type == "message")
    connects_before = alice.session.connects

    await asyncio.to_thread(world.server.kill)  # SIGKILL: nothing flushed, sockets just die
    await alice_events.wait_for(lambda e: e.type == "connection" and not e.online)
    pending = await alice.send_text(bob.me.user_id, "written while the server was down")
    assert pending.state == "sending" and pending.path is None

    await asyncio.to_thread(world.server.restart)
    assert world.server.url == alice.server_url, "restart moved the port; the peers cannot follow"
    got = await bob_events.wait_for(
        lambda e: e.type == "message" and e.message["text"].startswith("written"), within=20
    )
    assert got.message["text"] == "written while the server was down"
    await alice_events.wait_for(
        lambda e: e.type == "message_state" and e.message_id == pending.message_id and e.state == "sent"
    )
    assert alice.session.connects > connects_before
    assert {m.state for m in await alice.history(bob.me.user_id)} <= {"sent", "delivered"}
