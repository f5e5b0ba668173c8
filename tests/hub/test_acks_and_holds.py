"""Batched acks (`AckFrame.message_ids`) and live holds (an envelope every recipient acked live is
accepted with no row), through a real server; and the wire form of the ack frame."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import secrets
import socket
import sqlite3
from pathlib import Path

import pytest
import websockets
from pydantic import ValidationError

from signalling.protocol import CLIENT_FRAME, SERVER_FRAME, AcceptedBatchFrame, AcceptedFrame, AckFrame
from tests.hub.world import Account, DeviceClient, World, opaque_envelope
from tests.support.server import RunningServer


def _rows(database: Path) -> int:
    with contextlib.closing(sqlite3.connect(database)) as db:
        return db.execute("SELECT count(*) FROM mailbox").fetchone()[0]


async def _barrier(client: DeviceClient) -> None:
    """`pong` comes after every earlier send/ack of the socket is committed (docs/hub.md)."""
    nonce = secrets.token_hex(4)
    await client.send({"type": "ping", "nonce": nonce})
    await client.expect("pong", where=lambda f: f["nonce"] == nonce)


async def _queue_for(world: World, count: int) -> tuple[DeviceClient, list[str], Account]:
    """Alice sends `count` envelopes to offline Bob; returns Alice's socket, the ids, and Bob."""
    alice, bob = await world.account(), await world.account()
    await world.befriend(alice, bob)
    a = await world.connect(alice)
    ids = []
    for _ in range(count):
        frame = a.send_frame([(bob.user_id, bob.device_id)], opaque_envelope())
        await a.send(frame)
        assert (await a.expect("accepted"))["queued"] == [bob.device_id]
        ids.append(frame["message_id"])
    return a, ids, bob


def test_a_single_id_ack_is_the_same_json_as_before_and_an_empty_ack_is_refused() -> None:
    mid = secrets.token_hex(16)
    assert AckFrame(message_id=mid).model_dump_json() == '{"type":"ack","message_id":"' + mid + '"}'
    batched = CLIENT_FRAME.validate_json(
        '{"type":"ack","message_ids":["' + mid + '"],"message_id":"' + mid + '"}'
    )
    assert isinstance(batched, AckFrame) and batched.ids() == [mid, mid]
    with pytest.raises(ValidationError, match="message_id or message_ids"):
        CLIENT_FRAME.validate_json('{"type":"ack"}')
    with pytest.raises(ValidationError):
        CLIENT_FRAME.validate_json('{"type":"ack","message_ids":[]}')


async def test_one_batched_ack_deletes_every_row_it_names(world: World) -> None:
    a, ids, bob = await _queue_for(world, 5)
    b = await world.connect(bob, wait_drained=False)
    assert b.ready["pending"] == 5
    got = [(await b.expect("deliver"))["message_id"] for _ in range(5)]
    assert got == ids
    await b.expect("drained")
    await b.send({"type": "ack", "message_ids": ids[:4]})  # one frame for four rows
    await _barrier(b)
    r = await world.http.get("/me/mailbox", params={"device_id": bob.device_id}, headers=bob.auth)
    assert [item["message_id"] for item in r.json()] == ids[4:]
    await b.close()
    await a.close()


async def test_a_batched_ack_with_one_bad_id_is_refused_whole_and_names_it(world: World) -> None:
    a, ids, bob = await _queue_for(world, 3)
    b = await world.connect(bob, wait_drained=False)
    for _ in range(3):
        await b.expect("deliver")
    await b.expect("drained")
    bad = "not-a-message-id"
    await b.send({"type": "ack", "message_ids": [ids[0], bad, ids[2]]})
    error = await b.expect("error")
    assert error["code"] == "malformed"
    assert "message_ids.1" in error["message"] and bad in error["message"]
    await _barrier(b)  # the socket is still up, and nothing of the refused frame was applied
    r = await world.http.get("/me/mailbox", params={"device_id": bob.device_id}, headers=bob.auth)
    assert [item["message_id"] for item in r.json()] == ids
    await b.close()
    await a.close()


async def test_an_envelope_acked_live_at_once_is_accepted_without_a_row(tmp_path: Path) -> None:
    async with RunningServer(tmp_path / "srv") as server, World(server.url, server.ws_url) as world:
        alice, bob = await world.account(), await world.account()
        await world.befriend(alice, bob)
        a, b = await world.connect(alice), await world.connect(bob)
        for _ in range(20):
            frame = a.send_frame([(bob.user_id, bob.device_id)], opaque_envelope())
            await a.send(frame)
            delivered = await b.expect("deliver")
            await b.send({"type": "ack", "message_ids": [delivered["message_id"]]})
            accepted = await a.expect("accepted")
            # Acked within the hold: the recipient saved it, the server stored nothing.
            assert accepted["message_id"] == frame["message_id"]
            assert accepted["live"] == [bob.device_id] and accepted["queued"] == []
        await _barrier(a)
        await _barrier(b)
        assert _rows(server.database_path) == 0
        await a.close()
        await b.close()


async def test_a_live_envelope_not_acked_in_time_is_stored_before_accepted_and_survives_sigkill(
    tmp_path: Path,
) -> None:
    server = RunningServer(tmp_path / "srv")
    async with server:
        async with World(server.url, server.ws_url) as world:
            alice, bob = await world.account(), await world.account()
            await world.befriend(alice, bob)
            a, b = await world.connect(alice), await world.connect(bob)
            frame = a.send_frame([(bob.user_id, bob.device_id)], opaque_envelope())
            await a.send(frame)
            assert (await b.expect("deliver"))["message_id"] == frame["message_id"]  # and no ack
            accepted = await a.expect("accepted")
            assert accepted["live"] == [bob.device_id] and accepted["queued"] == [bob.device_id]
            server.kill()  # right after `accepted`: the row must already be committed
        server.restart()
        async with World(server.url, server.ws_url) as world:
            b = await world.connect(bob, wait_drained=False)
            assert b.ready["pending"] == 1
            again = await b.expect("deliver")
            assert again["message_id"] == frame["message_id"] and again["queued"] is True
            await b.close()


async def test_a_kill_while_live_traffic_flows_loses_no_accepted_envelope(tmp_path: Path) -> None:
    """Live recipient acking in batches, SIGKILL mid-stream: every `accepted` envelope is either
    one the recipient received (and acked) before the kill, or in its mailbox after the restart."""
    server = RunningServer(tmp_path / "srv", env={"PEERPOST_WS_RATE_BURST": "100000"})
    received: list[str] = []
    accepted: list[str] = []
    without_row = 0
    async with server:
        async with World(server.url, server.ws_url) as world:
            alice, bob = await world.account(), await world.account()
            await world.befriend(alice, bob)
            a, b = await world.connect(alice), await world.connect(bob)

            window = asyncio.Semaphore(200)  # in flight: enough to keep the hub busy, not to flood Bob

            async def pump() -> None:
                with contextlib.suppress(websockets.ConnectionClosed):
                    for _ in range(50_000):
                        await window.acquire()
                        await a.send(a.send_frame([(bob.user_id, bob.device_id)], opaque_envelope(128)))

            async def receive_and_ack() -> None:  # acks every few deliveries, in one frame
                with contextlib.suppress(websockets.ConnectionClosed):
                    batch: list[str] = []
                    while True:
                        frame = await b.expect("deliver", deadline=30)
                        received.append(frame["message_id"])
                        batch.append(frame["message_id"])
                        if len(batch) == 7:
                            await b.send({"type": "ack", "message_ids": batch})
                            batch = []

            tasks = [asyncio.create_task(pump()), asyncio.create_task(receive_and_ack())]
            try:
                while len(accepted) < 500:
                    answer = await a.expect("accepted", deadline=20)
                    window.release()
                    accepted.append(answer["message_id"])
                    without_row += answer["queued"] == []
                server.kill()
                with contextlib.suppress(Exception):
                    while True:  # `accepted` frames already on the wire count too
                        accepted.append((await a.expect("accepted", deadline=2))["message_id"])
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        server.restart()
        async with World(server.url, server.ws_url) as world:
            b = await world.connect(bob, wait_drained=False)
            stored = [
                (await b.expect("deliver", deadline=20))["message_id"] for _ in range(b.ready["pending"])
            ]
            await b.close()
    assert without_row > 0, "no envelope took the live-hold path: the premise is not tested"
    missing = set(accepted) - set(received) - set(stored)
    assert not missing, f"{len(missing)} accepted envelopes were lost"


async def test_a_socket_that_asked_for_accepted_batch_gets_every_answer_once_in_order(world: World) -> None:
    alice, bob = await world.account(), await world.account()
    await world.befriend(alice, bob)
    a = DeviceClient(world.ws_url, alice, alice.device_id)
    a.ws = await websockets.connect(
        f"{world.ws_url}?device_id={alice.device_id}&accepted_batch=1", additional_headers=alice.auth
    )
    assert (await a.expect("ready"))["pending"] == 0
    await a.expect("drained")
    frames = [a.send_frame([(bob.user_id, bob.device_id)], opaque_envelope(64)) for _ in range(300)]
    for frame in frames:  # pipelined to offline Bob: whole group commits answer at once
        await a.send(frame)
    answers: list[dict] = []
    batches = 0
    while len(answers) < len(frames):
        parsed = SERVER_FRAME.validate_json(json.dumps(await a.recv()))  # each frame is a protocol frame
        if isinstance(parsed, AcceptedBatchFrame):
            batches += 1
            answers += [item.model_dump() for item in parsed.items]
        elif isinstance(parsed, AcceptedFrame):
            answers.append(parsed.model_dump())
    assert [x["message_id"] for x in answers] == [f["message_id"] for f in frames]
    assert all(x["queued"] == [bob.device_id] for x in answers)
    assert batches > 0, "no answers were batched: the premise is not tested"
    await a.close()


# -- the live hold's clock starts when the copy is written to the receiver's socket -------------

HOLD_ENV = {
    "PEERPOST_PRESENCE_GRACE_SECONDS": "0.5",
    "PEERPOST_WS_RATE_PER_SECOND": "2000",
    "PEERPOST_WS_RATE_BURST": "4000",
    "PEERPOST_LIVE_HOLD_SECONDS": "2",
    "PEERPOST_OUTBOX_MAX_BYTES": str(64 * 1024 * 1024),  # Bob is slow on purpose, not to be closed
}


async def test_a_send_waiting_in_the_receivers_queue_is_not_stored_before_it_is_written() -> None:
    """Bob's socket stops taking bytes (a tiny receive buffer and a client that does not read), so
    the copy of `late` waits in the server's queue for Bob behind ~12 MB. Carol reads `marker`, sent
    after `late`, and never acks it: its hold runs out and it is stored. Had the hold's clock started
    when `late` was queued, `late` would have run out first (holds run out in order) and been stored
    too; it is still unanswered, and once Bob reads and acks it, it is accepted live, with no row."""
    with RunningServer(env=HOLD_ENV) as server:
        async with World(server.url, server.ws_url) as world:
            alice, bob, carol = await world.account(), await world.account(), await world.account()
            await world.befriend(alice, bob)
            await world.befriend(alice, carol)
            raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            raw.setblocking(False)
            await asyncio.get_running_loop().sock_connect(raw, (server.host, server.port))
            b = await world.connect(bob, sock=raw, max_queue=1)
            c = await world.connect(carol)
            a = await world.connect(alice)
            for _ in range(30):  # 12 MB of base64: more than the kernel's buffers hold (4 MB)
                await a.send(a.send_frame([(bob.user_id, bob.device_id)], opaque_envelope(300_000)))
            late = a.send_frame([(bob.user_id, bob.device_id)], opaque_envelope())
            await a.send(late)
            marker = a.send_frame([(carol.user_id, carol.device_id)], opaque_envelope())
            await a.send(marker)
            await c.expect("deliver", where=lambda f: f["message_id"] == marker["message_id"])
            stored = await a.expect("accepted", deadline=30, where=lambda f: f["ref"] == marker["ref"])
            assert stored["queued"] == [carol.device_id]  # carol never acked: its hold ran out
            kinds = collections.Counter(
                (f["type"], f.get("code"), tuple(f.get("queued", ()))) for f in a.backlog
            )
            assert not [f for f in a.backlog if f.get("ref") == late["ref"]], kinds  # late: not answered yet
            while True:  # Bob reads now, and acks everything as it comes
                frame = await b.expect("deliver", deadline=30)
                await b.send({"type": "ack", "message_id": frame["message_id"]})
                if frame["message_id"] == late["message_id"]:
                    break
            answer = await a.expect("accepted", deadline=30, where=lambda f: f["ref"] == late["ref"])
            assert (answer["live"], answer["queued"]) == ([bob.device_id], [])
            for client in (a, b, c):
                await client.close()
