"""Contacts: requests, accept/decline, labels, removal, listing with filters, paging and presence."""

from __future__ import annotations

import httpx
from fastapi import FastAPI

from tests.server.conftest import Account, NewAccount


class FixedPresence:
    """A PresenceView whose answer the test sets; it also records whom it was asked about."""

    def __init__(self, online: set[int]) -> None:
        self.online = online
        self.asked: list[int] = []

    async def is_online(self, user_id: int) -> bool:
        self.asked.append(user_id)
        return user_id in self.online

    async def online_among(self, user_ids: list[int]) -> set[int]:
        self.asked.extend(user_ids)
        return self.online & set(user_ids)


async def _ask(client: httpx.AsyncClient, asker: Account, **body: object) -> httpx.Response:
    return await client.post("/me/contacts/", json=body, headers=asker.headers)


async def _befriend(client: httpx.AsyncClient, a: Account, b: Account) -> None:
    assert (await _ask(client, a, friend_id=b.id)).status_code == 201
    assert (await client.post(f"/me/contacts/{a.id}/accept", headers=b.headers)).status_code == 200


async def test_ask_by_id_creates_an_outgoing_pending_request(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    response = await _ask(client, alice, friend_id=bob.id)
    assert response.status_code == 201
    body = response.json()
    assert body["user_id"] == bob.id
    assert body["username"] == "bob"
    assert body["status"] == "pending"
    assert body["direction"] == "outgoing"
    assert body["online"] is False
    assert body["last_seen"] is None
    assert body["group"] is None and body["remark"] is None


async def test_ask_by_username_any_case(client: httpx.AsyncClient, alice: Account, bob: Account) -> None:
    response = await _ask(client, alice, username="BOB")
    assert response.status_code == 201
    assert response.json()["user_id"] == bob.id


async def test_asking_yourself_is_a_409_conflict(client: httpx.AsyncClient, alice: Account) -> None:
    # 409, not 400: the request is well formed (the schema accepts it); it conflicts with who you are.
    for body in ({"friend_id": alice.id}, {"username": "alice"}):
        response = await _ask(client, alice, **body)
        assert response.status_code == 409
        assert response.json() == {"detail": "You cannot add yourself as a contact.", "code": "self_contact"}


async def test_asking_an_unknown_user_is_404(client: httpx.AsyncClient, alice: Account) -> None:
    by_id = await _ask(client, alice, friend_id=424242)
    assert by_id.status_code == 404
    assert by_id.json() == {"detail": "There is no user with id 424242.", "code": "user_not_found"}
    by_name = await _ask(client, alice, username="ghost")
    assert by_name.status_code == 404
    assert "name 'ghost'" in by_name.json()["detail"]


async def test_asking_twice_is_409(client: httpx.AsyncClient, alice: Account, bob: Account) -> None:
    assert (await _ask(client, alice, friend_id=bob.id)).status_code == 201
    again = await _ask(client, alice, username="bob")
    assert again.status_code == 409
    assert again.json()["code"] == "duplicate"
    await client.post(f"/me/contacts/{alice.id}/accept", headers=bob.headers)
    assert (await _ask(client, alice, friend_id=bob.id)).status_code == 409
    assert (await _ask(client, bob, friend_id=alice.id)).status_code == 409


async def test_ask_needs_exactly_one_of_id_or_username(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    neither = await _ask(client, alice)
    both = await _ask(client, alice, friend_id=bob.id, username="bob")
    for response in (neither, both):
        assert response.status_code == 422
        assert response.json()["code"] == "invalid"
        assert "exactly one of friend_id or username" in response.json()["detail"]


async def test_contacts_need_a_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/me/contacts/")).status_code == 401
    assert (await client.post("/me/contacts/", json={"friend_id": 1})).status_code == 401


async def test_requests_show_as_incoming_and_outgoing(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    await _ask(client, alice, friend_id=bob.id)
    incoming = (await client.get("/me/contacts/requests/incoming", headers=bob.headers)).json()
    assert [(r["user_id"], r["direction"], r["status"]) for r in incoming] == [
        (alice.id, "incoming", "pending")
    ]
    outgoing = (await client.get("/me/contacts/requests/outgoing", headers=alice.headers)).json()
    assert [(r["user_id"], r["direction"]) for r in outgoing] == [(bob.id, "outgoing")]
    assert (await client.get("/me/contacts/requests/incoming", headers=alice.headers)).json() == []
    assert (await client.get("/me/contacts/requests/outgoing", headers=bob.headers)).json() == []


async def test_accept_makes_both_sides_contacts(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    await _ask(client, alice, friend_id=bob.id)
    accepted = await client.post(f"/me/contacts/{alice.id}/accept", headers=bob.headers)
    assert accepted.status_code == 200
    assert accepted.json()["status"] == "accepted"
    assert accepted.json()["direction"] == "incoming"
    assert accepted.json()["user_id"] == alice.id
    alices = (await client.get("/me/contacts/", headers=alice.headers)).json()
    assert [(c["user_id"], c["status"], c["direction"]) for c in alices] == [(bob.id, "accepted", "outgoing")]
    bobs = (await client.get("/me/contacts/", headers=bob.headers)).json()
    assert [(c["user_id"], c["status"], c["direction"]) for c in bobs] == [(alice.id, "accepted", "incoming")]
    assert (await client.get("/me/contacts/requests/incoming", headers=bob.headers)).json() == []


async def test_accept_or_decline_without_a_request_is_404(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    for action in ("accept", "decline"):
        response = await client.post(f"/me/contacts/{alice.id}/{action}", headers=bob.headers)
        assert response.status_code == 404
        assert response.json() == {
            "detail": f"There is no pending request from user {alice.id}.",
            "code": "no_request",
        }
    # the asker cannot accept their own request
    await _ask(client, alice, friend_id=bob.id)
    assert (await client.post(f"/me/contacts/{bob.id}/accept", headers=alice.headers)).status_code == 404


async def test_decline_marks_the_request_declined_for_the_asker(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    await _ask(client, alice, friend_id=bob.id)
    response = await client.post(f"/me/contacts/{alice.id}/decline", headers=bob.headers)
    assert response.status_code == 204
    assert (await client.get("/me/contacts/requests/incoming", headers=bob.headers)).json() == []
    alices = (await client.get("/me/contacts/", headers=alice.headers)).json()
    assert [(c["user_id"], c["status"]) for c in alices] == [(bob.id, "declined")]
    assert (await client.get("/me/contacts/", headers=bob.headers)).json() == []
    # asking again waits for the decline's cool-down, and removing the declined row does not
    # shorten it (issue #11, finding 13)
    assert (await _ask(client, alice, friend_id=bob.id)).status_code == 429
    assert (await client.delete(f"/me/contacts/{bob.id}", headers=alice.headers)).status_code == 204
    assert (await _ask(client, alice, friend_id=bob.id)).status_code == 429


async def test_asking_someone_who_asked_you_accepts_at_once(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    await _ask(client, alice, friend_id=bob.id)
    response = await _ask(client, bob, friend_id=alice.id)
    assert response.status_code == 201
    assert response.json()["status"] == "accepted"
    assert response.json()["direction"] == "incoming"
    alices = (await client.get("/me/contacts/", headers=alice.headers)).json()
    assert alices[0]["status"] == "accepted"


async def test_group_and_remark_are_per_side_and_null_clears(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    await _befriend(client, alice, bob)
    response = await client.patch(
        f"/me/contacts/{bob.id}",
        json={"group": "work", "remark": "met at the conference"},
        headers=alice.headers,
    )
    assert response.status_code == 200
    assert (response.json()["group"], response.json()["remark"]) == ("work", "met at the conference")
    only_remark = await client.patch(f"/me/contacts/{bob.id}", json={"remark": None}, headers=alice.headers)
    assert (only_remark.json()["group"], only_remark.json()["remark"]) == ("work", None)
    bobs = (await client.get("/me/contacts/", headers=bob.headers)).json()
    assert (bobs[0]["group"], bobs[0]["remark"]) == (None, None)


async def test_labels_for_a_non_contact_are_404_and_too_long_is_422(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    missing = await client.patch(f"/me/contacts/{bob.id}", json={"group": "x"}, headers=alice.headers)
    assert missing.status_code == 404
    assert missing.json()["code"] == "not_a_contact"
    await _befriend(client, alice, bob)
    too_long = await client.patch(f"/me/contacts/{bob.id}", json={"group": "g" * 65}, headers=alice.headers)
    assert too_long.status_code == 422
    assert "group" in too_long.json()["detail"]


async def test_remove_ends_the_contact_both_ways(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    await _befriend(client, alice, bob)
    assert (await client.delete(f"/me/contacts/{bob.id}", headers=alice.headers)).status_code == 204
    assert (await client.get("/me/contacts/", headers=alice.headers)).json() == []
    assert (await client.get("/me/contacts/", headers=bob.headers)).json() == []
    again = await client.delete(f"/me/contacts/{bob.id}", headers=alice.headers)
    assert again.status_code == 404
    assert again.json()["code"] == "not_a_contact"


async def test_list_filters_by_status_and_group_and_pages(
    client: httpx.AsyncClient, alice: Account, new_account: NewAccount
) -> None:
    friends = [await new_account(f"friend{i}") for i in range(4)]
    stranger = await new_account("stranger")
    for f in friends:
        await _befriend(client, alice, f)
    await _ask(client, alice, friend_id=stranger.id)
    for f in friends[:2]:
        await client.patch(f"/me/contacts/{f.id}", json={"group": "family"}, headers=alice.headers)

    everything = (await client.get("/me/contacts/", headers=alice.headers)).json()
    assert [c["username"] for c in everything] == ["friend0", "friend1", "friend2", "friend3", "stranger"]
    pending = (await client.get("/me/contacts/", params={"status": "pending"}, headers=alice.headers)).json()
    assert [c["username"] for c in pending] == ["stranger"]
    family = (await client.get("/me/contacts/", params={"group": "family"}, headers=alice.headers)).json()
    assert [c["username"] for c in family] == ["friend0", "friend1"]
    both = await client.get(
        "/me/contacts/", params={"group": "family", "status": "pending"}, headers=alice.headers
    )
    assert both.json() == []
    page = (await client.get("/me/contacts/", params={"skip": 1, "limit": 2}, headers=alice.headers)).json()
    assert [c["username"] for c in page] == ["friend1", "friend2"]


async def test_list_rejects_bad_paging_and_status(client: httpx.AsyncClient, alice: Account) -> None:
    for params in ({"limit": 0}, {"limit": 101}, {"skip": -1}, {"status": "friends"}):
        response = await client.get("/me/contacts/", params=params, headers=alice.headers)
        assert response.status_code == 422, params
        assert response.json()["code"] == "invalid"
    bad_status = await client.get("/me/contacts/", params={"status": "friends"}, headers=alice.headers)
    assert "status" in bad_status.json()["detail"]


async def test_rows_show_online_and_last_seen_only_for_accepted_contacts(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, bob: Account, carol: Account
) -> None:
    await _befriend(client, alice, bob)
    await _ask(client, alice, friend_id=carol.id)  # pending: carol's presence stays private
    presence = FixedPresence(online={bob.id, carol.id})
    app.state.presence = presence
    rows = {c["username"]: c for c in (await client.get("/me/contacts/", headers=alice.headers)).json()}
    assert rows["bob"]["online"] is True
    assert rows["bob"]["last_seen"] is not None  # bob logged in
    assert rows["carol"]["online"] is False
    assert rows["carol"]["last_seen"] is None
    assert presence.asked == [bob.id]
    presence.online = set()
    rows = {c["username"]: c for c in (await client.get("/me/contacts/", headers=alice.headers)).json()}
    assert rows["bob"]["online"] is False
    incoming = (await client.get("/me/contacts/requests/incoming", headers=carol.headers)).json()
    assert incoming[0]["online"] is False and incoming[0]["last_seen"] is None


async def test_asking_someone_you_declined_accepts_their_old_request(
    client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    await _ask(client, alice, friend_id=bob.id)
    await client.post(f"/me/contacts/{alice.id}/decline", headers=bob.headers)
    changed_mind = await _ask(client, bob, friend_id=alice.id)
    assert changed_mind.status_code == 201
    assert changed_mind.json()["status"] == "accepted"
    alices = (await client.get("/me/contacts/", headers=alice.headers)).json()
    assert [(c["user_id"], c["status"], c["direction"]) for c in alices] == [(bob.id, "accepted", "outgoing")]
