"""Drive two `ice_probe` endpoints in a bed: carry offer and answer between them, collect results."""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from tests.network.bed import Bed, BedError
from tests.network.scenarios import Scenario, pair_kind


@dataclass(frozen=True)
class PairSeen:
    local_type: str
    remote_type: str
    relay_transport: str | None
    local_address: str
    remote_address: str

    @property
    def kind(self) -> str:
        return pair_kind(self.local_type, self.remote_type)


@dataclass
class ProbeResult:
    connected: bool
    setup_ms: float | None = None
    rtt_ms: list[float] = field(default_factory=list)
    reports: list[PairSeen] = field(default_factory=list)
    echo_before_drop: bool | None = None  # mapping-dropped only: the path carried a message before
    echo_after_drop: bool | None = None  # ... and after the NAT dropped its mappings

    def summary(self) -> str:
        if not self.connected:
            return "no direct connection"
        pairs = ", ".join(
            f"{r.local_type}->{r.remote_type}"
            + (f" (relay over {r.relay_transport})" if r.relay_transport else "")
            for r in self.reports
        )
        rtt = sorted(self.rtt_ms)[len(self.rtt_ms) // 2] if self.rtt_ms else float("nan")
        text = f"connected in {self.setup_ms:.0f} ms, pairs [{pairs}], rtt p50 {rtt:.2f} ms"
        if self.echo_before_drop is not None:
            text += f"; echo before drop {self.echo_before_drop}, after drop {self.echo_after_drop}"
        return text


class _LineReader:
    """Lines of one process's stdout, readable with a deadline (a thread owns the blocking read)."""

    def __init__(self, stream: IO[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)
        self._lines.put(None)

    def next_json(self, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise BedError(f"no {what} within {timeout:.0f} s") from None
            if line is None:
                raise BedError(f"process ended before its {what}")
            if line.startswith("{"):
                return json.loads(line)


def _start(bed: Bed, host: str, role: str, ice: list[dict], timeout: float) -> subprocess.Popen:
    argv = bed.python_argv(
        "tests.network.ice_probe", "--role", role, "--ice", json.dumps(ice), "--timeout", str(timeout)
    )
    log = open(bed.workdir / f"probe-{host}.log", "w")  # noqa: SIM115 - the child owns it
    try:
        return bed.spawn(host, argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)
    finally:
        log.close()


def ice_servers_for(bed: Bed, scenario: Scenario) -> list[dict]:
    return bed.turn_ice_servers(stun=scenario.stun, turn=scenario.turn)


def run_raw_probe(
    bed: Bed,
    scenario: Scenario,
    *,
    connect_timeout: float = 10.0,
    drop: Callable[[Bed], None] | None = None,
) -> ProbeResult:
    """Connect raw aiortc endpoints on hosts a and b of the bed under the scenario's ICE servers."""
    ice = ice_servers_for(bed, scenario)
    offerer = _start(bed, "a", "offer", ice, connect_timeout)
    answerer = _start(bed, "b", "answer", ice, connect_timeout)
    try:
        out_a, out_b = _LineReader(offerer.stdout), _LineReader(answerer.stdout)  # type: ignore[arg-type]
        startup = 30.0  # imports plus gathering (~5 s more when a STUN server is unreachable)
        offer = out_a.next_json(startup, "offer")
        answerer.stdin.write(json.dumps(offer) + "\n")  # type: ignore[union-attr]
        answerer.stdin.flush()  # type: ignore[union-attr]
        answer = out_b.next_json(startup, "answer")
        offerer.stdin.write(json.dumps(answer) + "\n")  # type: ignore[union-attr]
        offerer.stdin.flush()  # type: ignore[union-attr]
        res_a = out_a.next_json(connect_timeout + 10, "result")
        res_b = out_b.next_json(connect_timeout + 10, "result")
        if scenario.drop_mapping and res_a["connected"]:
            before = _echo(offerer, out_a, within=3.0)
            (drop or (lambda b: b.drop_udp_mappings("A")))(bed)
            after = _echo(offerer, out_a, within=3.0)
    finally:
        for proc in (offerer, answerer):
            if proc.stdin:
                proc.stdin.close()
        for proc in (offerer, answerer):
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
    connected = bool(res_a["connected"] and res_b["connected"])
    result = ProbeResult(connected=connected)
    if connected:
        result.setup_ms = res_a["setup_ms"]
        result.rtt_ms = res_a["rtt_ms"]
        result.reports = [PairSeen(**res["pair"]) for res in (res_a, res_b) if res.get("pair")]
        if scenario.drop_mapping:
            result.echo_before_drop, result.echo_after_drop = before, after
    return result


def _echo(offerer: subprocess.Popen, out: _LineReader, within: float) -> bool:
    """Ask the offerer to send one message over its channel; True when the echo came back."""
    offerer.stdin.write(json.dumps({"cmd": "echo", "within": within}) + "\n")  # type: ignore[union-attr]
    offerer.stdin.flush()  # type: ignore[union-attr]
    return bool(out.next_json(within + 5, "echo")["ok"])
