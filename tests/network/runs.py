"""Run one scenario with real PeerPost peers and record what happened (no asserting here).

The tests assert on an `Outcome`; `bench/nat.py` prints the same outcomes as a table. Timings:
- `setup_ms`: direct scenarios: alice's link from `connecting` to `open`; mailbox scenarios: how
  long the first send took to fall back to the server (bounded by the link deadline).
- `latency_ms`: per message, bob's receive time minus alice's send time (one machine: one
  monotonic clock across namespaces). Direct scenarios measure over the open link; mailbox
  scenarios measure the messages sent one at a time after the failed link attempt.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from tests.network.bed import Bed
from tests.network.scenarios import Scenario
from tests.network.world import Pair, PeerHandle, build_pair

DROP_TIMERS = {"keepalive": 0.5, "dead_after": 3.0, "ack_deadline": 1.5}


@dataclass
class Outcome:
    scenario: str
    expected: str
    link_opened: bool = False
    pair_alice: dict[str, Any] | None = None
    pair_bob: dict[str, Any] | None = None
    setup_ms: float | None = None
    first_send_ms: list[float] = field(default_factory=list)
    later_send_ms: list[float] = field(default_factory=list)  # mailbox scenarios: sends after the failure
    paths: list[str | None] = field(default_factory=list)  # per message, as alice's peer reports
    latency_ms: list[float] = field(default_factory=list)
    sent: list[str] = field(default_factory=list)
    received: list[str] = field(default_factory=list)  # bodies in bob's message events
    history: list[str] = field(default_factory=list)  # bodies in bob's stored history
    link_failure: str | None = None  # mapping-dropped: how alice's link ended
    detect_ms: float | None = None  # mapping-dropped: drop -> link failed/closed
    paths_after_drop: list[str | None] = field(default_factory=list)
    link_states: list[str] = field(default_factory=list)  # alice's link events, in order
    user_ids: tuple[int, int] = (0, 0)  # alice's and bob's account ids on the server

    @property
    def lost(self) -> list[str]:
        return [b for b in self.sent if b not in self.received]

    @property
    def duplicates(self) -> list[str]:
        return sorted({b for b in self.received if self.received.count(b) > 1})

    def p50(self) -> float | None:
        return statistics.median(self.latency_ms) if self.latency_ms else None

    def p95(self) -> float | None:
        if len(self.latency_ms) < 2:
            return self.p50()
        return statistics.quantiles(self.latency_ms, n=20)[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "lost": self.lost,
            "duplicates": self.duplicates,
            "latency_p50_ms": self.p50(),
            "latency_p95_ms": self.p95(),
        }


def _send(
    outcome: Outcome, alice: PeerHandle, bob: PeerHandle, bodies: list[str], timeout: float
) -> list[dict]:
    views = alice.call("send", timeout=timeout, to=bob.user_id, bodies=bodies)
    outcome.sent += bodies
    return views


def _collect_receipts(outcome: Outcome, pair: Pair, views: list[dict], timeout: float) -> None:
    """Wait until bob has each message, and note each one's latency."""
    for view in views:
        got = pair.bob.wait_event(
            lambda e, mid=view["message_id"]: e["type"] == "message" and e["message"]["message_id"] == mid,
            timeout,
            f"message {view['text']!r} at bob",
        )
        outcome.latency_ms.append((got["t"] - view["t_send"]) * 1000)


def _finish(outcome: Outcome, pair: Pair) -> Outcome:
    outcome.user_ids = (pair.alice.user_id, pair.bob.user_id)
    outcome.link_states = [e["state"] for e in pair.alice.events("link")]
    outcome.received = [e["message"]["text"] for e in pair.bob.events("message")]
    outcome.history = [m["text"] for m in pair.bob.call("history", to=pair.alice.user_id)]
    return outcome


def _link_times(handle: PeerHandle) -> tuple[float | None, dict | None]:
    events = handle.events("link")
    connecting = next((e["t"] for e in events if e["state"] == "connecting"), None)
    opened = next((e for e in events if e["state"] == "open"), None)
    if opened is None or connecting is None:
        return None, None
    return (opened["t"] - connecting) * 1000, opened.get("pair")


def run_peerpost(bed: Bed, scenario: Scenario, messages: int = 10) -> Outcome:
    if scenario.drop_mapping:
        return _run_mapping_dropped(bed, scenario, messages)
    pair = build_pair(bed, scenario)
    alice, bob = pair.alice, pair.bob
    outcome = Outcome(scenario.name, scenario.expected)
    deadline = scenario.link_deadline + 20
    # The first messages go together: they share one link attempt (or one fallback).
    first = _send(outcome, alice, bob, [f"{scenario.name} first {i}" for i in range(3)], deadline)
    outcome.first_send_ms = [v["send_ms"] for v in first]
    outcome.paths += [v["path"] for v in first]
    _collect_receipts(outcome, pair, first, deadline)
    setup_ms, outcome.pair_alice = _link_times(alice)
    outcome.link_opened = setup_ms is not None
    if outcome.link_opened:
        outcome.setup_ms = setup_ms
        bob.wait_event(lambda e: e["type"] == "link" and e["state"] == "open", 10, "bob's link open")
        _, outcome.pair_bob = _link_times(bob)
        outcome.latency_ms.clear()  # steady state: one message at a time over the open link
        for i in range(messages):
            views = _send(outcome, alice, bob, [f"{scenario.name} steady {i}"], 10)
            outcome.paths += [v["path"] for v in views]
            _collect_receipts(outcome, pair, views, 10)
    else:
        outcome.setup_ms = max(outcome.first_send_ms)
        # The failed attempt backs bob's device off: later messages go to the server at once
        # instead of waiting for another link deadline each.
        outcome.latency_ms.clear()
        for i in range(messages):
            views = _send(outcome, alice, bob, [f"{scenario.name} after {i}"], 10)
            outcome.paths += [v["path"] for v in views]
            outcome.later_send_ms += [v["send_ms"] for v in views]
            _collect_receipts(outcome, pair, views, 10)
    return _finish(outcome, pair)


def _run_mapping_dropped(bed: Bed, scenario: Scenario, messages: int) -> Outcome:
    pair = build_pair(bed, scenario, **DROP_TIMERS)
    alice, bob = pair.alice, pair.bob
    outcome = Outcome(scenario.name, scenario.expected)
    deadline = scenario.link_deadline + 20
    before = _send(outcome, alice, bob, [f"before drop {i}" for i in range(3)], deadline)
    outcome.paths += [v["path"] for v in before]
    _collect_receipts(outcome, pair, before, deadline)
    outcome.setup_ms, outcome.pair_alice = _link_times(alice)
    outcome.link_opened = outcome.setup_ms is not None
    if not outcome.link_opened:
        return _finish(outcome, pair)
    _, outcome.pair_bob = _link_times(bob)

    latency_before = list(outcome.latency_ms)
    dropped_at = time.monotonic()
    bed.drop_udp_mappings("A")
    # Sent while the link still looks open: no ack comes back, so each falls back to the server.
    during = _send(outcome, alice, bob, [f"during drop {i}" for i in range(3)], deadline)
    ended = alice.wait_event(
        lambda e: e["type"] == "link" and e["state"] in ("failed", "closed") and e["t"] >= dropped_at,
        DROP_TIMERS["dead_after"] + 10,
        "alice's link to fail after the drop",
    )
    outcome.detect_ms = (ended["t"] - dropped_at) * 1000
    outcome.link_failure = ended["state"]
    after = _send(outcome, alice, bob, [f"after drop {i}" for i in range(3)], deadline)
    outcome.paths_after_drop = [v["path"] for v in during + after]
    _collect_receipts(outcome, pair, during + after, deadline)
    outcome.latency_ms = latency_before + outcome.latency_ms[len(latency_before) :]
    return _finish(outcome, pair)
