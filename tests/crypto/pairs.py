"""Two devices with prekeys, for the pairwise-session tests (a few lines per test world)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from crypto import pairwise
from crypto.keys import DeviceKeys
from crypto.pairwise import PairwiseSession
from crypto.prekeys import PrekeyBundle, PrekeyKind, PrekeyPair, generate_prekey, verify_prekey_bundle


def new_id() -> str:
    return os.urandom(16).hex()


@dataclass
class Side:
    user_id: int
    device_id: str
    keys: DeviceKeys
    prekeys: dict[tuple[PrekeyKind, int], PrekeyPair] = field(default_factory=dict)
    next_id: int = 1

    def add_prekey(self, kind: PrekeyKind) -> PrekeyPair:
        pair = generate_prekey(self.keys, self.device_id, kind, self.next_id)
        self.next_id += 1
        self.prekeys[(kind, pair.public.key_id)] = pair
        return pair

    def lookup(self, kind: PrekeyKind, key_id: int) -> PrekeyPair | None:
        return self.prekeys.get((kind, key_id))

    def bundle(self, *, one_time: bool = True, kem_one_time: bool = True) -> PrekeyBundle:
        spk = self.add_prekey(PrekeyKind.SIGNED)
        kem = self.add_prekey(PrekeyKind.KEM_ONE_TIME if kem_one_time else PrekeyKind.KEM_LAST_RESORT)
        opk = self.add_prekey(PrekeyKind.ONE_TIME) if one_time else None
        raw = PrekeyBundle(
            self.user_id,
            self.device_id,
            self.keys.identity_public_bytes(),
            spk.public,
            kem.public,
            None if opk is None else opk.public,
        )
        return verify_prekey_bundle(raw, self.keys.identity_public_bytes())

    def start(self, other: Side, **kw: bool) -> PairwiseSession:
        return pairwise.start_session(self.keys, self.user_id, self.device_id, other.bundle(**kw))

    def accept(self, data: bytes, sender: Side) -> PairwiseSession:
        return pairwise.accept_session(
            self.keys,
            self.user_id,
            self.device_id,
            pairwise.peek(data),
            sender.keys.identity_public_bytes(),
            self.lookup,
        )


def pair(devices: list) -> tuple[Side, Side]:
    a, b = devices[0], devices[1]
    return Side(a.user_id, a.device_id, a.keys), Side(b.user_id, b.device_id, b.keys)


def established(devices: list) -> tuple[Side, Side, PairwiseSession, PairwiseSession]:
    """Alice and Bob with a confirmed session (one message each way)."""
    alice, bob = pair(devices)
    sa = alice.start(bob)
    first = pairwise.seal(sa, b"hello", new_id())
    sb = bob.accept(first, alice)
    assert pairwise.open_message(sb, pairwise.peek(first)) == b"hello"
    assert pairwise.open_message(sa, pairwise.peek(pairwise.seal(sb, b"hi", new_id()))) == b"hi"
    return alice, bob, sa, sb
