"""Scale-out on this box: the relay figures for one and for two instances on PostgreSQL + Redis.

    python -m bench.cluster [--pairs 20] [--step-seconds 2] [--mailbox-envelopes 10000]

Loopback only (PostgreSQL 127.0.0.1:5432, Redis 127.0.0.1:6379), bounded. A scratch database and a
fresh Redis prefix per run, dropped afterwards. Three set-ups, each with bench/relay.py's sweep, a
run at half of its own saturation and the mailbox write phase:

- `pg`: one instance on PostgreSQL, in-process backplane (what Redis adds is the difference);
- `pg+redis`: one instance on PostgreSQL with the Redis backplane (presence and routing in Redis);
- `2x pg+redis`: two instances, senders on the first, receivers on the second, so every envelope
  crosses Redis and, since the recipient is not on the sender's instance, is stored before it is
  delivered and deleted on its ack (the live hold applies only when every recipient is local).

2 cores cannot show throughput scaling (the two instances share them with the load generator,
PostgreSQL and Redis); what this shows is correctness across instances and the CPU each instance
spends per message (from /proc), the inputs of the capacity model in docs/hub.md. Writes
bench/results/cluster.json.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.relay import (
    ENVELOPE_BYTES,
    HUB_ENV,
    LOADS,
    RESULTS,
    HubRun,
    StepResult,
    _with_receivers,
    header,
    hub_accounts,
    hub_links,
    machine,
    mailbox_writes,
    run_bench,
    run_step,
    step_up,
    sustained,
)
from signalling.protocol import b64encode
from tests.hub.world import World
from tests.support.server import RunningServer

OUT = RESULTS.with_name("cluster.json")
POSTGRES_DSN = os.environ.get("PEERPOST_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("PEERPOST_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@contextlib.asynccontextmanager
async def instances(tmp: Path, count: int, redis: bool) -> AsyncIterator[list[RunningServer]]:
    import asyncpg

    database = f"peerpost_bench_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(POSTGRES_DSN)
    await admin.execute(f'CREATE DATABASE "{database}"')
    url = POSTGRES_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{database}"
    env = {**HUB_ENV, "PEERPOST_JWT_SECRET": secrets.token_hex(32)}
    if redis:
        env |= {
            "PEERPOST_BACKPLANE_URL": REDIS_URL,
            "PEERPOST_BACKPLANE_PREFIX": f"pp-bench-{secrets.token_hex(6)}",
        }
    try:
        async with contextlib.AsyncExitStack() as stack:
            servers = []
            for i in range(count):  # one after the other: the first migrates, the others find it current
                servers.append(
                    await stack.enter_async_context(RunningServer(tmp / f"i{i}", env=env, database_url=url))
                )
            yield servers
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()


async def setup_run(
    name: str, count: int, redis: bool, args: argparse.Namespace, loads: list[int], envelope: str
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="peerpost-cluster-") as tmp:
        async with instances(Path(tmp), count, redis) as servers:
            async with World(servers[0].url, servers[0].ws_url) as world:
                accounts = await hub_accounts(world, args.pairs)
            urls = [s.ws_url for s in servers]
            send_url, receive_url = urls[0], urls[-1]
            links = await hub_links(send_url, accounts, envelope, receive_url)
            steps: list[StepResult] = await _with_receivers(
                links, lambda box: step_up(name, links, args.step_seconds, box, loads)
            )
            saturation = sustained(steps)
            links = await hub_links(send_url, accounts, envelope, receive_url)
            pids = [s.process.pid for s in servers if s.process is not None]
            cpu_before = [cpu_seconds(p) for p in pids]
            half = await _with_receivers(
                links, lambda box: run_step(links, saturation / 2, args.step_seconds * 3, box)
            )
            cpu = [cpu_seconds(p) - c for p, c in zip(pids, cpu_before, strict=True)]
            print(half.row(f"{name}@½"), flush=True)
            mailbox = await mailbox_writes(send_url, accounts, args.mailbox_envelopes, envelope)
            print(f"{name} mailbox writes: {mailbox['per_second']:.0f} envelopes/s", flush=True)
            rss = [rss_bytes(p) for p in pids]
    run = HubRun(steps, saturation, half, mailbox)
    us_per_msg = [1e6 * c / max(half.delivered, 1) for c in cpu]
    return {
        "name": name,
        "instances": count,
        "redis": redis,
        "steps": [s.__dict__ for s in run.steps],
        "saturation": saturation,
        "half": half.__dict__,
        "mailbox": mailbox,
        "cpu_us_per_message_per_instance": us_per_msg,
        "cpu_us_per_message_total": sum(us_per_msg),
        "rss_bytes_per_instance": rss,
        "load": os.getloadavg(),
    }


SETUPS = (("pg", 1, False), ("pg+redis", 1, True), ("2x pg+redis", 2, True))


async def main(args: argparse.Namespace) -> dict[str, Any]:
    loads = [load for load in LOADS if load <= args.max_load]
    envelope = b64encode(os.urandom(ENVELOPE_BYTES))
    header("cluster benchmark (PostgreSQL + Redis)", args.pairs, args.step_seconds)
    runs = [await setup_run(name, n, redis, args, loads, envelope) for name, n, redis in SETUPS]
    print(
        f"\n{'set-up':<12} {'sat msg/s':>9} {'p50@½':>7} {'p99@½':>8} {'mailbox/s':>9} {'CPU µs/msg':>11}"
        "  (CPU: the server processes' user+system time at half load, per delivered message)"
    )
    for r in runs:
        print(
            f"{r['name']:<12} {r['saturation']:>9.0f} {r['half']['p50_ms']:>7.2f} {r['half']['p99_ms']:>8.2f}"
            f" {r['mailbox']['per_second']:>9.0f} {r['cpu_us_per_message_total']:>11.0f}"
            f"  {' + '.join(f'{x:.0f}' for x in r['cpu_us_per_message_per_instance'])}"
        )
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "config": {"pairs": args.pairs, "step_seconds": args.step_seconds, "loads": loads},
        "runs": runs,
    }


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--step-seconds", type=float, default=2.0)
    parser.add_argument("--max-load", type=int, default=max(LOADS))
    parser.add_argument("--mailbox-envelopes", type=int, default=10_000)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    run_bench(main(args), args.out)


if __name__ == "__main__":
    cli()
