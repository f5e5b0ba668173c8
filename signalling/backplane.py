"""The seam between one server instance and the others: where is a device's socket, and how does a
frame get there.

`Backplane` is the one interface the hub talks to. `InProcessBackplane` serves a single process
(the default); `RedisBackplane` lets several instances behind a load balancer share one PostgreSQL:
each instance records the devices it holds in Redis (keys that expire unless the instance keeps
refreshing them, so a killed instance's devices go offline by themselves) and routes a frame to the
instance that holds the recipient's socket over Redis pub/sub.

The backplane carries only frames that are already committed or ephemeral (signals, presence,
live copies of stored envelopes): losing a message in Redis never loses an envelope, because the
mailbox row is the source of truth until the device acknowledges it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from abc import ABC, abstractmethod
from typing import Any, Protocol

log = logging.getLogger(__name__)


class LocalSockets(Protocol):
    """What the backplane calls back into: the sockets this instance holds (the hub)."""

    def deliver_to_device(self, device_id: str, text: str, message_id: str | None) -> bool: ...

    def deliver_to_user(self, user_id: int, text: str) -> None: ...

    def close_device(self, device_id: str, code: int, reason: str, unless_conn: str | None) -> None: ...

    def close_user(self, user_id: int, code: int, reason: str) -> None: ...

    async def device_vanished(self, user_id: int, device_id: str) -> None:
        """A device's instance died without saying goodbye; tell its contacts it is gone."""
        ...


class Backplane(ABC):
    """Routing and presence across instances. Every method is safe to call from the event loop."""

    instance_id: str

    @abstractmethod
    async def start(self, local: LocalSockets) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def attach(self, user_id: int, device_id: str, conn_id: str, replace_code: int) -> None:
        """Record that this instance holds the device's socket; other instances drop theirs."""

    @abstractmethod
    async def detach(self, user_id: int, device_id: str, conn_id: str) -> None:
        """Forget the device here, unless a newer socket (another conn_id) has taken it over."""

    @abstractmethod
    async def online_devices(self, user_id: int) -> set[str]: ...

    async def is_online(self, user_id: int) -> bool:
        return bool(await self.online_devices(user_id))

    @abstractmethod
    async def is_device_online(self, device_id: str) -> bool: ...

    @abstractmethod
    async def send_to_device(self, device_id: str, text: str, message_id: str | None = None) -> bool:
        """Hand `text` to whichever instance holds the device; False when none does."""

    @abstractmethod
    async def send_to_user(self, user_id: int, text: str) -> None:
        """Hand `text` to every socket of the user, wherever it is."""

    @abstractmethod
    async def disconnect_user(self, user_id: int, code: int, reason: str) -> None: ...

    @abstractmethod
    async def disconnect_device(self, device_id: str, code: int, reason: str) -> None: ...

    @abstractmethod
    async def mark_leaving(self, device_id: str, grace: float) -> None:
        """Remember for `grace` seconds that the device just left (reconnects inside it are quiet)."""

    @abstractmethod
    async def take_leaving(self, device_id: str) -> bool:
        """True (and forget it) when the device left less than its grace ago."""


class InProcessBackplane(Backplane):
    """One process holds every socket: routing is a dictionary lookup in the hub."""

    def __init__(self) -> None:
        self.instance_id = "local"
        self._local: LocalSockets | None = None
        self._devices: dict[str, tuple[int, str]] = {}  # device -> (user, conn id)
        self._users: dict[int, set[str]] = {}
        self._leaving: dict[str, float] = {}

    async def start(self, local: LocalSockets) -> None:
        self._local = local

    async def close(self) -> None:
        self._local = None

    def _sockets(self) -> LocalSockets:
        if self._local is None:
            raise RuntimeError("backplane used before start() or after close()")
        return self._local

    async def attach(self, user_id: int, device_id: str, conn_id: str, replace_code: int) -> None:
        self._devices[device_id] = (user_id, conn_id)
        self._users.setdefault(user_id, set()).add(device_id)

    async def detach(self, user_id: int, device_id: str, conn_id: str) -> None:
        held = self._devices.get(device_id)
        if held is None or held[1] != conn_id:
            return
        del self._devices[device_id]
        devices = self._users.get(user_id)
        if devices is not None:
            devices.discard(device_id)
            if not devices:
                del self._users[user_id]

    async def online_devices(self, user_id: int) -> set[str]:
        return set(self._users.get(user_id, ()))

    async def is_device_online(self, device_id: str) -> bool:
        return device_id in self._devices

    async def send_to_device(self, device_id: str, text: str, message_id: str | None = None) -> bool:
        return self._sockets().deliver_to_device(device_id, text, message_id)

    async def send_to_user(self, user_id: int, text: str) -> None:
        self._sockets().deliver_to_user(user_id, text)

    async def disconnect_user(self, user_id: int, code: int, reason: str) -> None:
        self._sockets().close_user(user_id, code, reason)

    async def disconnect_device(self, device_id: str, code: int, reason: str) -> None:
        self._sockets().close_device(device_id, code, reason, None)

    async def mark_leaving(self, device_id: str, grace: float) -> None:
        self._leaving[device_id] = time.monotonic() + grace

    async def take_leaving(self, device_id: str) -> bool:
        until = self._leaving.pop(device_id, None)
        return until is not None and until > time.monotonic()


# Deletes the device key only if this instance still owns it, and drops it from the user's set.
ROUTE_TTL = 1.0  # seconds a device's instance is trusted without asking Redis again
ROUTE_CACHE_SIZE = 100_000  # devices routed from memory at most; past it the cache starts over

_DETACH_LUA = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[2])
  return 1
end
return 0
"""


# Removes (and returns) the members of a user's device set whose `dev:` key has expired.
_SWEEP_LUA = """
local gone = {}
for _, device in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. device) == 0 then
    redis.call('SREM', KEYS[1], device)
    table.insert(gone, device)
  end
end
return gone
"""


class RedisBackplane(Backplane):
    """Several instances, one Redis: device presence in expiring keys, frames over pub/sub.

    Keys (all under `prefix`): `dev:<device>` → "<instance>|<conn>|<user>" (expires after `ttl`
    unless refreshed), `user:<id>` → set of device ids (members checked against `dev:` keys; members
    whose key expired are swept on every heartbeat and reported as vanished),
    `leaving:<device>` (the reconnect grace). Channels: `inst:<instance>` for frames to one
    instance, `all` for what every instance must act on (claims, disconnects).
    """

    def __init__(self, url: str, *, prefix: str = "peerpost", ttl: float = 30.0) -> None:
        from redis import asyncio as aioredis

        self.instance_id = secrets.token_hex(8)
        self._redis = aioredis.Redis.from_url(url, decode_responses=True)
        self._prefix = prefix
        self._ttl = ttl
        self._local: LocalSockets | None = None
        self._held: dict[str, tuple[int, str]] = {}  # device -> (user, conn) held by this instance
        # device -> (instance holding it, when looked up): saves a GET per envelope (bench/cluster.py).
        # Dropped on every claim (a device attaching anywhere is broadcast on `all`); a device that
        # left stays routed for at most ROUTE_TTL, and what is pushed to a socket that is gone is
        # not lost: a send to another instance always has its row stored first.
        self._routes: dict[str, tuple[str, float]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._pubsub: Any = None
        self._detach = self._redis.register_script(_DETACH_LUA)
        self._sweep_user = self._redis.register_script(_SWEEP_LUA)
        self._subscribed = asyncio.Event()

    def _k(self, *parts: object) -> str:
        return ":".join([self._prefix, *(str(p) for p in parts)])

    async def start(self, local: LocalSockets) -> None:
        self._local = local
        self._pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
        await self._pubsub.subscribe(self._k("inst", self.instance_id), self._k("all"))
        self._tasks = [
            asyncio.create_task(self._listen(), name="backplane-listen"),
            asyncio.create_task(self._heartbeat(), name="backplane-heartbeat"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for device_id, (user_id, conn_id) in list(self._held.items()):
            with contextlib.suppress(Exception):
                await self.detach(user_id, device_id, conn_id)
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        await self._redis.aclose()
        self._local = None

    # -- presence ----------------------------------------------------------------------------------

    def _holder(self, user_id: int, conn_id: str) -> str:
        return f"{self.instance_id}|{conn_id}|{user_id}"

    async def attach(self, user_id: int, device_id: str, conn_id: str, replace_code: int) -> None:
        self._held[device_id] = (user_id, conn_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._k("dev", device_id), self._holder(user_id, conn_id), px=int(self._ttl * 1000))
            pipe.sadd(self._k("user", user_id), device_id)
            await pipe.execute()
        claim = {"op": "claim", "device": device_id, "conn": conn_id, "code": replace_code}
        await self._publish(self._k("all"), claim)

    async def detach(self, user_id: int, device_id: str, conn_id: str) -> None:
        held = self._held.get(device_id)
        if held is not None and held[1] == conn_id:
            del self._held[device_id]
        await self._detach(
            keys=[self._k("dev", device_id), self._k("user", user_id)],
            args=[self._holder(user_id, conn_id), device_id],
        )

    async def online_devices(self, user_id: int) -> set[str]:
        members = [str(m) for m in await self._redis.smembers(self._k("user", user_id))]  # decoded
        if not members:
            return set()
        holders = await self._redis.mget([self._k("dev", d) for d in members])
        return {d for d, h in zip(members, holders, strict=True) if h is not None}

    async def is_device_online(self, device_id: str) -> bool:
        return bool(await self._redis.exists(self._k("dev", device_id)))

    async def mark_leaving(self, device_id: str, grace: float) -> None:
        await self._redis.set(self._k("leaving", device_id), "1", px=max(1, int(grace * 1000)))

    async def take_leaving(self, device_id: str) -> bool:
        return bool(await self._redis.delete(self._k("leaving", device_id)))

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._ttl / 3)
            try:
                async with self._redis.pipeline(transaction=False) as pipe:
                    for device_id, (user_id, conn_id) in self._held.items():
                        pipe.set(
                            self._k("dev", device_id),
                            self._holder(user_id, conn_id),
                            px=int(self._ttl * 1000),
                        )
                        pipe.sadd(self._k("user", user_id), device_id)
                    await pipe.execute()
                await self._sweep()
            except Exception as exc:  # Redis away for a moment: keys expire, sockets stay; retry next beat
                log.warning("backplane heartbeat failed: %s", exc)

    async def _sweep(self) -> None:
        """Find devices whose instance died (key expired, still in the user's set) and report them.

        The Lua script removes the stale members atomically, so when several instances sweep at
        once exactly one of them reports each device.
        """
        prefix = self._k("user", "")
        async for key in self._redis.scan_iter(match=prefix + "*", count=500):
            gone = await self._sweep_user(keys=[key], args=[self._k("dev", "")])
            if gone:
                user_id = int(key[len(prefix) :])
                for device_id in gone:
                    await self._sockets().device_vanished(user_id, device_id)

    # -- routing -----------------------------------------------------------------------------------

    def _sockets(self) -> LocalSockets:
        if self._local is None:
            raise RuntimeError("backplane used before start() or after close()")
        return self._local

    async def _publish(self, channel: str, message: dict[str, Any]) -> None:
        await self._redis.publish(channel, json.dumps(message, separators=(",", ":")))

    async def send_to_device(self, device_id: str, text: str, message_id: str | None = None) -> bool:
        if device_id in self._held:
            return self._sockets().deliver_to_device(device_id, text, message_id)
        now = time.monotonic()
        route = self._routes.get(device_id)
        if route is not None and now - route[1] < ROUTE_TTL:
            instance = route[0]
        else:
            holder = await self._redis.get(self._k("dev", device_id))
            if holder is None:
                self._routes.pop(device_id, None)
                return False
            instance = str(holder).split("|", 1)[0]  # decode_responses: already text
            if len(self._routes) >= ROUTE_CACHE_SIZE:
                self._routes.clear()
            self._routes[device_id] = (instance, now)
        if instance == self.instance_id:  # stale key of ours: the socket is gone
            self._routes.pop(device_id, None)
            return False
        message = {"op": "device", "device": device_id, "text": text, "mid": message_id}
        await self._publish(self._k("inst", instance), message)
        return True

    async def send_to_user(self, user_id: int, text: str) -> None:
        members = list(await self._redis.smembers(self._k("user", user_id)))
        holders = await self._redis.mget([self._k("dev", d) for d in members]) if members else []
        instances = {str(h).split("|", 1)[0] for h in holders if h is not None}
        for instance in instances:
            if instance == self.instance_id:
                self._sockets().deliver_to_user(user_id, text)
            else:
                await self._publish(self._k("inst", instance), {"op": "user", "user": user_id, "text": text})

    async def disconnect_user(self, user_id: int, code: int, reason: str) -> None:
        self._sockets().close_user(user_id, code, reason)
        await self._publish(
            self._k("all"), {"op": "kick_user", "user": user_id, "code": code, "reason": reason}
        )

    async def disconnect_device(self, device_id: str, code: int, reason: str) -> None:
        self._sockets().close_device(device_id, code, reason, None)
        message = {"op": "kick_device", "device": device_id, "code": code, "reason": reason}
        await self._publish(self._k("all"), message)

    async def _listen(self) -> None:
        while True:
            try:
                message = await self._pubsub.get_message(timeout=1.0)
            except Exception as exc:
                log.warning("backplane subscription failed: %s", exc)
                await asyncio.sleep(1.0)
                continue
            if message is None or message.get("type") != "message":
                continue
            try:
                self._dispatch(json.loads(message["data"]))
            except Exception:
                log.exception("backplane message could not be handled")

    def _dispatch(self, m: dict[str, Any]) -> None:
        local = self._sockets()
        op = m.get("op")
        if op == "device":
            local.deliver_to_device(m["device"], m["text"], m.get("mid"))
        elif op == "user":
            local.deliver_to_user(int(m["user"]), m["text"])
        elif op == "claim":
            self._routes.pop(m["device"], None)
            held = self._held.get(m["device"])
            if held is not None and held[1] != m["conn"]:
                local.close_device(
                    m["device"], int(m["code"]), "this device connected again elsewhere", m["conn"]
                )
        elif op == "kick_user":
            local.close_user(int(m["user"]), int(m["code"]), str(m["reason"]))
        elif op == "kick_device":
            local.close_device(m["device"], int(m["code"]), str(m["reason"]), None)
