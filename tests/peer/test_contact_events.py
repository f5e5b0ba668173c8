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


async def test_a_request_and_its_acceptance_reach_the_other_peer_without_asking(world: World) -> None:
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
    assert sent.state in ("sent", "delivered")
    await bob_events.wait_for(lambda e: e.type == "message")


async def test_a_declined_and_a_removed_contact_are_told_to_the_other_peer(world: World) -> None:
    alice, bob = world.peer("alice", 0), world.peer("bob", 1)
    await alice.register("alice", "alice@example.org", PASSWORD)
    await bob.register("bob", "bob@example.org", PASSWORD)
    assert await alice.wait_online(10) and await bob.wait_online(10)
    alice_events, bob_events = world.record(alice), world.record(bob)
    a_id, b_id = alice.me.user_id, bob.me.user_id

    await alice.add_contact(b_id)
    await bob_events.wait_for(_contact("requested", a_id))
    await bob.decline_contact(a_id)
    declined = await alice_events.wait_for(_contact("declined", b_id))
    assert isinstance(declined, ContactChanged) and declined.contact is not None
    assert declined.contact["status"] == "declined"

    await alice.remove_contact(b_id)  # withdraw the declined request, ask again, be accepted
    await bob_events.wait_for(_contact("removed", a_id))
    await alice.add_contact(b_id)
    await bob.accept_contact(a_id)
    await alice_events.wait_for(_contact("accepted", b_id))
    assert {c["user_id"] for c in await alice.cached_contacts()} == {b_id}

    await bob.remove_contact(a_id)
    removed = await alice_events.wait_for(_contact("removed", b_id))
    assert isinstance(removed, ContactChanged) and removed.contact is None
    assert await alice.cached_contacts() == []


def _pinned(peer, user_id: int) -> set[str]:
    """Which devices of `user_id` the peer has pinned, read without fetching (introspection)."""
    return {d.device_id for d in peer._keyring.devices_of(user_id)}
