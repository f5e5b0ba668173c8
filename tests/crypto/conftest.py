"""Fixtures for the crypto tests: the committed devices and their vectors."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from crypto.envelope import LocalDevice, Recipient
from crypto.keys import DeviceKeys
from tests.support.keys import fixed_device_keys

DATA = Path(__file__).resolve().parent.parent / "data" / "crypto"

# Modest example counts: the whole crypto suite must stay well under a minute on 2 loaded cores.
few = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
some = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def vector(name: str) -> Any:
    return json.loads((DATA / name).read_text())


@dataclass(frozen=True)
class Device:
    user_id: int
    device_id: str
    keys: DeviceKeys

    @property
    def local(self) -> LocalDevice:
        return LocalDevice(self.user_id, self.device_id, self.keys)

    @property
    def recipient(self) -> Recipient:
        return Recipient(self.user_id, self.device_id, self.keys.encryption_public_der())


def _devices() -> list[Device]:
    return [
        Device(d["user_id"], d["device_id"], fixed_device_keys(i))
        for i, d in enumerate(vector("devices.json"))
    ]


@pytest.fixture(scope="session")
def devices() -> list[Device]:
    return _devices()


def pinned(devices: list[Device]):
    """A `lookup_sender` that knows every committed device's identity key."""
    table = {(d.user_id, d.device_id): d.keys.identity_public_bytes() for d in devices}
    return lambda user_id, device_id: table.get((user_id, device_id))
