"""Against what a self-hoster would run instead: the bare forwarder, PeerPost's hub and Prosody.

    python -m bench.peers [--pairs 20] [--step-seconds 2] [--offline-envelopes 20000] [--rounds 1]

One run, loopback only, bounded in count and time, the same load for all three:
1. the bare FastAPI forwarder (bench/forwarder.py), the ceiling of a Python relay on this stack;
2. PeerPost's hub (`python -m signalling serve`, SQLite synchronous=FULL, receivers ack);
3. Debian's Prosody (bench/prosody.py: a generated config in a temporary folder, epoll,
   TCP_NODELAY, internal storage, mod_offline), accounts registered in band and driven by
   bench/xmpp.py, a lean raw-stanza asyncio client: one `<message/>` per envelope, to the bare JID
   of an available receiver.

Each system runs the sweep of bench/relay.py (the same pairs, 512-byte envelopes base64-encoded,
offered load stepped up until two steps fall below 80 %), then a run at half of its own
saturation. Offline storage: receivers away, senders pipeline envelopes; the hub counts
`accepted` (answered after the group commit, fsync on SQLite FULL), Prosody counts stanzas handled
before a XEP-0199 ping's answer (mod_offline appends to a flat file, no fsync), checked against
what its offline archive holds afterwards.

Prints each step, then one table (three rows), and writes bench/results/peers.json. Goals (issue
16): the hub at or above Prosody's saturation, its p99 at half saturation at or below Prosody's.
`--rounds 2` alternates the systems (A B C A B C) to see how much the box's noise moves them.
`--compare-warm` also runs the hub with its reach warm-up off (`PEERPOST_REACH_WARM_LIMIT=0`)
just before the usual hub, and prints both hubs' first sweep step side by side (issue 16: the
first step's p99 was each sender's first send waiting for its permission queries).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import time
from pathlib import Path
from typing import Any

from bench import prosody as prosody_server
from bench.relay import (
    ENVELOPE_BYTES,
    HUB_ENV,
    LOADS,
    RESULTS,
    HubRun,
    Link,
    StepResult,
    _with_receivers,
    baseline_sweep,
    header,
    hub_run,
    machine,
    run_bench,
    run_step,
    step_up,
    sustained,
)
from bench.xmpp import XmppClient
from signalling.protocol import b64encode

OUT = RESULTS.with_name("peers.json")
PASSWORD = "bench-password"  # loopback only, a throwaway server


async def _login(
    server: prosody_server.RunningProsody, name: str, *, register: bool = True, available: bool = True
) -> XmppClient:
    return await XmppClient.login(
        "127.0.0.1", server.port, server.domain, name, PASSWORD, register=register, available=available
    )


async def prosody_links(
    server: prosody_server.RunningProsody, pairs: int, envelope: str, *, register: bool
) -> list[Link]:
    links = []
    for i in range(pairs):
        sender = await _login(server, f"s{i}", register=register)
        receiver = await _login(server, f"r{i}", register=register)
        prefix = f"<message to='r{i}@{server.domain}' type='chat' id='"
        suffix = f"'><body>{envelope}</body></message>"
        links.append(
            Link(
                sender,
                receiver,
                lambda mid, p=prefix, s=suffix: p + mid + s,
                message_id_of=lambda stanza: stanza.get("id"),
            )
        )
    return links


async def prosody_offline(
    server: prosody_server.RunningProsody, pairs: int, total: int, envelope: str
) -> dict[str, Any]:
    """Receivers registered and away: each message goes to mod_offline; a ping closes each batch."""
    per_sender = total // pairs
    batch = 64
    window = 4  # batches in flight per sender: 256 stanzas, as the hub's mailbox phase
    for i in range(pairs):  # register the away receivers, then leave
        await (await _login(server, f"away{i}", available=False)).close()
    senders = [await _login(server, f"offline-sender{i}") for i in range(pairs)]

    async def one(client: XmppClient, to: str) -> None:
        credit = asyncio.Semaphore(window)
        prefix = f"<message to='{to}' type='chat' id='"
        suffix = f"'><body>{envelope}</body></message>"
        pings: list[asyncio.Task[None]] = []
        for _ in range(per_sender // batch):
            await credit.acquire()
            await client.send("".join(prefix + secrets.token_hex(16) + suffix for _ in range(batch)))
            ping = asyncio.create_task(client.ping())
            ping.add_done_callback(lambda _t: credit.release())
            pings.append(ping)
        await asyncio.gather(*pings)

    sent = (per_sender // batch) * batch * pairs
    start = time.perf_counter()
    try:
        await asyncio.gather(*(one(c, f"away{i}@{server.domain}") for i, c in enumerate(senders)))
        seconds = time.perf_counter() - start
    finally:
        for client in senders:
            await client.close()
    stored = sum(server.offline_stored(f"away{i}") for i in range(pairs))
    return {"envelopes": sent, "stored": stored, "seconds": seconds, "per_second": sent / seconds}


async def prosody_run(
    pairs: int, step_seconds: float, loads: list[int], envelope: str, offline_envelopes: int
) -> HubRun:
    with prosody_server.RunningProsody() as server:
        links = await prosody_links(server, pairs, envelope, register=True)
        steps = await _with_receivers(links, lambda box: step_up("prosody", links, step_seconds, box, loads))
        saturation = sustained(steps)
        await asyncio.sleep(3.0)  # pacing: let it work off the backlog of the saturated step
        links = await prosody_links(server, pairs, envelope, register=False)
        half = await _with_receivers(
            links, lambda box: run_step(links, saturation / 2, step_seconds * 3, box)
        )
        print(half.row("pros@half"), flush=True)
        offline = await prosody_offline(server, pairs, offline_envelopes, envelope)
        print(
            f"prosody offline storage (recipients away): {offline['per_second']:.0f} messages/s "
            f"({offline['envelopes']} in {offline['seconds']:.2f} s; {offline['stored']} in its archive)",
            flush=True,
        )
        if offline["stored"] != offline["envelopes"]:
            raise RuntimeError(
                f"mod_offline holds {offline['stored']} of {offline['envelopes']} messages:\n{server.log}"
            )
    return HubRun(steps, saturation, half, offline)


def _step(s: StepResult) -> dict[str, Any]:
    return s.__dict__


def _summary_row(name: str, sat: float, half: StepResult | None, store: str, note: str) -> str:
    at_half = f"{half.p50_ms:>7.2f} {half.p99_ms:>8.2f}" if half else f"{'-':>7} {'-':>8}"
    return f"{name:<10} {sat:>9.0f} {at_half} {store:>12}  {note}"


async def main(args: argparse.Namespace) -> dict[str, Any]:
    loads = [load for load in LOADS if load <= args.max_load]
    envelope = b64encode(os.urandom(ENVELOPE_BYTES))
    header(f"peers benchmark (prosody {prosody_server.version()})", args.pairs, args.step_seconds)
    rounds: list[dict[str, Any]] = []
    for round_no in range(args.rounds):
        load = {"start": os.getloadavg()}
        base = await baseline_sweep(args.pairs, args.step_seconds, loads, envelope)
        load["after_baseline"] = os.getloadavg()
        cold = None
        if args.compare_warm:
            cold_env = {**HUB_ENV, "PEERPOST_REACH_WARM_LIMIT": "0"}
            cold = await hub_run(
                args.pairs, args.step_seconds, loads, envelope, args.offline_envelopes, cold_env, "hub-cold"
            )
            load["after_hub_cold"] = os.getloadavg()
        hub = await hub_run(args.pairs, args.step_seconds, loads, envelope, args.offline_envelopes)
        load["after_hub"] = os.getloadavg()
        pros = await prosody_run(args.pairs, args.step_seconds, loads, envelope, args.offline_envelopes)
        load["after_prosody"] = os.getloadavg()
        rounds.append(
            {"round": round_no, "baseline": base, "hub": hub, "hub_cold": cold, "prosody": pros, "load": load}
        )

    print(
        f"\n{'system':<10} {'sat msg/s':>9} {'p50@½':>7} {'p99@½ ms':>8} {'offline/s':>12}  "
        "(saturation: highest rate delivered at >= 80 % of offered; @½: at half of its own)"
    )
    for r in rounds:
        base, hub, pros = r["baseline"], r["hub"], r["prosody"]
        print(_summary_row("forwarder", sustained(base), None, "-", "no auth, no store"))
        print(
            _summary_row(
                "hub",
                hub.saturation,
                hub.half,
                f"{hub.mailbox['per_second']:.0f}",
                "acked by receivers; mailbox fsync per group commit",
            )
        )
        print(
            _summary_row(
                "prosody",
                pros.saturation,
                pros.half,
                f"{pros.mailbox['per_second']:.0f}",
                "no receipts; mod_offline flat file, no fsync",
            )
        )
        if r["hub_cold"] is not None:
            first_cold, first_warm = r["hub_cold"].steps[0], hub.steps[0]
            print(
                f"  first step ({first_warm.offered:.0f} msgs/s) p50/p99 ms: reach warm-up off "
                f"{first_cold.p50_ms:.2f}/{first_cold.p99_ms:.2f}, on {first_warm.p50_ms:.2f}/"
                f"{first_warm.p99_ms:.2f}"
            )
        la = r["load"]["start"][0], r["load"]["after_prosody"][0]
        print(f"  (round {r['round'] + 1}: load average {la[0]:.1f} -> {la[1]:.1f} on {os.cpu_count()} CPUs)")
    last = rounds[-1]
    hub, pros = last["hub"], last["prosody"]
    summary = {
        "forwarder_saturation_msgs_per_s": round(sustained(last["baseline"])),
        "hub_saturation_msgs_per_s": round(hub.saturation),
        "prosody_saturation_msgs_per_s": round(pros.saturation),
        "hub_to_prosody": round(hub.saturation / pros.saturation, 3),
        "hub_p99_ms_at_half": round(hub.half.p99_ms, 2),
        "prosody_p99_ms_at_half": round(pros.half.p99_ms, 2),
        "hub_mailbox_writes_per_s": round(hub.mailbox["per_second"]),
        "prosody_offline_per_s": round(pros.mailbox["per_second"]),
        "goals": {
            "hub_saturation>=prosody": hub.saturation >= pros.saturation,
            "hub_p99_at_half<=prosody": hub.half.p99_ms <= pros.half.p99_ms,
        },
    }
    print("goals:", ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in summary["goals"].items()))
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "config": {
            "pairs": args.pairs,
            "envelope_bytes": ENVELOPE_BYTES,
            "step_seconds": args.step_seconds,
            "loads": loads,
            "offline_envelopes": args.offline_envelopes,
            "prosody": {
                "version": prosody_server.version(),
                "config": "epoll, tcp_nodelay, storage internal, mod_offline, no TLS/s2s/limits",
            },
        },
        "rounds": [
            {
                "load": r["load"],
                **{
                    name: {
                        "steps": [_step(s) for s in run.steps],
                        "saturation": run.saturation,
                        "half": _step(run.half),
                        "offline": run.mailbox,
                    }
                    for name in ("hub", "hub_cold", "prosody")
                    if (run := r[name]) is not None
                },
                "baseline": {
                    "steps": [_step(s) for s in r["baseline"]],
                    "saturation": sustained(r["baseline"]),
                },
            }
            for r in rounds
        ],
        "summary": summary,
    }


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=20, help="sender/receiver pairs (default 20)")
    parser.add_argument("--step-seconds", type=float, default=2.0, help="seconds per load step (default 2)")
    parser.add_argument("--max-load", type=int, default=max(LOADS), help="highest offered load to try")
    parser.add_argument(
        "--offline-envelopes", type=int, default=20_000, help="envelopes for the offline phase"
    )
    parser.add_argument("--rounds", type=int, default=1, help="repeat the three systems, alternating")
    parser.add_argument(
        "--compare-warm",
        action="store_true",
        help="also run the hub with its reach warm-up off, first steps side by side",
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    if not prosody_server.available():
        parser.exit(2, "prosody is not installed: run scripts/bootstrap.sh --test (as root)\n")
    with contextlib.suppress(KeyboardInterrupt):
        run_bench(main(args), args.out)


if __name__ == "__main__":
    cli()
