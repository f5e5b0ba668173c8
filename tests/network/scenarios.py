"""The NAT scenarios: topology, ICE servers offered, and the path each must take.

One table shared by the raw-aiortc proof, the PeerPost tests, `bench/nat.py` and the bed's CLI,
so "what the bed claims" is written down once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

from tests.network.bed import LanSpec, NatKind

PairKind = Literal["host", "srflx", "relay"]


class PairReport(Protocol):
    """What a side says about its selected ICE candidate pair."""

    @property
    def local_type(self) -> str: ...
    @property
    def remote_type(self) -> str: ...
    @property
    def relay_transport(self) -> str | None: ...


def pair_kind(local_type: str, remote_type: str) -> PairKind:
    """The path a pair takes: through a relay if either end is one, else through a NAT mapping
    if either end was learnt from one (server- or peer-reflexive), else straight between hosts."""
    types = {local_type, remote_type}
    if "relay" in types:
        return "relay"
    if types & {"srflx", "prflx"}:
        return "srflx"
    return "host"


@dataclass(frozen=True)
class Scenario:
    name: str
    nat_a: NatKind
    nat_b: NatKind | None  # None: b sits on a's LAN
    stun: bool
    turn: Literal["udp", "tcp"] | None
    direct: bool  # a direct (data channel) link is expected; else the mailbox carries messages
    pair: PairKind | None
    expected: str
    drop_mapping: bool = False
    link_deadline: float = 6.0  # the peers' link set-up deadline (seconds) in this scenario

    def lans(self) -> list[LanSpec]:
        if self.nat_b is None:
            return [LanSpec("A", self.nat_a, ("a", "b"))]
        return [LanSpec("A", self.nat_a, ("a",)), LanSpec("B", self.nat_b, ("b",))]

    def outcome_ok(self, connected: bool, reports: list[PairReport]) -> bool:
        """True when a connection attempt ended as this scenario says it must."""
        if not self.direct:
            return not connected
        if not connected or not reports:
            return False
        kinds = {pair_kind(r.local_type, r.remote_type) for r in reports}
        if kinds != {self.pair}:
            return False
        if self.turn == "tcp":
            # both peers are behind the UDP block, so each reaches coturn over TCP
            return all(r.relay_transport == "tcp" for r in reports if r.local_type == "relay") and any(
                r.local_type == "relay" for r in reports
            )
        return True

    def raw_outcome_ok(self, result: object) -> bool:
        ok = self.outcome_ok(result.connected, result.reports)  # type: ignore[attr-defined]
        if self.drop_mapping:
            # the path worked, then died with the NAT's mappings
            ok = ok and result.echo_before_drop is True and result.echo_after_drop is False  # type: ignore[attr-defined]
        return ok


EIM = NatKind.ENDPOINT_INDEPENDENT
SYM = NatKind.SYMMETRIC
BLOCKED = NatKind.UDP_BLOCKED

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            "same-lan", EIM, None, stun=True, turn=None, direct=True, pair="host",
            expected="direct, host candidates",
        ),
        Scenario(
            "cone", EIM, EIM, stun=True, turn=None, direct=True, pair="srflx",
            expected="direct, server-reflexive (hole punched)",
        ),
        Scenario(
            "symmetric-turn", SYM, SYM, stun=True, turn="udp", direct=True, pair="relay",
            expected="direct channel over a TURN relay", link_deadline=8.0,
        ),
        Scenario(
            "symmetric", SYM, SYM, stun=True, turn=None, direct=False, pair=None,
            expected="mailbox within the link deadline (no direct path without TURN)",
        ),
        # Gathering alone costs ~5 s per side here (the STUN server is unreachable over UDP), and
        # the answer is gathered after the offer: the link needs a longer deadline.
        Scenario(
            "udp-blocked-turn-tcp", BLOCKED, BLOCKED, stun=True, turn="tcp", direct=True, pair="relay",
            expected="direct channel over a TURN relay reached over TCP", link_deadline=16.0,
        ),
        Scenario(
            "udp-blocked", BLOCKED, BLOCKED, stun=True, turn=None, direct=False, pair=None,
            expected="mailbox within the link deadline (UDP blocked, no TURN)",
        ),
        Scenario(
            "mapping-dropped", EIM, EIM, stun=True, turn=None, direct=True, pair="srflx",
            expected="direct, then the NAT drops its mappings: link fails, mailbox takes over, no loss",
            drop_mapping=True,
        ),
    ]
}  # fmt: skip
