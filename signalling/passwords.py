"""Password hashing with bcrypt, always in a worker thread.

bcrypt at cost 12 takes ~0.25 s of CPU: on the event loop it would stall every socket the server
holds, so both hashing and checking go through `asyncio.to_thread`. A login for an unknown user
still checks against a dummy hash of the same cost, so the answer time does not tell which
usernames exist.

At most `concurrency` hashes run at once (default: one less than the CPU count, at least one).
bcrypt releases the GIL, so unbounded threads would compete with the event loop for every core;
with a core left free, pings and relays keep their latency while a burst of logins queues up.

bcrypt reads at most 72 bytes. A password longer than that in UTF-8 (the contract allows 128
characters, signalling.protocol.Password) is first reduced to the base64 of its SHA-256 (44 bytes),
as passlib's bcrypt_sha256 does: nothing past byte 72 is silently ignored, and every password of at
most 72 bytes — all that older servers accepted — is hashed exactly as before.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import secrets

import bcrypt

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
        return bcrypt.hashpw(bcrypt_input(password), bcrypt.gensalt(rounds=self.rounds))

    @staticmethod
    def _check_blocking(password: str, hashed: bytes) -> bool:
        try:
            return bcrypt.checkpw(bcrypt_input(password), hashed)
        except ValueError:
            return False
