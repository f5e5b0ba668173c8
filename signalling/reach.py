"""Who may reach whom over the hub: the permission check of every `send` and `signal`.

The answers come from `store.reach` (device owner, accepted contacts) and `store.groups` (a group
in common); positive ones are kept for `ttl` seconds from the moment the database last confirmed
them, so a busy sender costs no query per frame. Only positive answers are kept: a new contact or
device works at once, a removed one stops within `ttl` seconds (at once when the server calls
`Hub.forget_reach`). It never writes anything.

**Refresh ahead.** An answer used in the second half of its life is re-read from the database in
the background while the frame goes on; a confirmation renews it, a refusal drops it (the next
frame is then checked, and refused, in line). Why: when answers simply expired, every busy sender
stopped once per `ttl` for two queries in line (aiosqlite runs them on a thread that competes for
the GIL with the busy loop), and every frame it sent meanwhile waited behind them: with 20 senders
at 5,000 envelopes/s that was the largest part of the hub's p99 (bench/tail.py; docs/hub.md "The
tail, third round"). The promise is unchanged: a positive answer is never used more than `ttl`
seconds after the database last gave it.

**Warm on connect.** Refresh ahead keeps a busy sender's answers; it cannot help its first frame,
which waited for three queries in line (owner, contact, group) before anything moved: that was the
whole p99 of the first sweep step of `bench.peers` (issue #16). So when a device authenticates, the
hub calls `warm(user)`: one bounded query (`store.reach.reachable_devices`, at most `warm_limit`
devices, so a user with 10,000 contacts costs one query, not a storm) in the background, whose
answers are stamped with the moment it was asked, so the ttl promise holds for them as for any
other. A check that misses while that user's warm-up runs waits for it rather than asking the same
things again in line. A user beyond the limit simply has the rest asked in line as before.

**Blocks.** Sharing a group lets members reach each other's devices, but not a member who blocked
the sender: such a device is answered as if it did not exist (`unknown_device`, "no active
device"), the same story the group's device list tells (store.groups.member_devices), so the
sender does not learn of the block.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from enum import StrEnum

from sqlalchemy.ext.asyncio import AsyncEngine

from signalling.errors import FrameRefused
from signalling.protocol import ErrorCode
from store.groups import share_a_group
from store.reach import device_owner, has_blocked, is_accepted_contact, reachable_devices

log = logging.getLogger(__name__)

_CACHE_MAX = 100_000

# What a cached answer is about: ("owner", device_id) or ("contacts", sender, user_id).
_Key = tuple[str, str] | tuple[str, int, int]


class Tie(StrEnum):
    """What ties a sender to another user, as far as sending to their devices goes."""

    REACHABLE = "reachable"  # the same user, an accepted contact, or a group in common
    STRANGER = "stranger"  # none of those: refused as `not_a_contact`
    HIDDEN = "hidden"  # a group in common, but they blocked the sender: their devices "do not exist"


class Reach:
    """The permission check, with its cache of positive answers."""

    def __init__(
        self,
        engine: AsyncEngine,
        ttl: float,
        clock: Callable[[], float] = time.monotonic,
        warm_limit: int = 1000,
    ) -> None:
        self._engine = engine
        self._ttl = ttl
        self._clock = clock
        self._warm_limit = warm_limit
        self._warming: dict[int, asyncio.Task[None]] = {}  # user -> its warm-up under way
        self._owners: dict[str, tuple[int, float]] = {}  # device -> (owner, confirmed at)
        self._contacts: dict[tuple[int, int], float] = {}  # (sender, user) -> confirmed at
        self._generation = 0  # bumped by clear(): a refresh begun before it stores nothing
        self._refreshing: dict[_Key, asyncio.Task[None]] = {}

    async def check(self, sender: int, user_id: int, device_id: str) -> None:
        """Raise FrameRefused unless `sender` may send to `device_id` of `user_id`."""
        warming = self._warming.get(sender)
        if warming is not None and not self._cached(sender, user_id, device_id):
            # The sender's warm-up is asking for exactly this: wait for its one query instead of
            # asking the same again in line (it never raises; a failed one leaves the cache as it was).
            await asyncio.shield(warming)
        owner = self._owner(device_id)
        if owner is None:
            owner = await self._query_owner(device_id)
            if owner is None:
                raise FrameRefused(
                    ErrorCode.UNKNOWN_DEVICE, f"there is no active device {device_id}", device_id=device_id
                )
            self._remember_owner(device_id, owner)
        if owner != user_id:
            raise FrameRefused(
                ErrorCode.UNKNOWN_DEVICE,
                f"device {device_id} does not belong to user {user_id}",
                device_id=device_id,
            )
        if user_id == sender or self._are_contacts(sender, user_id):
            return
        tie = await self._query_contacts(sender, user_id)
        if tie is Tie.HIDDEN:  # told exactly as a device that is not there (module docstring)
            raise FrameRefused(
                ErrorCode.UNKNOWN_DEVICE, f"there is no active device {device_id}", device_id=device_id
            )
        if tie is Tie.STRANGER:
            raise FrameRefused(
                ErrorCode.NOT_A_CONTACT,
                f"user {user_id} is not an accepted contact of yours nor in a group with you",
            )
        self._remember_contacts(sender, user_id)

    def warm(self, user_id: int) -> None:
        """A device of `user_id` connected: read the answers its first sends will need, in the
        background (one bounded query; see the module docstring). Nothing when one is under way."""
        if self._warm_limit <= 0 or user_id in self._warming:
            return
        task = asyncio.get_running_loop().create_task(self._warm(user_id, self._generation))
        self._warming[user_id] = task

    def clear(self) -> None:
        """Contacts or devices changed: re-read every permission from the database from now on."""
        self._generation += 1
        self._owners.clear()
        self._contacts.clear()

    async def settle(self) -> None:
        """Wait for the background refreshes and warm-ups under way (for shutdown and tests)."""
        while self._refreshing or self._warming:
            pending = [*self._refreshing.values(), *self._warming.values()]
            await asyncio.gather(*pending, return_exceptions=True)

    # -- the database ----------------------------------------------------------------------------

    async def _query_owner(self, device_id: str) -> int | None:
        """The owner of an active device, or None."""
        async with self._engine.connect() as conn:
            found = await device_owner(conn, device_id)
        return found.user_id if found is not None and found.active else None

    async def _query_contacts(self, sender: int, user_id: int) -> Tie:
        async with self._engine.connect() as conn:
            if await is_accepted_contact(conn, sender, user_id):
                return Tie.REACHABLE
            # Members of one group reach each other's devices even when they are not contacts:
            # sender keys travel in pairwise envelopes, and direct links carry group messages.
            # Not a member who blocked the sender (a block ends the contact rows, not the group).
            if not await share_a_group(conn, sender, user_id):
                return Tie.STRANGER
            return Tie.HIDDEN if await has_blocked(conn, user_id, sender) else Tie.REACHABLE

    async def _warm(self, user_id: int, generation: int) -> None:
        asked = self._clock()  # the answers are as old as the question, never younger
        try:
            async with self._engine.connect() as conn:
                found = await reachable_devices(conn, user_id, self._warm_limit)
            if generation == self._generation:
                for owner, device_id in found:
                    self._remember_owner(device_id, owner, asked)
                    if owner != user_id:
                        self._remember_contacts(user_id, owner, asked)
        except Exception as exc:  # nothing is lost: the first sends ask in line, as without it
            log.warning("warming the reach answers of a user failed: %s", type(exc).__name__)
        finally:
            self._warming.pop(user_id, None)

    # -- the cache -------------------------------------------------------------------------------

    def _fresh(self, confirmed: float, key: _Key) -> bool:
        """Whether an answer confirmed at `confirmed` may be used now; past half its life, a
        background refresh is started."""
        age = self._clock() - confirmed
        if age > self._ttl:
            return False
        if age > self._ttl / 2 and key not in self._refreshing:
            task = asyncio.get_running_loop().create_task(self._refresh(key, self._generation))
            self._refreshing[key] = task
        return True

    def _cached(self, sender: int, user_id: int, device_id: str) -> bool:
        """Whether both answers `check` needs are cached (without starting any refresh)."""
        hit = self._owners.get(device_id)
        if hit is None or self._clock() - hit[1] > self._ttl:
            return False
        confirmed = self._contacts.get((sender, user_id))
        return user_id == sender or (confirmed is not None and self._clock() - confirmed <= self._ttl)

    def _owner(self, device_id: str) -> int | None:
        hit = self._owners.get(device_id)
        if hit is None or not self._fresh(hit[1], ("owner", device_id)):
            return None
        return hit[0]

    def _remember_owner(self, device_id: str, user_id: int, confirmed: float | None = None) -> None:
        if len(self._owners) >= _CACHE_MAX:
            self._owners.clear()  # crude but bounded: a refill costs one query per active pair
        at = self._clock() if confirmed is None else confirmed
        old = self._owners.get(device_id)
        if old is None or old[1] < at:  # a warm-up never makes a younger answer older
            self._owners[device_id] = (user_id, at)

    def _are_contacts(self, a: int, b: int) -> bool:
        confirmed = self._contacts.get((a, b))
        return confirmed is not None and self._fresh(confirmed, ("contacts", a, b))

    def _remember_contacts(self, a: int, b: int, confirmed: float | None = None) -> None:
        if len(self._contacts) >= _CACHE_MAX:
            self._contacts.clear()
        at = self._clock() if confirmed is None else confirmed
        if self._contacts.get((a, b), at) <= at:
            self._contacts[(a, b)] = at

    async def _refresh(self, key: _Key, generation: int) -> None:
        """Re-read one answer; renew it when the database still says yes, drop it when not."""
        asked = self._clock()
        try:
            if key[0] == "owner":
                device_id = str(key[1])
                owner = await self._query_owner(device_id)
                if generation == self._generation:
                    if owner is None:
                        self._owners.pop(device_id, None)
                    else:
                        self._owners[device_id] = (owner, asked)
            else:
                pair = (int(key[1]), int(key[2]))  # type: ignore[misc]
                ok = await self._query_contacts(*pair) is Tie.REACHABLE
                if generation == self._generation:
                    if ok:
                        self._contacts[pair] = asked
                    else:
                        self._contacts.pop(pair, None)
        except Exception as exc:  # the answer simply ages out; the next check asks in line
            log.warning("refreshing a reach answer failed: %s", type(exc).__name__)
        finally:
            self._refreshing.pop(key, None)
