"""Benchmark of groups below the peer: prints a table and writes bench/results/groups.json.

    python bench/groups.py [--members 1000] [--messages 5]

Measures, side by side in one run on this machine:

1. Sender CPU per group message for 10, 100 and 1,000 members with 2 devices each: one sender-key
   encryption (crypto.senderkeys) against sealing the same text as per-device envelopes
   (crypto.envelope, 256 devices per envelope, warm session keys as a running peer has them, and
   cold, with fresh RSA wraps). Also the one-off cost of handing out a sender key to every device.
2. Server fan-out of one group message to every device of a `--members` group (2 devices each,
   all connected): time from the `group_send` until the last live device has it, beside the same
   envelope sent as `send` frames of 256 recipients each.
3. Mailbox bytes per group message for the same devices offline: the body stored once plus a row
   per device, beside one full copy per device (the `send` path), logical bytes and database growth.

4. Delivery through the node (`peer.node.Peer`, real peers, aiortc links on 127.0.0.1) of one
   group message to a `--node-members` group (one device each) when half the member devices have
   an open direct link to the sender: the time `send_text` takes, and until the last linked and
   the last server-only member has it; the first message (which hands the sender key to every
   device, as ratchet messages) apart from the next ones. `--only-node` runs this phase alone.

The clients of phase 2 run in this process: the figure includes their reading, so it is an upper
bound of the server's own share. Targets: group sender CPU flat in the group size (1,000 members
within 2x of 10); one stored copy per group message; for a 16 KiB message to 2,000 offline devices
the mailbox grows < 0.1x of what per-device copies cost (for a short text the per-device rows
themselves, ~300 bytes each with their indexes, dominate).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import websockets  # noqa: E402

from crypto import payload  # noqa: E402
from crypto.envelope import MAX_RECIPIENTS, LocalDevice, Recipient, seal  # noqa: E402
from crypto.senderkeys import OwnSenderKey  # noqa: E402
from crypto.sessionkeys import SessionKeyCache  # noqa: E402
from signalling.protocol import b64encode  # noqa: E402
from tests.hub.world import Account, World  # noqa: E402
from tests.support.keys import FIXED_DEVICE_COUNT, fixed_device_keys  # noqa: E402
from tests.support.server import RunningServer  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "groups.json"
MAILBOX_SIZES = (444, 16384)  # a one-line text; a file offer or a long text
TEXT = payload.Text("a typical chat message of a few dozen characters")
SERVER_ENV = {
    "PEERPOST_SQLITE_SYNCHRONOUS": "FULL",
    "PEERPOST_WS_RATE_PER_SECOND": "1000000",
    "PEERPOST_WS_RATE_BURST": "1000000",
    "PEERPOST_LOGIN_ATTEMPTS_PER_ADDRESS": "1000000",
    "PEERPOST_LOGIN_ATTEMPTS_PER_USERNAME": "1000000",
    "PEERPOST_MAILBOX_QUOTA_MESSAGES": "1000000",
    "PEERPOST_GROUP_MAX_MEMBERS": "1000",
}


def _median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1000


# --------------------------------------------------------------------------------------------------
# 1. sender CPU
# --------------------------------------------------------------------------------------------------


def sender_cpu(members: int, messages: int) -> dict[str, Any]:
    keys = [fixed_device_keys(i) for i in range(FIXED_DEVICE_COUNT)]
    sender = LocalDevice(1, "bench-sender-0", keys[0])
    devices = [
        Recipient(
            2 + i // 2,
            f"bench-device-{i:05d}",
            keys[1 + i % (FIXED_DEVICE_COUNT - 1)].encryption_public_der(),
        )
        for i in range(2 * members - 1)  # every member's 2 devices but the sender's own
    ]
    batches = [devices[i : i + MAX_RECIPIENTS] for i in range(0, len(devices), MAX_RECIPIENTS)]
    own = OwnSenderKey.create("ab" * 16, 1, "bench-sender-0")
    group = []
    for _ in range(messages):
        t = time.process_time()
        own.encrypt(TEXT)
        group.append(time.process_time() - t)
    sessions = SessionKeyCache(max_messages=10**6)
    for batch in batches:  # warm: the RSA wraps are made once per session, as in a running peer
        seal(TEXT, sender, batch, "g:" + "ab" * 16, session_keys=sessions)
    warm = []
    for _ in range(max(3, messages // 10)):
        t = time.process_time()
        for batch in batches:
            seal(TEXT, sender, batch, "g:" + "ab" * 16, session_keys=sessions)
        warm.append(time.process_time() - t)
    cold = []
    for _ in range(3 if members <= 100 else 1):
        t = time.process_time()
        for batch in batches:
            seal(TEXT, sender, batch, "g:" + "ab" * 16)
        cold.append(time.process_time() - t)
    distribution = payload.SenderKey(own.distribution().to_bytes())
    t = time.process_time()
    for batch in batches:  # handing the sender key out once: one envelope per 256 devices, cold
        seal(distribution, sender, batch, "g:" + "ab" * 16)
    handout = time.process_time() - t
    return {
        "members": members,
        "devices": len(devices),
        "group_message_ms": _median_ms(group),
        "envelopes_warm_ms": _median_ms(warm),
        "envelopes_cold_ms": _median_ms(cold),
        "sender_key_handout_ms": handout * 1000,
        "group_message_bytes": len(own.encrypt(TEXT)),
    }


# --------------------------------------------------------------------------------------------------
# 2 and 3. the server
# --------------------------------------------------------------------------------------------------


async def _gather_limited(coros: list[Any], limit: int = 16) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(c: Any) -> Any:
        async with gate:
            return await c

    return await asyncio.gather(*(one(c) for c in coros))


async def build_group(world: World, members: int) -> tuple[Account, list[Account], str]:
    creator = await world.account(devices=2)
    others = await _gather_limited([world.account(devices=2) for _ in range(members - 1)])
    await _gather_limited([world.befriend(creator, o) for o in others])
    group_id = secrets.token_hex(16)
    body = {
        "group_id": group_id,
        "name": "bench",
        "members": [o.user_id for o in others],
        "record": b64encode(b"opaque to the server"),  # the server never parses it
    }
    r = await world.http.post("/groups", json=body, headers=creator.auth)
    assert r.status_code == 201, r.text
    return creator, others, group_id


class Receivers:
    """Every member device's socket, reading until told to stop; records when each message arrives."""

    def __init__(self) -> None:
        self.sockets: list[Any] = []
        self.arrived: dict[str, list[float]] = {}
        self.expected = 0
        self.done: dict[str, asyncio.Event] = {}
        self.tasks: list[asyncio.Task[None]] = []

    async def connect(self, ws_url: str, pairs: list[tuple[Account, str]]) -> None:
        async def one(account: Account, device: str) -> Any:
            ws = await websockets.connect(
                f"{ws_url}?device_id={device}", additional_headers=account.auth, max_size=None
            )
            while json.loads(await ws.recv())["type"] != "drained":
                pass
            return ws

        self.sockets = await _gather_limited([one(a, d) for a, d in pairs], 32)
        self.expected = len(self.sockets)
        self.tasks = [asyncio.create_task(self._read(ws)) for ws in self.sockets]

    def expect(self, message_id: str) -> asyncio.Event:
        self.arrived[message_id] = []
        self.done[message_id] = asyncio.Event()
        return self.done[message_id]

    async def _read(self, ws: Any) -> None:
        async for raw in ws:
            frame = json.loads(raw)
            if frame["type"] != "deliver":
                continue
            mid = frame["message_id"]
            got = self.arrived.get(mid)
            if got is not None:
                got.append(time.perf_counter())
                if len(got) == self.expected:
                    self.done[mid].set()
            await ws.send('{"type":"ack","message_id":"' + mid + '"}')

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for task in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await task
        await _gather_limited([ws.close() for ws in self.sockets], 64)


async def _sender(ws_url: str, account: Account) -> Any:
    ws = await websockets.connect(
        f"{ws_url}?device_id={account.device_id}", additional_headers=account.auth, max_size=None
    )
    while json.loads(await ws.recv())["type"] != "drained":
        pass
    return ws


async def _await_accepted(ws: Any, refs: set[str]) -> None:
    while refs:
        frame = json.loads(await ws.recv())
        if frame["type"] == "accepted":
            refs.discard(frame["ref"])
        elif frame["type"] == "error":
            raise RuntimeError(f"the server refused a bench send: {frame}")


def _send_frames(group: list[tuple[int, str]], envelope: str, message_id: str) -> list[dict[str, Any]]:
    frames = []
    for i in range(0, len(group), MAX_RECIPIENTS):
        batch = group[i : i + MAX_RECIPIENTS]
        frames.append(
            {
                "type": "send",
                "ref": f"s{i}",
                "message_id": message_id,
                "envelope": envelope,
                "recipients": [{"user_id": u, "device_id": d} for u, d in batch],
            }
        )
    return frames


async def fan_out(
    ws_url: str, creator: Account, others: list[Account], group_id: str, envelope: str, messages: int
) -> dict[str, Any]:
    receivers = Receivers()
    # every device of every member but the sending one: the creator's second device too
    await receivers.connect(
        ws_url, [(a, d) for a in others for d in a.devices] + [(creator, creator.devices[1])]
    )
    sender = await _sender(ws_url, creator)
    targets = [(a.user_id, d) for a in others for d in a.devices] + [(creator.user_id, creator.devices[1])]
    results: dict[str, list[float]] = {"group_send": [], "send_frames": []}
    try:
        for n in range(2 * messages):
            kind = "group_send" if n % 2 == 0 else "send_frames"  # alternate: A B A B
            mid = secrets.token_hex(16)
            done = receivers.expect(mid)
            start = time.perf_counter()
            if kind == "group_send":
                frame = {
                    "type": "group_send",
                    "ref": "g",
                    "group_id": group_id,
                    "message_id": mid,
                    "envelope": envelope,
                }
                await sender.send(json.dumps(frame))
                refs = {"g"}
            else:
                frames = _send_frames(targets, envelope, mid)
                for f in frames:
                    await sender.send(json.dumps(f))
                refs = {f["ref"] for f in frames}
            await asyncio.wait_for(done.wait(), 120)
            results[kind].append(max(receivers.arrived[mid]) - start)
            await _await_accepted(sender, refs)
    finally:
        await receivers.close()
        await sender.close()
    return {
        "live_devices": receivers.expected,
        "group_send_last_device_ms": _median_ms(results["group_send"]),
        "send_frames_last_device_ms": _median_ms(results["send_frames"]),
        "runs": messages,
    }


def _db_stats(path: Path) -> dict[str, int]:
    with sqlite3.connect(path, timeout=30) as db:
        db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        page_size = db.execute("PRAGMA page_size").fetchone()[0]
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        rows, row_bytes = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(recipient_device) + LENGTH(sender_device)"
            " + LENGTH(message_id) + LENGTH(envelope) + 6 * 8), 0) FROM mailbox"
        ).fetchone()
        bodies, body_bytes = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(envelope)), 0) FROM mailbox_bodies"
        ).fetchone()
    return {
        "used_bytes": (pages - free) * page_size,
        "rows": rows,
        "row_bytes": row_bytes,
        "bodies": bodies,
        "body_bytes": body_bytes,
    }


async def mailbox_bytes(
    db: Path,
    ws_url: str,
    creator: Account,
    others: list[Account],
    group_id: str,
    envelope: str,
    messages: int,
) -> dict[str, Any]:
    """Everyone offline; store `messages` group messages, then as many per-device copies."""
    sender = await _sender(ws_url, creator)
    targets = [(a.user_id, d) for a in others for d in a.devices] + [(creator.user_id, creator.devices[1])]
    out: dict[str, Any] = {
        "devices": len(targets),
        "messages": messages,
        "envelope_bytes": len(envelope) * 3 // 4,
    }
    try:
        for kind in ("group_send", "send_frames"):
            before = _db_stats(db)
            for _ in range(messages):
                mid = secrets.token_hex(16)
                if kind == "group_send":
                    await sender.send(
                        json.dumps(
                            {
                                "type": "group_send",
                                "ref": "g",
                                "group_id": group_id,
                                "message_id": mid,
                                "envelope": envelope,
                            }
                        )
                    )
                    await _await_accepted(sender, {"g"})
                else:
                    frames = _send_frames(targets, envelope, mid)
                    for f in frames:
                        await sender.send(json.dumps(f))
                    await _await_accepted(sender, {f["ref"] for f in frames})
            after = _db_stats(db)
            out[kind] = {
                "logical_bytes_per_message": (
                    after["row_bytes"] + after["body_bytes"] - before["row_bytes"] - before["body_bytes"]
                )
                / messages,
                "db_growth_bytes_per_message": (after["used_bytes"] - before["used_bytes"]) / messages,
                "rows_per_message": (after["rows"] - before["rows"]) / messages,
                "bodies_per_message": (after["bodies"] - before["bodies"]) / messages,
            }
    finally:
        await sender.close()
    return out


async def server_phases(members: int, messages: int, envelope_bytes: int) -> dict[str, Any]:
    envelope = b64encode(os.urandom(envelope_bytes))
    with tempfile.TemporaryDirectory(prefix="peerpost-bench-groups-") as tmp:
        async with (
            RunningServer(Path(tmp) / "srv", env=SERVER_ENV) as server,
            World(server.url, server.ws_url) as world,
        ):
            t = time.perf_counter()
            creator, others, group_id = await build_group(world, members)
            print(
                f"  built a {members}-member group with {2 * members} devices"
                f" in {time.perf_counter() - t:.1f} s"
            )
            fan = await fan_out(server.ws_url, creator, others, group_id, envelope, messages)
            stored = [
                await mailbox_bytes(
                    server.database_path,
                    server.ws_url,
                    creator,
                    others,
                    group_id,
                    b64encode(os.urandom(n)),
                    3,
                )
                for n in MAILBOX_SIZES
            ]
    return {"fan_out": fan, "mailbox": stored}


# --------------------------------------------------------------------------------------------------
# 4. delivery through the node, half the devices linked
# --------------------------------------------------------------------------------------------------


async def node_delivery(members: int, messages: int) -> dict[str, Any]:
    """Real peers in this process (the figures include every receiver's work: an upper bound)."""
    from peer.events import GroupChanged, MessageReceived
    from peer.node import Peer
    from peer.profile import Profile
    from tests.peer.conftest import PASSWORD, loopback_settings

    others = members - 1
    linked = members // 2  # of the member devices (all but the sender's): half, rounded up
    with tempfile.TemporaryDirectory(prefix="peerpost-bench-groups-node-") as tmp:
        env = {**SERVER_ENV, "PEERPOST_PRESENCE_GRACE_SECONDS": "0.2"}
        async with RunningServer(Path(tmp) / "srv", env=env) as server:

            def make(name: str, n: int, direct: bool) -> Peer:
                settings = loopback_settings(
                    n % FIXED_DEVICE_COUNT, direct=direct, answer_offers=direct, link_deadline=10.0
                )
                return Peer(Profile.at(Path(tmp) / name), server.url, settings=settings)

            sender = make("sender", 0, True)
            peers = [make(f"m{i}", i + 1, i < linked) for i in range(others)]
            try:
                t = time.perf_counter()
                await sender.register("sender", "sender@example.org", PASSWORD)

                async def join(i: int, p: Peer) -> None:
                    await p.register(f"member{i}", f"member{i}@example.org", PASSWORD)
                    await sender.add_contact(f"member{i}")
                    await p.accept_contact(sender.me.user_id)
                    assert await p.wait_online(30)

                await _gather_limited([join(i, p) for i, p in enumerate(peers)], 8)
                print(f"  {members} peers up in {time.perf_counter() - t:.1f} s", flush=True)
                t = time.perf_counter()
                await _gather_limited(
                    [sender.send_text(p.me.user_id, "a link first") for p in peers[:linked]], 8
                )
                open_links = sum(sender.link_to(p.me.device_id) is not None for p in peers[:linked])
                print(f"  {open_links} direct links in {time.perf_counter() - t:.1f} s", flush=True)
                queues = [p.subscribe() for p in peers]
                group = await sender.create_group("bench", [p.me.user_id for p in peers])
                conv = f"g:{group.group_id}"

                troubles: list[str] = []  # what went wrong on a member (said when one is missing)

                async def arrival(queue: asyncio.Queue[Any], match: Any) -> float:
                    while (event := await queue.get()) is not None:
                        if match(event):
                            return time.perf_counter()
                        if event.type in ("error", "group_warning"):
                            troubles.append(str(event.to_dict()))
                    raise RuntimeError("a peer closed")

                joined = [
                    asyncio.ensure_future(
                        arrival(q, lambda e: isinstance(e, GroupChanged) and e.group_id == group.group_id)
                    )
                    for q in queues
                ]
                done, _ = await asyncio.wait(joined, timeout=120)
                if len(done) < len(joined):
                    raise RuntimeError(
                        f"only {len(done)} of {len(joined)} members verified the group: {troubles}"
                    )
                runs = []
                for k in range(messages + 1):
                    text = f"group message {k}"
                    waits = [
                        asyncio.ensure_future(
                            arrival(
                                q,
                                lambda e, text=text: (
                                    isinstance(e, MessageReceived) and e.message.text == text
                                ),
                            )
                        )
                        for q in queues
                    ]
                    t0 = time.perf_counter()
                    view = await sender.send_text(conv, text)
                    t_sent = time.perf_counter()
                    done, _ = await asyncio.wait(waits, timeout=120)
                    if len(done) < len(waits):
                        raise RuntimeError(
                            f"message {k}: only {len(done)} of {len(waits)} got it: {troubles}"
                        )
                    arrived = [w.result() for w in waits]
                    paths = [d["path"] for d in view.devices]
                    runs.append(
                        {
                            "send_ms": (t_sent - t0) * 1000,
                            "last_linked_ms": (max(arrived[:linked]) - t0) * 1000,
                            "last_server_ms": (max(arrived[linked:]) - t0) * 1000,
                            "last_ms": (max(arrived) - t0) * 1000,
                            "direct": paths.count("direct"),
                            "server": len(paths) - paths.count("direct"),
                        }
                    )
                for q, p in zip(queues, peers, strict=True):
                    p.unsubscribe(q)
            finally:
                for p in [sender, *peers]:
                    await p.close()
    first, rest = runs[0], runs[1:]
    return {
        "members": members,
        "member_devices": others,
        "linked_devices": open_links,
        "first_message": {k: round(v, 1) for k, v in first.items()},
        "next_messages_median": {k: round(statistics.median(r[k] for r in rest), 1) for k in first},
        "runs": len(rest),
    }


def _print_node(node: dict[str, Any]) -> None:
    print(
        f"{node['members']}-member group, {node['linked_devices']} of {node['member_devices']} member"
        f" devices linked (median of {node['runs']} messages after the first):"
    )
    print(
        f"{'':<14} {'send_text ms':>13} {'last linked ms':>15} {'last via server ms':>19}"
        f" {'direct':>7} {'server':>7}"
    )
    for label, row in (
        ("first message", node["first_message"]),
        ("next messages", node["next_messages_median"]),
    ):
        print(
            f"{label:<14} {row['send_ms']:>13.0f} {row['last_linked_ms']:>15.0f}"
            f" {row['last_server_ms']:>19.0f}"
            f" {row['direct']:>7.0f} {row['server']:>7.0f}"
        )


def main(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    print(f"groups benchmark (load average {load_before[0]:.1f} on {os.cpu_count()} CPUs)\n")
    if args.only_node:
        print(f"4. delivery through the node, {args.node_members} members, half the devices linked")
        node = asyncio.run(node_delivery(args.node_members, args.node_messages))
        _print_node(node)
        return {
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {
                "cpus": os.cpu_count(),
                "loadavg_before": load_before,
                "loadavg_after": os.getloadavg(),
            },
            "config": vars(args) | {"out": str(args.out)},
            "node_delivery": node,
        }
    print("1. sender CPU per message (process time, median)")
    print(
        f"{'members':>8} {'devices':>8} {'group msg ms':>13} {'envelopes warm ms':>18}"
        f" {'cold ms':>10} {'key handout ms':>15}"
    )
    cpu = []
    for members in (10, 100, 1000):
        row = sender_cpu(members, args.cpu_messages)
        cpu.append(row)
        print(
            f"{row['members']:>8} {row['devices']:>8} {row['group_message_ms']:>13.3f}"
            f" {row['envelopes_warm_ms']:>18.3f}"
            f" {row['envelopes_cold_ms']:>10.1f} {row['sender_key_handout_ms']:>15.1f}"
        )
    print(f"\n2-3. server, {args.members} members x 2 devices, {args.envelope_bytes}-byte group message")
    server = asyncio.run(server_phases(args.members, args.messages, args.envelope_bytes))
    fan, stored = server["fan_out"], server["mailbox"]
    print(
        f"fan-out to {fan['live_devices']} live devices, until the last has it (median of {fan['runs']}):"
        f" group_send {fan['group_send_last_device_ms']:.0f} ms,"
        f" send frames {fan['send_frames_last_device_ms']:.0f} ms"
    )
    print(f"mailbox per message for {stored[0]['devices']} offline devices:")
    print(f"{'envelope B':>10} {'path':<12} {'logical B':>11} {'db growth B':>12} {'rows':>6} {'bodies':>7}")
    for one in stored:
        for kind in ("group_send", "send_frames"):
            s = one[kind]
            print(
                f"{one['envelope_bytes']:>10} {kind:<12} {s['logical_bytes_per_message']:>11.0f}"
                f" {s['db_growth_bytes_per_message']:>12.0f} {s['rows_per_message']:>6.0f}"
                f" {s['bodies_per_message']:>7.0f}"
            )
    print(f"\n4. delivery through the node, {args.node_members} members, half the devices linked")
    node = asyncio.run(node_delivery(args.node_members, args.node_messages))
    _print_node(node)
    flat = cpu[-1]["group_message_ms"] / cpu[0]["group_message_ms"]
    ratios = [
        one["group_send"]["db_growth_bytes_per_message"]
        / max(1.0, one["send_frames"]["db_growth_bytes_per_message"])
        for one in stored
    ]
    targets = {
        "group_cpu_1000_vs_10<=2x": flat <= 2.0,
        "one_stored_copy_per_group_message": all(
            one["group_send"]["bodies_per_message"] == 1 for one in stored
        ),
        "16KiB_mailbox_bytes_vs_copies<0.1": ratios[-1] < 0.1,
    }
    print(
        f"\ngroup message CPU 1,000 vs 10 members: {flat:.2f}x;"
        f" mailbox bytes vs per-device copies: {' / '.join(f'{r:.2f}x' for r in ratios)}"
        f" ({' / '.join(str(n) for n in MAILBOX_SIZES)}-byte envelopes)"
    )
    print("targets:", ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in targets.items()))
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "config": vars(args) | {"out": str(args.out)},
        "sender_cpu": cpu,
        "server": server,
        "node_delivery": node,
        "summary": {
            "group_cpu_1000_vs_10": round(flat, 3),
            "mailbox_bytes_vs_copies": {
                str(n): round(r, 4) for n, r in zip(MAILBOX_SIZES, ratios, strict=True)
            },
            "fan_out_group_send_ms": round(fan["group_send_last_device_ms"]),
            "fan_out_send_frames_ms": round(fan["send_frames_last_device_ms"]),
            "targets": targets,
        },
    }


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--members", type=int, default=1000, help="members of the server phases' group (default 1000)"
    )
    parser.add_argument("--messages", type=int, default=5, help="fan-out runs per path (default 5)")
    parser.add_argument(
        "--cpu-messages", type=int, default=200, help="group messages timed per size (default 200)"
    )
    parser.add_argument(
        "--envelope-bytes", type=int, default=444, help="group message size (default: one short text)"
    )
    parser.add_argument(
        "--node-members", type=int, default=100, help="members of phase 4's group (default 100)"
    )
    parser.add_argument("--node-messages", type=int, default=5, help="phase 4 messages after the first")
    parser.add_argument("--only-node", action="store_true", help="run phase 4 only")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    result = main(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    cli()
