"""Rate limits: sliding-window attempt counters (login throttling) and the token bucket of a socket.

`SlidingWindowLimiter`: per key (a username, a client address) it remembers the times of recent
attempts and refuses once `limit` fall inside `window` seconds, saying how long until the oldest
one leaves the window. State is per process: several instances behind a balancer each apply the
limit on their own.
`TokenBucket`: the frame budget of one hub socket (docs/hub.md, close 4429).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class SlidingWindowLimiter:
    def __init__(
        self,
        limit: int,
        window: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 100_000,
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._max_keys = max_keys
        self._hits: dict[str, deque[float]] = {}

    def retry_after(self, key: str) -> float | None:
        """Seconds to wait if `key` is over the limit now, else None (does not count an attempt)."""
        now = self._clock()
        hits = self._prune(key, now)
        if hits is not None and len(hits) >= self.limit:
            return max(0.0, hits[0] + self.window - now)
        return None

    def count(self, key: str) -> int:
        """Attempts of `key` inside the window now."""
        hits = self._prune(key, self._clock())
        return 0 if hits is None else len(hits)

    def hit(self, key: str) -> None:
        now = self._clock()
        hits = self._prune(key, now)
        if hits is None:
            if len(self._hits) >= self._max_keys:
                self._evict(now)
            hits = self._hits.setdefault(key, deque())
        hits.append(now)

    def undo(self, key: str) -> None:
        """Forget the latest attempt of `key` (it turned out to be a good one)."""
        hits = self._hits.get(key)
        if hits:
            hits.pop()
            if not hits:
                del self._hits[key]

    def _prune(self, key: str, now: float) -> deque[float] | None:
        hits = self._hits.get(key)
        if hits is None:
            return None
        while hits and hits[0] <= now - self.window:
            hits.popleft()
        if not hits:
            del self._hits[key]
            return None
        return hits

    def _evict(self, now: float) -> None:
        for key in list(self._hits):
            self._prune(key, now)
        if len(self._hits) >= self._max_keys:  # still full: drop the oldest keys
            for key in list(self._hits)[: len(self._hits) // 10 + 1]:
                del self._hits[key]


class TokenBucket:
    """Token bucket (one per WebSocket): `rate` frames a second sustained, `burst` at once."""

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._stamp = time.monotonic()

    def take(self, cost: int = 1) -> bool:
        """Spend `cost` tokens (a frame, or each id of an ack); False when there are not enough."""
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < cost:
            return False
        self._tokens -= cost
        return True
