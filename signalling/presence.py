"""What the REST side needs to know about live sockets, as two small interfaces.

The hub owns live sockets and presence; the REST routes only ask "is this user online?" (contact
lists) and say "close this user's sockets" (logout, password change, account deletion, device
revocation). Defining the seam here keeps the routes independent of the hub's internals: the hub
(in-process or Redis-backed) installs its own implementations on `app.state.presence` and
`app.state.hub` in its lifespan; until then these defaults keep the app fully usable without it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class PresenceView(Protocol):
    def is_online(self, user_id: int) -> bool:
        """True while at least one of the user's devices holds a live socket (grace included)."""
        ...


@runtime_checkable
class LiveSockets(Protocol):
    async def disconnect_user(self, user_id: int, code: int, reason: str) -> None:
        """Close every live socket of the user (on every instance) with `code`."""
        ...

    async def disconnect_device(self, user_id: int, device_id: str, code: int, reason: str) -> None:
        """Close the live socket of one device, if it has one."""
        ...


class MemoryPresence:
    """In-process presence: a count of live sockets per user. The hub's default backing store."""

    def __init__(self) -> None:
        self._sockets: dict[int, int] = {}

    def is_online(self, user_id: int) -> bool:
        return self._sockets.get(user_id, 0) > 0

    def socket_opened(self, user_id: int) -> None:
        self._sockets[user_id] = self._sockets.get(user_id, 0) + 1

    def socket_closed(self, user_id: int) -> None:
        left = self._sockets.get(user_id, 0) - 1
        if left > 0:
            self._sockets[user_id] = left
        else:
            self._sockets.pop(user_id, None)


class NoLiveSockets:
    """Used when no hub is mounted: there is nothing to close."""

    async def disconnect_user(self, user_id: int, code: int, reason: str) -> None:
        return None

    async def disconnect_device(self, user_id: int, device_id: str, code: int, reason: str) -> None:
        return None
