"""The hub under abuse, through real servers (issue #11): a socket that never reads, acks that
amplify work, a deleted account in the middle of other people's sends, mailbox quotas per sender,
per account and for the disk, duplicate message ids, deep JSON, and what an error log may hold.

Nothing here asserts a time or a rate: each test proves the behaviour (bytes bounded by the
server's own counters, refusal codes, another user's send still accepted). The figures are in
bench/abuse.py."""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from tests.hub.world import DeviceClient, World, opaque_envelope
from tests.support.server import RunningServer

MiB = 1024 * 1024
BOUNDED_ENV = {
    "PEERPOST_METRICS_ENABLED": "true",
    "PEERPOST_OUTBOX_MAX_BYTES": str(1 * MiB),
    "PEERPOST_OUTBOX_MAX_BYTES_PER_ACCOUNT": str(2 * MiB),
    "PEERPOST_WS_RATE_PER_SECOND": "200",
    "PEERPOST_WS_RATE_BURST": "400",
    "PEERPOST_PRESENCE_GRACE_SECONDS": "0",
}
QUOTA_ENV = {
    "PEERPOST_METRICS_ENABLED": "true",
    "PEERPOST_MAILBOX_QUOTA_BYTES": str(2 * MiB),
    "PEERPOST_MAILBOX_SENDER_SHARE": "0.25",
    "PEERPOST_ACCOUNT_QUOTA_BYTES": str(3 * MiB),
    "PEERPOST_PRESENCE_GRACE_SECONDS": "0",
}


@pytest.fixture(scope="module")
def bounded_server() -> Iterator[RunningServer]:
    with RunningServer(env=BOUNDED_ENV) as running:
        yield running


@pytest.fixture(scope="module")
def quota_server() -> Iterator[RunningServer]:
    with RunningServer(env=QUOTA_ENV) as running:
        yield running


@pytest.fixture
async def bounded(bounded_server: RunningServer) -> AsyncIterator[World]:
    async with World(bounded_server.url, bounded_server.ws_url) as world:
        yield world


@pytest.fixture
async def quotas(quota_server: RunningServer) -> AsyncIterator[World]:
    async with World(quota_server.url, quota_server.ws_url) as world:
        yield world


async def metrics(world: World) -> dict[str, float]:
    text = (await world.http.get("/metrics")).text
    return {name: float(value) for name, value in (line.split(" ", 1) for line in text.splitlines() if line)}


async def send_and_answer(
    client: DeviceClient, to: list[tuple[int, str]], envelope: bytes, **kw: str
) -> dict:
    """Send one envelope and wait for its `accepted` or `error` answer."""
    frame = client.send_frame(to, envelope, **kw)
    await client.send(frame)
    ref = frame["ref"]
    return await client.expect(("accepted", "error"), where=lambda f: f.get("ref") == ref, deadline=30)


async def pong(client: DeviceClient) -> list[dict]:
    """Ping and wait for the pong; returns the frames that came before it (in order)."""
    nonce = secrets.token_hex(4)
    await client.send({"type": "ping", "nonce": nonce})
    before = []
    while True:
        frame = await client.recv(deadline=30)
        if frame["type"] == "pong" and frame.get("nonce") == nonce:
            return before
        before.append(frame)


# -- 1. a socket that never reads ----------------------------------------------------------------


async def test_a_socket_that_never_reads_is_bounded_in_bytes_and_freed_when_closed(bounded: World) -> None:
    alice = await bounded.account(devices=2)
    sender = await bounded.connect(alice, alice.devices[0])
    # max_queue=1: the client library stops reading from TCP after one frame, like a stuck client.
    stuck = await bounded.connect(alice, alice.devices[1], max_queue=1)
    envelope = opaque_envelope(256 * 1024)  # ~342 KB of base64 per frame
    answers = [
        await send_and_answer(sender, [(alice.user_id, alice.devices[1])], envelope) for _ in range(60)
    ]
    # Nothing was lost: every send was stored (the stuck device fetches them when it reconnects).
    assert all(a["type"] == "accepted" for a in answers), answers[-1]
    seen = await metrics(bounded)
    assert seen["peerpost_outbox_closed_too_slow_total"] >= 1
    # Bounded: never more than the socket's budget plus one frame held for one socket ...
    assert seen["peerpost_outbox_peak_socket_bytes"] <= 1 * MiB + 400 * 1024
    # ... and the closed socket's queue was dropped at once, not left for the collector.
    assert seen["peerpost_outbox_queued_bytes"] < 400 * 1024
    assert seen["peerpost_outbox_dropped_bytes_total"] > 0
    code, _ = await stuck.closed(deadline=60)
    assert code == 1013
    again = await bounded.connect(alice, alice.devices[1], wait_drained=False)
    assert again.ready["pending"] == 60
    await again.close()
    await sender.close()


# -- 3. acks counted per id ----------------------------------------------------------------------


async def test_acks_beyond_what_was_delivered_are_charged_per_id(bounded: World) -> None:
    mallory, bob = await bounded.account(), await bounded.account()
    carol = await bounded.account()
    await bounded.befriend(bob, carol)
    flooder = await bounded.connect(mallory)
    bob_socket = await bounded.connect(bob)
    ids = [secrets.token_hex(16) for _ in range(1000)]
    for _ in range(3):  # 3,000 ids with nothing delivered: far past a burst of 400
        await flooder.send({"type": "ack", "message_ids": ids})
    code, reason = await flooder.closed(deadline=30)
    assert code == 4429, reason
    # Another user's send is still accepted.
    answer = await send_and_answer(bob_socket, [(carol.user_id, carol.device_id)], opaque_envelope())
    assert answer["type"] == "accepted"
    await bob_socket.close()


async def test_a_device_acking_its_whole_backlog_at_once_is_not_a_flood(bounded: World) -> None:
    bob, carol = await bounded.account(), await bounded.account()
    await bounded.befriend(bob, carol)
    sender = await bounded.connect(bob)
    sent = [secrets.token_hex(16) for _ in range(300)]
    for mid in sent:
        await send_and_answer(sender, [(carol.user_id, carol.device_id)], opaque_envelope(64), message_id=mid)
    receiver = await bounded.connect(carol, wait_drained=False)
    got = [(await receiver.expect("deliver", deadline=30))["message_id"] for _ in sent]
    await receiver.expect("drained")
    await receiver.send({"type": "ack", "message_ids": got})  # 300 ids, all delivered: free
    await pong(receiver)  # still open, and the ack is committed
    again = await bounded.connect(carol, wait_drained=False)
    assert again.ready["pending"] == 0
    await again.close()
    await sender.close()


# -- 15. deep JSON -------------------------------------------------------------------------------


async def test_a_deeply_nested_frame_gets_an_error_and_the_socket_stays(bounded: World) -> None:
    alice = await bounded.account()
    client = await bounded.connect(alice)
    await client.send('{"type":"ping","nonce":' + "[" * 1000 + "]" * 1000 + "}")
    error = await client.expect("error")
    assert error["code"] == "malformed"
    await client.send("[" * 100_000 + "]" * 100_000)
    assert (await client.expect("error"))["code"] == "malformed"
    await pong(client)
    await client.close()


# -- 2. a deleted account in the middle of other people's sends -----------------------------------


async def test_sends_to_a_just_deleted_account_refuse_only_themselves(quotas: World) -> None:
    sender, victim, friend = await quotas.account(), await quotas.account(), await quotas.account()
    await quotas.befriend(sender, victim)
    await quotas.befriend(sender, friend)
    client = await quotas.connect(sender)
    first = await send_and_answer(client, [(victim.user_id, victim.device_id)], opaque_envelope())
    assert first["type"] == "accepted"  # the hub now knows the victim's device
    assert (await quotas.http.delete("/users/self", headers=victim.auth)).status_code == 204
    frames = [client.send_frame([(victim.user_id, victim.device_id)], opaque_envelope()) for _ in range(20)]
    frames += [client.send_frame([(friend.user_id, friend.device_id)], opaque_envelope()) for _ in range(20)]
    for frame in frames:  # pipelined: they share the writer's batches
        await client.send(frame)
    answers = {}
    for _ in frames:
        answer = await client.expect(("accepted", "error"), deadline=30)
        answers[answer["ref"]] = answer
    to_victim, to_friend = frames[:20], frames[20:]
    assert all(answers[f["ref"]]["type"] == "accepted" for f in to_friend)
    assert {answers[f["ref"]].get("code") for f in to_victim} == {"unknown_device"}
    await client.close()


async def test_a_failed_batch_is_retried_job_by_job(tmp_path: Path) -> None:
    from datetime import timedelta

    from sqlalchemy import text

    from store import migrate
    from store.db import create_engine
    from store.mailbox import MailboxError, MailboxWriter, NewMessage

    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    await migrate.upgrade(url)
    engine = create_engine(url, synchronous="NORMAL")
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO users (username, email, password_hash, created_at)"
                " VALUES ('a', 'a@x', x'00', '2026-01-01')"
            )
        )
    writer = MailboxWriter(
        engine, retention=timedelta(days=1), device_quota_bytes=MiB, device_quota_messages=100
    )
    await writer.start()
    try:
        good = [
            NewMessage(1, "dev-aaaaaaaa", 1, "dev-bbbbbbbb", secrets.token_hex(16), b"x") for _ in range(5)
        ]
        bad = NewMessage(999, "dev-gone0000", 1, "dev-bbbbbbbb", secrets.token_hex(16), b"x")  # no user 999
        futures = [await writer.submit_store([m]) for m in good[:2]]
        futures.append(await writer.submit_store([bad]))
        futures += [await writer.submit_store([m]) for m in good[2:]]
        results = []
        for future in futures:
            try:
                await future
                results.append("ok")
            except MailboxError:
                results.append("refused")
        assert results == ["ok", "ok", "refused", "ok", "ok", "ok"]
        assert writer.batches_retried >= 1 or results.count("refused") == 1
    finally:
        await writer.close()
        await engine.dispose()


# -- 7. one sender fills only its own share of a device's mailbox --------------------------------


async def test_one_contact_cannot_lock_a_victims_friends_out_of_its_mailbox(quotas: World) -> None:
    victim, spammer, friend = await quotas.account(), await quotas.account(), await quotas.account()
    await quotas.befriend(spammer, victim)
    await quotas.befriend(friend, victim)
    spam = await quotas.connect(spammer)
    answers = [
        await send_and_answer(spam, [(victim.user_id, victim.device_id)], opaque_envelope(200 * 1024))
        for _ in range(6)
    ]
    refused = [a for a in answers if a["type"] == "error"]
    assert refused and {a["code"] for a in refused} == {"quota"}
    assert "your share of the mailbox" in refused[0]["message"]
    friendly = await quotas.connect(friend)
    for _ in range(2):
        answer = await send_and_answer(
            friendly, [(victim.user_id, victim.device_id)], opaque_envelope(200 * 1024)
        )
        assert answer["type"] == "accepted", answer
    await spam.close()
    await friendly.close()


# -- 8. a per-account total across devices and blobs ---------------------------------------------


async def test_one_account_cannot_store_more_than_its_total(quotas: World) -> None:
    hoarder = await quotas.account(devices=3)
    client = await quotas.connect(hoarder, hoarder.devices[0])
    own = [(hoarder.user_id, d) for d in hoarder.devices[1:]]  # each send stores two rows
    answers = [await send_and_answer(client, own, opaque_envelope(200 * 1024)) for _ in range(10)]
    refused = [a for a in answers if a["type"] == "error"]
    assert refused, "ten 400 KB self-sends passed a 3 MiB account total"
    assert refused[0]["code"] == "quota" and "your account's storage is full" in refused[0]["message"]
    # Each device stays under its own 2 MiB quota: it is the account total that refused.
    accepted = len(answers) - len(refused)
    assert accepted * 200 * 1024 < 2 * MiB
    # Blobs count against the same total.
    upload = await quotas.http.post("/blobs", content=b"x" * MiB, headers=hoarder.auth)
    assert upload.status_code == 413 and upload.json()["code"] == "quota"
    await client.close()


async def test_a_full_disk_refuses_new_writes_and_health_says_so(tmp_path: Path) -> None:
    env = {"PEERPOST_DISK_MIN_FREE_BYTES": str(10**18)}  # more than any disk: always "full"
    with RunningServer(tmp_path / "s", env=env) as server:
        async with World(server.url, server.ws_url) as world:
            alice, bob = await world.account(), await world.account()
            await world.befriend(alice, bob)
            client = await world.connect(alice)
            answer = await send_and_answer(client, [(bob.user_id, bob.device_id)], opaque_envelope())
            assert answer["type"] == "error" and answer["code"] == "quota"
            assert "storage is nearly full" in answer["message"]
            upload = await world.http.post("/blobs", content=b"x" * 1000, headers=alice.auth)
            assert upload.status_code == 507 and upload.json()["code"] == "storage_full"
            health = (await world.http.get("/health")).json()
            assert health["status"] == "degraded" and health["storage"] == "full"
            await client.close()


# -- 1 (second half). a full mailbox is not pushed live -------------------------------------------


async def test_a_send_refused_by_a_quota_is_not_delivered_live_either(quotas: World) -> None:
    alice, bob = await quotas.account(), await quotas.account()
    await quotas.befriend(alice, bob)
    receiver = await quotas.connect(bob)  # online, reading, never acking: every send is stored
    sender = await quotas.connect(alice)
    answers = [
        await send_and_answer(sender, [(bob.user_id, bob.device_id)], opaque_envelope(200 * 1024))
        for _ in range(6)
    ]
    accepted = {a["message_id"] for a in answers if a["type"] == "accepted"}
    assert len(accepted) < len(answers)  # the 512 KiB share ran out
    delivered = {f["message_id"] for f in await pong(receiver) if f["type"] == "deliver"}
    delivered |= {f["message_id"] for f in receiver.backlog if f["type"] == "deliver"}
    assert delivered == accepted
    await sender.close()
    await receiver.close()


# -- 16. message ids are per sender --------------------------------------------------------------


async def test_a_second_sender_reusing_a_message_id_is_refused_not_dropped(quotas: World) -> None:
    victim, first, second = await quotas.account(), await quotas.account(), await quotas.account()
    await quotas.befriend(first, victim)
    await quotas.befriend(second, victim)
    mid = secrets.token_hex(16)
    one = await quotas.connect(first)
    two = await quotas.connect(second)
    a = await send_and_answer(one, [(victim.user_id, victim.device_id)], b"first sender", message_id=mid)
    assert a["type"] == "accepted"
    b = await send_and_answer(two, [(victim.user_id, victim.device_id)], b"second sender", message_id=mid)
    assert b["type"] == "error" and b["code"] == "duplicate", b
    # The same sender resending is still idempotent.
    again = await send_and_answer(one, [(victim.user_id, victim.device_id)], b"first sender", message_id=mid)
    assert again["type"] == "accepted"
    reader = await quotas.connect(victim, wait_drained=False)
    got = await reader.expect("deliver")
    assert got["message_id"] == mid and got["sender_user"] == first.user_id
    await reader.expect("drained")
    # And while the victim is online (a live hold), the clash is refused too.
    mid2 = secrets.token_hex(16)
    c = await send_and_answer(one, [(victim.user_id, victim.device_id)], b"held", message_id=mid2)
    d = await send_and_answer(two, [(victim.user_id, victim.device_id)], b"clash", message_id=mid2)
    assert c["type"] == "accepted" and (d["type"], d.get("code")) == ("error", "duplicate")
    for client in (one, two, reader):
        await client.close()


# -- 19. no envelope in an error log -------------------------------------------------------------


async def test_a_failed_mailbox_write_logs_no_envelope_bytes(tmp_path: Path) -> None:
    with RunningServer(tmp_path / "s", env={"PEERPOST_LOG_LEVEL": "info"}) as server:
        async with World(server.url, server.ws_url) as world:
            alice, bob = await world.account(), await world.account()
            await world.befriend(alice, bob)
            # A disk fault, injected at the database: every mailbox insert now fails.
            with sqlite3.connect(server.database_path) as db:
                db.execute(
                    "CREATE TRIGGER fault BEFORE INSERT ON mailbox"
                    " BEGIN SELECT RAISE(ABORT, 'injected fault'); END"
                )
            client = await world.connect(alice)
            envelope = opaque_envelope(2048)
            answer = await send_and_answer(client, [(bob.user_id, bob.device_id)], envelope)
            assert answer["type"] == "error" and answer["code"] == "internal"
            await client.close()
            output = server.output
    assert "mailbox write failed" in output and "injected fault" in output
    from signalling.protocol import b64encode

    for trace in (envelope[:24].hex(), b64encode(envelope)[:32], repr(envelope[:16])[2:-1], alice.token[:40]):
        assert trace not in output


# -- the metrics endpoint itself -----------------------------------------------------------------


def test_metrics_are_off_unless_enabled(tmp_path: Path) -> None:
    with RunningServer(tmp_path / "s") as server:
        assert httpx.get(server.url + "/metrics", timeout=10).status_code == 404
