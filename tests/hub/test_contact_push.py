"""Contact changes are pushed as `contact` frames to the live devices of both people (and nobody
else), after the change is committed; accepting also introduces the two to each other's presence.

"Nobody else heard anything" is checked with a ping barrier: the hub queues a pushed frame on the
socket before the REST call answers, and a `pong` leaves through the same queue, so anything pushed
to a socket before its ping would arrive before its pong.
"""

from __future__ import annotations

from typing import Any

from signalling.protocol import SERVER_FRAME, ContactFrame
from tests.hub.world import DeviceClient, World


async def _quiet(client: DeviceClient, kind: str = "contact") -> None:
    """Assert that `client` got no frame of `kind` so far (ping barrier, see module docstring)."""
    await client.send({"type": "ping", "nonce": "barrier"})
    await client.expect("pong", where=lambda f: f.get("nonce") == "barrier")
    assert [f for f in client.backlog if f["type"] == kind] == []


def _contact(frame: dict[str, Any]) -> ContactFrame:
    parsed = SERVER_FRAME.validate_python(frame)  # the peer's own parser must accept it
    assert isinstance(parsed, ContactFrame)
    return parsed


async def test_a_request_is_pushed_to_the_asked_users_devices_and_the_askers_own(world: World) -> None:
    alice, bob, carol = await world.account(), await world.account(devices=2), await world.account()
    a = await world.connect(alice)
    b1, b2 = await world.connect(bob), await world.connect(bob, bob.devices[1])
    c = await world.connect(carol)

    r = await world.http.post("/me/contacts/", json={"username": bob.username}, headers=alice.auth)
    assert r.status_code == 201

    for device in (b1, b2):
        told = _contact(await device.expect("contact"))
        assert (told.event, told.user_id, told.username, told.by_me) == (
            "requested",
            alice.user_id,
            alice.username,
            False,
        )
        assert told.contact is not None
        assert (told.contact.status, told.contact.direction) == ("pending", "incoming")
        assert told.contact.online is False  # a request does not reveal presence
    own = _contact(await a.expect("contact"))
    assert (own.event, own.user_id, own.by_me) == ("requested", bob.user_id, True)
    assert own.contact is not None and own.contact.direction == "outgoing"
    await _quiet(c)
    await _quiet(a, "presence")  # not contacts yet: nobody's presence is told
    for client in (a, b1, b2, c):
        await client.close()


async def test_accepting_tells_the_asker_and_introduces_both_to_each_others_presence(world: World) -> None:
    alice, bob = await world.account(), await world.account()
    a, b = await world.connect(alice), await world.connect(bob)
    r = await world.http.post("/me/contacts/", json={"friend_id": bob.user_id}, headers=alice.auth)
    assert r.status_code == 201
    await b.expect("contact")

    r = await world.http.post(f"/me/contacts/{alice.user_id}/accept", headers=bob.auth)
    assert r.status_code == 200

    told = _contact(await a.expect("contact", where=lambda f: f["event"] == "accepted"))
    assert (told.user_id, told.username, told.by_me) == (bob.user_id, bob.username, False)
    assert told.contact is not None
    assert told.contact.status == "accepted" and told.contact.direction == "outgoing"
    assert told.contact.online is True
    seen_bob = await a.expect("presence")
    assert (seen_bob["user_id"], seen_bob["device_id"]) == (bob.user_id, bob.device_id)
    assert seen_bob["online"] is True

    own = _contact(await b.expect("contact", where=lambda f: f["event"] == "accepted"))
    assert (own.user_id, own.by_me) == (alice.user_id, True)
    assert own.contact is not None and own.contact.direction == "incoming" and own.contact.online is True
    seen_alice = await b.expect("presence")
    assert (seen_alice["user_id"], seen_alice["device_id"], seen_alice["online"]) == (
        alice.user_id,
        alice.device_id,
        True,
    )
    await a.close()
    await b.close()


async def test_asking_someone_who_already_asked_you_is_pushed_as_accepted(world: World) -> None:
    alice, bob = await world.account(), await world.account()
    a = await world.connect(alice)
    await world.http.post("/me/contacts/", json={"friend_id": bob.user_id}, headers=alice.auth)
    await a.expect("contact")
    r = await world.http.post("/me/contacts/", json={"friend_id": alice.user_id}, headers=bob.auth)
    assert r.status_code == 201 and r.json()["status"] == "accepted"
    told = _contact(await a.expect("contact"))
    assert (told.event, told.user_id, told.by_me) == ("accepted", bob.user_id, False)
    await a.close()


async def test_decline_remove_and_labels_are_pushed_to_whom_they_concern(world: World) -> None:
    alice, bob = await world.account(), await world.account()
    a, b = await world.connect(alice), await world.connect(bob)
    await world.http.post("/me/contacts/", json={"friend_id": bob.user_id}, headers=alice.auth)
    await a.expect("contact")
    await b.expect("contact")

    r = await world.http.post(f"/me/contacts/{alice.user_id}/decline", headers=bob.auth)
    assert r.status_code == 204
    declined = _contact(await a.expect("contact"))
    assert declined.event == "declined" and declined.by_me is False
    assert declined.contact is not None and declined.contact.status == "declined"  # as GET shows it
    own = _contact(await b.expect("contact"))
    assert (own.event, own.by_me, own.contact) == ("declined", True, None)  # bob has no row left

    r = await world.http.delete(f"/me/contacts/{bob.user_id}", headers=alice.auth)
    assert r.status_code == 204
    removed = _contact(await b.expect("contact"))
    assert (removed.event, removed.user_id, removed.contact) == ("removed", alice.user_id, None)
    assert _contact(await a.expect("contact")).event == "removed"

    await world.befriend(alice, bob)
    for client in (a, b):
        assert [(await client.expect("contact"))["event"] for _ in range(2)] == ["requested", "accepted"]
    r = await world.http.patch(
        f"/me/contacts/{bob.user_id}", json={"group": "Climbing", "remark": "belays"}, headers=alice.auth
    )
    assert r.status_code == 200
    updated = _contact(await a.expect("contact", where=lambda f: f["event"] == "updated"))
    assert updated.contact is not None
    assert (updated.contact.group, updated.contact.remark) == ("Climbing", "belays")
    await _quiet(b)  # alice's labels are hers alone
    await a.close()
    await b.close()


async def test_a_deleted_account_is_pushed_as_removed_to_its_former_contacts(world: World) -> None:
    alice, bob = await world.account(), await world.account()
    await world.befriend(alice, bob)
    a = await world.connect(alice)
    r = await world.http.delete("/users/self", headers=bob.auth)
    assert r.status_code == 204
    removed = _contact(await a.expect("contact"))
    assert (removed.event, removed.user_id, removed.username, removed.contact) == (
        "removed",
        bob.user_id,
        bob.username,
        None,
    )
    await a.close()
