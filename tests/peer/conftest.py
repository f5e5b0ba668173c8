"""Fixtures for the peer's tests: device keys made once per session, links over 127.0.0.1 only."""

from __future__ import annotations

import asyncio
import gc

import pytest
from aiortc import RTCPeerConnection

from crypto.keys import DeviceKeys, generate_device_keys


def _keys(n: int) -> list[DeviceKeys]:
    try:
        from tests.support.keys import device_keys  # fixed keys from the crypto helper, when present

        return [device_keys(i) for i in range(n)]
    except ImportError:
        return [generate_device_keys() for _ in range(n)]


@pytest.fixture(scope="session")
def keyring() -> list[DeviceKeys]:
    """Four device key pairs (RSA-4096 keygen is slow: once per session)."""
    return _keys(4)


def live_peer_connections() -> list[RTCPeerConnection]:
    gc.collect()
    return [o for o in gc.get_objects() if isinstance(o, RTCPeerConnection) and o.connectionState != "closed"]


def foreign_tasks(before: set[asyncio.Task]) -> list[asyncio.Task]:
    current = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t not in before and t is not current and not t.done()]
