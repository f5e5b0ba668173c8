"""`python -m tests.network.bed` / `scripts/nat-bed`: the bed by hand, one scenario at a time."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from tests.network.bed import Bed, sigterm_as_exit, sweep_stale_runs, unavailable_reason
from tests.network.probe import run_raw_probe
from tests.network.runs import run_peerpost
from tests.network.scenarios import SCENARIOS


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.network.bed",
        description="Build the NAT bed per scenario, show which path it takes, tear it down.",
    )
    parser.add_argument(
        "--scenario", choices=sorted(SCENARIOS), action="append", help="repeatable; default all"
    )
    parser.add_argument("--peerpost", action="store_true", help="also run real PeerPost peers and server")
    parser.add_argument("--keep", action="store_true", help="keep each bed up until Enter is pressed")
    parser.add_argument("--sweep", action="store_true", help="only remove namespaces of crashed runs")
    args = parser.parse_args(argv)
    reason = unavailable_reason()
    if reason:
        print(f"skipped: {reason}")
        return 0
    if args.sweep:
        print("removed:", " ".join(sweep_stale_runs()) or "nothing")
        return 0
    failures = 0
    with sigterm_as_exit():
        for name in args.scenario or list(SCENARIOS):
            scenario = SCENARIOS[name]
            print(f"{name}: expected {scenario.expected}")
            with Bed(scenario.lans()) as bed:
                result = run_raw_probe(bed, scenario)
                ok = scenario.raw_outcome_ok(result)
                failures += not ok
                print(f"  raw aiortc  {'ok ' if ok else 'BAD'} {result.summary()}")
                if args.keep:
                    print(f"  bed {bed.run} is up: {' '.join(bed._res.netns)}; press Enter to tear it down")
                    input()
            if args.peerpost:
                with Bed(scenario.lans()) as bed:
                    outcome = run_peerpost(bed, scenario)
                    pair = outcome.pair_alice
                    link = f"open over {pair['path']}" if outcome.link_opened and pair else "none"
                    print(
                        f"  PeerPost    link {link}"
                        f", paths {sorted(set(map(str, outcome.paths + outcome.paths_after_drop)))}"
                        f", set-up {outcome.setup_ms:.0f} ms, latency p50 {outcome.p50():.1f} ms"
                        f", lost {len(outcome.lost)}"
                    )
    return 1 if failures else 0
