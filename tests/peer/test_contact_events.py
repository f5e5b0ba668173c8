"""A peer hears contact changes the moment they happen (the hub's `contact` frames), as `contact`
events, with its contacts cache, keys and presence already brought in line. Real server, real peers.
"""

from __future__ import annotations

from peer.events import ContactChanged, Event, PresenceChanged
from tests.peer.conftest import PASSWORD, World


def _contact(event: str, user_id: int, *, by_me: bool = False):
    def match(e: Event) -> bool:
        return (
            isinstance(e, ContactChanged) and e.event == event and e.user_id == user_id and e.by_me is by_me
        )

    return match


async def test_request_acceptance_and_removal_reach_the_other_peer_without_asking(world: World) -> None:
    alice, bob = world.peer("alice", 0), world.peer("bob", 1)
    await alice.register("alice", "alice@example.org", PASSWORD)
    await bob.register("bob", "bob@example.org", PASSWORD)
    assert await alice.wait_online(10) and await bob.wait_online(10)
    alice_events, bob_events = world.record(alice), world.record(bob)
    a_id, b_id = alice.me.user_id, bob.me.user_id

    await alice.add_contact("bob")
    asked = await bob_events.wait_for(_contact("requested", a_id))
    assert isinstance(asked, ContactChanged) and asked.username == "alice"
    assert asked.contact is not None and asked.contact["direction"] == "incoming"
    await alice_events.wait_for(_contact("requested", b_id, by_me=True))  # the asker's own devices too

    await bob.accept_contact(a_id)
    accepted = await alice_events.wait_for(_contact("accepted", b_id))
    assert isinstance(accepted, ContactChanged) and accepted.contact is not None
    assert accepted.contact["status"] == "accepted" and accepted.contact["online"] is True
    # Emitted after the peer caught up: the cache holds bob as accepted, his device key is pinned.
    cached = {c["user_id"]: c["status"] for c in await alice.cached_contacts()}
    assert cached == {b_id: "accepted"}
    assert _pinned(alice, b_id) == {bob.me.device_id}
    # ...and bob's device is reported online without anyone reconnecting.
    online = await alice_events.wait_for(lambda e: isinstance(e, PresenceChanged) and e.user_id == b_id)
    assert isinstance(online, PresenceChanged) and online.online and online.device_id == bob.me.device_id
    await bob_events.wait_for(_contact("accepted", a_id, by_me=True))

    sent = await alice.send_text(b_id, "now we are contacts")
    assert sent.path == "direct"
    await bob_events.wait_for(lambda e: e.type == "message")

    # bob ends it: alice hears so, and her link to his device is gone by the time she does.
    await bob.remove_contact(a_id)
    removed = await alice_events.wait_for(_contact("removed", b_id))
    assert isinstance(removed, ContactChanged) and removed.contact is None
    assert alice.link_to(bob.me.device_id) is None
    assert await alice.cached_contacts() == []


async def test_a_declined_and_a_withdrawn_request_are_told_to_the_other_peer(world: World) -> None:
    alice, bob = world.peer("alice", 0), world.peer("bob", 1)
    await alice.register("alice", "alice@example.org", PASSWORD)
    await bob.register("bob", "bob@example.org", PASSWORD)
    assert await alice.wait_online(10) and await bob.wait_online(10)
    alice_events, bob_events = world.record(alice), world.record(bob)
    a_id, b_id = alice.me.user_id, bob.me.user_id

    await alice.add_contact(b_id)
    first = await bob_events.wait_for(_contact("requested", a_id))
    await bob.decline_contact(a_id)
    declined = await alice_events.wait_for(_contact("declined", b_id))
    assert isinstance(declined, ContactChanged) and declined.contact is not None
    assert declined.contact["status"] == "declined"

    await alice.remove_contact(b_id)  # withdraw the declined request and ask again
    withdrawn = await bob_events.wait_for(_contact("removed", a_id))
    assert isinstance(withdrawn, ContactChanged) and withdrawn.contact is None
    await alice.add_contact(b_id)
    asked_again = await bob_events.wait_for(lambda e: _contact("requested", a_id)(e) and e is not first)
    assert isinstance(asked_again, ContactChanged) and asked_again.contact is not None
    assert asked_again.contact["status"] == "pending"


def _pinned(peer, user_id: int) -> set[str]:
    """Which devices of `user_id` the peer has pinned, read without fetching (introspection)."""
    return {d.device_id for d in peer.keyring.devices_of(user_id)}
