"""`Presence`: who of this user's contacts is online, per user and per device — the one copy.

Seeded from the server's contact list (its `online` flag) and then moved only by the hub's
presence frames. The router asks it whether a link attempt is worth making; the UI reads
`is_online` instead of keeping its own list (and instead of re-reading the server's). It does no
I/O and sends nothing.
"""

from __future__ import annotations

from collections.abc import Iterable

from signalling.protocol import ContactOut, ContactStatus, PresenceFrame


class Presence:
    def __init__(self) -> None:
        self._online_users: set[int] = set()
        self._offline_users: set[int] = set()
        self._devices: dict[str, bool] = {}

    def seed(self, contacts: Iterable[ContactOut]) -> None:
        """The server's list after a (re)connect: it knows better than what we heard before."""
        accepted = [c for c in contacts if c.status == ContactStatus.ACCEPTED]
        self._online_users = {c.user_id for c in accepted if c.online}
        self._offline_users = {c.user_id for c in accepted if not c.online}

    def apply(self, frame: PresenceFrame) -> None:
        if frame.device_id is not None:
            self._devices[frame.device_id] = frame.online
        if frame.online:
            self._online_users.add(frame.user_id)
            self._offline_users.discard(frame.user_id)
        elif frame.device_id is None:  # the user's last device went (a device-only frame says less)
            self._online_users.discard(frame.user_id)
            self._offline_users.add(frame.user_id)

    def device_gone(self, device_id: str) -> None:
        """The hub said it cannot reach this device."""
        self._devices[device_id] = False

    def is_online(self, user_id: int) -> bool:
        return user_id in self._online_users

    def online_users(self) -> frozenset[int]:
        return frozenset(self._online_users)

    def device_online(self, user_id: int, device_id: str) -> bool:
        """Worth a link attempt? Optimistic unless presence said offline: the hub answers a signal
        to an unconnected device with an error at once, which ends the attempt early."""
        if device_id in self._devices:
            return self._devices[device_id]
        return user_id not in self._offline_users

    def known_online(self, user_id: int, device_id: str) -> bool:
        """Online by what the server told us, never by default (what is worthless later, a group
        typing notice, goes through the server only to these: it must not wait in a mailbox)."""
        if device_id in self._devices:
            return self._devices[device_id]
        return user_id in self._online_users

    def clear(self) -> None:
        self._online_users.clear()
        self._offline_users.clear()
        self._devices.clear()
