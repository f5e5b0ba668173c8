"""The byte budget of the frames waiting to go out on live sockets.

A socket whose client stops reading keeps its frames in the server's memory until it is closed.
Counting frames is not enough (one envelope may be a megabyte), so every queued frame is counted
in bytes, against its socket (`per_socket`) and against the socket's account (`per_account`, all
of its devices together). Passing either closes that socket with 1013 (the client reconnects and
fetches from the mailbox: nothing is lost, every stored row is still there), and its queue is
dropped at once, not left for the garbage collector.

The counters are what /metrics shows and what the abuse tests assert (bytes bounded, freed on
close). Nothing here awaits; one budget per hub.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class OutboxBudget:
    per_socket: int
    per_account: int
    by_account: dict[int, int] = field(default_factory=dict)
    queued: int = 0  # bytes queued on all sockets now
    peak_socket: int = 0  # the most one socket ever held (it never passes per_socket + one frame)
    closed_too_slow: int = 0  # sockets closed because they passed a budget
    dropped: int = 0  # bytes dropped with the queues of closed sockets

    def admit(self, user_id: int, socket_bytes: int, size: int) -> bool:
        """May a socket of `user_id` holding `socket_bytes` queue `size` more? Counts it if so."""
        account = self.by_account.get(user_id, 0)
        if socket_bytes + size > self.per_socket or account + size > self.per_account:
            return False
        self.by_account[user_id] = account + size
        self.queued += size
        if socket_bytes + size > self.peak_socket:
            self.peak_socket = socket_bytes + size
        return True

    def release(self, user_id: int, size: int) -> None:
        left = self.by_account.get(user_id, 0) - size
        if left > 0:
            self.by_account[user_id] = left
        else:
            self.by_account.pop(user_id, None)
        self.queued -= size
