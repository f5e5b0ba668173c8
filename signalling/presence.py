"""Presence: who is online, told only to accepted contacts, with a grace for reconnects — and the
two small interfaces through which the REST side sees live sockets.

The hub owns live sockets and presence; REST routes only ask "is this user online?" (contact lists,
`PresenceView`) and say "close this user's sockets" (logout, password change, account deletion,
device revocation, `LiveSockets`). The hub installs its objects on `app.state.presence` and
`app.state.hub` in its lifespan; the defaults below keep the app usable without it.

`is_online` is async: with several instances the answer lives in Redis (see signalling.backplane).

A device is online while it holds a socket (on any instance). When it comes, its user's accepted
contacts get a `presence` frame at once; when it goes, they hear it only after `grace` seconds
without a new socket for that device, so a flaky connection that drops and comes back does not
flicker. `users.last_seen` is written on both edges. This module must never tell a stranger or a
pending contact anything: the audience is always `store.reach.accepted_contact_ids`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from sqlalchemy.ext.asyncio import AsyncEngine

from signalling.backplane import Backplane
from signalling.protocol import PresenceFrame
from store import reach


@runtime_checkable
class PresenceView(Protocol):
    async def is_online(self, user_id: int) -> bool:
        """True while at least one of the user's devices holds a live socket (on any instance)."""
        ...

    async def online_among(self, user_ids: list[int]) -> set[int]:
        """The ones of `user_ids` that are online (for contact lists: one call per page)."""
        ...


@runtime_checkable
class LiveSockets(Protocol):
    async def disconnect_user(self, user_id: int, code: int, reason: str) -> None:
        """Close every live socket of the user (on every instance) with `code`."""
        ...

    async def disconnect_device(self, user_id: int, device_id: str, code: int, reason: str) -> None:
        """Close the live socket of one device, if it has one."""
        ...

    def forget_reach(self) -> None:
        """Contacts changed: re-check who may reach whom from the database from now on."""
        ...

    async def push_to_user(self, user_id: int, text: str) -> None:
        """Push one server frame (JSON text) to every live device of the user, on every instance."""
        ...

    async def introduce(self, a: int, b: int) -> None:
        """`a` and `b` just became accepted contacts: tell each the other's online devices now."""
        ...


class MemoryPresence:
    """Used when no hub is mounted: nobody is online."""

    async def is_online(self, user_id: int) -> bool:
        return False

    async def online_among(self, user_ids: list[int]) -> set[int]:
        return set()


class NoLiveSockets:
    """Used when no hub is mounted: there is nothing to close."""

    async def disconnect_user(self, user_id: int, code: int, reason: str) -> None:
        return None

    async def disconnect_device(self, user_id: int, device_id: str, code: int, reason: str) -> None:
        return None

    def forget_reach(self) -> None:
        return None

    async def push_to_user(self, user_id: int, text: str) -> None:
        return None

    async def introduce(self, a: int, b: int) -> None:
        return None


log = logging.getLogger(__name__)


class Presence:
    def __init__(self, engine: AsyncEngine, backplane: Backplane, grace: float) -> None:
        self._engine = engine
        self._backplane = backplane
        self._grace = grace
        self._timers: dict[str, asyncio.Task[None]] = {}  # device -> pending "gone" announcement

    async def close(self) -> None:
        timers, self._timers = self._timers, {}
        for task in timers.values():
            task.cancel()
        for task in timers.values():
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def is_online(self, user_id: int) -> bool:
        """For the contacts list: does any device of this user hold a socket anywhere?"""
        return await self._backplane.is_online(user_id)

    async def online_among(self, user_ids: list[int]) -> set[int]:
        found = await asyncio.gather(*(self._backplane.is_online(u) for u in user_ids))
        return {u for u, online in zip(user_ids, found, strict=True) if online}

    async def introduce(self, a: int, b: int) -> None:
        """Two users just became accepted contacts: each hears `online: true` for every device of
        the other that holds a socket now (the announcement they missed while not yet contacts)."""
        now = datetime.now(UTC)
        for who, audience in ((a, b), (b, a)):
            for device_id in sorted(await self._backplane.online_devices(who)):
                frame = PresenceFrame(user_id=who, device_id=device_id, online=True, last_seen=now)
                await self._backplane.send_to_user(audience, frame.model_dump_json())

    async def device_came(self, user_id: int, device_id: str) -> None:
        now = datetime.now(UTC)
        timer = self._timers.pop(device_id, None)
        quiet = timer is not None
        if timer is not None:
            timer.cancel()
        if await self._backplane.take_leaving(device_id):
            quiet = True  # it left less than a grace ago (maybe from another instance)
        # Contacts hear it before `last_seen` is written: that write is a commit (an fsync on
        # SQLite FULL) and used to sit in front of the fan-out (bench/scale.py, docs/hub.md).
        if not quiet:
            await self._announce(user_id, device_id, online=True, when=now)
        await self._touch(user_id, now, device_id)

    async def device_left(self, user_id: int, device_id: str) -> None:
        """Start the grace; the announcement happens later unless the device comes back."""
        if self._grace <= 0:
            await self._gone(user_id, device_id)
            return
        await self._backplane.mark_leaving(device_id, self._grace)
        old = self._timers.pop(device_id, None)
        if old is not None:
            old.cancel()
        self._timers[device_id] = asyncio.create_task(
            self._after_grace(user_id, device_id), name=f"presence-grace-{device_id}"
        )

    async def device_vanished(self, user_id: int, device_id: str) -> None:
        """Its instance died (Redis key expired): the grace has long passed, announce it now."""
        await self._gone(user_id, device_id)

    async def _after_grace(self, user_id: int, device_id: str) -> None:
        try:
            await asyncio.sleep(self._grace)
            await self._gone(user_id, device_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("presence announcement for device %s failed", device_id)
        finally:
            if self._timers.get(device_id) is asyncio.current_task():
                del self._timers[device_id]

    async def _gone(self, user_id: int, device_id: str) -> None:
        if await self._backplane.is_device_online(device_id):
            return  # came back, possibly on another instance
        now = datetime.now(UTC)
        await self._touch(user_id, now, device_id)
        await self._announce(user_id, device_id, online=False, when=now)

    async def _touch(self, user_id: int, when: datetime, device_id: str | None = None) -> None:
        async with self._engine.begin() as conn:
            await reach.touch_last_seen(conn, user_id, when)
            if device_id is not None:
                await reach.touch_device_seen(conn, device_id, when)

    async def _announce(self, user_id: int, device_id: str, *, online: bool, when: datetime) -> None:
        async with self._engine.connect() as conn:
            audience = await reach.accepted_contact_ids(conn, user_id)
        if not audience:
            return
        frame = PresenceFrame(user_id=user_id, device_id=device_id, online=online, last_seen=when)
        text = frame.model_dump_json()
        for contact in audience:
            await self._backplane.send_to_user(contact, text)
