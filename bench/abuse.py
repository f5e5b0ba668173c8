"""Abuse benchmark: what each attack of issue #11 costs the server, and another user, in one run.

    python -m bench.abuse [--seconds 6] [--only slow_reader,ack_flood]

One real server (`python -m signalling serve`, production defaults: bcrypt cost 12, registration
limits, quotas, header deadline, connection caps; only /metrics is turned on) on loopback. A victim
pair (bob -> carol, both online and acking, as real peers) sends one envelope every 20 ms the whole
time; for each phase the table shows the server's peak RSS, its CPU share, and bob's send ->
accepted p50/p99, beside the quiet baseline measured first in the same run (ratios hold on a noisy
box; absolute figures do not). Attackers come from their own loopback addresses (127.0.x.y), like
separate hosts would. Each phase runs `--seconds`; the whole default run takes about two minutes.

Phases (finding numbers of issue #11):
  quiet          nothing but the victim pair
  slow_reader    (1)  700 KB envelopes to the attacker's own second device, which never reads;
                      also RSS 5 s after that socket is gone
  deleted_peer   (2)  a sender writes to a just-deleted account and to a friend, pipelined
  ack_flood      (3)  acks of 1,000 unknown ids per frame, reconnecting after each 4429
  registrations  (4)  30 concurrent registrations (bcrypt 12) from 30 addresses, then again;
                      plus one login's time during the flood
  slowloris      (5)  1,000 half-sent requests from 4 addresses, plus /health's time
  big_bodies     (6)  four concurrent 200 MB POST /users/
  mailbox_fill   (7)  one contact fills the victim carol's mailbox (carol offline for it)
  account_fill   (8)  one account self-sends to 7 own devices until refused (account total
                      scaled to 128 MiB for the run)
  login_guess    (9)  wrong passwords for bob from one address, then bob logs in from another

Writes bench/results/abuse.json. Goals (issue #11): slow_reader grows RSS by <= 300 MB and is back
within 150 MB of quiet 5 s after the close; a login during the registration flood within 2 s; the
victim's sends keep being accepted in every phase.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import secrets
import socket
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import websockets

from signalling.protocol import b64encode
from tests.hub.world import PASSWORD, Account, World
from tests.support.server import REPO_ROOT, RunningServer

RESULTS = REPO_ROOT / "bench" / "results" / "abuse.json"
MiB = 1024 * 1024
SERVER_ENV = {
    "PEERPOST_BCRYPT_ROUNDS": "12",  # production cost: registration floods are about it
    "PEERPOST_REGISTRATIONS_PER_ADDRESS": "10",  # production defaults (tests raise them)
    "PEERPOST_REGISTRATIONS_GLOBAL": "120",
    "PEERPOST_METRICS_ENABLED": "true",
    # Scaled down from 512 MiB so the account_fill phase reaches it in seconds (8 devices x 64 MiB
    # of device quota would allow far more): the per-account total is what refuses.
    "PEERPOST_ACCOUNT_QUOTA_BYTES": str(128 * 1024 * 1024),
    "PEERPOST_PRESENCE_GRACE_SECONDS": "0",
    "PEERPOST_LOG_LEVEL": "error",
}


# ------------------------------------------------------------------------------------------------
# Measuring the server process and the victim
# ------------------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Sample:
    rss_peak: float = 0.0
    cpu_start: float = 0.0
    wall_start: float = 0.0
    cpu_percent: float = 0.0
    latencies: list[float] = field(default_factory=list)
    victim_refused: int = 0
    notes: dict[str, Any] = field(default_factory=dict)


class Victim:
    """bob -> carol, one envelope every 20 ms; carol acks every delivery, as a peer does."""

    def __init__(self, world: World, bob: Account, carol: Account) -> None:
        self.world, self.bob, self.carol = world, bob, carol
        self.sample: Sample | None = None
        self._task: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.tx = await self.world.connect(self.bob)
        self.rx = await self.world.connect(self.carol)
        self._reader = asyncio.create_task(self._ack_loop())
        self._task = asyncio.create_task(self._send_loop())

    async def _ack_loop(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed, asyncio.CancelledError):
            async for raw in self.rx.ws:
                frame = json.loads(raw)
                if frame["type"] == "deliver":
                    await self.rx.ws.send(json.dumps({"type": "ack", "message_id": frame["message_id"]}))

    async def _send_loop(self) -> None:
        envelope = b64encode(os.urandom(512))
        while True:
            ref = secrets.token_hex(4)
            frame = {
                "type": "send",
                "ref": ref,
                "message_id": secrets.token_hex(16),
                "envelope": envelope,
                "recipients": [{"user_id": self.carol.user_id, "device_id": self.carol.device_id}],
            }
            start = time.perf_counter()
            try:
                await self.tx.ws.send(json.dumps(frame))
                async with asyncio.timeout(10):
                    while True:
                        answer = json.loads(await self.tx.ws.recv())
                        if answer.get("ref") == ref:
                            break
            except (TimeoutError, websockets.ConnectionClosed):
                answer = {"type": "error"}
            took = (time.perf_counter() - start) * 1000
            if self.sample is not None:
                if answer["type"] == "accepted":
                    self.sample.latencies.append(took)
                else:
                    self.sample.victim_refused += 1
            await asyncio.sleep(max(0.0, 0.02 - took / 1000))

    async def stop(self) -> None:
        for task in (self._task, self._reader):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.tx.close()
        await self.rx.close()


class Sampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid

    async def measure(
        self, victim: Victim, attack: Callable[[Sample], Awaitable[None]], seconds: float
    ) -> Sample:
        sample = Sample(
            rss_peak=rss_mb(self.pid), cpu_start=cpu_seconds(self.pid), wall_start=time.monotonic()
        )
        victim.sample = sample
        done = asyncio.Event()

        async def watch() -> None:
            while not done.is_set():
                sample.rss_peak = max(sample.rss_peak, rss_mb(self.pid))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.1):
                        await done.wait()

        watcher = asyncio.create_task(watch())
        try:
            async with asyncio.timeout(seconds * 4 + 30):
                await attack(sample)
        except TimeoutError:
            sample.notes["stopped"] = "phase deadline"
        finally:
            elapsed = time.monotonic() - sample.wall_start
            sample.cpu_percent = 100 * (cpu_seconds(self.pid) - sample.cpu_start) / max(elapsed, 1e-6)
            done.set()
            await watcher
            victim.sample = None
        return sample


# ------------------------------------------------------------------------------------------------
# Attacks
# ------------------------------------------------------------------------------------------------


def client_from(server: RunningServer, address: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.url, transport=httpx.AsyncHTTPTransport(local_address=address), timeout=60
    )


class Bed:
    """The server, a world of accounts (each registered from its own address), the victim."""

    def __init__(self, server: RunningServer, seconds: float) -> None:
        self.server = server
        self.seconds = seconds
        self.world = World(server.url, server.ws_url)
        self._n = 0

    async def account(self, devices: int = 1) -> Account:
        self._n += 1
        old = self.world.http
        self.world.http = client_from(self.server, f"127.0.7.{self._n}")
        try:
            return await self.world.account(devices=devices)
        finally:
            await self.world.http.aclose()
            self.world.http = old

    async def metrics(self) -> dict[str, float]:
        text = (await self.world.http.get("/metrics")).text
        return {k: float(v) for k, v in (line.split(" ", 1) for line in text.splitlines() if line)}

    def for_a_while(self) -> float:
        return time.monotonic() + self.seconds


async def quiet(bed: Bed, sample: Sample) -> None:
    await asyncio.sleep(bed.seconds)


async def slow_reader(bed: Bed, sample: Sample) -> None:
    mallory = await bed.account(devices=2)
    sender = await bed.world.connect(mallory, mallory.devices[0])
    stuck = await bed.world.connect(mallory, mallory.devices[1], max_queue=1)
    envelope = os.urandom(700 * 1024)
    sent = accepted = 0
    end = time.monotonic() + bed.seconds * 3  # until the budget closes the stuck socket, at most 3x
    while time.monotonic() < end and sent < 900 and not (sent % 10 == 0 and (await _closed_too_slow(bed))):
        frame = sender.send_frame([(mallory.user_id, mallory.devices[1])], envelope)
        await sender.send(frame)
        answer = await sender.expect(
            ("accepted", "error"), where=lambda f, r=frame["ref"]: f.get("ref") == r, deadline=30
        )
        sent += 1
        accepted += answer["type"] == "accepted"
    seen = await bed.metrics()
    sample.notes.update(
        sent=sent,
        accepted=accepted,
        outbox_peak_socket_mb=round(seen["peerpost_outbox_peak_socket_bytes"] / MiB, 2),
        closed_too_slow=int(seen["peerpost_outbox_closed_too_slow_total"]),
    )
    with contextlib.suppress(Exception):
        stuck.ws.transport.abort()  # the stuck client goes away without a close handshake
    await sender.close()
    await asyncio.sleep(5)
    sample.notes["rss_5s_after_close_mb"] = round(rss_mb(bed.server.process.pid), 1)  # type: ignore[union-attr]


async def _closed_too_slow(bed: Bed) -> bool:
    return (await bed.metrics())["peerpost_outbox_closed_too_slow_total"] > 0


async def deleted_peer(bed: Bed, sample: Sample) -> None:
    end = bed.for_a_while()
    internal = other_ok = other_total = 0
    while time.monotonic() < end:
        sender, gone, friend = await bed.account(), await bed.account(), await bed.account()
        await bed.world.befriend(sender, gone)
        await bed.world.befriend(sender, friend)
        client = await bed.world.connect(sender)
        await client.send(client.send_frame([(gone.user_id, gone.device_id)], b"x" * 256))
        await client.expect(("accepted", "error"), deadline=30)
        await bed.world.http.delete("/users/self", headers=gone.auth)
        frames = [client.send_frame([(gone.user_id, gone.device_id)], b"x" * 256) for _ in range(100)]
        frames += [client.send_frame([(friend.user_id, friend.device_id)], b"y" * 256) for _ in range(100)]
        for frame in frames:
            await client.send(frame)
        friendly = {f["ref"] for f in frames[100:]}
        for _ in frames:
            answer = await client.expect(("accepted", "error"), deadline=30)
            internal += answer.get("code") == "internal"
            if answer["ref"] in friendly:
                other_total += 1
                other_ok += answer["type"] == "accepted"
        await client.close()
    sample.notes.update(friend_sends_accepted=f"{other_ok}/{other_total}", internal_errors=internal)


async def ack_flood(bed: Bed, sample: Sample) -> None:
    flooder = await bed.account()
    ids = [secrets.token_hex(16) for _ in range(1000)]
    frame = json.dumps({"type": "ack", "message_ids": ids})
    end = bed.for_a_while()
    sent = closes = 0
    while time.monotonic() < end:
        client = await bed.world.connect(flooder)
        with contextlib.suppress(websockets.ConnectionClosed):
            while time.monotonic() < end:
                await client.ws.send(frame)
                sent += 1000
        closes += client.ws.close_code == 4429
        with contextlib.suppress(Exception):
            await client.close()
    sample.notes.update(ids_sent=sent, closed_4429=closes)


async def registrations(bed: Bed, sample: Sample) -> None:
    login_times: list[float] = []
    codes: dict[int, int] = {}
    bob = bed.world_bob  # type: ignore[attr-defined]

    async def register(address: str) -> None:
        async with client_from(bed.server, address) as http:
            name = f"flood{secrets.token_hex(4)}"
            r = await http.post(
                "/users/", json={"username": name, "email": f"{name}@example.org", "password": PASSWORD}
            )
            codes[r.status_code] = codes.get(r.status_code, 0) + 1

    async def one_login() -> None:
        async with client_from(bed.server, "127.0.9.1") as http:
            start = time.perf_counter()
            r = await http.post("/token", data={"username": bob.username, "password": PASSWORD})
            login_times.append((time.perf_counter() - start) * 1000 if r.status_code == 200 else float("nan"))

    hashed = bcrypt.hashpw(b"benchmark", bcrypt.gensalt(12))
    start = time.perf_counter()
    await asyncio.to_thread(bcrypt.checkpw, b"benchmark", hashed)
    sample.notes["bcrypt_12_ms_now"] = round((time.perf_counter() - start) * 1000, 1)
    end = bed.for_a_while()
    round_ = 0
    while time.monotonic() < end:
        round_ += 1
        flood = [asyncio.create_task(register(f"127.0.{10 + round_ % 200}.{i + 1}")) for i in range(30)]
        await asyncio.sleep(0.05)
        await one_login()
        await asyncio.gather(*flood)
    sample.notes.update(
        registration_answers=dict(sorted(codes.items())),
        login_during_flood_ms=round(max(login_times), 1) if login_times else None,
    )


async def slowloris(bed: Bed, sample: Sample) -> None:
    held: list[socket.socket] = []
    refused = 0
    loop = asyncio.get_running_loop()
    for i in range(1000):
        s = socket.socket()
        s.setblocking(False)
        s.bind((f"127.0.20.{i % 4 + 1}", 0))
        try:
            await loop.sock_connect(s, (bed.server.host, bed.server.port))
            await loop.sock_sendall(s, b"GET /health HTTP/1.1\r\nHost: x\r\n")
            held.append(s)
        except OSError:
            refused += 1
            s.close()
    health: list[float] = []
    end = bed.for_a_while()
    async with client_from(bed.server, "127.0.9.2") as http:
        while time.monotonic() < end:
            start = time.perf_counter()
            try:
                ok = (await http.get("/health")).status_code == 200
            except httpx.HTTPError:
                ok = False
            health.append((time.perf_counter() - start) * 1000 if ok else float("inf"))
            await asyncio.sleep(0.1)
    for s in held:
        s.close()
    seen = await bed.metrics()
    sample.notes.update(
        held=len(held),
        connect_refused=refused,
        refused_503=int(seen["peerpost_http_refused_connections_total"]),
        timed_out_408=int(seen["peerpost_http_header_timeouts_total"]),
        health_ok=f"{sum(h != float('inf') for h in health)}/{len(health)}",
        health_max_ms=round(max(h for h in health if h != float("inf")), 1)
        if any(h != float("inf") for h in health)
        else None,
    )


async def big_bodies(bed: Bed, sample: Sample) -> None:
    async def post(i: int) -> int:
        _reader, writer = await asyncio.open_connection(
            bed.server.host, bed.server.port, local_addr=(f"127.0.21.{i + 1}", 0)
        )
        writer.write(
            b"POST /users/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"a" * 65536
        sent = 0
        try:
            while sent < 200 * MiB:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                sent += len(chunk)
        except (ConnectionError, OSError):
            pass
        with contextlib.suppress(Exception):
            writer.close()
        return sent

    sent = await asyncio.gather(*(post(i) for i in range(4)))
    sample.notes.update(bytes_sent_mb=[round(s / MiB, 1) for s in sent])
    await asyncio.sleep(max(0.0, bed.seconds - 2))


async def mailbox_fill(bed: Bed, sample: Sample) -> None:
    victim, spammer, friend = await bed.account(), await bed.account(), await bed.account()
    await bed.world.befriend(spammer, victim)
    await bed.world.befriend(friend, victim)
    spam = await bed.world.connect(spammer)
    envelope = os.urandom(700 * 1024)
    answers: dict[str, int] = {}
    end = bed.for_a_while()
    while time.monotonic() < end and answers.get("quota", 0) < 5:
        frame = spam.send_frame([(victim.user_id, victim.device_id)], envelope)
        await spam.send(frame)
        a = await spam.expect(
            ("accepted", "error"), where=lambda f, r=frame["ref"]: f.get("ref") == r, deadline=30
        )
        key = a["type"] if a["type"] == "accepted" else a["code"]
        answers[key] = answers.get(key, 0) + 1
    good = await bed.world.connect(friend)
    ok = 0
    for _ in range(3):
        frame = good.send_frame([(victim.user_id, victim.device_id)], envelope)
        await good.send(frame)
        a = await good.expect(
            ("accepted", "error"), where=lambda f, r=frame["ref"]: f.get("ref") == r, deadline=30
        )
        ok += a["type"] == "accepted"
    sample.notes.update(spammer_answers=answers, friend_accepted=f"{ok}/3")
    await spam.close()
    await good.close()


async def account_fill(bed: Bed, sample: Sample) -> None:
    hoarder = await bed.account(devices=8)
    client = await bed.world.connect(hoarder, hoarder.devices[0])
    own = [(hoarder.user_id, d) for d in hoarder.devices[1:]]
    envelope = os.urandom(700 * 1024)
    stored = 0
    refusal = ""
    end = time.monotonic() + bed.seconds * 3
    while time.monotonic() < end:
        frame = client.send_frame(own, envelope)
        await client.send(frame)
        a = await client.expect(
            ("accepted", "error"), where=lambda f, r=frame["ref"]: f.get("ref") == r, deadline=30
        )
        if a["type"] != "accepted":
            refusal = a["message"][:60]
            break
        stored += len(envelope) * len(own)
    sample.notes.update(stored_mb=round(stored / MiB, 1), refused_with=refusal)
    await client.close()


async def login_guess(bed: Bed, sample: Sample) -> None:
    bob = bed.world_bob  # type: ignore[attr-defined]
    codes: dict[int, int] = {}
    end = time.monotonic() + bed.seconds * 3  # each wrong guess costs a bcrypt check
    async with client_from(bed.server, "127.0.30.1") as guesser:
        while time.monotonic() < end:
            r = await guesser.post("/token", data={"username": bob.username, "password": "wrong password"})
            codes[r.status_code] = codes.get(r.status_code, 0) + 1
            if r.status_code == 429:
                break
    async with client_from(bed.server, "127.0.30.2") as home:
        r = await home.post("/token", data={"username": bob.username, "password": PASSWORD})
    sample.notes.update(guesser_answers=dict(sorted(codes.items())), owner_from_home=r.status_code)


PHASES: list[tuple[str, Callable[[Bed, Sample], Awaitable[None]]]] = [
    ("quiet", quiet),
    ("slow_reader", slow_reader),
    ("deleted_peer", deleted_peer),
    ("ack_flood", ack_flood),
    ("registrations", registrations),
    ("slowloris", slowloris),
    ("big_bodies", big_bodies),
    ("mailbox_fill", mailbox_fill),
    ("account_fill", account_fill),
    ("login_guess", login_guess),
]


# ------------------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def main(args: argparse.Namespace) -> dict[str, Any]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))  # slowloris sockets
    wanted = set(args.only.split(",")) if args.only else None
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="peerpost-abuse-") as tmp:
        server = RunningServer(Path(tmp) / "server", env=SERVER_ENV)
        await asyncio.to_thread(server.start)
        try:
            assert server.process is not None
            bed = Bed(server, args.seconds)
            bob, carol = await bed.account(), await bed.account()
            await bed.world.befriend(bob, carol)
            bed.world_bob = bob  # type: ignore[attr-defined]
            victim = Victim(bed.world, bob, carol)
            await victim.start()
            sampler = Sampler(server.process.pid)
            for name, attack in PHASES:
                if wanted is not None and name not in wanted and name != "quiet":
                    continue
                print(f"  {name} ...", flush=True)
                sample = await sampler.measure(victim, lambda s, a=attack: a(bed, s), args.seconds)
                lat = sample.latencies
                rows.append(
                    {
                        "phase": name,
                        "rss_peak_mb": round(sample.rss_peak, 1),
                        "cpu_percent": round(sample.cpu_percent, 1),
                        "victim_sends": len(lat) + sample.victim_refused,
                        "victim_accepted": len(lat),
                        "victim_p50_ms": round(statistics.median(lat), 2) if lat else None,
                        "victim_p99_ms": round(percentile(lat, 0.99) or 0, 2) if lat else None,
                        "notes": sample.notes,
                    }
                )
            await victim.stop()
            await bed.world.close()
        finally:
            await asyncio.to_thread(server.stop)
    return {
        "benchmark": "abuse",
        "command": "python -m bench.abuse" + (f" --seconds {args.seconds:g}" if args.seconds != 6 else ""),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": os.getloadavg()},
        "phases": rows,
    }


def print_table(report: dict[str, Any]) -> None:
    phases = report["phases"]
    quiet_row = next((r for r in phases if r["phase"] == "quiet"), None)
    head = (
        f"{'phase':<14}{'RSS peak MB':>12}{'CPU %':>8}{'victim ok':>11}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'p99 x quiet':>12}"
    )
    print(head)
    print("-" * len(head))
    for r in phases:
        ratio = ""
        if quiet_row and quiet_row["victim_p99_ms"] and r["victim_p99_ms"]:
            ratio = f"{r['victim_p99_ms'] / quiet_row['victim_p99_ms']:.1f}"
        print(
            f"{r['phase']:<14}{r['rss_peak_mb']:>12.1f}{r['cpu_percent']:>8.1f}"
            f"{str(r['victim_accepted']) + '/' + str(r['victim_sends']):>11}"
            f"{r['victim_p50_ms'] if r['victim_p50_ms'] is not None else '-':>9}"
            f"{r['victim_p99_ms'] if r['victim_p99_ms'] is not None else '-':>9}{ratio:>12}"
        )
    print()
    for r in phases:
        if r["notes"]:
            print(f"{r['phase']:<14}{json.dumps(r['notes'])}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="length of each phase")
    parser.add_argument("--only", default="", help="comma-separated phases (quiet always runs)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    report = asyncio.run(main(args))
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
