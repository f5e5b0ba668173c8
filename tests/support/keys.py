"""Committed device keys for tests, so no test pays for RSA-4096 generation (~0.4 s+ each).

`fixed_device_keys(n)` returns the same `DeviceKeys` for the same `n` in every run and every helper's
tests (n = 0..FIXED_DEVICE_COUNT-1). These keys are public test data: never use them for anything real.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from crypto.keys import DeviceKeys

KEYS_DIR = Path(__file__).resolve().parent.parent / "data" / "crypto" / "devices"
FIXED_DEVICE_COUNT = 6


@cache
def fixed_device_keys(n: int) -> DeviceKeys:
    """The n-th committed test device (Ed25519 identity + RSA-4096 encryption private keys)."""
    if not 0 <= n < FIXED_DEVICE_COUNT:
        raise ValueError(f"there are {FIXED_DEVICE_COUNT} fixed test devices (0..{FIXED_DEVICE_COUNT - 1})")
    return DeviceKeys.from_pem((KEYS_DIR / f"device{n}.pem").read_bytes(), validate=False)
