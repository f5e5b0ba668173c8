"""A group conversation end to end below the node: real bundles, `peer.client.ServerClient` for the
group calls, `peer.groups.GroupSession` for membership and sender keys, pairwise envelopes
(crypto.envelope) carrying the sender keys, and `group_send` through a real server.

Checked: members read each other; the removed member's device gets nothing after the removal and
cannot decrypt a captured later message; a member added later cannot decrypt earlier messages; a
server serving an old chain is caught.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import pytest

from crypto import envelope, groupstate, payload
from crypto.bundle import make_bundle, verify_bundle
from crypto.errors import GroupRollback, SenderKeyError
from peer.client import ServerClient
from peer.groups import GroupSession, GroupSessionState
from signalling.protocol import DeviceBundleIn, b64decode, b64encode
from tests.hub.world import PASSWORD, Account, DeviceClient, World, committed_keys


@dataclass
class Member:
    account: Account
    local: envelope.LocalDevice
    client: ServerClient
    socket: DeviceClient | None = None
    session: GroupSession | None = None
    seen: envelope.MemorySeenIds = field(default_factory=envelope.MemorySeenIds)


class Directory:
    """Device keys as a peer pins them: fetched from the server, each bundle's signature checked."""

    def __init__(self) -> None:
        self.identity: dict[tuple[int, str], bytes] = {}
        self.encryption: dict[str, bytes] = {}

    async def learn(self, client: ServerClient, user_id: int) -> None:
        for d in await client.devices(user_id):
            bundle = verify_bundle(
                d.user_id, d.device_id, b64decode(d.identity_key), b64decode(d.encryption_key), d.created_at,
                b64decode(d.signature),
            )  # fmt: skip
            self.identity[(bundle.user_id, bundle.device_id)] = bundle.identity_key
            self.encryption[bundle.device_id] = bundle.encryption_key

    def identity_key(self, user_id: int, device_id: str) -> bytes | None:
        return self.identity.get((user_id, device_id))


async def _member(world: World, index: int) -> Member:
    name = f"g{secrets.token_hex(5)}"
    r = await world.http.post(
        "/users/", json={"username": name, "email": f"{name}@example.org", "password": PASSWORD}
    )
    assert r.status_code == 201, r.text
    client = ServerClient(world.base_url)
    await client.login(name, PASSWORD)
    user_id = r.json()["id"]
    device_id = f"dev-{secrets.token_hex(6)}"
    keys = committed_keys(index)
    bundle = make_bundle(keys, user_id, device_id)
    await client.publish_device(
        DeviceBundleIn(
            device_id=device_id,
            identity_key=b64encode(bundle.identity_key),
            encryption_key=b64encode(bundle.encryption_key),
            created_at=bundle.created_at,
            signature=b64encode(bundle.signature),
        )
    )
    token = client.access_token or ""
    account = Account(user_id, name, token, device_id, [device_id])
    return Member(account, envelope.LocalDevice(user_id, device_id, keys), client)


async def _distribute_and_send(
    sender: Member, directory: Directory, text: str
) -> tuple[dict[str, Any], bytes]:
    """What the node will do: route through the verified chain, give the sender key to devices
    that lack it (one pairwise envelope), then one group message for everyone."""
    session = sender.session
    assert session is not None and sender.socket is not None
    devices = await sender.client.group_devices(session.group_id)
    route = session.route([(d.user_id, d.device_id) for d in devices])
    assert route.ghosts == []
    key, missing = session.distribution_for(route.devices)
    if missing:
        recipients = [envelope.Recipient(u, d, directory.encryption[d]) for u, d in missing]
        sealed = envelope.seal(key, sender.local, recipients, f"g:{session.group_id}")
        frame = sender.socket.send_frame(missing, sealed)
        await sender.socket.send(frame)
        await sender.socket.expect("accepted", where=lambda f: f["ref"] == frame["ref"])
        session.mark_distributed(missing)
    out = session.encrypt(payload.Text(text))
    send = {
        "type": "group_send",
        "ref": secrets.token_hex(4),
        "group_id": session.group_id,
        "message_id": out.message_id,
        "envelope": b64encode(out.data),
    }
    await sender.socket.send(send)
    accepted = await sender.socket.expect("accepted", where=lambda f: f["ref"] == send["ref"])
    return accepted, out.data


async def _receive(member: Member, directory: Directory) -> list[str]:
    """Take deliveries until a group message opens; sender keys on the way are accepted."""
    assert member.socket is not None and member.session is not None
    texts: list[str] = []
    while not texts:
        frame = await member.socket.expect("deliver")
        data = b64decode(frame["envelope"])
        if frame.get("group_id"):
            opened = member.session.decrypt(data)
            assert isinstance(opened.payload, payload.Text)
            texts.append(opened.payload.body)
        else:
            env = envelope.open_envelope(data, member.local, directory.identity_key, member.seen)
            assert isinstance(env.payload, payload.SenderKey)
            member.session.accept_distribution(env.header.sender_user, env.header.sender_device, env.payload)
        await member.socket.send({"type": "ack", "message_id": frame["message_id"]})
    return texts


async def _quiet(client: DeviceClient) -> None:
    nonce = secrets.token_hex(4)
    await client.send({"type": "ping", "nonce": nonce})
    await client.expect("pong", where=lambda f: f.get("nonce") == nonce)
    assert [f for f in client.backlog if f["type"] == "deliver"] == []


async def test_a_group_conversation_with_removal_late_joining_and_a_rolled_back_chain(world: World) -> None:
    alice, bob, carol, dave = [await _member(world, i) for i in (0, 1, 3, 5)]
    for other in (bob, carol, dave):
        await world.befriend(alice.account, other.account)
    directory = Directory()
    for m in (alice, bob, carol, dave):
        await directory.learn(alice.client, m.account.user_id)
    try:
        alice.session, record = GroupSession.create(
            "climbing", [bob.account.user_id, carol.account.user_id], alice.local, directory
        )
        await alice.client.create_group(
            alice.session.group_id, "climbing", alice.session.membership.member_ids[1:], record
        )  # type: ignore[union-attr]
        gid = alice.session.group_id
        for m in (bob, carol):
            m.session = GroupSession(gid, m.local, directory)
            m.session.apply_chain(await m.client.group_records(gid))
            assert m.session.state is GroupSessionState.ACTIVE
        for m in (alice, bob, carol):
            m.socket = await world.connect(m.account)

        accepted, early = await _distribute_and_send(alice, directory, "hello climbers")
        assert set(accepted["live"]) == {bob.local.device_id, carol.local.device_id}
        assert await _receive(bob, directory) == ["hello climbers"]
        assert await _receive(carol, directory) == ["hello climbers"]

        # carol is removed: alice's sender key is replaced, only bob gets the new one
        record, version = alice.session.sign_change(groupstate.GroupOp.REMOVE, users=[carol.account.user_id])
        await alice.client.remove_group_members(gid, [carol.account.user_id], record, version)
        update = alice.session.extend_chain([record])
        assert update.removed == [carol.account.user_id] and update.rotate
        accepted, later = await _distribute_and_send(alice, directory, "without carol")
        assert accepted["queued"] == [bob.local.device_id]
        assert await _receive(bob, directory) == ["without carol"]
        assert carol.socket is not None
        await _quiet(carol.socket)  # her device got nothing after the removal
        with pytest.raises(SenderKeyError):
            carol.session.decrypt(later)  # type: ignore[union-attr]  # a captured copy does not open

        # dave joins later: he reads what comes next, not what came before
        record, version = alice.session.sign_change(groupstate.GroupOp.ADD, users=[dave.account.user_id])
        await alice.client.add_group_members(gid, [dave.account.user_id], record, version)
        alice.session.extend_chain([record])
        dave.session = GroupSession(gid, dave.local, directory)
        dave.session.apply_chain(await dave.client.group_records(gid))
        dave.socket = await world.connect(dave.account)
        await _distribute_and_send(alice, directory, "welcome dave")
        assert await _receive(dave, directory) == ["welcome dave"]
        for old in (early, later):
            with pytest.raises(SenderKeyError):
                dave.session.decrypt(old)

        # a server replaying the old chain to bob (the removal and the addition dropped) is caught
        records = await bob.client.group_records(gid)
        bob.session.apply_chain(records)  # type: ignore[union-attr]
        with pytest.raises(GroupRollback):
            bob.session.apply_chain(records[:1])  # type: ignore[union-attr]
        assert bob.session.membership.member_ids == sorted(  # type: ignore[union-attr]
            [alice.account.user_id, bob.account.user_id, dave.account.user_id]
        )
        saved = GroupSession.from_dict(bob.session.to_dict(), bob.local, directory)  # type: ignore[union-attr]
        assert saved.head == bob.session.head  # type: ignore[union-attr]
    finally:
        for m in (alice, bob, carol, dave):
            if m.socket is not None:
                await m.socket.close()
            await m.client.aclose()
