"""Password hashing with bcrypt, in a bounded pool of worker threads with a short queue.

bcrypt at cost 12 takes ~0.25 s of CPU: on the event loop it would stall every socket the server
holds, so both hashing and checking go through `asyncio.to_thread`. A login for an unknown user
still checks against a dummy hash of the same cost, so the answer time does not tell which
usernames exist.

At most `concurrency` hashes run at once (default: one less than the CPU count, at least one).
bcrypt releases the GIL, so unbounded threads would compete with the event loop for every core;
with a core left free, pings and relays keep their latency while a burst queues up.

The queue is short and has two lanes: checks (login, the current password of a change) go before
new hashes (registration, a new password), so a registration flood cannot make a login wait behind
it; and a new hash that finds `queue` others already waiting is refused at once (`Busy`, 503 with
Retry-After) instead of waiting for seconds. Checks may queue four times as deep.

bcrypt reads at most 72 bytes. A password longer than that in UTF-8 (the contract allows 128
characters, signalling.protocol.Password) is first reduced to the base64 of its SHA-256 (44 bytes),
as passlib's bcrypt_sha256 does: nothing past byte 72 is silently ignored, and every password of at
most 72 bytes — all that older servers accepted — is hashed exactly as before.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import os
import secrets
from collections.abc import AsyncIterator

import bcrypt

from signalling.errors import ApiError
from signalling.protocol import ApiErrorCode


class Busy(ApiError):
    status_code = 503
    code = ApiErrorCode.BUSY

    def __init__(self, detail: str) -> None:
        super().__init__(detail, headers={"Retry-After": "2"})


BCRYPT_MAX_BYTES = 72


def bcrypt_input(password: str) -> bytes:
    """The bytes bcrypt sees: the password itself up to 72 bytes, else base64(SHA-256(password))."""
    data = password.encode("utf-8")
    if len(data) <= BCRYPT_MAX_BYTES:
        return data
    return base64.b64encode(hashlib.sha256(data).digest())


def default_concurrency() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


class PasswordHasher:
    def __init__(self, rounds: int = 12, concurrency: int | None = None, queue: int = 16) -> None:
        self.rounds = rounds
        self.concurrency = concurrency or default_concurrency()
        self.queue = queue
        self._running = 0
        self._checks: collections.deque[asyncio.Future[None]] = collections.deque()
        self._hashes: collections.deque[asyncio.Future[None]] = collections.deque()
        self._dummy: bytes | None = None
        self.refused = 0

    @property
    def waiting(self) -> int:
        return len(self._checks) + len(self._hashes)

    async def hash(self, password: str, *, urgent: bool = False) -> bytes:
        async with self._slot(urgent):
            return await asyncio.to_thread(self._hash_blocking, password)

    async def verify(self, password: str, hashed: bytes | None) -> bool:
        """Check `password`; with `hashed=None` spend the same time and answer False."""
        if hashed is None:
            if self._dummy is None:
                self._dummy = await self.hash(secrets.token_urlsafe(16), urgent=True)
            hashed, answer = self._dummy, False
        else:
            answer = True
        async with self._slot(urgent=True):
            ok = await asyncio.to_thread(self._check_blocking, password, hashed)
        return ok and answer

    @contextlib.asynccontextmanager
    async def _slot(self, urgent: bool) -> AsyncIterator[None]:
        lane = self._checks if urgent else self._hashes
        if self._running < self.concurrency:  # (a waiter exists only while every slot is taken)
            self._running += 1
        else:
            if len(lane) >= (self.queue * 4 if urgent else self.queue):
                self.refused += 1
                raise Busy("The server is busy checking passwords; try again in a few seconds.")
            turn = asyncio.get_running_loop().create_future()
            lane.append(turn)
            try:
                await turn  # the releasing task handed its slot over: `_running` is unchanged
            except asyncio.CancelledError:
                if turn.done() and not turn.cancelled():
                    self._release()  # handed over just as we were cancelled: pass it on
                else:
                    with contextlib.suppress(ValueError):
                        lane.remove(turn)
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        for lane in (self._checks, self._hashes):
            while lane:
                turn = lane.popleft()
                if not turn.done():
                    turn.set_result(None)
                    return
        self._running -= 1

    def _hash_blocking(self, password: str) -> bytes:
        return bcrypt.hashpw(bcrypt_input(password), bcrypt.gensalt(rounds=self.rounds))

    @staticmethod
    def _check_blocking(password: str, hashed: bytes) -> bool:
        try:
            return bcrypt.checkpw(bcrypt_input(password), hashed)
        except ValueError:
            return False
