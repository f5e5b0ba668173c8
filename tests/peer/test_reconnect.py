"""The hub session: back-off with jitter, reconnect after a server crash, and the outbox flushed."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from peer.session import Backoff, SessionState
from tests.peer.conftest import PASSWORD, SERVER_ENV, World
from tests.support.server import RunningServer


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
        lambda e: e.type == "message" and e.message.text.startswith("written"), within=20
    )
    assert got.message.text == "written while the server was down"
    # "sent" once the flush is booked, or bob's "delivered" receipt first: either way, with a path.
    settled = await alice_events.wait_for(
        lambda e: (
            e.type == "message_state"
            and e.message_id == pending.message_id
            and e.state in ("sent", "delivered")
            and e.path is not None
        )
    )
    assert settled.path in ("relayed", "queued")  # bob may reconnect after alice flushes
    assert alice.session.connects > connects_before
    assert {m.state for m in await alice.history(bob.me.user_id)} <= {"sent", "delivered"}


async def test_expired_access_token_is_refreshed_for_rest_and_for_the_socket(tmp_path):
    server = RunningServer(tmp_path / "server", env={**SERVER_ENV, "PEERPOST_ACCESS_TOKEN_TTL_SECONDS": "1"})
    await asyncio.to_thread(server.start)
    world = World(server, tmp_path / "peers")
    try:
        alice, bob = await world.pair()
        alice_events = world.record(alice)
        first = alice.server.tokens.access_token
        # Let the one-second token expire: a clock, not a sync point. JWT times are whole seconds
        # (exp = iat + 1, checked against the current whole second), so it can live almost 2 s.
        await asyncio.sleep(2.2)
        assert [c.username for c in await alice.contacts()] == ["bob"]  # 401 -> refresh -> retried
        assert alice.server.tokens.access_token != first
        connects = alice.session.connects
        stale = alice.server.tokens.access_token
        await asyncio.sleep(2.2)
        await alice.session.drop()  # the socket must come back with a fresh token
        await alice_events.wait_for(lambda e: e.type == "connection" and e.online, within=15)
        assert alice.session.connects > connects and alice.server.tokens.access_token != stale
        bob_events = world.record(bob)
        await alice.send_text(bob.me.user_id, "after refresh")
        await bob_events.wait_for(lambda e: e.type == "message")
    finally:
        await world.close()
        await asyncio.to_thread(server.stop)


async def test_offline_peer_says_why_and_retry_now_skips_the_back_off(world: World):
    slow = {"reconnect_base": 30.0, "reconnect_cap": 60.0}  # left alone, it would wait 7.5–30 s
    alice, _bob = await world.pair(alice_settings=slow)
    alice_events = world.record(alice)
    assert alice.offline_reason is None

    await asyncio.to_thread(world.server.kill)
    lost = await alice_events.wait_for(lambda e: e.type == "connection" and not e.online)
    assert "lost" in lost.reason and alice.offline_reason == lost.reason

    alice.reconnect_now()  # with the server still down: the attempt fails, and says how
    refused = await alice_events.wait_for(
        lambda e: e.type == "connection" and not e.online and "refused" in (e.reason or "")
    )
    assert world.server.url in refused.reason and "peerpost" not in refused.reason
    assert alice.session.state in (SessionState.WAITING, SessionState.CONNECTING)

    await asyncio.to_thread(world.server.restart)
    assert world.server.url == alice.server_url, "restart moved the port; the peers cannot follow"
    alice.reconnect_now()
    assert await alice.wait_online(15)
    assert alice.offline_reason is None and alice.session.state is SessionState.READY


def _mailbox_life(database: Path, message_id: str) -> timedelta:
    """How long the server keeps a queued message (its expiry less its arrival)."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        created, expires = db.execute(
            "SELECT created_at, expires_at FROM mailbox WHERE message_id = ?", (message_id,)
        ).fetchone()
    return datetime.fromisoformat(expires) - datetime.fromisoformat(created)


@pytest.mark.parametrize("ratchet", [True, False], ids=["ratchet", "envelope-v2"])
async def test_a_disappearing_message_left_in_the_outbox_keeps_its_expiry_across_a_node_restart(
    world: World, ratchet: bool
):
    alice, bob = await world.pair()
    alice.set_ratchet(ratchet)
    await alice.set_direct(False)
    bob_events, alice_events = world.record(bob), world.record(alice)
    await alice.set_timer(bob.me.user_id, 3600)
    await bob_events.wait_for(lambda e: e.type == "message" and e.message.kind == "timer")
    await bob.close()  # bob's copy waits in the mailbox, where its expiry can be read

    await asyncio.to_thread(world.server.kill)
    await alice_events.wait_for(lambda e: e.type == "connection" and not e.online)
    pending = await alice.send_text(bob.me.user_id, "gone within the hour")
    assert pending.state == "sending"
    await alice.close()  # the node restarts with the message still in its outbox

    await asyncio.to_thread(world.server.restart)
    again = world.peer("alice", 0)
    again.set_ratchet(ratchet)
    again_events = world.record(again)
    await again.unlock(PASSWORD)
    await again_events.wait_for(
        lambda e: e.type == "message_state" and e.message_id == pending.message_id and e.state == "sent",
        within=30,
    )
    life = _mailbox_life(world.server.database_path, pending.message_id)
    assert life <= timedelta(seconds=3600 + 1)  # the timer's, not the mailbox's 30 days
