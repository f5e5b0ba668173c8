"""PeerPost's client node: direct WebRTC links first, the server's mailbox when they fail.

The names below load on first use (PEP 562): `peerpost send` and the other thin clients of the
resident node import `peer.*` modules without paying for aiortc and the crypto stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from peer.node import Me, MessageView, Peer, PeerSettings
    from peer.profile import Profile

__all__ = ["Me", "MessageView", "Peer", "PeerSettings", "Profile"]


def __getattr__(name: str) -> Any:
    if name in ("Me", "MessageView", "Peer", "PeerSettings"):
        from peer import node

        return getattr(node, name)
    if name == "Profile":
        from peer.profile import Profile

        return Profile
    raise AttributeError(f"module 'peer' has no attribute {name!r}")
