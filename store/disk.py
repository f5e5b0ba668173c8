"""The global disk guard: new writes are refused, with a clear error, before the disk fills.

The mailbox writer and the blob store ask `DiskGuard.refusal()` before they write; `/health` shows
its state. The answer is the file system's free space under the data directory (statvfs, cached
for a second so the hot path pays one syscall a second, not one per envelope). On PostgreSQL the
database's own disk is not visible from here: that is the database host's monitoring to watch.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from store.errors import QuotaExceeded


class StorageFull(QuotaExceeded):
    """The server's disk is nearly full: nothing new is stored until space is freed."""

    def __init__(self, free: int, floor: int) -> None:
        super().__init__(
            f"the server's storage is nearly full ({free} bytes free, it keeps {floor} free); "
            "new messages and files cannot be stored now, try again later"
        )
        self.free = free
        self.floor = floor


class DiskGuard:
    def __init__(self, path: Path, min_free_bytes: int, *, check_every: float = 1.0) -> None:
        self.path = path
        self.min_free_bytes = min_free_bytes
        self._check_every = check_every
        self._checked = -1e9
        self._free = 0

    def free_bytes(self) -> int:
        now = time.monotonic()
        if now - self._checked >= self._check_every:
            try:
                st = os.statvfs(self.path)
                self._free = st.f_bavail * st.f_frsize
            except OSError:
                self._free = 0
            self._checked = now
        return self._free

    def refusal(self) -> StorageFull | None:
        """None while there is room; else the error to refuse a new write with."""
        if self.min_free_bytes <= 0:
            return None
        free = self.free_bytes()
        return StorageFull(free, self.min_free_bytes) if free < self.min_free_bytes else None
