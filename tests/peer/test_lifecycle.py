"""`Peer`'s lifecycle is an explicit state machine: each step announced, a failed start can be
retried, a closed peer refuses work with a typed error (and still says who it was)."""

from __future__ import annotations

import pytest

from peer.errors import LoginNeeded, NotLoggedIn, PeerStateError, WrongPassword
from peer.events import StateChanged
from peer.node import PeerState
from tests.peer.conftest import PASSWORD, World


async def test_peer_walks_new_starting_running_closing_closed_and_announces_each_step(world: World):
    alice = world.peer("alice", 0)
    events = world.record(alice)
    assert alice.state is PeerState.NEW
    with pytest.raises(NotLoggedIn) as not_yet:
        await alice.history()
    assert not_yet.value.reason is LoginNeeded.NOT_STARTED

    me = await alice.register("alice", "alice@example.org", PASSWORD)
    assert alice.state is PeerState.RUNNING
    with pytest.raises(PeerStateError, match="already logged in"):
        await alice.login("alice", PASSWORD)

    await alice.close()
    assert alice.state is PeerState.CLOSED
    assert alice.me == me  # who it was is still answered
    with pytest.raises(PeerStateError, match="closed"):
        await alice.send_text(me.user_id, "after close")
    await alice.close()  # closing twice is a no-op
    await events.wait_for(lambda e: isinstance(e, StateChanged) and e.state == "closed")
    steps = [e.state for e in events.events if isinstance(e, StateChanged)]
    assert steps == ["starting", "running", "closing", "closed"]


async def test_a_failed_unlock_goes_back_to_new_and_can_be_retried(world: World):
    first = world.peer("alice", 0)
    await first.register("alice", "alice@example.org", PASSWORD)
    await first.close()

    again = world.peer("alice", 0)
    with pytest.raises(WrongPassword):
        await again.unlock("not the password")
    assert again.state is PeerState.NEW
    me = await again.unlock(PASSWORD)
    assert again.state is PeerState.RUNNING and me.username == "alice"


async def test_a_profile_that_never_logged_in_says_so_without_cli_advice(world: World):
    fresh = world.peer("nobody", 2)
    with pytest.raises(NotLoggedIn) as never:
        await fresh.unlock(PASSWORD)
    assert never.value.reason is LoginNeeded.NEVER
    assert "peerpost" not in str(never.value) and "never logged in" in str(never.value)
    assert fresh.state is PeerState.NEW
