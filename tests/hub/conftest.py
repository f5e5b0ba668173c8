"""Fixtures of the hub tests: one real server per module (tests make their own accounts, so they
do not see each other), and a `World` per test to build accounts, devices and contacts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.hub.world import World
from tests.support.server import RunningServer

HUB_TEST_ENV = {
    "PEERPOST_PRESENCE_GRACE_SECONDS": "0.5",
    "PEERPOST_MAX_FRAME_BYTES": "65536",
    "PEERPOST_WS_RATE_PER_SECOND": "2000",
    "PEERPOST_WS_RATE_BURST": "4000",
    # These tests decline and ask again to see the pushes; the cool-down has its own test.
    "PEERPOST_CONTACT_DECLINE_COOLDOWN_SECONDS": "0",
}


@pytest.fixture(scope="module")
def hub_server() -> Iterator[RunningServer]:
    with RunningServer(env=HUB_TEST_ENV) as running:
        yield running


@pytest.fixture
async def world(hub_server: RunningServer) -> AsyncIterator[World]:
    async with World(hub_server.url, hub_server.ws_url) as built:
        yield built
