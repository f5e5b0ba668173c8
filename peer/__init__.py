"""PeerPost's client node: direct WebRTC links first, the server's mailbox when they fail."""

from peer.node import Me, MessageView, Peer, PeerSettings
from peer.profile import Profile

__all__ = ["Me", "MessageView", "Peer", "PeerSettings", "Profile"]
