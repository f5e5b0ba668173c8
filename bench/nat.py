"""NAT traversal benchmark: every bed scenario, raw aiortc beside PeerPost, as a table and JSON.

    python -m bench.nat [--scenario NAME ...] [--messages N]

For each scenario a fresh bed (namespaces, NATs, coturn) is built and torn down. Two measurements:
- raw aiortc: two bare endpoints exchanging SDP through pipes (the reference: what ICE alone does
  here); set-up = answer applied → channel open; latency = round trip over the channel.
- PeerPost: the real server on the public host and two real peers; set-up = link `connecting` →
  `open` (or, with no direct path, how long the first message took to reach the server);
  latency = one way, sender's send call → receiver's message event (one clock on one machine).
Writes bench/results/nat.json. Needs root, iproute2, iptables, conntrack and coturn.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.network.bed import Bed, sigterm_as_exit, unavailable_reason  # noqa: E402
from tests.network.probe import run_raw_probe  # noqa: E402
from tests.network.runs import run_peerpost  # noqa: E402
from tests.network.scenarios import SCENARIOS  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "nat.json"


def _fmt(value: float | None, unit: str = "ms") -> str:
    if value is None:
        return "-"
    return f"{value / 1000:.2f} s" if value >= 1000 and unit == "ms" else f"{value:.1f} {unit}"


def _median(values: list[float]) -> float | None:
    return sorted(values)[len(values) // 2] if values else None


def run(names: list[str], messages: int) -> dict:
    rows = []
    for name in names:
        scenario = SCENARIOS[name]
        started = time.monotonic()
        with Bed(scenario.lans()) as bed:
            raw = run_raw_probe(bed, scenario, connect_timeout=6.0)
        with Bed(scenario.lans()) as bed:
            outcome = run_peerpost(bed, scenario, messages=messages)
        pair = outcome.pair_alice
        peerpost_path = (
            f"direct/{pair['path']}"
            + (f" ({pair['relay_transport']})" if pair and pair["relay_transport"] else "")
            if outcome.link_opened and pair
            else "mailbox"
        )
        if scenario.drop_mapping and outcome.paths_after_drop:
            peerpost_path += " → " + "/".join(sorted(set(p or "pending" for p in outcome.paths_after_drop)))
        rows.append(
            {
                "scenario": name,
                "expected": scenario.expected,
                "raw_ok": scenario.raw_outcome_ok(raw),
                "raw": {
                    "connected": raw.connected,
                    "setup_ms": raw.setup_ms,
                    "rtt_p50_ms": _median(raw.rtt_ms),
                    "pairs": [r.__dict__ for r in raw.reports],
                    "echo_before_drop": raw.echo_before_drop,
                    "echo_after_drop": raw.echo_after_drop,
                },
                "peerpost_path": peerpost_path,
                "peerpost": outcome.to_dict(),
                "wall_s": round(time.monotonic() - started, 1),
            }
        )
        print(f"  {name}: done in {rows[-1]['wall_s']} s", file=sys.stderr)
    return {
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "messages_per_direct_scenario": messages,
        "rows": rows,
    }


def print_table(result: dict) -> None:
    header = (
        f"{'scenario':<22} {'raw aiortc':<26} {'raw set-up':>10} {'raw rtt':>9} │ "
        f"{'PeerPost path':<24} {'set-up':>9} {'lat p50':>9} {'lat p95':>9} {'lost':>4}"
    )
    print(header)
    print("─" * len(header))
    for row in result["rows"]:
        raw = row["raw"]
        pp = row["peerpost"]
        raw_pairs = raw["pairs"][0] if raw["pairs"] else None
        raw_path = (
            f"{raw_pairs['local_type']}→{raw_pairs['remote_type']}"
            + (f" ({raw_pairs['relay_transport']})" if raw_pairs and raw_pairs["relay_transport"] else "")
            if raw["connected"] and raw_pairs
            else "no connection"
        )
        if raw["echo_after_drop"] is not None:
            raw_path += ", dies on drop" if raw["echo_after_drop"] is False else ", survives drop"
        raw_cols = f"{raw_path:<26} {_fmt(raw['setup_ms']):>10} {_fmt(raw['rtt_p50_ms']):>9}"
        print(
            f"{row['scenario']:<22} {raw_cols} │ "
            f"{row['peerpost_path']:<24} {_fmt(pp['setup_ms']):>9} {_fmt(pp['latency_p50_ms']):>9} "
            f"{_fmt(pp['latency_p95_ms']):>9} {len(pp['lost']):>4}"
        )
        if pp.get("detect_ms") is not None:
            print(f"{'':<22} link failure noticed {_fmt(pp['detect_ms'])} after the NAT dropped its mappings")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.nat", description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    parser.add_argument("--messages", type=int, default=20, help="messages over each open link")
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f"bench.nat skipped: {reason}")
        return 0
    with sigterm_as_exit():
        result = run(args.scenario or list(SCENARIOS), args.messages)
    print_table(result)
    machine = result["machine"]
    print(f"\n{machine['cpus']} CPUs, load average at the end {machine['load_average_at_end']}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {RESULTS.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
