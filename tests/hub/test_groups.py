"""Groups through a real server: the REST rules, signed records served back opaque and verifiable,
membership pushed to live devices and caught up on connect, and group messages stored once and
fanned out to every member device (live or queued), never to a removed member."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import pytest

from crypto import groupstate as gs
from crypto.envelope import LocalDevice
from signalling.protocol import SERVER_FRAME, GroupFrame, GroupsFrame, b64decode, b64encode
from tests.hub.world import Account, DeviceClient, World, committed_keys, opaque_envelope


@dataclass
class Signing:
    """A member's device as the chain's signer: the committed keys, under the World's device id."""

    account: Account
    index: int

    @property
    def device(self) -> LocalDevice:
        return LocalDevice(self.account.user_id, self.account.device_id, committed_keys(self.index))


@dataclass
class Group:
    world: World
    group_id: str
    directory: dict[tuple[int, str], bytes] = field(default_factory=dict)
    state: gs.GroupState | None = None

    def know(self, *signers: Signing) -> None:
        for s in signers:
            self.directory[(s.account.user_id, s.account.device_id)] = committed_keys(
                s.index
            ).identity_public_bytes()

    async def create(self, admin: Signing, name: str, members: list[Account]) -> Any:
        self.know(admin)
        ids = [m.user_id for m in members]
        record = gs.sign_record(
            admin.device, None, gs.GroupOp.CREATE, group_id=self.group_id, name=name, users=ids
        )
        body = {"group_id": self.group_id, "name": name, "members": ids, "record": b64encode(record)}
        r = await self.world.http.post("/groups", json=body, headers=admin.account.auth)
        if r.status_code == 201:
            self.state = gs.verify_chain([record], gs.MapDirectory(self.directory))
        return r

    async def change(self, who: Signing, op: gs.GroupOp, path: str, **fields: Any) -> Any:
        self.know(who)
        users = fields.get("user_ids") or ([fields["user_id"]] if "user_id" in fields else [])
        record = gs.sign_record(who.device, self.state, op, users=users, name=fields.get("name"))
        body = {"record": b64encode(record), "version": self.state.seq + 1, **fields}  # type: ignore[union-attr]
        r = await self.world.http.request(
            "PATCH" if op is gs.GroupOp.RENAME else "POST", f"/groups/{self.group_id}{path}", json=body,
            headers=who.account.auth,
        )  # fmt: skip
        if r.status_code in (200, 204):
            self.state = gs.extend(self.state, [record], gs.MapDirectory(self.directory))  # type: ignore[arg-type]
        return r

    async def served_state(self, viewer: Account, known: gs.GroupHead | None = None) -> gs.GroupState:
        r = await self.world.http.get(f"/groups/{self.group_id}/records", headers=viewer.auth)
        assert r.status_code == 200, r.text
        records = [b64decode(x["record"]) for x in r.json()]
        return gs.verify_chain(
            records, gs.MapDirectory(self.directory), known=known, expect_group=self.group_id
        )


async def _people(world: World, n: int, devices: int = 1) -> list[Account]:
    """n accounts; the first is everyone's accepted contact."""
    accounts = [await world.account(devices=devices) for _ in range(n)]
    for other in accounts[1:]:
        await world.befriend(accounts[0], other)
    return accounts


def _frame(raw: dict[str, Any]) -> Any:
    return SERVER_FRAME.validate_python(raw)  # the peer's own parser must accept it


async def _quiet(client: DeviceClient, kind: str) -> None:
    """No frame of `kind` reached `client` so far (a pong leaves through the same queue)."""
    nonce = secrets.token_hex(4)
    await client.send({"type": "ping", "nonce": nonce})
    await client.expect("pong", where=lambda f: f.get("nonce") == nonce)
    assert [f for f in client.backlog if f["type"] == kind] == []


def _group_send(group_id: str, envelope: bytes, devices: list[str] | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "group_send",
        "ref": secrets.token_hex(4),
        "group_id": group_id,
        "message_id": secrets.token_hex(16),
        "envelope": b64encode(envelope),
    }
    if devices is not None:
        frame["devices"] = devices
    return frame


async def test_a_group_of_contacts_is_created_listed_and_its_chain_verifies_from_the_server(
    world: World,
) -> None:
    alice, bob, carol = await _people(world, 3)
    group = Group(world, secrets.token_hex(16))
    r = await group.create(Signing(alice, 0), "climbing", [bob, carol])
    assert r.status_code == 201, r.text
    assert (r.json()["role"], r.json()["member_count"], r.json()["version"]) == ("admin", 3, 1)
    listed = (await world.http.get("/groups", headers=bob.auth)).json()
    assert [(g["group_id"], g["name"], g["role"]) for g in listed] == [(group.group_id, "climbing", "member")]
    members = (await world.http.get(f"/groups/{group.group_id}/members?limit=2", headers=carol.auth)).json()
    assert [(m["user_id"], m["role"]) for m in members] == [(alice.user_id, "admin"), (bob.user_id, "member")]
    more = (await world.http.get(f"/groups/{group.group_id}/members?skip=2", headers=carol.auth)).json()
    assert [m["user_id"] for m in more] == [carol.user_id]
    served = await group.served_state(bob)
    assert served.member_ids == sorted([alice.user_id, bob.user_id, carol.user_id])
    gs.check_roster(served, [m["user_id"] for m in members + more])


async def test_only_contacts_can_be_added_and_only_by_admins_with_the_current_version(world: World) -> None:
    alice, bob, carol = await _people(world, 3)
    stranger = await world.account()
    group = Group(world, secrets.token_hex(16))
    r = await group.create(Signing(alice, 0), "g", [stranger])
    assert (r.status_code, r.json()["code"]) == (403, "not_a_contact")
    assert (await group.create(Signing(alice, 0), "g", [bob])).status_code == 201
    group.know(Signing(bob, 1))
    r = await group.change(Signing(bob, 1), gs.GroupOp.LEAVE, "/leave")  # fine: anyone leaves
    assert r.status_code == 204
    r = await group.change(Signing(alice, 0), gs.GroupOp.ADD, "/members", user_ids=[carol.user_id])
    assert r.status_code == 200 and r.json()["member_count"] == 2
    record = gs.sign_record(Signing(alice, 0).device, group.state, gs.GroupOp.RENAME, name="x")
    stale = {"record": b64encode(record), "version": 1, "name": "x"}
    r = await world.http.patch(f"/groups/{group.group_id}", json=stale, headers=alice.auth)
    assert (r.status_code, r.json()["code"]) == (409, "stale_version")
    r = await world.http.post(
        f"/groups/{group.group_id}/members",
        json={"record": b64encode(record), "version": 3, "user_ids": [bob.user_id]},
        headers=carol.auth,
    )
    assert (r.status_code, r.json()["code"]) == (403, "not_an_admin")
    r = await world.http.get(f"/groups/{group.group_id}", headers=stranger.auth)
    assert r.status_code == 404  # to a non-member it does not exist


async def test_membership_changes_are_pushed_to_members_and_to_whoever_was_removed(world: World) -> None:
    alice, bob, carol = await _people(world, 3)
    a, b, c = await world.connect(alice), await world.connect(bob), await world.connect(carol)
    group = Group(world, secrets.token_hex(16))
    await group.create(Signing(alice, 0), "climbing", [bob])
    created = _frame(await b.expect("group"))
    assert isinstance(created, GroupFrame) and created.event == "created" and created.group is not None
    await a.expect("group")
    await _quiet(c, "group")
    await group.change(Signing(alice, 0), gs.GroupOp.ADD, "/members", user_ids=[carol.user_id])
    for client in (a, b, c):
        told = _frame(await client.expect("group", where=lambda f: f["event"] == "members_added"))
        assert told.user_ids == [carol.user_id] and told.version == 2
    first_two = (await world.http.get(f"/groups/{group.group_id}/records", headers=bob.auth)).json()
    await group.change(Signing(alice, 0), gs.GroupOp.REMOVE, "/members/remove", user_ids=[bob.user_id])
    removed = _frame(await b.expect("group", where=lambda f: f["event"] == "members_removed"))
    assert removed.group is None  # bob is out
    # ...and is handed the removal's signed record, which he can no longer fetch; it verifies as
    # the next link of the chain he held
    assert (await world.http.get(f"/groups/{group.group_id}/records", headers=bob.auth)).status_code == 404
    assert removed.record is not None
    held = gs.verify_chain([b64decode(r["record"]) for r in first_two], gs.MapDirectory(group.directory))
    after = gs.extend(held, [b64decode(removed.record)], gs.MapDirectory(group.directory))
    assert after.head == group.state.head and not after.is_member(bob.user_id)  # type: ignore[union-attr]
    kept = _frame(await c.expect("group", where=lambda f: f["event"] == "members_removed"))
    assert kept.group is not None and kept.group.member_count == 2 and kept.record is None
    for client in (a, b, c):
        await client.close()


async def test_a_device_that_was_away_gets_every_groups_version_on_connect(world: World) -> None:
    alice, bob = await _people(world, 2)
    group = Group(world, secrets.token_hex(16))
    await group.create(Signing(alice, 0), "climbing", [bob])
    await group.change(Signing(alice, 0), gs.GroupOp.RENAME, "", name="bouldering")
    plain = await world.connect(bob)  # a socket that did not ask hears nothing new
    await _quiet(plain, "groups")
    await plain.close()
    b = await world.connect(bob, query="&groups=1")
    summary = _frame(await b.expect("groups"))
    assert isinstance(summary, GroupsFrame)
    assert [(g.group_id, g.name, g.version, g.role) for g in summary.groups] == [
        (group.group_id, "bouldering", 2, "member")
    ]
    await b.close()


async def test_the_last_admin_leaving_makes_the_oldest_member_admin_as_the_chain_says(world: World) -> None:
    alice, bob, carol = await _people(world, 3)
    group = Group(world, secrets.token_hex(16))
    await group.create(Signing(alice, 0), "g", [carol, bob])
    group.know(Signing(bob, 1), Signing(carol, 3))
    assert (await group.change(Signing(alice, 0), gs.GroupOp.LEAVE, "/leave")).status_code == 204
    server = (await world.http.get(f"/groups/{group.group_id}", headers=carol.auth)).json()
    chain = await group.served_state(carol)
    assert server["role"] == "admin" and chain.admin_ids == [carol.user_id]


async def test_a_server_listing_a_member_no_admin_added_is_caught_by_the_members(world: World) -> None:
    alice, bob, carol = await _people(world, 3)
    group = Group(world, secrets.token_hex(16))
    await group.create(Signing(alice, 0), "g", [bob])
    verified = await group.served_state(bob)  # what bob's device checked before
    # What a compromised server does: carol goes into the member list with no admin's record.
    r = await world.http.post(
        f"/groups/{group.group_id}/members",
        json={"record": b64encode(b"not a signed record"), "version": 1, "user_ids": [carol.user_id]},
        headers=alice.auth,
    )
    assert r.status_code == 200  # the records are opaque to the server
    members = (await world.http.get(f"/groups/{group.group_id}/members", headers=bob.auth)).json()
    with pytest.raises(gs.GhostMember) as caught:
        gs.check_roster(verified, [m["user_id"] for m in members])
    assert caught.value.user_ids == [carol.user_id]
    with pytest.raises(gs.MalformedGroupRecord):
        await group.served_state(bob, known=verified.head)  # and the chain as served does not verify


async def test_a_group_message_reaches_live_and_offline_devices_once_and_is_stored_once(world: World) -> None:
    alice, bob, carol = await _people(world, 3, devices=2)
    group = Group(world, secrets.token_hex(16))
    await group.create(Signing(alice, 0), "g", [bob, carol])
    a1 = await world.connect(alice)
    b1, b2 = await world.connect(bob), await world.connect(bob, bob.devices[1])
    envelope = opaque_envelope(700)
    send = _group_send(group.group_id, envelope)
    await a1.send(send)
    accepted = await a1.expect("accepted", where=lambda f: f["ref"] == send["ref"])
    others = {*alice.devices[1:], *bob.devices, *carol.devices}
    assert set(accepted["queued"]) == others and set(accepted["live"]) == set(bob.devices)
    for client in (b1, b2):
        got = await client.expect("deliver")
        assert (got["group_id"], got["sender_user"], b64decode(got["envelope"])) == (
            group.group_id,
            alice.user_id,
            envelope,
        )
        await client.send({"type": "ack", "message_id": send["message_id"]})
    c1 = await world.connect(carol, wait_drained=False)
    queued = await c1.expect("deliver")
    assert queued["queued"] is True and b64decode(queued["envelope"]) == envelope
    assert queued["group_id"] == group.group_id
    await c1.expect("drained")
    await c1.send({"type": "ack", "message_id": send["message_id"]})
    await c1.close()
    again = await world.connect(carol)  # acked: not delivered a second time
    await _quiet(again, "deliver")
    for client in (a1, b1, b2, again):
        await client.close()


async def test_a_removed_member_gets_nothing_after_the_removal(world: World) -> None:
    alice, bob, carol = await _people(world, 3)
    group = Group(world, secrets.token_hex(16))
    await group.create(Signing(alice, 0), "g", [bob, carol])
    await group.change(Signing(alice, 0), gs.GroupOp.REMOVE, "/members/remove", user_ids=[carol.user_id])
    a, c = await world.connect(alice), await world.connect(carol)
    send = _group_send(group.group_id, opaque_envelope())
    await a.send(send)
    accepted = await a.expect("accepted", where=lambda f: f["ref"] == send["ref"])
    assert accepted["queued"] == [bob.device_id]
    await _quiet(c, "deliver")
    await c.send(_group_send(group.group_id, opaque_envelope()))
    refused = await c.expect("error")
    assert refused["code"] == "not_a_member"
    for client in (a, c):
        await client.close()


async def test_a_sender_can_route_only_the_devices_it_could_not_reach_directly(world: World) -> None:
    alice, bob, carol = await _people(world, 3)
    group = Group(world, secrets.token_hex(16))
    await group.create(Signing(alice, 0), "g", [bob, carol])
    a = await world.connect(alice)
    send = _group_send(group.group_id, opaque_envelope(), devices=[carol.device_id])
    await a.send(send)
    accepted = await a.expect("accepted", where=lambda f: f["ref"] == send["ref"])
    assert accepted["queued"] == [carol.device_id]
    await a.send(_group_send(group.group_id, opaque_envelope(), devices=["dev-not-a-member"]))
    assert (await a.expect("error"))["code"] == "unknown_device"
    await a.close()


async def test_members_who_are_not_contacts_can_send_each_other_pairwise_envelopes(world: World) -> None:
    alice, bob, carol = await _people(world, 3)  # bob and carol are not contacts
    b = await world.connect(bob)
    send = b.send_frame([(carol.user_id, carol.device_id)], opaque_envelope())
    await b.send(send)
    assert (await b.expect("error"))["code"] == "not_a_contact"
    group = Group(world, secrets.token_hex(16))
    await group.create(Signing(alice, 0), "g", [bob, carol])
    send = b.send_frame([(carol.user_id, carol.device_id)], opaque_envelope())  # e.g. a sender key
    await b.send(send)
    accepted = await b.expect("accepted", where=lambda f: f["ref"] == send["ref"])
    assert accepted["queued"] == [carol.device_id]
    await b.close()


async def test_a_group_file_is_stored_once_and_every_member_may_download_it(world: World) -> None:
    alice, bob, carol = await _people(world, 3)
    outsider = await world.account()
    group = Group(world, secrets.token_hex(16))
    await group.create(Signing(alice, 0), "g", [bob, carol])
    data = opaque_envelope(5000)
    r = await world.http.post(f"/blobs?group={group.group_id}", content=data, headers=bob.auth)
    assert r.status_code == 201, r.text
    blob = r.json()["blob_id"]
    for reader in (alice, carol):
        got = await world.http.get(f"/blobs/{blob}", headers=reader.auth)
        assert got.status_code == 200 and got.content == data
    assert (await world.http.get(f"/blobs/{blob}", headers=outsider.auth)).status_code == 404
    r = await world.http.post(f"/blobs?group={group.group_id}", content=data, headers=outsider.auth)
    assert r.status_code == 404


async def test_deleting_a_group_tells_every_member_and_it_is_gone(world: World) -> None:
    alice, bob = await _people(world, 2)
    group = Group(world, secrets.token_hex(16))
    await group.create(Signing(alice, 0), "g", [bob])
    b = await world.connect(bob)
    r = await world.http.delete(f"/groups/{group.group_id}", headers=bob.auth)
    assert (r.status_code, r.json()["code"]) == (403, "not_an_admin")
    assert (await world.http.delete(f"/groups/{group.group_id}", headers=alice.auth)).status_code == 204
    told = _frame(await b.expect("group", where=lambda f: f["event"] == "deleted"))
    assert told.group is None
    assert (await world.http.get("/groups", headers=bob.auth)).json() == []
    await b.close()


async def test_a_member_who_blocked_the_sender_gets_none_of_its_group_messages_until_the_block_is_lifted(
    world: World,
) -> None:
    alice, bob, carol = await _people(world, 3)
    group = Group(world, secrets.token_hex(16))
    await group.create(Signing(alice, 0), "g", [bob, carol])
    r = await world.http.post("/me/blocks", json={"user_id": bob.user_id}, headers=alice.auth)
    assert r.status_code == 201, r.text
    a, b, c = await world.connect(alice), await world.connect(bob), await world.connect(carol)
    send = _group_send(group.group_id, opaque_envelope())
    await b.send(send)
    accepted = await b.expect("accepted", where=lambda f: f["ref"] == send["ref"])
    assert set(accepted["queued"]) == {carol.device_id}  # alice's device is not even named
    assert (await c.expect("deliver"))["message_id"] == send["message_id"]
    await _quiet(a, "deliver")
    # Bob cannot tell a block from a member without devices: the listing, a send naming her
    # device, a pairwise envelope and a link offer all tell the story of a device that is not there.
    listed = await world.http.get(f"/groups/{group.group_id}/devices", headers=bob.auth)
    assert [d["device_id"] for d in listed.json()] == sorted([bob.device_id, carol.device_id])
    named = _group_send(group.group_id, opaque_envelope(), devices=[alice.device_id, carol.device_id])
    await b.send(named)
    answer = await b.expect("accepted", where=lambda f: f["ref"] == named["ref"])
    assert answer["queued"] == [carol.device_id]
    pairwise = b.send_frame([(alice.user_id, alice.device_id)], opaque_envelope())
    await b.send(pairwise)
    refused = await b.expect("error", where=lambda f: f.get("ref") == pairwise["ref"])
    assert (refused["code"], refused["device_id"]) == ("unknown_device", alice.device_id)
    await b.send({"type": "signal", "kind": "offer", "to_user": alice.user_id, "to_device": alice.device_id})
    assert (await b.expect("error"))["code"] == "unknown_device"
    await _quiet(a, "signal")
    await _quiet(a, "deliver")
    r = await world.http.delete(f"/me/blocks/{bob.user_id}", headers=alice.auth)
    assert r.status_code == 204, r.text
    again = _group_send(group.group_id, opaque_envelope())
    await b.send(again)
    accepted = await b.expect("accepted", where=lambda f: f["ref"] == again["ref"])
    assert set(accepted["queued"]) == {alice.device_id, carol.device_id}
    assert (await a.expect("deliver"))["message_id"] == again["message_id"]
    for client in (a, b, c):
        await client.close()
