"""How the server process manages its memory: the collector's tuning and the C allocator's.

Why here and not in the hub: both are process-wide, and both decide whether memory freed by a
closed socket goes back to the system.

- **The collector.** Everything loaded at start-up lives as long as the process; `gc.freeze()`
  moves it out of the collector's sight so full collections stay short. Every frame allocates
  dozens of short-lived containers; at the default young threshold (700) a collection ran every
  few messages (bench/relay.py: the hub saturated at 6-9k envelopes/s with the defaults, kept up
  with 12k at 50,000). 15,000, not 50,000: at half load nothing is collected either way (the
  per-envelope objects die by reference counting), but when a hub falls behind and objects wait in
  its queues, each young collection examines a third as many and pauses a third as long (52-133 ms
  measured at 50,000; bench/tail.py, docs/hub.md "The tail"). The old generation's threshold
  stays low (10) so cycles that outlive a socket (its tasks, futures and callbacks) are found
  within seconds, not minutes.
- **The allocator.** Envelopes are large strings (up to a megabyte). glibc's malloc raises its mmap
  threshold each time such a block is freed, after which the next ones come from the heap and a
  freed megabyte stays in the process. Pinning the threshold at 128 KiB keeps every large frame in
  its own mapping, returned to the system the moment it is freed; `release()` trims the heap after
  a socket with a large queue is dropped.

Off glibc (musl, macOS) the allocator half does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging

log = logging.getLogger(__name__)

GC_THRESHOLDS = (15_000, 20, 10)
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024

_libc: ctypes.CDLL | None = None


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        name = ctypes.util.find_library("c")
        if name is None:
            return None
        try:
            lib = ctypes.CDLL(name)
            lib.mallopt  # noqa: B018 - glibc only
            lib.malloc_trim  # noqa: B018
        except (OSError, AttributeError):
            return None
        _libc = lib
    return _libc


def tune() -> None:
    """Once, after start-up: freeze what is loaded, set the thresholds, pin malloc's mmap threshold."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    lib = _glibc()
    if lib is not None and lib.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) != 1:
        log.warning("mallopt(M_MMAP_THRESHOLD) failed; freed frames may stay in the process")


def release() -> None:
    """Give freed heap memory back to the system (cheap; called after a big queue is dropped)."""
    lib = _glibc()
    if lib is not None:
        lib.malloc_trim(0)
