"""Blocking between two real peers (issue #11, finding 13): the blocker's peer drops the direct
link at once, so nothing of the blocked user reaches it, not even over WebRTC."""

from __future__ import annotations

import contextlib

from peer.errors import PeerError
from tests.peer.conftest import World


async def test_blocking_drops_the_direct_link_and_nothing_more_arrives(world: World) -> None:
    alice, bob = await world.pair()
    sent = await alice.send_text(bob.me.user_id, "hello bob")
    assert sent.path == "direct"
    assert alice.link_to(bob.me.device_id) is not None
    alice_events = world.record(alice)
    await alice._client.block(user_id=bob.me.user_id)
    await alice_events.wait_for(lambda e: e.type == "contact" and e.event == "blocked" and e.by_me)
    assert alice.link_to(bob.me.device_id) is None
    assert [b.user_id for b in await alice._client.blocks()] == [bob.me.user_id]
    # Direct, it would be acked only after alice saved it; through the server it is refused.
    with contextlib.suppress(PeerError):
        await bob.send_text(alice.me.user_id, "let me in")
    texts = [m.text for m in await alice.history(bob.me.user_id)]
    assert "let me in" not in texts
    await alice._client.unblock(bob.me.user_id)
    assert await alice._client.blocks() == []
