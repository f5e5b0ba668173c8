"""The quota on prekey claims: how many one-time prekeys of one device one other user may take.

Claims are open to a user's own devices, accepted contacts and members of a common group (sender
keys travel over the ratchet between co-members who are not contacts). A one-time key is handed
out once and gone, so any claimer could otherwise empty a device's stock in a loop; in a group of
1,000 that is 999 possible drainers. Each (claimer, device) pair may take at most `limit` claims
with one-time keys per `window` seconds; past it the claim still succeeds with the signed and
last-resort keys only (PQXDH allows a bundle without one-time keys), so a session can always start
and the drain stops at `limit` keys per claimer and device. The same rule applies to contacts and
to co-members: joining a group widens who may claim, not how much. Your own devices are not counted.
Per process, like every limiter in `signalling.ratelimit`.
"""

from __future__ import annotations

from signalling.ratelimit import SlidingWindowLimiter
from signalling.settings import Settings


class ClaimLimits:
    def __init__(self, settings: Settings) -> None:
        self.per_device = SlidingWindowLimiter(
            settings.prekey_claims_per_device, settings.prekey_claim_window_seconds
        )
        self.limited = 0  # claims answered without one-time keys because of the quota (for /metrics)

    @staticmethod
    def _key(claimer: int, device_id: str) -> str:
        return f"{claimer}\x00{device_id}"

    def reserve(self, claimer: int, device_id: str) -> bool:
        """Count a claim of `device_id`'s one-time keys by `claimer`; False when it is over the
        quota (then hand out no one-time key)."""
        key = self._key(claimer, device_id)
        if self.per_device.retry_after(key) is not None:
            self.limited += 1
            return False
        self.per_device.hit(key)
        return True

    def release(self, claimer: int, device_id: str) -> None:
        """The reserved claim took no one-time key (the stock was empty): it does not count."""
        self.per_device.undo(self._key(claimer, device_id))
