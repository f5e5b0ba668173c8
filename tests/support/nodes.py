"""Resident nodes started by a test (through `peerpost` commands): find them and stop them.

Every node lives in its profile folder (`node.sock`, `node.lock`); a test that ran commands on
profiles under `root` stops every node there with `stop_nodes(root)`, and waits until each has
released its profile lock, so nothing outlives the test.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from peer.resident import client, rpc


def node_pid(profile_dir: Path) -> int | None:
    """The pid of the node holding this profile, or None when none holds it."""
    lock = profile_dir / rpc.LOCK_NAME
    if not lock.exists():
        return None
    fd = os.open(lock, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = lock.read_text().strip()
            return int(text) if text.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def wait_released(profile_dir: Path, within: float = 30.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if node_pid(profile_dir) is None:
            return True
        time.sleep(0.05)  # another process's lock: nothing to wait on but the lock itself
    return False


def stop_nodes(root: Path) -> None:
    for lock in root.rglob(rpc.LOCK_NAME):
        profile = lock.parent
        with (
            contextlib.suppress(client.NodeNotRunning, OSError, rpc.RpcError),
            client.connect(profile, timeout=10) as node,
        ):
            node.call("stop")
        if not wait_released(profile):
            pid = node_pid(profile)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, 9)
