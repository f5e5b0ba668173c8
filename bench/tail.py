"""Where the hub's p99 at half load comes from: probes inside the server, variants side by side.

    python -m bench.tail [--pairs 20] [--seconds 6] [--rate N] [--repeats 1]

1. Finds the hub's saturation with bench/relay.py's sweep (unless `--rate` gives the rate to use),
   and takes half of it.
2. Runs at that offered rate, each on a fresh server (bench/probed_server.py: the real server with
   a loop-lag sampler, `gc.callbacks` and timings of the mailbox writer's group commits inside):
   the bare forwarder (the yardstick, probed the same way: bench/probed_forwarder.py), the hub
   as shipped, the hub with automatic GC disabled (the most any GC setting can win), the hub on
   SQLite synchronous=NORMAL (what the fsync of each group commit costs) and the hub with a
   250 ms live hold (fewer envelopes stored because an ack came late). `--repeats` runs the
   whole list again, alternating.
3. Prints p50/p99 per run beside what the probes saw in that very run: loop turns longer than 5,
   10 and 20 ms, the longest, GC pauses per generation, the group commits' p99 and how long a job
   waited for its commit. Writes bench/results/tail.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.probed_server import probe_signal
from bench.relay import (
    ENVELOPE_BYTES,
    HUB_ENV,
    LAST_BASELINE_PID,
    LOADS,
    RESULTS,
    StepResult,
    _with_receivers,
    baseline_links,
    baseline_server,
    header,
    hub_accounts,
    hub_links,
    machine,
    run_bench,
    run_step,
    step_up,
    sustained,
)
from signalling.protocol import b64encode
from tests.hub.world import World
from tests.support.server import RunningServer

OUT = RESULTS.with_name("tail.json")
VARIANTS: dict[str, dict[str, str]] = {
    "hub": {},
    "hub gc-off": {"PEERPOST_PROBE_GC": "disabled"},
    "hub young=50k": {"PEERPOST_PROBE_GC": "threshold=50000"},  # the young threshold before 15k
    "hub NORMAL": {"PEERPOST_SQLITE_SYNCHRONOUS": "NORMAL"},
}


async def forwarder_probed(
    pairs: int, rate: float, seconds: float, envelope: str
) -> tuple[StepResult, dict[str, Any]]:
    """The bare forwarder at the rate, with the same loop-lag and GC probes inside it."""
    with tempfile.TemporaryDirectory(prefix="peerpost-tail-") as tmp:
        out = Path(tmp) / "probe.json"
        with baseline_server("bench.probed_forwarder:app", {"PEERPOST_PROBE_OUT": str(out)}) as ws_url:
            pid = LAST_BASELINE_PID[0]
            links = await baseline_links(ws_url, pairs, envelope)
            await _with_receivers(links, lambda box: run_step(links, rate, 1.0, box))  # warm-up
            links = await baseline_links(ws_url, pairs, envelope)
            await asyncio.to_thread(probe_signal, pid, signal.SIGUSR1)
            result: StepResult = await _with_receivers(links, lambda box: run_step(links, rate, seconds, box))
            probe = await asyncio.to_thread(probe_signal, pid, signal.SIGUSR2, out)
    assert probe is not None
    return result, probe


async def hub_probed(
    name: str, extra_env: dict[str, str], pairs: int, rate: float, seconds: float, envelope: str
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="peerpost-tail-") as tmp:
        out = Path(tmp) / "probe.json"
        env = {**HUB_ENV, "PEERPOST_PROBE_OUT": str(out), **extra_env}
        async with (
            RunningServer(Path(tmp) / "hub", env=env, module="bench.probed_server") as server,
            World(server.url, server.ws_url) as world,
        ):
            accounts = await hub_accounts(world, pairs)
            links = await hub_links(server.ws_url, accounts, envelope)
            # A short warm-up at the rate (caches, first batches), then the measured run.
            await _with_receivers(links, lambda box: run_step(links, rate, 1.0, box))
            links = await hub_links(server.ws_url, accounts, envelope)
            await asyncio.to_thread(probe_signal, server, signal.SIGUSR1)
            result: StepResult = await _with_receivers(links, lambda box: run_step(links, rate, seconds, box))
            probe = await asyncio.to_thread(probe_signal, server, signal.SIGUSR2, out)
    assert probe is not None
    print(_row(name, result, probe), flush=True)
    load = os.getloadavg()
    return {"name": name, "env": extra_env, "result": result.__dict__, "probe": probe, "load": load}


def _row(name: str, r: StepResult, probe: dict[str, Any]) -> str:
    head = f"{name:<12} {r.offered:>7.0f} {r.p50_ms:>7.2f} {r.p99_ms:>8.2f}"
    turns = probe["loop_turns_over_ms"]
    gcs = probe["gc"]
    n = probe["gc_collections_by_stats"]
    return (
        head
        + f" {turns['5']:>5} {turns['10']:>5} {turns['20']:>5} {probe['loop_lag_ms']['max']:>7.1f}"
        + f" {n[0]:>5}/{gcs['0']['max']:<5.1f} {n[1]:>4}/{gcs['1']['max']:<5.1f}"
        + f" {n[2]:>3}/{gcs['2']['max']:<6.1f}"
        + f" {probe['writer_batches']['commit_ms']['p99']:>7.1f} {probe['writer_job_wait_ms']['p99']:>7.1f}"
        + f" {probe['holds_stored']:>7}"
    )


async def main(args: argparse.Namespace) -> dict[str, Any]:
    envelope = b64encode(os.urandom(ENVELOPE_BYTES))
    sweep: list[StepResult] = []
    rate = args.rate
    if rate is None:
        header("tail: the hub's saturation first", args.pairs, 2.0)
        with tempfile.TemporaryDirectory(prefix="peerpost-tail-") as tmp:
            async with (
                RunningServer(Path(tmp) / "hub", env=HUB_ENV) as server,
                World(server.url, server.ws_url) as world,
            ):
                accounts = await hub_accounts(world, args.pairs)
                links = await hub_links(server.ws_url, accounts, envelope)
                sweep = await _with_receivers(links, lambda box: step_up("hub", links, 2.0, box, LOADS))
        rate = sustained(sweep) / 2
    print(
        f"\ntail at {rate:.0f} msgs/s offered, {args.seconds:g} s per run, {args.pairs} pairs "
        f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)"
    )
    print(
        f"{'run':<12} {'offered':>7} {'p50 ms':>7} {'p99 ms':>8} {'>5ms':>5} {'>10ms':>5} {'>20ms':>5}"
        f" {'maxlag':>7} {'gc0 n/max':>11} {'gc1 n/max':>10} {'gc2 n/max':>10} {'commit99':>7}"
        f" {'wait99':>7} {'expired':>7}"
    )
    runs: list[dict[str, Any]] = []
    for _ in range(args.repeats):
        base, base_probe = await forwarder_probed(args.pairs, rate, args.seconds, envelope)
        print(_row("forwarder", base, base_probe), flush=True)
        runs.append(
            {"name": "forwarder", "result": base.__dict__, "probe": base_probe, "load": os.getloadavg()}
        )
        for name, extra in VARIANTS.items():
            runs.append(await hub_probed(name, extra, args.pairs, rate, args.seconds, envelope))
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "config": {"pairs": args.pairs, "seconds": args.seconds, "rate": rate, "variants": VARIANTS},
        "sweep": [s.__dict__ for s in sweep],
        "runs": runs,
    }


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per measured run")
    parser.add_argument(
        "--rate", type=float, default=None, help="offered msgs/s (default: half of saturation)"
    )
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", type=Path, default=OUT)
    run_bench(main(cli_args := parser.parse_args()), cli_args.out)


if __name__ == "__main__":
    cli()
