"""The hub's knobs, read once from the server's Settings. Plain values: nothing here does I/O."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any


@dataclass(frozen=True, slots=True)
class HubLimits:
    max_frame_bytes: int = 1024 * 1024
    rate_per_second: float = 200.0
    rate_burst: int = 400
    presence_grace: float = 5.0
    auth_timeout: float = 10.0
    drain_page: int = 256
    # Frames queued per socket: the byte budget below is the real bound; this only caps the count
    # (one group commit may answer thousands of pipelined sends of one socket at once).
    outbox_size: int = 32768
    outbox_max_bytes: int = 8 * 1024 * 1024
    outbox_max_bytes_per_account: int = 32 * 1024 * 1024
    mailbox_sender_share: float = 1.0
    account_quota_bytes: int | None = None
    reach_cache_ttl: float = 5.0
    # Devices whose reach answers are read in one query when a device connects (signalling.reach,
    # "Warm on connect"); 0 turns the warm-up off.
    reach_warm_limit: int = 1000
    mailbox_retention: timedelta = timedelta(days=30)
    mailbox_quota_bytes: int = 64 * 1024 * 1024
    mailbox_quota_messages: int = 10_000
    purge_interval: float = 300.0
    # An envelope pushed live to every recipient is stored only if they have not all acked it
    # within this many seconds (docs/hub.md "Live holds"). 0 stores every envelope at once.
    live_hold: float = 0.05

    @classmethod
    def from_settings(cls, settings: Any) -> HubLimits:
        """Read the hub's knobs from the server's Settings (names in signalling.settings)."""
        return cls(
            max_frame_bytes=settings.max_frame_bytes,
            rate_per_second=settings.ws_rate_per_second,
            rate_burst=settings.ws_rate_burst,
            presence_grace=settings.presence_grace_seconds,
            mailbox_retention=timedelta(days=settings.mailbox_retention_days),
            mailbox_quota_bytes=settings.mailbox_quota_bytes,
            mailbox_quota_messages=settings.mailbox_quota_messages,
            purge_interval=settings.mailbox_purge_interval_seconds,
            outbox_max_bytes=settings.outbox_max_bytes,
            outbox_max_bytes_per_account=settings.outbox_max_bytes_per_account,
            mailbox_sender_share=settings.mailbox_sender_share,
            account_quota_bytes=settings.account_quota_bytes,
            live_hold=settings.live_hold_seconds,
            reach_warm_limit=settings.reach_warm_limit,
        )
