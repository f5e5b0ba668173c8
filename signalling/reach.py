"""Who may reach whom over the hub: the permission check of every `send` and `signal`.

The answers come from `store.reach` (device owner, accepted contacts) and `store.groups` (a group
in common); positive ones are kept for a
few seconds, so a busy sender costs no query per frame. Only positive answers are kept: a new
contact or device works at once, a removed one stops within `ttl` seconds (at once when the server
calls `Hub.forget_reach`). It never writes anything.
"""

from __future__ import annotations

import time

from sqlalchemy.ext.asyncio import AsyncEngine

from signalling.errors import FrameRefused
from signalling.protocol import ErrorCode
from store.groups import share_a_group
from store.reach import device_owner, is_accepted_contact

_CACHE_MAX = 100_000


class Reach:
    """The permission check, with its cache of positive answers."""

    def __init__(self, engine: AsyncEngine, ttl: float) -> None:
        self._engine = engine
        self._ttl = ttl
        self._owners: dict[str, tuple[int, float]] = {}
        self._contacts: dict[tuple[int, int], float] = {}

    async def check(self, sender: int, user_id: int, device_id: str) -> None:
        """Raise FrameRefused unless `sender` may send to `device_id` of `user_id`."""
        owner = self._owner(device_id)
        if owner is None:
            async with self._engine.connect() as conn:
                found = await device_owner(conn, device_id)
            if found is None or not found.active:
                raise FrameRefused(
                    ErrorCode.UNKNOWN_DEVICE, f"there is no active device {device_id}", device_id=device_id
                )
            owner = found.user_id
            self._remember_owner(device_id, owner)
        if owner != user_id:
            raise FrameRefused(
                ErrorCode.UNKNOWN_DEVICE,
                f"device {device_id} does not belong to user {user_id}",
                device_id=device_id,
            )
        if user_id == sender or self._are_contacts(sender, user_id):
            return
        async with self._engine.connect() as conn:
            # Members of one group reach each other's devices even when they are not contacts:
            # sender keys travel in pairwise envelopes, and direct links carry group messages.
            ok = await is_accepted_contact(conn, sender, user_id) or await share_a_group(
                conn, sender, user_id
            )
        if not ok:
            raise FrameRefused(
                ErrorCode.NOT_A_CONTACT,
                f"user {user_id} is not an accepted contact of yours nor in a group with you",
            )
        self._remember_contacts(sender, user_id)

    def clear(self) -> None:
        """Contacts or devices changed: re-read every permission from the database from now on."""
        self._owners.clear()
        self._contacts.clear()

    def _owner(self, device_id: str) -> int | None:
        hit = self._owners.get(device_id)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def _remember_owner(self, device_id: str, user_id: int) -> None:
        if len(self._owners) >= _CACHE_MAX:
            self._owners.clear()  # crude but bounded: a refill costs one query per active pair
        self._owners[device_id] = (user_id, time.monotonic() + self._ttl)

    def _are_contacts(self, a: int, b: int) -> bool:
        until = self._contacts.get((a, b))
        return until is not None and until >= time.monotonic()

    def _remember_contacts(self, a: int, b: int) -> None:
        if len(self._contacts) >= _CACHE_MAX:
            self._contacts.clear()
        self._contacts[(a, b)] = time.monotonic() + self._ttl
