"""The page's group routes drive the real node: alice's UI server (a real uvicorn on loopback, the
same security as every route) adopts her real peer; bob and carol are real peers on the same real
server, so every answer is checked against what really arrived at them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from peer.events import GroupChanged, MessageReceived
from peer.profile import Profile
from peer.ui.bridge import PeerBridge, UiSettings
from peer.ui.security import SESSION_COOKIE
from peer.ui.server import UiServer
from tests.peer.conftest import PASSWORD, World


@pytest.fixture
async def world(server, tmp_path) -> AsyncIterator[World]:
    w = World(server, tmp_path / "peers")
    try:
        yield w
    finally:
        await w.close()


async def _trio(world: World):
    alice, bob, carol = world.peer("alice", 0), world.peer("bob", 1), world.peer("carol", 2)
    for p in (alice, bob, carol):
        await p.register(p.profile.name, f"{p.profile.name}@example.org", PASSWORD)
    for p in (bob, carol):
        await alice.add_contact(p.me.username)
        await p.accept_contact(alice.me.user_id)
    return alice, bob, carol


@pytest.fixture
async def ui_client(world: World, tmp_path) -> AsyncIterator[tuple[httpx.AsyncClient, World, list]]:
    alice, bob, carol = await _trio(world)
    settings = UiSettings(server_url=world.server.url, path=tmp_path / "ui-settings.json")
    bridge = PeerBridge(settings, Profile.at(tmp_path / "peers" / "alice"))
    bridge.adopt(alice)
    async with UiServer(bridge) as ui, httpx.AsyncClient(base_url=ui.url, timeout=20) as client:
        response = await client.get(f"/launch?token={ui.gate.launch_token}")
        client.cookies.set(SESSION_COOKIE, response.cookies[SESSION_COOKIE])
        client.headers["Origin"] = ui.url
        yield client, world, [alice, bob, carol]
        await bridge.close()


async def test_a_group_made_in_the_page_reaches_its_members_and_its_changes_show(ui_client):
    client, world, (alice, bob, carol) = ui_client
    alice_events, bob_events, carol_events = world.record(alice), world.record(bob), world.record(carol)

    made = await client.post(
        "/api/groups", json={"name": "climbing", "members": [bob.me.user_id, carol.me.user_id]}
    )
    assert made.status_code == 201, made.text
    group = made.json()
    gid = group["group_id"]
    assert (group["name"], group["role"], group["members"], group["active"]) == ("climbing", "admin", 3, True)
    listed = (await client.get("/api/groups")).json()
    assert [g["group_id"] for g in listed] == [gid]

    info = (await client.get(f"/api/groups/{gid}")).json()
    roles = {m["username"]: (m["role"], m["is_me"]) for m in info["members"]}
    assert roles == {"alice": ("admin", True), "bob": ("member", False), "carol": ("member", False)}

    sent = await client.post(f"/api/groups/{gid}/messages", json={"text": "rope at 6"})
    assert sent.status_code == 201, sent.text
    assert sent.json()["rollup"]["recipients"] >= 2
    got = await bob_events.wait_for(
        lambda e: isinstance(e, MessageReceived) and e.message.text == "rope at 6", within=20
    )
    assert got.message.conversation == f"g:{gid}"

    # bob is not carol's contact: his name in alice's page comes from the member list.
    await bob.send_text(f"g:{gid}", "bringing the quickdraws")
    await alice_events.wait_for(
        lambda e: isinstance(e, MessageReceived) and e.message.text == "bringing the quickdraws", within=20
    )
    history = (await client.get(f"/api/groups/{gid}/messages")).json()["messages"]
    incoming = next(m for m in history if m["text"] == "bringing the quickdraws")
    assert (incoming["direction"], incoming["sender"]) == ("in", "bob")
    found = (await client.get("/api/messages/search", params={"q": "quickdraws"})).json()
    assert [(f["group_id"], f["username"], f["sender"]) for f in found] == [(gid, "climbing", "bob")]

    renamed = await client.patch(f"/api/groups/{gid}", json={"name": "crag crew"})
    assert renamed.json()["name"] == "crag crew"
    await bob_events.wait_for(lambda e: isinstance(e, GroupChanged) and e.name == "crag crew", within=20)

    removed = await client.delete(f"/api/groups/{gid}/members/{carol.me.user_id}")
    assert removed.json()["members"] == 2
    await carol_events.wait_for(
        lambda e: isinstance(e, GroupChanged) and e.change == "removed" and carol.me.user_id in e.users,
        within=20,
    )
    timeline = (await client.get(f"/api/groups/{gid}/messages")).json()["messages"]
    assert any(m["kind"] == "group_event" and m["text"] == "alice removed carol" for m in timeline)
    # The list's line is the last message (a membership line is not one), with who wrote it.
    listed = (await client.get("/api/groups")).json()
    assert (listed[0]["name"], listed[0]["last"]["text"]) == ("crag crew", "bob: bringing the quickdraws")

    # alice makes bob an admin and leaves: the group stays with bob, her page can no longer send.
    promoted = await client.post(f"/api/groups/{gid}/members/{bob.me.user_id}/promote")
    assert promoted.status_code == 200, promoted.text
    roles = {m["username"]: m["role"] for m in (await client.get(f"/api/groups/{gid}")).json()["members"]}
    assert roles == {"alice": "admin", "bob": "admin"}
    assert (await client.post(f"/api/groups/{gid}/leave")).json() == {"group_id": gid, "left": True}
    await bob_events.wait_for(lambda e: isinstance(e, GroupChanged) and e.change == "left", within=20)
    assert [g["active"] for g in (await client.get("/api/groups")).json()] == [False]
    refused = await client.post(f"/api/groups/{gid}/messages", json={"text": "still here?"})
    assert refused.status_code == 400
    assert "no longer in the group" in refused.json()["error"]


async def test_group_routes_refuse_bad_input_with_a_sentence_and_change_nothing(ui_client):
    client, _world, (_alice, bob, _carol) = ui_client
    for method, path in (
        ("GET", "/api/groups/not-a-group"),
        ("GET", "/api/groups/ABCDEF0123456789ABCDEF0123456789/messages"),
        ("POST", f"/api/groups/{'0' * 31}/read"),
    ):
        answer = await client.request(method, path, json={"message_ids": []} if method == "POST" else None)
        assert answer.status_code == 404, path
        assert answer.json()["error"] == "There is no such group."
    nameless = await client.post("/api/groups", json={"name": "  ", "members": [bob.me.user_id]})
    assert (nameless.status_code, nameless.json()["error"]) == (400, "Give the group a name.")
    names = await client.post("/api/groups", json={"name": "x", "members": ["bob"]})
    assert names.status_code == 400 and "user ids" in names.json()["error"]
    forged = await client.post(
        "/api/groups",
        json={"name": "x", "members": [bob.me.user_id]},
        headers={"Origin": "https://evil.example"},
    )
    assert forged.status_code == 403
    assert (await client.get("/api/groups")).json() == []
