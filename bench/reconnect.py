"""How soon a peer is back after its server returns: the current back-off against the old one.

    python -m bench.reconnect [--rounds 3] [--down 5]

One real server (subprocess, loopback) and two peers in this process, side by side in the same
run: `current` with today's `PeerSettings` defaults (back-off capped at 1.6 s) and `old` with the
previous defaults (base 0.5 s, cap 30 s). Each round kills the server (SIGKILL), leaves it down for
`--down` seconds, restarts it on the same port, and measures from the moment the server listens
again to each peer's hub session being `ready` again. The UI's goal: back within 2 s. Prints a
table and writes bench/results/reconnect.json. Network: loopback only, no ICE servers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from peer import Peer, PeerSettings, Profile  # noqa: E402
from tests.support.keys import fixed_device_keys  # noqa: E402
from tests.support.server import RunningServer  # noqa: E402

PASSWORD = "benchmark password"
GOAL_S = 2.0
RESULTS = REPO_ROOT / "bench" / "results" / "reconnect.json"


def settings(n: int) -> PeerSettings:
    return PeerSettings(
        ice_servers=(), host_addresses=("127.0.0.1",), device_keys=fixed_device_keys(n), scrypt_n=1 << 10
    )


async def back_after(peer: Peer, start: float) -> float:
    assert await peer.wait_online(120), "the peer did not come back within 120 s"
    return time.monotonic() - start


async def run(rounds: int, down: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="peerpost-bench-reconnect-") as tmp:
        root = Path(tmp)
        server = RunningServer(root / "server", env={"PEERPOST_PRESENCE_GRACE_SECONDS": "0.2"})
        await asyncio.to_thread(server.start)
        current = Peer(Profile.at(root / "current"), server.url, settings=settings(0))
        old = Peer(
            Profile.at(root / "old"),
            server.url,
            settings=replace(settings(1), reconnect_base=0.5, reconnect_cap=30.0),
        )
        results: dict[str, list[float]] = {"current": [], "old": []}
        try:
            await current.register("current", "current@example.org", PASSWORD)
            await old.register("old", "old@example.org", PASSWORD)
            assert await current.wait_online(10) and await old.wait_online(10)
            for i in range(rounds):
                await asyncio.to_thread(server.kill)
                await asyncio.sleep(down)  # the outage itself: what the back-off has to sit through
                await asyncio.to_thread(server.restart)
                if server.url != current.server_url:
                    raise SystemExit("the server came back on another port; run again")
                start = time.monotonic()
                now, before = await asyncio.gather(back_after(current, start), back_after(old, start))
                results["current"].append(now)
                results["old"].append(before)
                print(f"round {i + 1}: current {now:.2f} s, old {before:.2f} s", flush=True)
        finally:
            await current.close()
            await old.close()
            await asyncio.to_thread(server.stop)
    summary = {
        name: {"median_s": statistics.median(v), "max_s": max(v), "runs_s": [round(x, 3) for x in v]}
        for name, v in results.items()
    }
    return {
        "benchmark": "reconnect",
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "rounds": rounds,
        "down_s": down,
        "goal_s": GOAL_S,
        "python": platform.python_version(),
        "results": summary,
        "ratio_old_over_current": summary["old"]["median_s"] / max(summary["current"]["median_s"], 1e-6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--down", type=float, default=5.0, help="seconds the server stays down")
    args = parser.parse_args()
    report = asyncio.run(run(args.rounds, args.down))
    print()
    print(f"| back-off (server down {args.down:g} s) | median s | max s | runs s |")
    print("|---|---|---|---|")
    for name, label in (("current", "current (cap 1.6 s)"), ("old", "old (cap 30 s)")):
        r = report["results"][name]
        runs = ", ".join(f"{x:.2f}" for x in r["runs_s"])
        print(f"| {label} | {r['median_s']:.2f} | {r['max_s']:.2f} | {runs} |")
    print(f"goal: back within {GOAL_S:g} s; old/current median = {report['ratio_old_over_current']:.1f}x")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
