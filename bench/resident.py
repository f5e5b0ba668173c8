"""The resident node: `peerpost send` wall time with the node running, node start-up, node memory.

    python -m bench.resident [--sends 50] [--links 10] [--starts 5]

Starts a real server (subprocess, loopback), registers alice and bob through the CLI with their
own profiles, keeps both nodes running, then measures, in one run and side by side:

- `peerpost send` wall time, process start to exit, over --sends sends to bob while his node is up
  (median and p95; the path of each send, which should be "direct"), against two floors measured
  in the same run: the interpreter importing the CLI, and `peerpost status` (one round trip to
  the node, no peer work);
- node start-up: the first command on a stopped profile (`whoami`), spawn to answer, over --starts;
- node memory (VmRSS) with one open link, and with --links more open links (that many extra
  users, each a `Peer` in this process with freshly made keys, each sent one message by alice).

Prints a table and writes bench/results/resident.json. Loopback only: no ICE servers, host
candidates 127.0.0.1. The goal from issue 10: send ≤ 150 ms median, direct.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from crypto.keys import generate_device_keys  # noqa: E402
from peer import Peer, PeerSettings, Profile  # noqa: E402
from tests.support.nodes import node_pid, stop_nodes  # noqa: E402
from tests.support.server import RunningServer  # noqa: E402

PASSWORD = "benchmark password"
RESULTS = REPO_ROOT / "bench" / "results" / "resident.json"
GOAL_MS = 150.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Cli:
    def __init__(self, home: Path) -> None:
        self.env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "PEERPOST_HOME": str(home),
            "PEERPOST_PASSWORD": PASSWORD,
            "PEERPOST_HOST_ADDRESSES": "127.0.0.1",
        }
        self.env.pop("PEERPOST_SERVER", None)
        self.home = home
        self.last_cpu_ms = 0.0  # user + system CPU of the last command: steadier than wall on a busy box

    def run(self, profile: str, *args: str) -> tuple[float, str]:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        done = subprocess.run(
            [str(REPO_ROOT / ".venv" / "bin" / "peerpost"), "--profile", profile, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        wall = (time.perf_counter() - t0) * 1000
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        self.last_cpu_ms = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) * 1000
        if done.returncode != 0:
            raise RuntimeError(f"peerpost {' '.join(args)}: {done.stderr.strip()}")
        return wall, done.stdout

    def rss_kib(self, profile: str) -> int:
        pid = node_pid(self.home / "profiles" / profile)
        assert pid is not None, f"no node for {profile}"
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


def rpc_sends(profile_dir: Path, count: int) -> list[float]:
    """The node's own share: `send` calls over one open socket, no process start."""
    from peer.resident import client

    walls = []
    with client.connect(profile_dir) as node:
        for i in range(count):
            t0 = time.perf_counter()
            node.call("send", to="bob", text=f"rpc {i}")
            walls.append((time.perf_counter() - t0) * 1000)
    return walls


def floor_import(runs: int = 10) -> float:
    walls = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import peer.cli"], cwd=REPO_ROOT, check=True)
        walls.append((time.perf_counter() - t0) * 1000)
    return statistics.median(walls)


async def extra_peers(server_url: str, root: Path, cli: Cli, count: int) -> list[Peer]:
    """`count` more users, each a Peer here, each a contact of alice with an open link to her node."""
    settings = PeerSettings(ice_servers=(), host_addresses=("127.0.0.1",), scrypt_n=2**14)
    keys = await asyncio.gather(*(asyncio.to_thread(generate_device_keys) for _ in range(count)))
    peers = []
    for i, k in enumerate(keys):
        peer = Peer(
            Profile.at(root / f"extra{i}"),
            server_url,
            settings=PeerSettings(**{**settings.__dict__, "device_keys": k}),
        )
        await peer.register(f"extra{i}", f"extra{i}@example.org", PASSWORD)
        await peer.wait_online(10)
        await peer.add_contact("alice")
        peers.append(peer)
    for i in range(count):
        await asyncio.to_thread(cli.run, "a", "contacts", "accept", f"extra{i}")
    for i in range(count):
        await asyncio.to_thread(cli.run, "a", "send", f"extra{i}", "hello")
    return peers


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="peerpost-bench-resident-") as tmp:
        server = RunningServer(Path(tmp) / "server", env={"PEERPOST_PRESENCE_GRACE_SECONDS": "0.2"})
        await asyncio.to_thread(server.start)
        cli = Cli(Path(tmp) / "home")
        peers: list[Peer] = []
        try:
            await asyncio.gather(
                asyncio.to_thread(
                    cli.run, "a", "--server", server.url, "register", "alice", "alice@example.org"
                ),
                asyncio.to_thread(cli.run, "b", "--server", server.url, "register", "bob", "bob@example.org"),
            )
            await asyncio.to_thread(cli.run, "a", "contacts", "add", "bob")
            await asyncio.to_thread(cli.run, "b", "contacts", "accept", "alice")

            starts = []
            for _ in range(args.starts):
                await asyncio.to_thread(cli.run, "a", "stop")
                starts.append((await asyncio.to_thread(cli.run, "a", "whoami"))[0])

            await asyncio.to_thread(cli.run, "a", "send", "bob", "warm-up")
            walls, paths, cpus = [], [], []
            for i in range(args.sends):
                wall, out = await asyncio.to_thread(cli.run, "a", "--json", "send", "bob", f"bench {i}")
                walls.append(wall)
                cpus.append(cli.last_cpu_ms)
                paths.append(json.loads(out)["path"])
            status_walls = [(await asyncio.to_thread(cli.run, "a", "status"))[0] for _ in range(10)]
            rpc_walls = await asyncio.to_thread(rpc_sends, cli.home / "profiles" / "a", args.sends)
            import_floor = await asyncio.to_thread(floor_import)
            rss_one = cli.rss_kib("a")
            peers = await extra_peers(server.url, Path(tmp) / "extra", cli, args.links)
            _, status_out = await asyncio.to_thread(cli.run, "a", "--json", "status")
            open_links = sum(1 for link in json.loads(status_out)["links"] if link["open"])
            rss_many = cli.rss_kib("a")
        finally:
            for peer in peers:
                await peer.close()
            await asyncio.to_thread(stop_nodes, Path(tmp) / "home")
            await asyncio.to_thread(server.stop)
    return {
        "sends": args.sends,
        "send_ms": {"median": statistics.median(walls), "p95": percentile(walls, 0.95), "all": walls},
        "send_cpu_ms_median": statistics.median(cpus),
        "send_paths": {p: paths.count(p) for p in sorted(set(map(str, paths)))},
        "status_ms_median": statistics.median(status_walls),
        "rpc_send_ms": {"median": statistics.median(rpc_walls), "p95": percentile(rpc_walls, 0.95)},
        "import_cli_ms_median": import_floor,
        "node_start_ms": {"median": statistics.median(starts), "all": starts},
        "rss_mib_one_link": rss_one / 1024,
        "rss_mib_many_links": rss_many / 1024,
        "open_links": open_links,
        "goal_send_ms": GOAL_MS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sends", type=int, default=50)
    parser.add_argument("--links", type=int, default=10)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()
    try:
        import uvloop

        result = uvloop.run(measure(args))
    except ImportError:
        result = asyncio.run(measure(args))
    result["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result["load_average"] = os.getloadavg()
    result["machine"] = (
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} cores"
    )
    send = result["send_ms"]
    rows = [
        (
            "`peerpost send`, node running, median / p95",
            f"{send['median']:.0f} / {send['p95']:.0f} ms",
            f"≤ {GOAL_MS:.0f} ms",
        ),
        ("CPU of one `peerpost send` process (user + system)", f"{result['send_cpu_ms_median']:.0f} ms", "—"),
        ("paths of those sends", ", ".join(f"{k} {v}" for k, v in result["send_paths"].items()), "direct"),
        (
            "the node's share: `send` call on an open socket",
            f"{result['rpc_send_ms']['median']:.1f} / {result['rpc_send_ms']['p95']:.1f} ms",
            "—",
        ),
        ("floor: `peerpost status` (one round trip)", f"{result['status_ms_median']:.0f} ms", "—"),
        ("floor: interpreter + `import peer.cli`", f"{result['import_cli_ms_median']:.0f} ms", "—"),
        ("node start-up (first command, stopped node)", f"{result['node_start_ms']['median']:.0f} ms", "—"),
        ("node memory, 1 open link", f"{result['rss_mib_one_link']:.0f} MiB", "—"),
        (f"node memory, {result['open_links']} open links", f"{result['rss_mib_many_links']:.0f} MiB", "—"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"resident node ({result['machine']}, load {result['load_average'][0]:.2f})")
    for name, value, goal in rows:
        print(f"  {name:<{width}}  {value:>18}  {goal}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
