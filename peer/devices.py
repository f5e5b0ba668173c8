"""My devices as a person manages them: list (name, added, last seen, this one), rename, revoke.

The server's device list gives the label and the times; this device's keyring gives what it pinned
(fingerprints). Revoking is the "lost laptop" case: the server marks the device revoked, drops its
queued envelopes and closes its socket (and refuses it from then on); here its direct link is
dropped at once, and every later send leaves it out (the keyring marks it revoked on the refresh).
Contacts learn it the same way, from their next refresh or the device's presence going away, and
their UI says "device removed" (`peer.events.DeviceRemoved`), not a key warning.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from peer.errors import ConfigError

if TYPE_CHECKING:
    from peer.node import Peer

MAX_NAME_CHARS = 64


@dataclass(frozen=True)
class OwnDevice:
    device_id: str
    name: str | None
    added_at: str | None  # ISO 8601, UTC
    last_seen: str | None
    this_device: bool
    fingerprint: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when is not None else None


async def list_own(peer: Peer) -> list[OwnDevice]:
    """My active devices, this one first; from the server (raises ServerUnavailable offline)."""
    me = peer.me
    listed = await peer.server.devices(me.user_id)
    pinned = {d.device_id: d.fingerprint for d in await peer.devices()}
    rows = [
        OwnDevice(
            d.device_id,
            d.name,
            _iso(d.added_at),
            _iso(d.last_seen),
            d.device_id == me.device_id,
            pinned.get(d.device_id),
        )
        for d in listed
        if not d.revoked
    ]
    rows.sort(key=lambda r: (not r.this_device, r.added_at or ""))
    return rows


async def rename(peer: Peer, device_id: str, name: str | None) -> OwnDevice:
    name = (name or "").strip() or None
    if name is not None and len(name) > MAX_NAME_CHARS:
        raise ConfigError(f"a device name can be at most {MAX_NAME_CHARS} characters")
    await peer.server.rename_device(device_id, name)
    for row in await list_own(peer):
        if row.device_id == device_id:
            return row
    raise ConfigError(f"there is no active device {device_id} of yours")


async def revoke(peer: Peer, device_id: str) -> None:
    """Revoke another device of mine (never this one: that is `account delete` or `logout`)."""
    if device_id == peer.me.device_id:
        raise ConfigError("this is the device you are using; revoke it from another one of your devices")
    mine = {d.device_id for d in await list_own(peer)}
    if device_id not in mine:
        raise ConfigError(f"there is no active device {device_id} of yours")
    await peer.revoke_device(device_id)
    await peer.linkset.drop(device_id)
    await peer.keyring.refresh(peer.me.user_id, force=True)  # sends leave it out from now on
