"""`python -m bench.probed_server serve ...`: the real server's CLI with probes inside its process.

For finding where the hub's tail latency comes from (bench/tail.py) without changing the product:
the app is the one `signalling.app.create_app` builds; this wrapper only adds, inside the server
process,

- a loop-lag sampler: a task that asks to wake every 1 ms and records how late it woke, which is
  the length of the loop turn (or GC pause, or GIL wait) that kept it from running;
- `gc.callbacks`: the duration of every collection, per generation;
- the mailbox writer's batches: how long each group commit took and how many jobs it carried,
  and how long each job waited from submission to its commit (what `accepted` and acks wait for).

`SIGUSR1` resets the counters, `SIGUSR2` writes them as JSON to `$PEERPOST_PROBE_OUT` (written to a
temporary name and renamed, so a reader never sees half a file). `$PEERPOST_PROBE_GC` picks the
collector setting applied after the app's own start-up: `product` (leave what the hub set),
`disabled` (no automatic collections: the upper bound of what GC tuning can win), or
`threshold=N` (young threshold N, the other two kept). `$PEERPOST_PROBE_TRACEMALLOC=1` traces
allocations; the report then lists what was allocated since the reset and is still held, by line.
`$PEERPOST_PROBE_PROFILE=1` runs cProfile from the reset; the report lists the 40 functions with the
most own time (cProfile slows the server about twice: read it for shares, not for rates).
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import json
import os
import pstats
import signal
import time
import tracemalloc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI

SAMPLE_INTERVAL = 0.001


class Probe:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.started = time.perf_counter()
        self.lags: list[float] = []  # seconds late, per wake-up
        self.gc: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.batches: list[tuple[float, int]] = []  # (seconds, jobs)
        self.job_waits: list[float] = []
        self.holds_stored = 0  # live holds that ran out (or were hurried) and became rows
        self._gc_started = 0.0
        self.gc_stats = gc.get_stats()  # collections per generation since start: the ground truth
        self.snapshot = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
        if os.environ.get("PEERPOST_PROBE_PROFILE"):  # where the loop's time goes (cProfile)
            self.profile = cProfile.Profile()
            self.profile.enable()

    # gc.callbacks
    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc[info["generation"]].append(time.perf_counter() - self._gc_started)

    async def sample(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(SAMPLE_INTERVAL)
            self.lags.append(time.perf_counter() - before - SAMPLE_INTERVAL)

    def report(self) -> dict[str, Any]:
        seconds = time.perf_counter() - self.started
        lags = sorted(self.lags)
        gc_all = [d for durations in self.gc.values() for d in durations]
        waits = sorted(self.job_waits)
        return {
            "seconds": seconds,
            "loop_lag_ms": _dist(lags),
            "loop_turns_over_ms": {str(t): sum(1 for x in lags if x > t / 1000) for t in (2, 5, 10, 20, 50)},
            "loop_lag_over_5ms_total_s": sum(x for x in lags if x > 0.005),
            "gc": {
                str(gen): {**_dist(sorted(d)), "count": len(d), "total_ms": 1000 * sum(d)}
                for gen, d in self.gc.items()
            },
            "gc_collections_by_stats": [
                now["collections"] - then["collections"]
                for now, then in zip(gc.get_stats(), self.gc_stats, strict=True)
            ],
            "gc_total_s": sum(gc_all),
            "gc_share_of_wall": sum(gc_all) / seconds if seconds else 0.0,
            "writer_batches": {
                "count": len(self.batches),
                "commit_ms": _dist(sorted(b[0] for b in self.batches)),
                "jobs_per_batch_mean": (sum(b[1] for b in self.batches) / len(self.batches))
                if self.batches
                else 0.0,
            },
            "writer_job_wait_ms": _dist(waits),
            "holds_stored": self.holds_stored,
            "allocations_since_reset": self._allocations(),
            "profile_top": self._profile_top(),
        }

    def _profile_top(self) -> list[dict[str, Any]]:
        """With $PEERPOST_PROBE_PROFILE: the 40 functions with the most own time since the reset."""
        profile = getattr(self, "profile", None)
        if profile is None:
            return []
        profile.disable()
        stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
        rows = sorted(stats.items(), key=lambda kv: -kv[1][2])[:40]
        return [
            {"where": f"{f}:{line} {name}", "calls": calls, "own_s": own, "cumulative_s": cum}
            for (f, line, name), (_prim, calls, own, cum, _callers) in rows
        ]

    def _allocations(self) -> list[dict[str, Any]]:
        """With $PEERPOST_PROBE_TRACEMALLOC: what was allocated (and is still held) since the reset,
        by the line that allocated it, largest first."""
        if self.snapshot is None:
            return []
        diff = tracemalloc.take_snapshot().compare_to(self.snapshot, "lineno")
        return [
            {"where": str(d.traceback[0]), "bytes": d.size_diff, "blocks": d.count_diff}
            for d in sorted(diff, key=lambda d: -d.size_diff)
            if d.size_diff > 0
        ]


def _dist(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    return {
        "n": len(values),
        "p50": 1000 * values[len(values) // 2],
        "p99": 1000 * values[min(len(values) - 1, int(len(values) * 0.99))],
        "max": 1000 * values[-1],
    }


PROBE = Probe()


def _apply_gc_setting(setting: str) -> None:
    if setting == "disabled":
        gc.disable()
    elif setting.startswith("threshold="):
        _, second, third = gc.get_threshold()
        gc.set_threshold(int(setting.partition("=")[2]), second, third)


def _instrument_writer() -> None:
    from store.mailbox import MailboxWriter

    commit = MailboxWriter._commit
    submit = MailboxWriter._submit

    async def timed_commit(self: MailboxWriter, batch: list[Any]) -> None:
        start = time.perf_counter()
        try:
            await commit(self, batch)
        finally:
            PROBE.batches.append((time.perf_counter() - start, len(batch)))

    async def timed_submit(self: MailboxWriter, job: Any) -> Any:
        start = time.perf_counter()
        job.done.add_done_callback(lambda _f: PROBE.job_waits.append(time.perf_counter() - start))
        return await submit(self, job)

    from signalling.delivery import Delivery

    store_held = Delivery._store_held

    async def counted_store_held(self: Delivery, held: Any) -> None:
        if not held.settled:
            PROBE.holds_stored += 1
        await store_held(self, held)

    Delivery._store_held = counted_store_held  # type: ignore[method-assign]
    MailboxWriter._commit = timed_commit  # type: ignore[method-assign]
    MailboxWriter._submit = timed_submit  # type: ignore[method-assign]


def wrap(app: FastAPI) -> FastAPI:
    """The app with the probes started (and the signals handled) inside its lifespan."""
    inner = app.router.lifespan_context
    out = Path(os.environ.get("PEERPOST_PROBE_OUT", "probe.json"))

    def dump() -> None:
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(PROBE.report(), indent=2))
        tmp.replace(out)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        async with inner(app) as state:
            _apply_gc_setting(os.environ.get("PEERPOST_PROBE_GC", "product"))
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGUSR1, PROBE.reset)
            loop.add_signal_handler(signal.SIGUSR2, dump)
            gc.callbacks.append(PROBE.on_gc)
            sampler = asyncio.create_task(PROBE.sample(), name="probe-loop-lag")
            try:
                yield state
            finally:
                sampler.cancel()
                gc.callbacks.remove(PROBE.on_gc)

    app.router.lifespan_context = lifespan
    return app


def probe_signal(server: Any, signo: int, out: Path | None = None) -> dict[str, Any] | None:
    """SIGUSR1 resets the server's probe; SIGUSR2 (with `out`) makes it write its report, read here.
    `server` is a RunningServer or the pid of a probed process (the forwarder)."""
    pid = server if isinstance(server, int) else server.process.pid
    if out is not None:
        out.unlink(missing_ok=True)
    os.kill(pid, signo)
    if out is None:
        time.sleep(0.05)  # the reset runs on the server's loop; nothing to read back
        return None
    deadline = time.monotonic() + 120  # a tracemalloc snapshot of a big heap takes a while
    while not out.exists():  # polling a file another process writes, with a deadline
        if time.monotonic() > deadline:
            raise RuntimeError(f"the probed process {pid} wrote no report")
        time.sleep(0.02)
    return json.loads(out.read_text())


def main() -> None:
    if os.environ.get("PEERPOST_PROBE_TRACEMALLOC"):
        tracemalloc.start(1)
    import signalling.app
    from signalling.__main__ import main as server_main

    create_app = signalling.app.create_app
    signalling.app.create_app = lambda settings=None: wrap(create_app(settings))  # type: ignore[assignment]
    _instrument_writer()
    server_main()


if __name__ == "__main__":
    main()
