"""Does password hashing stall the event loop? WebSocket ping round trips with and without logins.

    python -m bench.login_stall [--logins 5] [--rounds 3]

Starts the real server (bcrypt cost 12, the production default) on an ephemeral loopback port, opens
one device socket, and measures ping → pong round trips twice in the same run: quiet (no logins) and
while `--logins` logins hash at once. Side by side, so the ratio holds on a noisy box where absolute
figures do not. Budget (issue 5, moved out of tests/server/test_live_effects.py by issue 12): during
logins, p95 < 50 ms and no ping over 200 ms (one cost-12 hash on the loop would hold a ping ≥ 230 ms).
Prints a table and writes bench/results/login_stall.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import websockets  # noqa: E402

from tests.support.bundles import opaque_bundle  # noqa: E402
from tests.support.server import RunningServer  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "login_stall.json"
PASSWORD = "correct horse battery"
P95_BUDGET_MS = 50.0
MAX_BUDGET_MS = 200.0


async def _account(http: httpx.AsyncClient) -> tuple[str, str]:
    await http.post("/users/", json={"username": "bench", "email": "bench@example.org", "password": PASSWORD})
    token = (await http.post("/token", data={"username": "bench", "password": PASSWORD})).json()[
        "access_token"
    ]
    device_id = f"bench-{secrets.token_hex(4)}"
    body = opaque_bundle(device_id)
    published = await http.post("/me/devices", json=body, headers={"Authorization": f"Bearer {token}"})
    published.raise_for_status()
    return token, device_id


async def _ping(ws: Any) -> float:
    nonce = secrets.token_hex(4)
    start = time.perf_counter()
    await ws.send(json.dumps({"type": "ping", "nonce": nonce}))
    async with asyncio.timeout(10):
        while True:
            frame = json.loads(await ws.recv())
            if frame["type"] == "pong" and frame.get("nonce") == nonce:
                return (time.perf_counter() - start) * 1000


def _summary(rtts: list[float]) -> dict[str, float]:
    ordered = sorted(rtts)
    return {
        "n": len(ordered),
        "median_ms": statistics.median(ordered),
        "p95_ms": ordered[int(len(ordered) * 0.95)],
        "max_ms": ordered[-1],
    }


async def run(logins: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-login-") as tmp:
        async with RunningServer(Path(tmp), env={"PEERPOST_BCRYPT_ROUNDS": "12"}) as server:  # noqa: SIM117 - the client needs .url
            async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
                token, device_id = await _account(http)
                headers = {"Authorization": f"Bearer {token}"}
                async with websockets.connect(
                    f"{server.ws_url}?device_id={device_id}", additional_headers=headers
                ) as ws:
                    quiet: list[float] = []
                    for _ in range(50):
                        quiet.append(await _ping(ws))
                        await asyncio.sleep(0.01)  # the same pacing as under load
                    busy: list[float] = []
                    for _ in range(rounds):
                        tasks = [
                            asyncio.create_task(
                                http.post("/token", data={"username": "bench", "password": PASSWORD})
                            )
                            for _ in range(logins)
                        ]
                        while not all(task.done() for task in tasks):
                            busy.append(await _ping(ws))
                            await asyncio.sleep(0.01)
                        for task in tasks:
                            task.result().raise_for_status()
    return {"quiet": _summary(quiet), "during_logins": _summary(busy)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logins", type=int, default=5, help="concurrent logins per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    measured = asyncio.run(run(args.logins, args.rounds))
    busy = measured["during_logins"]
    result = {
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "logins_at_once": args.logins,
        **measured,
        "budget": {"p95_ms": P95_BUDGET_MS, "max_ms": MAX_BUDGET_MS},
        "met": busy["p95_ms"] < P95_BUDGET_MS and busy["max_ms"] < MAX_BUDGET_MS,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'ping rtt (ms)':<16} {'n':>5} {'median':>8} {'p95':>8} {'max':>8}")
    for name in ("quiet", "during_logins"):
        row = measured[name]
        print(
            f"{name:<16} {row['n']:>5} {row['median_ms']:>8.1f} {row['p95_ms']:>8.1f} {row['max_ms']:>8.1f}"
        )
    verdict = "met" if result["met"] else "MISSED"
    print(f"budget during logins: p95 < {P95_BUDGET_MS:.0f} ms, max < {MAX_BUDGET_MS:.0f} ms: {verdict}")
    print(f"written {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
