"""Password hashing with bcrypt, always in a worker thread.

bcrypt at cost 12 takes ~0.25 s of CPU: on the event loop it would stall every socket the server
holds, so both hashing and checking go through `asyncio.to_thread`. A login for an unknown user
still checks against a dummy hash of the same cost, so the answer time does not tell which
usernames exist.

At most `concurrency` hashes run at once (default: one less than the CPU count, at least one).
bcrypt releases the GIL, so unbounded threads would compete with the event loop for every core;
with a core left free, pings and relays keep their latency while a burst of logins queues up.
"""

from __future__ import annotations

import asyncio
import os
import secrets

import bcrypt


def default_concurrency() -> int:
    return max(1, (os.cpu_count() or 2) - 1)


class PasswordHasher:
    def __init__(self, rounds: int = 12, concurrency: int | None = None) -> None:
        self.rounds = rounds
        self.concurrency = concurrency or default_concurrency()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._dummy: bytes | None = None

    async def hash(self, password: str) -> bytes:
        async with self._slots:
            return await asyncio.to_thread(self._hash_blocking, password)

    async def verify(self, password: str, hashed: bytes | None) -> bool:
        """Check `password`; with `hashed=None` spend the same time and answer False."""
        if hashed is None:
            if self._dummy is None:
                self._dummy = await self.hash(secrets.token_urlsafe(16))
            async with self._slots:
                await asyncio.to_thread(self._check_blocking, password, self._dummy)
            return False
        async with self._slots:
            return await asyncio.to_thread(self._check_blocking, password, hashed)

    def _hash_blocking(self, password: str) -> bytes:
        return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=self.rounds))

    @staticmethod
    def _check_blocking(password: str, hashed: bytes) -> bool:
        data = password.encode("utf-8")
        if len(data) > 72:  # bcrypt 5 raises past 72 bytes; such a password was never accepted
            return False
        try:
            return bcrypt.checkpw(data, hashed)
        except ValueError:
            return False
