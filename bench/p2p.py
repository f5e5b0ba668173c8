"""PeerPost direct vs relayed: text latency and file throughput, two peer processes and a server.

    python -m bench.p2p [--messages 300] [--file-mb 32]

Starts a real server (subprocess, loopback, its own data dir), registers alice and bob with fixed
test keys, runs bob as a second process (`--role bob`) and alice here, then measures:

- text latency, one way: from alice's `send_text` call to bob's `message` event (both processes
  read the same wall clock), direct and relayed (alice's direct links switched off), against the
  seed's 500 ms bound;
- file throughput: `send_file` direct (to bob's `file_received`, SHA-256 checked), a raw aiortc
  data channel to a third process (`--role raw-sink`) moving the same number of bytes with the same
  chunk size and bufferedAmount thresholds and no crypto, and the blob path (upload + download).

Prints a table and writes bench/results/p2p.json. Network: loopback only, empty iceServers, host
candidates restricted to 127.0.0.1. Uses uvloop when installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402

from peer import Peer, PeerSettings, Profile  # noqa: E402
from peer.hostaddr import restricted_host_addresses  # noqa: E402
from tests.support.keys import fixed_device_keys  # noqa: E402
from tests.support.server import RunningServer  # noqa: E402

PASSWORD = "benchmark password"
SEED_BOUND_MS = 500.0
CHUNK = 65536
HIGH, LOW = 256 * 1024, 64 * 1024
RESULTS = REPO_ROOT / "bench" / "results" / "p2p.json"


def settings(n: int, **kw: Any) -> PeerSettings:
    return PeerSettings(
        ice_servers=(),
        host_addresses=("127.0.0.1",),
        receipts=False,  # one envelope per message: latency of the message itself
        device_keys=fixed_device_keys(n),
        scrypt_n=1 << 10,
        **kw,
    )


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------------
# child roles
# --------------------------------------------------------------------------------------------------


async def role_bob(server_url: str, profile: str) -> None:
    downloads = Path(profile).parent / "bob-downloads"
    async with Peer(Profile.at(profile), server_url, settings=settings(1, download_dir=downloads)) as bob:
        queue = bob.subscribe()
        await bob.unlock(PASSWORD)
        await bob.wait_online(10)
        emit({"type": "ready", "user_id": bob.me.user_id})
        # The orchestrator closing stdin ends the loop. Events are awaited straight from the queue (as
        # `async for e in p.events()` would): a task and an asyncio.wait per event, as this loop
        # once did, added two loop turns of harness time to every measured latency.
        reader = asyncio.ensure_future(_stdin_closed())
        reader.add_done_callback(lambda _: _end_of(queue))
        try:
            while (event := await queue.get()) is not None:
                now = time.time_ns()
                if event.type == "message":
                    m = event.message  # a MessageView
                    if m.kind == "text" and m.text == "answer me":  # a conversation, not one-way:
                        await bob.send_text(m.sender_user, "answer")  # the ratchet leaves prekey form
                        emit({"type": "answered"})
                    elif m.kind == "text" and m.text:
                        _, sent_ns = m.text.split()
                        emit({"type": "text", "latency_us": (now - int(sent_ns)) / 1000, "path": m.path})
                elif event.type == "file_received":
                    digest = await asyncio.to_thread(_sha256, Path(event.path))
                    emit({"type": "file", "recv_ns": now, "size": event.size, "sha256": digest})
        finally:
            reader.cancel()


def _end_of(queue: asyncio.Queue[Any]) -> None:
    with contextlib.suppress(asyncio.QueueFull):  # full: the consumer is behind and will see stdin's end
        queue.put_nowait(None)


async def _stdin_closed() -> None:
    await asyncio.to_thread(sys.stdin.read)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


async def role_raw_sink(total: int) -> None:
    """Answer one offer from stdin; count bytes; report the time the last byte arrived."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    done = asyncio.Event()
    got = 0

    @pc.on("datachannel")
    def on_channel(channel) -> None:  # type: ignore[no-untyped-def]
        @channel.on("message")
        def on_message(message: bytes) -> None:
            nonlocal got
            got += len(message)
            if got >= total:
                done.set()

    offer = json.loads(await asyncio.to_thread(sys.stdin.readline))
    await pc.setRemoteDescription(RTCSessionDescription(**offer))
    with restricted_host_addresses(("127.0.0.1",)):
        await pc.setLocalDescription(await pc.createAnswer())
    emit({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})
    async with asyncio.timeout(300):
        await done.wait()
    emit({"type": "raw_done", "recv_ns": time.time_ns(), "bytes": got})
    await asyncio.to_thread(sys.stdin.read)
    await pc.close()


# --------------------------------------------------------------------------------------------------
# the orchestrator (alice)
# --------------------------------------------------------------------------------------------------


class Child:
    def __init__(self, *args: str) -> None:
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> Child:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.p2p",
            *self.args,
            cwd=REPO_ROOT,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=1 << 20,
        )
        return self

    async def line(self, within: float = 60.0) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        async with asyncio.timeout(within):
            raw = await self.proc.stdout.readline()
        if not raw:
            raise RuntimeError(f"child {self.args[:2]} ended early (code {await self.proc.wait()})")
        return json.loads(raw)

    def send(self, obj: dict[str, Any]) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            async with asyncio.timeout(15):
                await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _merge_text(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [v for b in blocks for v in b["latencies"]]
    paths: dict[str, int] = {}
    for b in blocks:
        for k, v in b["paths"].items():
            paths[k] = paths.get(k, 0) + v
    return {
        "messages": len(latencies),
        "paths": paths,
        "p50_ms": round(percentile(latencies, 50), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "mean_ms": round(statistics.fmean(latencies), 3),
        "max_ms": round(max(latencies), 3),
        "block_p50_ms": [b["p50_ms"] for b in blocks],
    }


async def measure_wire_bytes(alice: Peer, bob_id: int) -> dict[str, int]:
    """Bytes on the wire for one short text to one device: a ratchet message (session running),
    and an envelope v2, each sealed the way the node seals them (same payload encoding)."""
    from crypto.envelope import LocalDevice, Recipient, seal
    from crypto.payload import Text

    parts = alice._parts()  # a bench may look inside: the sizes of what the node would send
    assert parts.pairwise is not None
    device = next(d for d in parts.keyring.devices_of(bob_id))
    text = Text("12 1764582000000000000")  # the bench's own message shape
    ppr = await parts.pairwise.seal(
        [Recipient(bob_id, device.device_id, device.encryption_key)],
        f"u:{bob_id}", text, os.urandom(16).hex(), time.time_ns() // 1_000_000, persistent=False,
    )  # fmt: skip
    local = LocalDevice(alice.me.user_id, alice.me.device_id, parts.keystore.keys)
    v2 = seal(
        text, local, [Recipient(bob_id, device.device_id, device.encryption_key)], f"u:{bob_id}",
        os.urandom(16).hex(), sent_at_ms=time.time_ns() // 1_000_000,
    )  # fmt: skip
    return {"ratchet_ppr": len(ppr[0][0].data), "envelope_v2": len(v2)}


async def measure_text(alice: Peer, bob: Child, bob_id: int, n: int, warmup: int = 10) -> dict[str, Any]:
    latencies: list[float] = []
    paths: dict[str, int] = {}
    for i in range(n + warmup):
        await alice.send_text(bob_id, f"{i} {time.time_ns()}")
        report = await bob.line()
        while report.get("type") != "text":
            report = await bob.line()
        if i >= warmup:
            latencies.append(report["latency_us"] / 1000)
            paths[report["path"]] = paths.get(report["path"], 0) + 1
    return {
        "messages": n,
        "paths": paths,
        "p50_ms": round(percentile(latencies, 50), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        "mean_ms": round(statistics.fmean(latencies), 3),
        "max_ms": round(max(latencies), 3),
        "latencies": latencies,
    }


def measure_crypto(n: int = 200) -> dict[str, Any]:
    """The floor under direct latency: sealing and opening one text for one device, same process,
    with the session caches a running peer has (seal and open) and without (open miss)."""
    from crypto.envelope import LocalDevice, MemorySeenIds, Recipient, open_envelope, seal
    from crypto.payload import Text
    from crypto.sessionkeys import SessionKeyCache, UnwrapCache

    alice_keys, bob_keys = fixed_device_keys(0), fixed_device_keys(1)
    alice = LocalDevice(1, "device-alice", alice_keys)
    bob = LocalDevice(2, "device-bob", bob_keys)
    to_bob = [Recipient(2, "device-bob", bob_keys.encryption_public_der())]
    seen = MemorySeenIds()
    sessions, cache = SessionKeyCache(), UnwrapCache()
    lookup = lambda u, d: alice_keys.identity_public_bytes()  # noqa: E731
    seal_ms, open_ms, miss_ms = [], [], []
    for i in range(n):
        t0 = time.perf_counter()
        envelope = seal(Text(f"{i} {time.time_ns()}"), alice, to_bob, "u:2", session_keys=sessions)
        t1 = time.perf_counter()
        open_envelope(envelope, bob, lookup, seen, unwrap_cache=cache)
        t2 = time.perf_counter()
        open_envelope(envelope, bob, lookup, MemorySeenIds())  # no cache: one RSA decryption
        t3 = time.perf_counter()
        seal_ms.append((t1 - t0) * 1000)
        open_ms.append((t2 - t1) * 1000)
        miss_ms.append((t3 - t2) * 1000)
    return {
        "seal_p50_ms": round(percentile(seal_ms, 50), 3),
        "open_p50_ms": round(percentile(open_ms, 50), 3),
        "open_miss_p50_ms": round(percentile(miss_ms, 50), 3),
        "note": "envelope v2 with the peer's session caches; open_miss = first envelope of a session "
        "(one RSA-4096 OAEP unwrap)",
    }


async def measure_file(alice: Peer, bob: Child, bob_id: int, path: Path, digest: str) -> dict[str, Any]:
    """End to end (send call -> receiver has the checked, decrypted copy on disk), and for the
    direct path also the chunk stream alone (first chunk sent -> last chunk acknowledged), which is
    what the raw channel measurement compares with."""
    events = alice.subscribe()
    started = time.time_ns()
    view = await alice.send_file(bob_id, path)
    report = await bob.line(300)
    while report.get("type") != "file":
        report = await bob.line(300)
    seconds = (report["recv_ns"] - started) / 1e9
    size = (await asyncio.to_thread(path.stat)).st_size
    assert report["sha256"] == digest, "received file does not match"
    stamps = []
    while not events.empty():
        event = events.get_nowait()
        if event is not None and event.type == "file_progress" and event.outgoing and event.via == "direct":
            stamps.append(event)
    alice.unsubscribe(events)
    result: dict[str, Any] = {
        "bytes": size,
        "seconds": round(seconds, 3),
        "mb_per_s": round(size / seconds / 1e6, 2),
        "path": view.path,
        "via": "blob" if view.file and view.file.get("blob_id") else "direct",
    }
    if len(stamps) > 1:
        stream = (stamps[-1].at_ns - stamps[0].at_ns) / 1e9
        result["stream_seconds"] = round(stream, 3)
        result["stream_mb_per_s"] = round(size / stream / 1e6, 2)
    return result


async def measure_raw(total: int) -> dict[str, Any]:
    sink = await Child("--role", "raw-sink", "--bytes", str(total)).start()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        channel = pc.createDataChannel("raw", ordered=True)
        channel.bufferedAmountLowThreshold = LOW
        drained = asyncio.Event()
        channel.on("bufferedamountlow", drained.set)
        opened = asyncio.Event()
        channel.on("open", opened.set)
        with restricted_host_addresses(("127.0.0.1",)):
            await pc.setLocalDescription(await pc.createOffer())
        sink.send({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type})
        answer = await sink.line()
        await pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        async with asyncio.timeout(10):
            await opened.wait()
        payload = os.urandom(CHUNK)
        started = time.time_ns()
        sent = 0
        while sent < total:
            while channel.bufferedAmount > HIGH:
                drained.clear()
                async with asyncio.timeout(30):
                    await drained.wait()
            piece = payload[: min(CHUNK, total - sent)]
            channel.send(piece)
            sent += len(piece)
        report = await sink.line(300)
        seconds = (report["recv_ns"] - started) / 1e9
        return {"bytes": total, "seconds": round(seconds, 3), "mb_per_s": round(total / seconds / 1e6, 2)}
    finally:
        await pc.close()
        await sink.stop()


async def orchestrate(args: argparse.Namespace) -> dict[str, Any]:
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="peerpost-bench-") as tmp:
        root = Path(tmp)
        server = RunningServer(root / "server", env={"PEERPOST_PRESENCE_GRACE_SECONDS": "0.5"})
        await asyncio.to_thread(server.start)
        try:
            async with Peer(
                Profile.at(root / "bob"), server.url, settings=settings(1, online=False)
            ) as bob_setup:
                await bob_setup.register("bob", "bob@example.org", PASSWORD)
                bob_id = bob_setup.me.user_id
            async with Peer(Profile.at(root / "alice"), server.url, settings=settings(0)) as alice:
                await alice.register("alice", "alice@example.org", PASSWORD)
                await alice.add_contact("bob")
                async with Peer(
                    Profile.at(root / "bob"), server.url, settings=settings(1, online=False)
                ) as bob_accept:
                    await bob_accept.unlock(PASSWORD)
                    await bob_accept.accept_contact(alice.me.user_id)
                await alice.wait_online(10)
                bob = await Child(
                    "--role", "bob", "--server", server.url, "--profile", str(root / "bob")
                ).start()
                try:
                    ready = await bob.line()
                    assert ready["type"] == "ready"
                    source = root / "payload.bin"
                    data = os.urandom(args.file_mb * 1024 * 1024)
                    source.write_bytes(data)
                    digest = hashlib.sha256(data).hexdigest()
                    del data

                    answers = alice.subscribe()
                    await alice.send_text(bob_id, "answer me")
                    while (await bob.line())["type"] != "answered":
                        pass
                    while (e := await answers.get()) is not None and e.type != "message":
                        pass
                    alice.unsubscribe(answers)
                    # ratchet (PPR) and envelope v2 in alternating blocks: the same machine load
                    direct_blocks: dict[str, list[dict[str, Any]]] = {"ratchet": [], "envelope_v2": []}
                    for _block in range(4):
                        for kind in ("ratchet", "envelope_v2"):
                            alice.set_ratchet(kind == "ratchet")
                            direct_blocks[kind].append(
                                await measure_text(alice, bob, bob_id, max(args.messages // 4, 20))
                            )
                    alice.set_ratchet(True)
                    direct_text = _merge_text(direct_blocks["ratchet"])
                    direct_v2_text = _merge_text(direct_blocks["envelope_v2"])
                    wire_bytes = await measure_wire_bytes(alice, bob_id)
                    direct_runs = []
                    raw_runs = []
                    for _ in range(args.repeat):  # interleaved, so both see the same machine load
                        direct_runs.append(await measure_file(alice, bob, bob_id, source, digest))
                        raw_runs.append(await measure_raw(args.file_mb * 1024 * 1024))
                    await alice.set_direct(False)
                    relayed_text = await measure_text(alice, bob, bob_id, args.messages)
                    relayed_text.pop("latencies")
                    blob_runs = [
                        await measure_file(alice, bob, bob_id, source, digest) for _ in range(args.repeat)
                    ]
                finally:
                    await bob.stop()
            direct_file, raw_file, blob_file = _median(direct_runs), _median(raw_runs), _median(blob_runs)
        finally:
            await asyncio.to_thread(server.stop)
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "loop": _loop_name(),
            "loadavg_at_start": [round(v, 2) for v in load_start],
            "loadavg_at_end": [round(v, 2) for v in os.getloadavg()],
        },
        "seed_bound_ms": SEED_BOUND_MS,
        "crypto_floor": measure_crypto(),
        "text": {"direct": direct_text, "direct_envelope_v2": direct_v2_text, "relayed": relayed_text},
        "ratchet_vs_v2_direct_p50": round(direct_text["p50_ms"] / direct_v2_text["p50_ms"], 2),
        "bytes_per_message": wire_bytes,
        "file": {"direct": direct_file, "raw_aiortc": raw_file, "blob": blob_file},
        "ratios": {
            "direct_vs_raw": round(direct_file["mb_per_s"] / raw_file["mb_per_s"], 2),
            "direct_stream_vs_raw": round(direct_file.get("stream_mb_per_s", 0) / raw_file["mb_per_s"], 2),
        },
        "targets": {
            "direct_p50_ms": 1.0,
            "direct_p99_ms": 5.0,
            "direct_vs_raw": 0.8,
            "blob_mb_per_s": 50.0,
        },
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median throughput, plus every run's figure."""
    ordered = sorted(runs, key=lambda r: r["mb_per_s"])
    median = {**ordered[len(ordered) // 2], "runs_mb_per_s": [r["mb_per_s"] for r in runs]}
    streams = sorted(r["stream_mb_per_s"] for r in runs if "stream_mb_per_s" in r)
    if streams:
        median["stream_runs"] = [r["stream_mb_per_s"] for r in runs if "stream_mb_per_s" in r]
        median["stream_mb_per_s"] = streams[len(streams) // 2]
    return median


def _loop_name() -> str:
    loop = asyncio.get_running_loop()
    return type(loop).__module__.split(".")[0]


def _runs(entry: dict[str, Any], key: str = "runs_mb_per_s") -> str:
    return " ".join(f"{v:.1f}" for v in entry.get(key, []))


def table(r: dict[str, Any]) -> str:
    t, f = r["text"], r["file"]
    lines = [
        f"PeerPost p2p benchmark ({r['machine']['loop']} loop, {r['machine']['cpus']} cpus)",
        "",
        "text latency, one way (send call -> receiver event)   p50 ms    p99 ms    max ms",
        f"  direct (data channel), ratchet (PPR)               {t['direct']['p50_ms']:>7.3f}  "
        f"{t['direct']['p99_ms']:>8.3f}  {t['direct']['max_ms']:>8.3f}",
        f"  direct, envelope v2 (same run, alternating blocks) {t['direct_envelope_v2']['p50_ms']:>7.3f}  "
        f"{t['direct_envelope_v2']['p99_ms']:>8.3f}  {t['direct_envelope_v2']['max_ms']:>8.3f}",
        f"  ratchet / v2 direct p50: {r['ratchet_vs_v2_direct_p50']:.2f}; bytes per short text: "
        f"ratchet {r['bytes_per_message']['ratchet_ppr']}, "
        f"envelope v2 {r['bytes_per_message']['envelope_v2']}",
        f"  relayed (server, live)                             {t['relayed']['p50_ms']:>7.3f}  "
        f"{t['relayed']['p99_ms']:>8.3f}  {t['relayed']['max_ms']:>8.3f}",
        f"  seed bound                                         {r['seed_bound_ms']:>7.1f}",
        f"  crypto floor: seal {r['crypto_floor']['seal_p50_ms']:.3f} ms + open "
        f"{r['crypto_floor']['open_p50_ms']:.3f} ms (p50, one process, no network; "
        f"open on a session's first envelope {r['crypto_floor']['open_miss_p50_ms']:.3f} ms)",
        "",
        "file throughput (median of runs)                       MB/s   seconds   runs MB/s",
        f"  direct (send_file, encrypted, acked)              {f['direct']['mb_per_s']:>7.2f}  "
        f"{f['direct']['seconds']:>7.2f}   {_runs(f['direct'])}",
        f"  raw aiortc data channel (no crypto)               {f['raw_aiortc']['mb_per_s']:>7.2f}  "
        f"{f['raw_aiortc']['seconds']:>7.2f}   {_runs(f['raw_aiortc'])}",
        f"  blob (upload + download, encrypted)               {f['blob']['mb_per_s']:>7.2f}  "
        f"{f['blob']['seconds']:>7.2f}   {_runs(f['blob'])}",
        f"  direct, chunk stream only (first sent -> last acked) "
        f"{f['direct'].get('stream_mb_per_s', 0):>5.2f}  "
        f"{f['direct'].get('stream_seconds', 0):>7.2f}   {_runs(f['direct'], 'stream_runs')}",
        f"  direct / raw: end to end {r['ratios']['direct_vs_raw']:.2f}, "
        f"stream {r['ratios']['direct_stream_vs_raw']:.2f}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--role", choices=["orchestrator", "bob", "raw-sink"], default="orchestrator")
    parser.add_argument("--server")
    parser.add_argument("--profile")
    parser.add_argument("--bytes", type=int, default=0)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--file-mb", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3, help="file runs per path (the median is reported)")
    args = parser.parse_args()
    runner = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    if args.role == "bob":
        runner(role_bob(args.server, args.profile))
        return
    if args.role == "raw-sink":
        runner(role_raw_sink(args.bytes))
        return
    result = runner(orchestrate(args))
    print(table(result))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {RESULTS.relative_to(REPO_ROOT)}")


if __name__ == "__main__":
    main()
