"""Envelope v2 session keys in a running peer: one RSA unwrap per sender device, not per message,
and an envelope still opens on its own after the receiver restarts (empty cache)."""

from __future__ import annotations

from tests.peer.conftest import PASSWORD, World


async def test_a_conversation_costs_the_receiver_one_rsa_unwrap_and_survives_its_restart(world: World):
    # envelope v2's session-key cache (peers with prekeys talk ratchet: tests/peer/test_forward_secrecy.py)
    alice, bob = await world.pair({"forward_secrecy": False}, receipts=False, forward_secrecy=False)
    bob_events = world.record(bob)
    for i in range(5):
        sent = await alice.send_text(bob.me.user_id, f"message {i}")
        assert sent.path == "direct"
    await bob_events.wait_for(lambda e: e.type == "message" and e.message.text == "message 4")
    assert world.probe(alice).session_keys.created == 1  # one session key for bob's device
    assert (world.probe(bob).unwrap_cache.misses, world.probe(bob).unwrap_cache.hits) == (1, 4)

    bob_id = bob.me.user_id
    await bob.close()
    assert len(world.probe(bob).unwrap_cache) == 0  # in memory only, gone with the peer
    alice_events = world.record(alice)
    await alice_events.wait_for(lambda e: e.type == "presence" and e.user_id == bob_id and not e.online)
    sent = await alice.send_text(bob_id, "while you were away")
    assert sent.path == "queued"
    assert world.probe(alice).session_keys.created == 1  # the same session key travels in the queued envelope

    again = world.peer("bob", 1, receipts=False, forward_secrecy=False)
    events = world.record(again)
    await again.unlock(PASSWORD)
    got = await events.wait_for(lambda e: e.type == "message")
    assert got.message.text == "while you were away"
    assert (world.probe(again).unwrap_cache.misses, world.probe(again).unwrap_cache.hits) == (1, 0)
