"""bcrypt off the event loop, bounded, with the same cost for unknown users."""

from __future__ import annotations

import asyncio
import threading

import bcrypt

from signalling.passwords import PasswordHasher


async def test_hash_and_verify_round_trip_at_the_configured_cost() -> None:
    hasher = PasswordHasher(rounds=4)
    hashed = await hasher.hash("correct horse battery")
    assert hashed.startswith(b"$2b$04$")
    assert await hasher.verify("correct horse battery", hashed)
    assert not await hasher.verify("wrong horse battery", hashed)
    assert not await hasher.verify("x" * 73, hashed)  # past bcrypt's limit: refused, not truncated


async def test_unknown_user_check_spends_a_hash_and_says_no() -> None:
    hasher = PasswordHasher(rounds=4)
    calls: list[bytes] = []
    original = hasher._check_blocking

    def counting(password: str, hashed: bytes) -> bool:
        calls.append(hashed)
        return original(password, hashed)

    hasher._check_blocking = counting  # type: ignore[method-assign]
    assert await hasher.verify("anything at all", None) is False
    assert len(calls) == 1 and calls[0].startswith(b"$2b$04$")


async def test_hashing_runs_in_worker_threads_at_most_concurrency_at_once() -> None:
    hasher = PasswordHasher(rounds=6, concurrency=2)
    loop_thread = threading.get_ident()
    lock = threading.Lock()
    running, peak, threads = 0, 0, set()
    pair = threading.Barrier(2)  # two hashes must really be in flight together

    def tracked(password: str) -> bytes:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            threads.add(threading.get_ident())
        pair.wait(timeout=10)
        try:
            return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=6))
        finally:
            with lock:
                running -= 1

    hasher._hash_blocking = tracked  # type: ignore[method-assign]
    await asyncio.gather(*(hasher.hash(f"password {i}") for i in range(6)))
    assert peak == 2
    assert loop_thread not in threads
