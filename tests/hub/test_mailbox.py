"""The durable mailbox through a real server: offline delivery across a SIGKILL, no plaintext on
disk, quotas, and the REST fetch/ack twin of the socket."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
from pathlib import Path

import websockets

from crypto.envelope import LocalDevice, MemorySeenIds, Recipient, open_envelope, peek_header, seal
from crypto.payload import Text
from signalling.protocol import b64decode
from tests.hub.world import World, committed_keys, opaque_envelope
from tests.support.server import RunningServer

OFFLINE_ENV = {"PEERPOST_WS_RATE_BURST": "4000", "PEERPOST_PRESENCE_GRACE_SECONDS": "0.2"}


def _mailbox_rows(database: Path) -> int:
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        return db.execute("select count(*) from mailbox").fetchone()[0]


async def test_offline_delivery_survives_sigkill_in_order_exactly_once(tmp_path: Path) -> None:
    server = RunningServer(tmp_path / "srv", env=OFFLINE_ENV)
    async with server:
        async with World(server.url, server.ws_url) as world:
            alice, bob = await world.account(), await world.account()
            await world.befriend(alice, bob)
            a = await world.connect(alice)
            sent: list[tuple[str, bytes]] = []
            for i in range(500):
                envelope = opaque_envelope(200 + i % 50)
                frame = a.send_frame([(bob.user_id, bob.device_id)], envelope, ref=str(i))
                sent.append((frame["message_id"], envelope))
                await a.send(frame)
            refs = [int((await a.expect("accepted", deadline=20))["ref"]) for _ in range(500)]
            assert refs == list(range(500))  # answered in order, each after its commit

        server.kill()  # SIGKILL right after the last `accepted`: nothing flushed on the way out
        server.restart()

        async with World(server.url, server.ws_url) as world:
            b = await world.connect(bob, wait_drained=False)
            assert b.ready["pending"] == 500
            got = []
            for _ in range(500):
                frame = await b.expect("deliver", deadline=20)
                assert frame["queued"] is True
                got.append((frame["message_id"], b64decode(frame["envelope"])))
                await b.send({"type": "ack", "message_id": frame["message_id"]})
            await b.expect("drained")
            assert got == sent  # all of them, in order, each once
            await b.send({"type": "ping", "nonce": "acks-done"})
            await b.expect("pong")
            assert [f for f in b.backlog if f["type"] == "deliver"] == []
            await b.close()

            again = await world.connect(bob, wait_drained=False)
            assert again.ready["pending"] == 0
            await again.expect("drained")
            await again.close()
            r = await world.http.get("/me/mailbox", params={"device_id": bob.device_id}, headers=bob.auth)
            assert r.json() == []
        server.stop()
        assert _mailbox_rows(server.database_path) == 0


async def test_a_kill_in_mid_stream_keeps_every_accepted_envelope(tmp_path: Path) -> None:
    """SIGKILL while sends keep coming: whatever was `accepted` comes back, in send order, once."""
    # One sender pumps thousands into one device: the per-sender share (test_abuse) is lifted here.
    env = {**OFFLINE_ENV, "PEERPOST_WS_RATE_BURST": "100000", "PEERPOST_MAILBOX_SENDER_SHARE": "1"}
    server = RunningServer(tmp_path / "srv", env=env)
    async with server:
        async with World(server.url, server.ws_url) as world:
            alice, bob = await world.account(), await world.account()
            await world.befriend(alice, bob)
            a = await world.connect(alice)
            order: list[str] = []

            async def pump() -> None:  # still sending when the server dies
                with contextlib.suppress(websockets.ConnectionClosed):
                    for i in range(50_000):
                        frame = a.send_frame([(bob.user_id, bob.device_id)], opaque_envelope(128), ref=str(i))
                        order.append(frame["message_id"])
                        await a.send(frame)

            sender = asyncio.create_task(pump())
            try:
                accepted: list[str] = []
                while len(accepted) < 300:
                    accepted.append((await a.expect("accepted", deadline=20))["message_id"])
                server.kill()
                with contextlib.suppress(Exception):
                    while True:  # `accepted` frames already on the wire count too
                        accepted.append((await a.expect("accepted", deadline=2))["message_id"])
                async with asyncio.timeout(10):
                    await sender
            finally:
                sender.cancel()
        server.restart()
        async with World(server.url, server.ws_url) as world:
            b = await world.connect(bob, wait_drained=False)
            got = [(await b.expect("deliver", deadline=20))["message_id"] for _ in range(b.ready["pending"])]
            await b.expect("drained")
            await b.close()
    assert len(got) < len(order), "the kill came after the last write: nothing was in flight"
    assert set(accepted) <= set(got), "an accepted envelope was lost"
    positions = [order.index(m) for m in got]
    assert positions == sorted(positions) and len(set(got)) == len(got)  # send order, each once


async def test_the_database_holds_ciphertext_but_never_the_plaintext(tmp_path: Path) -> None:
    """Real envelopes (crypto.envelope) with marker text inside: on disk only ciphertext is found."""
    markers = [f"PLAINTEXT-MARKER-{secrets.token_hex(8)}" for _ in range(3)]
    alice_keys, bob_keys = committed_keys(0), committed_keys(1)
    async with (
        RunningServer(tmp_path / "srv", env=OFFLINE_ENV) as server,
        World(server.url, server.ws_url) as world,
    ):
        alice, bob = await world.account(), await world.account()
        await world.befriend(alice, bob)
        me = LocalDevice(alice.user_id, alice.device_id, alice_keys)
        to_bob = Recipient(bob.user_id, bob.device_id, bob_keys.encryption_public_der())
        a = await world.connect(alice)
        sealed_all = []
        for marker in markers:
            sealed = seal(Text(body=f"hello bob, {marker}"), me, [to_bob], f"u:{bob.user_id}")
            sealed_all.append(sealed)
            await a.send(a.send_frame([(bob.user_id, bob.device_id)], sealed, peek_header(sealed).message_id))
            await a.expect("accepted")
        await a.close()

        # Bob is offline: the rows are on disk now, in the database file or its WAL.
        files = [p for p in server.data_dir.iterdir() if p.name.startswith(server.database_path.name)]
        on_disk = b"".join(p.read_bytes() for p in files)
        assert all(sealed in on_disk for sealed in sealed_all)  # the scan sees what is stored...
        for marker in markers:
            assert marker.encode() not in on_disk  # ...and no plaintext is among it
            assert marker.encode("utf-16-le") not in on_disk

        # The envelopes reach bob intact and open to the marker text on his device only.
        b = await world.connect(bob, wait_drained=False)
        seen = MemorySeenIds()
        bob_device = LocalDevice(bob.user_id, bob.device_id, bob_keys)
        pinned = {(alice.user_id, alice.device_id): alice_keys.identity_public_bytes()}
        for marker in markers:
            frame = await b.expect("deliver")
            opened = open_envelope(
                b64decode(frame["envelope"]), bob_device, lambda u, d: pinned.get((u, d)), seen
            )
            assert opened.payload == Text(body=f"hello bob, {marker}")
        await b.close()


async def test_a_full_mailbox_refuses_with_a_quota_error_and_keeps_what_it_has(tmp_path: Path) -> None:
    # One sender may fill the whole device here: the per-sender share has its own test (test_abuse).
    env = {**OFFLINE_ENV, "PEERPOST_MAILBOX_QUOTA_MESSAGES": "3", "PEERPOST_MAILBOX_SENDER_SHARE": "1"}
    async with RunningServer(tmp_path / "srv", env=env) as server, World(server.url, server.ws_url) as world:
        alice, bob = await world.account(), await world.account()
        await world.befriend(alice, bob)
        a = await world.connect(alice)
        for i in range(3):
            await a.send(a.send_frame([(bob.user_id, bob.device_id)], opaque_envelope(), ref=f"ok{i}"))
            await a.expect("accepted")
        await a.send(a.send_frame([(bob.user_id, bob.device_id)], opaque_envelope(), ref="full"))
        error = await a.expect("error")
        assert error["code"] == "quota" and error["ref"] == "full" and "full" in error["message"]
        r = await world.http.get("/me/mailbox", params={"device_id": bob.device_id}, headers=bob.auth)
        assert len(r.json()) == 3
        await a.close()


async def test_the_same_message_twice_is_stored_once(world: World) -> None:
    alice, bob = await world.account(), await world.account()
    await world.befriend(alice, bob)
    a = await world.connect(alice)
    frame = a.send_frame([(bob.user_id, bob.device_id)], opaque_envelope())
    for _ in range(2):  # a client resending after a lost `accepted`
        await a.send(frame)
        await a.expect("accepted")
    r = await world.http.get("/me/mailbox", params={"device_id": bob.device_id}, headers=bob.auth)
    assert [item["message_id"] for item in r.json()] == [frame["message_id"]]
    await a.close()


async def test_mailbox_over_rest_fetches_in_order_and_acks(world: World) -> None:
    alice, bob = await world.account(), await world.account(devices=2)
    await world.befriend(alice, bob)
    a = await world.connect(alice)
    ids = []
    for _ in range(3):
        frame = a.send_frame([(bob.user_id, d) for d in bob.devices], opaque_envelope())
        ids.append(frame["message_id"])
        await a.send(frame)
        assert sorted((await a.expect("accepted"))["queued"]) == sorted(bob.devices)
    first, second = bob.devices
    r = await world.http.get("/me/mailbox", params={"device_id": first}, headers=bob.auth)
    assert [item["message_id"] for item in r.json()] == ids
    assert r.json()[0]["sender_user"] == alice.user_id

    r = await world.http.post(
        "/me/mailbox/ack", json={"device_id": first, "message_ids": ids[:2]}, headers=bob.auth
    )
    assert r.status_code == 204
    r = await world.http.get("/me/mailbox", params={"device_id": first}, headers=bob.auth)
    assert [item["message_id"] for item in r.json()] == ids[2:]
    r = await world.http.get("/me/mailbox", params={"device_id": second}, headers=bob.auth)
    assert len(r.json()) == 3  # each device acks for itself

    r = await world.http.get("/me/mailbox", params={"device_id": first}, headers=alice.auth)
    assert r.status_code == 404 and r.json()["code"] == "unknown_device"  # not alice's device
    r = await world.http.post(
        "/me/mailbox/ack", json={"device_id": first, "message_ids": ["xyz"]}, headers=bob.auth
    )
    assert r.status_code == 422 and "message_ids" in r.json()["detail"]
    await a.close()
