"""The issue's scenarios end to end: a real server subprocess, real aiortc peers over 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

from tests.peer.conftest import World


async def test_direct_text_goes_over_the_link_and_is_acknowledged(world: World):
    alice, bob = await world.pair()
    bob_events = world.record(bob)
    alice_events = world.record(alice)
    sent = await alice.send_text(bob.me.user_id, "hello bob")
    assert sent.path == "direct" and sent.state == "sent"
    got = await bob_events.wait_for(lambda e: e.type == "message")
    assert got.message["text"] == "hello bob" and got.message["path"] == "direct"
    await alice_events.wait_for(lambda e: e.type == "message_state" and e.state == "delivered")
    history = await bob.history(alice.me.user_id)
    assert [m.text for m in history] == ["hello bob"]
