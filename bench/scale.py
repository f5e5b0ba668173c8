"""10,000 connected devices on one server process.

    python -m bench.scale [--devices 10000] [--contacts 1000] [--send-seconds 5] [--send-rate 1000]

Loopback only, bounded in count and time. The bench raises its own (and the server's) open-file
limit to the hard limit, then:
1. builds the world straight in the store before the server starts (migrations, then one
   transaction: 10,000 users with one published device each, a "star" user whose 1,000 contacts are
   accepted both ways, two users for the send test); no bcrypt anywhere: the access tokens are
   minted with the server's JWT secret (given to it in `PEERPOST_JWT_SECRET`), as `/token` would;
2. starts the real server (`python -m signalling serve`, SQLite synchronous=FULL, the production
   default) and measures send p50/p99 between two devices with no idle sockets;
3. connects and authenticates 10,000 devices with a lean raw WebSocket client (bench.rawws: the
   upgrade by hand, answers pings, keeps a few hundred bytes per socket), held by a child process
   so that the process measuring latency does not also answer their pings — the time until all
   have their `drained` frame, and the server's RSS per socket;
4. the star's device comes online: the time until each of the 1,000 contacts' devices has the
   `presence` frame (p50, p99, last);
5. send p50/p99 again with the 10,000 idle sockets connected.

Prints a table and writes bench/results/scale.json. Goals (issue 16): ≤ 16 KiB per idle
authenticated socket, presence fan-out p99 ≤ 100 ms, send p99 with 10,000 idle ≤ 1.5× without.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import secrets
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, insert

from bench.probed_server import probe_signal
from bench.rawws import IdleFleet, connect_many
from bench.relay import (
    RESULTS,
    Link,
    StepResult,
    _with_receivers,
    machine,
    run_bench,
    run_step,
)
from signalling.protocol import b64encode
from signalling.tokens import TokenService
from store.migrate import upgrade_sync
from store.models import Contact, Device, User
from tests.support.server import RunningServer

OUT = RESULTS.with_name("scale.json")
JWT_SECRET = secrets.token_hex(32)
SERVER_ENV = {
    "PEERPOST_SQLITE_SYNCHRONOUS": "FULL",
    "PEERPOST_JWT_SECRET": JWT_SECRET,
    "PEERPOST_ACCESS_TOKEN_TTL_SECONDS": "7200",
    "PEERPOST_WS_RATE_PER_SECOND": "100000",
    "PEERPOST_WS_RATE_BURST": "100000",
    "PEERPOST_PRESENCE_GRACE_SECONDS": "1",
    "PEERPOST_LOG_LEVEL": "warning",
}


@dataclass
class Member:
    user_id: int
    device_id: str
    token: str


def raise_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # children (the server) inherit it
    return hard


def build_world(data_dir: Path, devices: int, contacts: int) -> tuple[list[Member], Member, list[Member]]:
    """The users and devices in one transaction. Returns (idle devices, the star, the send pair)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "peerpost.db"
    upgrade_sync(f"sqlite+aiosqlite:///{path}")
    tokens = TokenService(JWT_SECRET, 7200, 3600)
    identity = b"\x01" * 32
    names = [f"scale{i:06d}" for i in range(devices + 3)]  # + the star + the send pair
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(
            insert(User),
            [
                {"username": n, "email": f"{n}@example.org", "password_hash": b"!", "token_version": 0}
                for n in names
            ],
        )
        ids = dict(conn.exec_driver_sql("SELECT username, id FROM users").all())
        conn.execute(
            insert(Device),
            [
                {
                    "user_id": ids[n],
                    "device_id": f"dev-{n}",
                    "identity_key": identity,
                    "encryption_key": b"\x02" * 550,
                    "signature": b"\x03" * 64,
                    "signed_at": 0,
                }
                for n in names
            ],
        )
        star = ids[names[devices]]
        edges = []
        for n in names[:contacts]:
            edges += [
                {"owner_id": star, "friend_id": ids[n], "status": "accepted"},
                {"owner_id": ids[n], "friend_id": star, "status": "accepted"},
            ]
        a, b = ids[names[devices + 1]], ids[names[devices + 2]]
        edges += [
            {"owner_id": a, "friend_id": b, "status": "accepted"},
            {"owner_id": b, "friend_id": a, "status": "accepted"},
        ]
        conn.execute(insert(Contact), edges)
    engine.dispose()
    members = [Member(ids[n], f"dev-{n}", tokens.issue_access(ids[n], 0)) for n in names]
    return members[:devices], members[devices], members[devices + 1 :]


LAYERS = ("uvicorn", "websockets", "starlette", "fastapi", "signalling", "store", "sqlalchemy", "aiosqlite")


def _layer(where: str) -> str:
    """Which part of the stack allocated: the package in the file's path, or asyncio/stdlib."""
    for name in LAYERS:
        if f"/{name}/" in where:
            return name
    if "/asyncio/" in where:
        return "asyncio (tasks, futures, queues)"
    return "other stdlib"


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def send_latency(server: RunningServer, pair: list[Member], rate: float, seconds: float) -> StepResult:
    """Send p50/p99 between two devices (bench/relay.py's paced sender and meter, one pair)."""
    import websockets

    a, b = pair
    sockets = []
    for m in (a, b):
        ws = await websockets.connect(
            f"{server.ws_url}?device_id={m.device_id}&accepted_batch=1",
            additional_headers={"Authorization": f"Bearer {m.token}"},
            max_size=None,
        )
        while '"drained"' not in await ws.recv():
            pass
        sockets.append(ws)
    envelope = b64encode(os.urandom(512))
    prefix = f'{{"type":"send","ref":"s","envelope":"{envelope}","recipients":'
    prefix += f'[{{"user_id":{b.user_id},"device_id":"{b.device_id}"}}],"message_id":"'
    link = Link(
        sockets[0],
        sockets[1],
        lambda mid: prefix + mid + '"}',
        ack=lambda mids: '{"type":"ack","message_ids":["' + '","'.join(mids) + '"]}',
    )
    return await _with_receivers([link], lambda box: run_step([link], rate, seconds, box))


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


@contextlib.contextmanager
def _timer() -> Iterator[list[float]]:
    box = [time.perf_counter()]
    yield box
    box.append(time.perf_counter() - box[0])


async def main(args: argparse.Namespace) -> dict[str, Any]:
    limit = raise_file_limit()
    if limit < args.devices + 1000:
        raise SystemExit(f"the open-file hard limit is {limit}: too low for {args.devices} sockets")
    load = {"start": os.getloadavg()}
    print(
        f"scale benchmark: {args.devices} devices, a user with {args.contacts} contacts "
        f"(load average {load['start'][0]:.1f} on {os.cpu_count()} CPUs, file limit {limit})",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="peerpost-scale-") as tmp:
        data_dir = Path(tmp) / "server"
        with _timer() as built:
            idle, star, pair = await asyncio.to_thread(build_world, data_dir, args.devices, args.contacts)
        print(f"world built in the store: {built[1]:.1f} s", flush=True)
        env = {**SERVER_ENV, **dict(e.split("=", 1) for e in args.server_env)}
        probe_out = Path(tmp) / "probe.json"
        if args.probe or args.trace_memory:
            env |= {"PEERPOST_PROBE_OUT": str(probe_out)}
        if args.trace_memory:
            env |= {"PEERPOST_PROBE_TRACEMALLOC": "1"}
        module = "bench.probed_server" if args.probe or args.trace_memory else "signalling"
        async with RunningServer(data_dir, env=env, module=module) as server:
            assert server.process is not None
            pid = server.process.pid
            before = await send_latency(server, pair, args.send_rate, args.send_seconds)
            print(f"send with no idle sockets:     p50 {before.p50_ms:.2f} ms, p99 {before.p99_ms:.2f} ms")
            rss_empty = rss_bytes(pid)
            probe_layers: dict[str, float] = {}
            during_probe: dict[str, Any] | None = None
            if args.trace_memory:
                await asyncio.to_thread(probe_signal, server, signal.SIGUSR1)
            fleet = IdleFleet(server.host, server.port, idle, args.concurrency)
            connect_seconds, connected = await fleet.start()
            await asyncio.sleep(1.0)  # let the server settle (allocations freed, GC run) before RSS
            rss_full = rss_bytes(pid)
            per_socket = (rss_full - rss_empty) / connected
            load["connected"] = os.getloadavg()
            if args.trace_memory:
                probe = await asyncio.to_thread(
                    probe_signal, server, signal.SIGUSR2, Path(tmp) / "probe.json"
                )
                assert probe is not None
                held = probe["allocations_since_reset"]
                by_layer: dict[str, int] = {}
                for a in held:
                    by_layer[_layer(a["where"])] = by_layer.get(_layer(a["where"]), 0) + a["bytes"]
                total = sum(by_layer.values())
                print(f"held since the sockets connected (tracemalloc): {total / len(idle):.0f} B/socket")
                for layer, size in sorted(by_layer.items(), key=lambda kv: -kv[1]):
                    print(f"  {size / len(idle):>8.0f} B/socket  {layer}")
                probe_layers = {k: v / len(idle) for k, v in by_layer.items()}
                print("largest allocating lines:")
                for a in held[:25]:
                    per, blocks = a["bytes"] / len(idle), a["blocks"] / len(idle)
                    print(f"  {per:>8.0f} B/socket {blocks:>6.1f} blocks  {a['where']}")
            print(
                f"{connected} devices connected and authenticated in {connect_seconds:.1f} s "
                f"({connected / connect_seconds:.0f}/s, held by a child process); "
                f"server RSS {rss_empty / 2**20:.0f} -> "
                f"{rss_full / 2**20:.0f} MiB: {per_socket / 1024:.1f} KiB per idle socket",
                flush=True,
            )
            audience = min(args.contacts, connected)
            await fleet.watch(star.user_id, audience)
            came = time.perf_counter()
            [star_socket] = await connect_many(server.host, server.port, [star], 1)
            times = await fleet.presence_times(60)
            fan = [1000 * (t - came) for t in times]
            print(
                f"presence fan-out to {audience} contacts' devices: p50 {_pct(fan, 0.5):.1f} ms, "
                f"p99 {_pct(fan, 0.99):.1f} ms, last {max(fan):.1f} ms (from the star's connect)",
                flush=True,
            )
            if args.probe:
                await asyncio.to_thread(probe_signal, server, signal.SIGUSR1)
            during = await send_latency(server, pair, args.send_rate, args.send_seconds)
            if args.probe:
                during_probe = await asyncio.to_thread(probe_signal, server, signal.SIGUSR2, probe_out)
                assert during_probe is not None
                lag, n = during_probe["loop_lag_ms"], during_probe["gc_collections_by_stats"]
                print(
                    f"  while sending with idle sockets: loop lag p99 {lag['p99']:.1f} ms,"
                    f" max {lag['max']:.1f} ms;"
                    f" GC collections {n[0]}/{n[1]}/{n[2]} (gen 0/1/2), longest"
                    f" {max(during_probe['gc'][g]['max'] for g in '012'):.1f} ms",
                    flush=True,
                )
            print(f"send with {connected} idle sockets: p50 {during.p50_ms:.2f}, p99 {during.p99_ms:.2f} ms")
            alive = await fleet.close()
            star_socket.close()
            load["end"] = os.getloadavg()
    ratio = during.p99_ms / before.p99_ms
    summary = {
        "devices": connected,
        "still_connected_at_end": alive,
        "connect_seconds": round(connect_seconds, 2),
        "connects_per_s": round(connected / connect_seconds),
        "kib_per_idle_socket": round(per_socket / 1024, 2),
        "presence_fanout_ms": {"p50": _pct(fan, 0.5), "p99": _pct(fan, 0.99), "last": max(fan)},
        "send_p99_ms_no_idle": before.p99_ms,
        "send_p99_ms_with_idle": during.p99_ms,
        "send_p99_ratio": round(ratio, 2),
        "goals": {
            "kib_per_socket<=16": per_socket / 1024 <= 16,
            "presence_p99<=100ms": _pct(fan, 0.99) <= 100,
            "send_p99_ratio<=1.5": ratio <= 1.5,
        },
    }
    rows = [
        ("memory per idle authenticated socket", f"{per_socket / 1024:.1f} KiB", "<= 16 KiB"),
        (f"connect + authenticate {connected} devices", f"{connect_seconds:.1f} s", ""),
        (f"presence fan-out p99 ({audience} contacts)", f"{_pct(fan, 0.99):.1f} ms", "<= 100 ms"),
        ("send p99, no idle sockets", f"{before.p99_ms:.2f} ms", ""),
        (f"send p99, {connected} idle sockets", f"{during.p99_ms:.2f} ms", f"<= 1.5x ({ratio:.2f}x)"),
    ]
    print(f"\n{'measure':<44} {'value':>12}  goal")
    for name, value, goal in rows:
        print(f"{name:<44} {value:>12}  {goal}")
    print("goals:", ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in summary["goals"].items()))
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**machine(), "load": load},
        "config": {
            "devices": args.devices,
            "contacts": args.contacts,
            "send_rate": args.send_rate,
            "send_seconds": args.send_seconds,
            "server_env": {k: v for k, v in SERVER_ENV.items() if k != "PEERPOST_JWT_SECRET"},
        },
        "send_no_idle": before.__dict__,
        "send_with_idle": during.__dict__,
        "rss_bytes": {"empty": rss_empty, "full": rss_full},
        "traced_bytes_per_socket_by_layer": probe_layers,
        "probe_during_send_with_idle": during_probe,
        "summary": summary,
    }


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--contacts", type=int, default=1_000)
    parser.add_argument("--send-rate", type=float, default=1000.0, help="msgs/s in the send test")
    parser.add_argument("--send-seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=200, help="handshakes in flight")
    parser.add_argument(
        "--probe",
        action="store_true",
        help="probed server: loop lag and GC during the send with idle sockets",
    )
    parser.add_argument(
        "--trace-memory", action="store_true", help="probed server with tracemalloc: what each socket holds"
    )
    parser.add_argument("--server-env", nargs="*", default=[], help="extra NAME=VALUE for the server")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    run_bench(main(args), args.out)


if __name__ == "__main__":
    cli()
