"""The same cross-socket scenarios on every backplane: in-process, Redis with one instance, and two
instances sharing PostgreSQL + Redis (sender on one, recipient on the other).

Each Redis run gets its own key/channel prefix, each two-instance run its own PostgreSQL database.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from signalling.protocol import CloseCode, b64decode, b64encode
from tests.hub.world import World, opaque_envelope
from tests.support.server import RunningServer

REDIS_URL = os.environ.get("PEERPOST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_DSN = os.environ.get("PEERPOST_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
ENV = {"PEERPOST_PRESENCE_GRACE_SECONDS": "0.3"}


@dataclass
class Cluster:
    """Where the sender (`near`) and the recipient (`far`) connect; the same server when single."""

    near: RunningServer
    far: RunningServer


@pytest.fixture(
    params=[
        pytest.param("in-process"),
        pytest.param("redis", marks=pytest.mark.redis),
        pytest.param("two-instances", marks=[pytest.mark.redis, pytest.mark.postgres]),
    ]
)
async def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Cluster]:
    kind = request.param
    if kind == "in-process":
        async with RunningServer(tmp_path / "one", env=ENV) as one:
            yield Cluster(one, one)
        return
    env = {
        **ENV,
        "PEERPOST_BACKPLANE_URL": REDIS_URL,
        "PEERPOST_BACKPLANE_PREFIX": f"pp-test-{secrets.token_hex(6)}",
    }
    if kind == "redis":
        async with RunningServer(tmp_path / "one", env=env) as one:
            yield Cluster(one, one)
        return
    async with two_instances(tmp_path, {}) as pair:
        yield pair


@contextlib.asynccontextmanager
async def two_instances(tmp_path: Path, extra_env: dict[str, str]) -> AsyncIterator[Cluster]:
    """Two servers on one fresh PostgreSQL database and one Redis prefix, as behind a load balancer."""
    env = {
        **ENV,
        "PEERPOST_BACKPLANE_URL": REDIS_URL,
        "PEERPOST_BACKPLANE_PREFIX": f"pp-test-{secrets.token_hex(6)}",
        **extra_env,
    }
    database = f"peerpost_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(POSTGRES_DSN)
    await admin.execute(f'CREATE DATABASE "{database}"')
    base = POSTGRES_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1)
    url = f"{base}/{database}"
    try:
        # Started one after the other: the first migrates the database, the second finds it current.
        async with RunningServer(tmp_path / "a", env=env, database_url=url) as first:
            # Same JWT secret on both, as behind one load balancer.
            secret = (first.data_dir / "jwt-secret").read_text().strip()
            env2 = {**env, "PEERPOST_JWT_SECRET": secret}
            async with RunningServer(tmp_path / "b", env=env2, database_url=url) as second:
                yield Cluster(first, second)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


async def _pair(cluster: Cluster):
    near = World(cluster.near.url, cluster.near.ws_url)
    far = World(cluster.far.url, cluster.far.ws_url)
    alice, bob = await near.account(), await near.account()
    await near.befriend(alice, bob)
    return near, far, alice, bob


async def test_a_send_reaches_the_recipient_wherever_its_socket_is(cluster: Cluster) -> None:
    near, far, alice, bob = await _pair(cluster)
    async with near, far:
        b = await far.connect(bob)
        a = await near.connect(alice)
        envelope = opaque_envelope()
        await a.send(a.send_frame([(bob.user_id, bob.device_id)], envelope))
        accepted = await a.expect("accepted")
        assert accepted["live"] == [bob.device_id]
        delivered = await b.expect("deliver")
        assert b64decode(delivered["envelope"]) == envelope and delivered["queued"] is False
        await a.close()
        await b.close()


async def test_a_signal_is_relayed_across_and_an_absent_device_is_reported(cluster: Cluster) -> None:
    near, far, alice, bob = await _pair(cluster)
    async with near, far:
        a = await near.connect(alice)
        offer = {"type": "signal", "kind": "offer", "to_user": bob.user_id, "to_device": bob.device_id}
        await a.send(offer)
        error = await a.expect("error")
        assert error["code"] == "unknown_device" and "not connected" in error["message"]
        b = await far.connect(bob)
        await a.send({**offer, "payload": {"sdp": "x"}})
        relayed = await b.expect("signal")
        assert relayed["from_device"] == alice.device_id and relayed["payload"] == {"sdp": "x"}
        await a.close()
        await b.close()


async def test_presence_crosses_instances_and_the_contact_list_sees_it(cluster: Cluster) -> None:
    near, far, alice, bob = await _pair(cluster)
    async with near, far:
        a = await near.connect(alice)
        b = await far.connect(bob)
        came = await a.expect("presence")
        assert came["user_id"] == bob.user_id and came["online"] is True
        listed = (await near.http.get("/me/contacts/", headers=alice.auth)).json()
        assert [c["online"] for c in listed if c["user_id"] == bob.user_id] == [True]
        await b.close()
        went = await a.expect("presence", deadline=5)
        assert went["user_id"] == bob.user_id and went["online"] is False
        listed = (await near.http.get("/me/contacts/", headers=alice.auth)).json()
        assert [c["online"] for c in listed if c["user_id"] == bob.user_id] == [False]
        await a.close()


async def test_a_socket_on_another_instance_is_replaced_and_logout_closes_it(cluster: Cluster) -> None:
    near, far, _alice, bob = await _pair(cluster)
    async with near, far:
        old = await near.connect(bob)
        new = await far.connect(bob)
        assert (await old.closed())[0] == CloseCode.REPLACED
        r = await near.http.post("/logout", headers=bob.auth)  # REST on the other instance
        assert r.status_code == 204
        assert (await new.closed(deadline=3))[0] == CloseCode.ACCOUNT_GONE


async def test_stored_messages_drain_on_whichever_instance_the_device_comes_back_to(cluster: Cluster) -> None:
    near, far, alice, bob = await _pair(cluster)
    async with near, far:
        a = await near.connect(alice)
        ids = []
        for _ in range(20):
            frame = a.send_frame([(bob.user_id, bob.device_id)], opaque_envelope())
            ids.append(frame["message_id"])
            await a.send(frame)
            assert (await a.expect("accepted"))["live"] == []
        b = await far.connect(bob, wait_drained=False)
        assert b.ready["pending"] == 20
        got = [(await b.expect("deliver"))["message_id"] for _ in range(20)]
        assert got == ids
        await b.expect("drained")
        await a.close()
        await b.close()


async def test_contact_news_reaches_both_people_wherever_their_sockets_are(cluster: Cluster) -> None:
    near, far = World(cluster.near.url, cluster.near.ws_url), World(cluster.far.url, cluster.far.ws_url)
    async with near, far:
        alice, bob = await near.account(), await near.account()
        a = await near.connect(alice)
        b = await far.connect(bob)
        r = await near.http.post("/me/contacts/", json={"friend_id": bob.user_id}, headers=alice.auth)
        assert r.status_code == 201
        asked = await b.expect("contact")
        assert (asked["event"], asked["user_id"], asked["by_me"]) == ("requested", alice.user_id, False)
        r = await far.http.post(f"/me/contacts/{alice.user_id}/accept", headers=bob.auth)  # the other door
        assert r.status_code == 200
        told = await a.expect("contact", where=lambda f: f["event"] == "accepted")
        assert told["user_id"] == bob.user_id and told["contact"]["online"] is True
        seen = await a.expect("presence")
        assert (seen["user_id"], seen["device_id"], seen["online"]) == (bob.user_id, bob.device_id, True)
        seen = await b.expect("presence")
        assert (seen["user_id"], seen["device_id"], seen["online"]) == (alice.user_id, alice.device_id, True)
        await a.close()
        await b.close()


@pytest.mark.redis
@pytest.mark.postgres
async def test_a_killed_instance_s_devices_go_offline_when_their_keys_expire(tmp_path: Path) -> None:
    """Presence lives in Redis with expiry: a SIGKILLed instance's devices go offline for everyone,
    and the surviving instance tells their contacts."""
    async with two_instances(tmp_path, {"PEERPOST_BACKPLANE_TTL_SECONDS": "1.5"}) as cluster:
        near, far, alice, bob = await _pair(cluster)
        async with near, far:
            a = await near.connect(alice)
            b = await far.connect(bob)
            assert (await a.expect("presence"))["online"] is True

            async def bob_online() -> bool:
                listed = (await near.http.get("/me/contacts/", headers=alice.auth)).json()
                return [c["online"] for c in listed if c["user_id"] == bob.user_id] == [True]

            assert await bob_online()
            cluster.far.kill()
            for _ in range(50):  # polling the state the dead process left behind: at most ~10 s
                if not await bob_online():
                    break
                await asyncio.sleep(0.2)
            else:
                pytest.fail("bob still shows online long after his instance died")
            gone = await a.expect("presence", deadline=5)
            assert gone["user_id"] == bob.user_id and gone["device_id"] == bob.device_id
            assert gone["online"] is False
            await a.close()
            with contextlib.suppress(Exception):
                await b.close()


async def test_group_news_and_group_messages_reach_members_wherever_their_sockets_are(
    cluster: Cluster,
) -> None:
    near, far, alice, bob = await _pair(cluster)
    async with near, far:
        carol = await near.account()
        await near.befriend(alice, carol)
        b, c = await far.connect(bob), await far.connect(carol)
        a = await near.connect(alice)
        group_id = secrets.token_hex(16)
        body = {"group_id": group_id, "name": "g", "members": [bob.user_id], "record": "b3BhcXVl"}
        r = await near.http.post("/groups", json=body, headers=alice.auth)
        assert r.status_code == 201, r.text
        assert (await b.expect("group"))["event"] == "created"
        envelope = opaque_envelope()
        send = {
            "type": "group_send",
            "ref": "g1",
            "group_id": group_id,
            "message_id": secrets.token_hex(16),
            "envelope": b64encode(envelope),
        }
        await a.send(send)
        accepted = await a.expect("accepted")
        assert accepted["live"] == [bob.device_id] and accepted["queued"] == [bob.device_id]
        delivered = await b.expect("deliver")
        assert (delivered["group_id"], b64decode(delivered["envelope"])) == (group_id, envelope)
        r = await near.http.post(
            f"/groups/{group_id}/members",
            json={"record": "b3BhcXVl", "version": 1, "user_ids": [carol.user_id]},
            headers=alice.auth,
        )
        assert r.status_code == 200, r.text
        for client in (b, c):
            told = await client.expect("group", where=lambda f: f["event"] == "members_added")
            assert told["user_ids"] == [carol.user_id]
        for client in (a, b, c):
            await client.close()
