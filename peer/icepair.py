"""Which ICE candidate pair carries a link: the one place that reads it out of aiortc/aioice.

aiortc (1.16) has no public way to name the selected pair (no `getSelectedCandidatePair()`, no
candidate-pair stats). The path is public down to the `RTCIceTransport`
(`pc.sctp.transport.transport`); below that, aiortc keeps the aioice `Connection` in
`_connection`, and aioice keeps the nominated pair per component in `_nominated`. This module is
the only code that touches those two private names, and it answers None, never raises, if a
future version moves them, so a report can go missing but a link never breaks because of it.

aioice forms pairs per local socket, so the local end of a pair is either the host candidate of
that socket (also when the NAT mapped it: the server-reflexive candidate shares the host socket)
or a relay candidate. What path the pair takes is named by `IcePair.path`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from aiortc import RTCPeerConnection

IcePath = Literal["host", "srflx", "relay"]


@dataclass(frozen=True)
class IcePair:
    local_type: str  # "host" or "relay" (aioice pairs per socket, see the module docstring)
    local_address: str  # "ip:port"
    remote_type: str  # "host", "srflx", "prflx" or "relay"
    remote_address: str
    relay_transport: str | None  # "udp" or "tcp" between us and the TURN server, when local is relay

    @property
    def path(self) -> IcePath:
        """relay if either end is a TURN relay; srflx if either end is a NAT mapping; else host."""
        types = {self.local_type, self.remote_type}
        if "relay" in types:
            return "relay"
        if types & {"srflx", "prflx"}:
            return "srflx"
        return "host"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": self.path}


def selected_pair(pc: RTCPeerConnection | None) -> IcePair | None:
    """The nominated pair of the connection's (single, bundled) ICE transport, or None."""
    try:
        sctp = pc.sctp if pc is not None else None
        if sctp is None:
            return None
        ice_transport = sctp.transport.transport  # RTCSctpTransport -> RTCDtlsTransport -> RTCIceTransport
        connection = ice_transport._connection  # aioice.Connection (private in aiortc)
        pair = connection._nominated.get(1)  # component 1: data channels use one component
        if pair is None:
            return None
        local, remote = pair.local_candidate, pair.remote_candidate
        return IcePair(
            local_type=local.type,
            local_address=f"{local.host}:{local.port}",
            remote_type=remote.type,
            remote_address=f"{remote.host}:{remote.port}",
            relay_transport=getattr(connection, "turn_transport", None) if local.type == "relay" else None,
        )
    except AttributeError:
        return None
