"""Hypothesis state machine over two real session managers (real SQLite local stores).

Random interleavings of sends both ways, delivery in any order (direct and mailbox mixed),
duplicates (a message that came both ways), drops (lost on a path), and crashes of either side
(reopening the store files as a kill -9 leaves them). Invariants: a delivered message opens
exactly once (its first delivery decrypts it to the bytes sent, every later one is a duplicate),
and nothing is ever undecryptable when no state was lost.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from peer.sessions import Outcome, new_message_id
from tests.peer.sessionworld import Directory, SessionDevice, store_text
from tests.support.keys import fixed_device_keys

KEYS = [fixed_device_keys(0), fixed_device_keys(1)]


class TwoDevices(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.folder = Path(tempfile.mkdtemp(prefix="ratchet-sm-"))
        directory = Directory()
        pins: dict = {}
        self.sides = [
            SessionDevice(self.folder, 1, "alice-laptop-0", KEYS[0], directory, pins),
            SessionDevice(self.folder, 2, "bob-phone-00001", KEYS[1], directory, pins),
        ]
        for d in self.sides:
            pins[(d.user_id, d.device_id)] = d.keys.identity_public_bytes()
            self.run(d.open())
            self.run(directory.refresh(d))
        self.in_flight: list[tuple[int, str, bytes]] = []  # (receiver side, message id, bytes)
        self.sent: dict[str, bytes] = {}
        self.opened: list[set[str]] = [set(), set()]

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout=60))

    def teardown(self) -> None:
        for d in self.sides:
            self.run(d.close())
        self.loop.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    @rule(sender=st.integers(0, 1), body=st.binary(max_size=64))
    def send(self, sender: int, body: bytes) -> None:
        a, b = self.sides[sender], self.sides[1 - sender]
        mid = new_message_id()
        out = self.run(a.sessions.seal(b.user_id, b.device_id, body, mid))
        self.sent[mid] = body
        self.in_flight.append((1 - sender, mid, out.data))

    def _deliver(self, i: int, keep: bool) -> None:
        receiver, mid, data = self.in_flight[i] if keep else self.in_flight.pop(i)
        side = self.sides[receiver]
        r = self.run(side.sessions.open(data, store_with=store_text(side.store)))
        assert r.outcome is not Outcome.UNDECRYPTABLE, r.reason
        if r.outcome is Outcome.DUPLICATE:
            assert mid in self.opened[receiver]
            return
        assert r.outcome is Outcome.DELIVERED
        assert mid not in self.opened[receiver], "a message opened twice"
        assert r.plaintext == self.sent[mid]
        self.opened[receiver].add(mid)
        sender = self.sides[1 - receiver]
        self.run(sender.sessions.acknowledge(side.device_id, [mid]))

    @precondition(lambda self: self.in_flight)
    @rule(i=st.integers(0, 10_000))
    def deliver(self, i: int) -> None:
        self._deliver(i % len(self.in_flight), keep=False)

    @precondition(lambda self: self.in_flight)
    @rule(i=st.integers(0, 10_000))
    def deliver_and_keep_a_copy(self, i: int) -> None:
        self._deliver(i % len(self.in_flight), keep=True)

    @precondition(lambda self: self.in_flight)
    @rule(i=st.integers(0, 10_000))
    def drop(self, i: int) -> None:
        self.in_flight.pop(i % len(self.in_flight))

    @rule(side=st.integers(0, 1))
    def crash(self, side: int) -> None:
        self.run(self.sides[side].crash())

    @invariant()
    def history_holds_each_opened_message_once(self) -> None:
        for side, opened in zip(self.sides, self.opened, strict=True):
            stored = side.stored_messages()
            assert len(stored) == len(set(stored)) and set(stored) == opened


TwoDevices.TestCase.settings = settings(
    max_examples=25, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_random_interleavings_open_every_delivered_message_exactly_once = TwoDevices.TestCase
