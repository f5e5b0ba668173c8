"""A device bundle of the right shape and random bytes, for tests and benchmarks that need a
published device but never open an envelope (the server checks shapes only, never signatures)."""

from __future__ import annotations

import secrets
import time
from typing import Any

from signalling.protocol import b64encode


def opaque_bundle(device_id: str) -> dict[str, Any]:
    """The JSON body of POST /me/devices for `device_id`: sizes right, keys and signature random."""
    return {
        "device_id": device_id,
        "identity_key": b64encode(secrets.token_bytes(32)),
        "encryption_key": b64encode(secrets.token_bytes(550)),
        "created_at": int(time.time()),
        "signature": b64encode(secrets.token_bytes(64)),
    }
