"""Hypothesis state machine for healing: Alice and Bob exchange messages in any order, with
duplicates and kill -9 restarts, while Bob's store is now and then replaced by an older copy or
lost altogether. Every heal request and resend goes back into the network. After delivering
everything still in flight: no history holds a message twice, and every message arrives, except
those Bob had already received and then lost with his store (a restore that needs no ratchet step
goes unnoticed unless the node asks with `resync`), those Bob sent after the backup he restores
(gone from his own history too; docs/decisions-crypto.md), and those Bob sent that had not got
through when he lost his store (lost with his outbox).
"""

from __future__ import annotations

import asyncio
import itertools
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from peer.localstore import now_ms
from peer.sessions import Outcome, new_message_id
from tests.peer.sessionworld import Directory, SessionDevice, store_text
from tests.support.keys import fixed_device_keys

KEYS = [fixed_device_keys(0), fixed_device_keys(1)]
MINUTE_MS = 60_000


class Healing(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.folder = Path(tempfile.mkdtemp(prefix="ratchet-heal-"))
        self.directory = Directory()
        pins: dict = {}
        start = now_ms()
        ticks = itertools.count()
        # a minute per call: the heal rate limit (10 minutes per device and session) is in force
        self.clock = lambda: start + next(ticks) * MINUTE_MS
        self.sides = [
            SessionDevice(self.folder, 1, "alice-laptop-0", KEYS[0], self.directory, pins),
            SessionDevice(self.folder, 2, "bob-phone-00001", KEYS[1], self.directory, pins),
        ]
        for d in self.sides:
            pins[(d.user_id, d.device_id)] = d.keys.identity_public_bytes()
            d.clock = self.clock
            self.run(d.open())
            self.run(self.directory.refresh(d))
        self.in_flight: list[tuple[int, bytes]] = []
        self.sent: dict[str, bytes] = {}
        self.must_arrive: list[set[str]] = [set(), set()]  # per receiver
        self.snapshots = 0
        self.bob_sent: list[str] = []
        self.outcomes: dict[str, list[str]] = {}
        self.log: list[str] = []
        self.bob_sent_at_snapshot: dict[int, int] = {}

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout=60))

    def _process(self, receiver: int, data: bytes) -> None:
        side, other = self.sides[receiver], self.sides[1 - receiver]
        r = self.run(side.sessions.open(data, store_with=store_text(side.store)))
        self.outcomes.setdefault(r.message_id, []).append(f"{r.outcome.value}: {r.reason}")
        self.log.append(f"{side.device_id} {r.outcome.value} {r.message_id[:6]} {r.reason or ''}"[:140])
        if r.outcome is Outcome.DELIVERED:
            assert r.plaintext == self.sent[r.message_id]
        if r.outcome in (Outcome.DELIVERED, Outcome.DUPLICATE) and r.message_id in self.sent:
            self.run(other.sessions.acknowledge(side.device_id, [r.message_id]))  # the receipt
        if r.reply is not None:
            self.in_flight.append((1 - receiver, r.reply.data))
        self.in_flight.extend((1 - receiver, o.data) for o in r.resend)

    @rule(sender=st.integers(0, 1), body=st.binary(max_size=32))
    def send(self, sender: int, body: bytes) -> None:
        a, b = self.sides[sender], self.sides[1 - sender]
        mid = new_message_id()
        self.sent[mid] = body
        self.must_arrive[1 - sender].add(mid)
        if sender == 1:
            self.bob_sent.append(mid)
        self.in_flight.append((1 - sender, self.run(a.sessions.seal(b.user_id, b.device_id, body, mid)).data))

    @precondition(lambda self: self.in_flight)
    @rule(i=st.integers(0, 10_000), keep=st.booleans())
    def deliver(self, i: int, keep: bool) -> None:
        i %= len(self.in_flight)
        receiver, data = self.in_flight[i] if keep else self.in_flight.pop(i)
        self._process(receiver, data)

    @rule(side=st.integers(0, 1))
    def crash(self, side: int) -> None:
        self.run(self.sides[side].crash())

    @rule()
    def bob_backs_up(self) -> None:
        self.snapshots += 1
        self.sides[1].snapshot(f"s{self.snapshots}")
        self.bob_sent_at_snapshot[self.snapshots] = len(self.bob_sent)

    def _forget_what_bob_lost(self) -> None:
        have = set(self.sides[1].stored_messages())
        received_before = self.must_arrive[1] - {
            m for m in self.must_arrive[1] if m not in self._delivered_to_bob
        }
        self.must_arrive[1] -= received_before - have

    @precondition(lambda self: self.snapshots)
    @rule()
    def bob_restores_the_latest_backup(self) -> None:
        self._delivered_to_bob = set(self.sides[1].stored_messages())
        bob = self.sides[1]
        self.run(bob.restore(bob.folder / f"{bob.device_id}.s{self.snapshots}.snapshot"))
        self.run(self.directory.refresh(bob))  # as the node does on start
        self._forget_what_bob_lost()
        # What Bob sent after that backup is gone from his own history and his resend copies; one
        # overtaken by a message he sends from the restored state (same chain position) cannot be
        # opened by Alice any more, and nobody holds it to resend.
        self.must_arrive[0] -= set(self.bob_sent[self.bob_sent_at_snapshot[self.snapshots] :])

    @rule()
    def bob_loses_his_store(self) -> None:
        self._delivered_to_bob = set(self.sides[1].stored_messages())
        self.run(self.sides[1].lose_everything())
        self._forget_what_bob_lost()
        # and what he had sent and not yet got through is lost with his outbox and copies
        self.must_arrive[0] -= set(self.bob_sent)

    @invariant()
    def no_history_holds_a_message_twice(self) -> None:
        for side in self.sides:
            stored = side.stored_messages()
            assert len(stored) == len(set(stored))

    def teardown(self) -> None:
        try:
            for _ in range(3000):  # deliver everything, with all it causes, until nothing moves
                if not self.in_flight:
                    break
                receiver, data = self.in_flight.pop(0)
                self._process(receiver, data)
            assert not self.in_flight, "healing did not settle:\n" + "\n".join(self.log[-16:])
            for receiver, side in enumerate(self.sides):
                stored = side.stored_messages()
                assert len(stored) == len(set(stored))
                missing = self.must_arrive[receiver] - set(stored)
                assert not missing, f"{side.device_id} never got {[self.outcomes.get(m) for m in missing]}"
        finally:
            for d in self.sides:
                self.run(d.close())
            self.loop.close()
            shutil.rmtree(self.folder, ignore_errors=True)


Healing.TestCase.settings = settings(
    max_examples=20, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_healing_delivers_every_message_once_whatever_bob_loses = Healing.TestCase
