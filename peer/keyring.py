"""Pinned device keys: trust on first sight, loud on change, strict for verified contacts.

The server hands out device bundles; it could hand out its own. So the peer pins the first
verified bundle it sees for each device and never silently replaces it:
- a device id whose key differs from the pinned one keeps the *pinned* key for encrypting and
  verifying (the offered key is recorded and a `key_changed` warning raised): a server that swaps a
  key gets nothing decrypted with its key;
- a new device of a known user is pinned with a `new_device` warning;
- for a contact marked verified, either change blocks sending (`KeyChanged`) until the user
  re-confirms with `accept_key_change`, which pins the offered keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Protocol

from crypto.bundle import verify_bundle
from crypto.envelope import Recipient
from crypto.errors import BundleInvalid
from peer.errors import KeyChanged, ServerUnavailable
from peer.events import DeviceRemoved, KeyWarning
from peer.localstore import LocalStore, PinnedDevice
from peer.vocab import KeyChange
from signalling.protocol import DeviceOut, b64decode

log = logging.getLogger(__name__)


class DeviceDirectory(Protocol):
    """Where published device bundles come from (the server's `GET /users/{id}/devices`;
    `peer.client.ServerClient` is one, a unit test passes its own)."""

    async def devices(self, user_id: int) -> list[DeviceOut]: ...


class Keyring:
    """The one owner of trust: pinned keys, who is verified, and the key warnings not yet settled
    (the UI and CLI read `warnings()`; they keep no copies)."""

    def __init__(
        self,
        store: LocalStore,
        client: DeviceDirectory,
        own_user: int,
        own_device: str,
        warn: Callable[[KeyWarning | DeviceRemoved], None],
        refresh_after: float = 30.0,
    ) -> None:
        self._store = store
        self._client = client
        self._own_user = own_user
        self._own_device = own_device
        self._warn = warn
        self._refresh_after = refresh_after
        self._pinned: dict[tuple[int, str], PinnedDevice] = {}
        self._verified: set[int] = set()
        self._refreshed: dict[int, float] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._warnings: dict[int, dict[str, KeyWarning]] = {}  # user -> device -> unsettled warning

    async def load(self) -> None:
        for device in await self._store.pinned_devices():
            self._pinned[(device.user_id, device.device_id)] = device
        for user_id in {d.user_id for d in self._pinned.values()}:
            if await self._store.is_verified(user_id):
                self._verified.add(user_id)
        # Warnings that outlive a restart: what the pinned rows still say is unsettled.
        for device in self._pinned.values():
            if device.offered_identity_key is not None:
                self._note(KeyWarning(device.user_id, device.device_id, KeyChange.KEY_CHANGED, True))
            elif not device.confirmed:
                self._note(KeyWarning(device.user_id, device.device_id, KeyChange.NEW_DEVICE, True))

    def _note(self, warning: KeyWarning) -> None:
        self._warnings.setdefault(warning.user_id, {})[warning.device_id] = warning

    def _raise_warning(self, warning: KeyWarning) -> None:
        self._note(warning)
        self._warn(warning)

    def warnings(self, user_id: int) -> list[KeyWarning]:
        """Key warnings about this user not yet settled (by `accept_change` or `set_verified`)."""
        return list(self._warnings.get(user_id, {}).values())

    def warned_users(self) -> set[int]:
        return {u for u, w in self._warnings.items() if w}

    # ---------------------------------------------------------------------------------------------

    def identity_key(self, user_id: int, device_id: str) -> bytes | None:
        """The pinned identity key (for envelope and SDP signatures); None when not pinned."""
        device = self._pinned.get((user_id, device_id))
        return device.identity_key if device is not None else None

    def devices_of(self, user_id: int) -> list[PinnedDevice]:
        return [d for (u, _), d in self._pinned.items() if u == user_id]

    def is_verified(self, user_id: int) -> bool:
        return user_id in self._verified

    def blocked(self, user_id: int) -> bool:
        """A verified contact with an unconfirmed device or an offered (changed) key."""
        return user_id in self._verified and any(
            not d.confirmed or d.offered_identity_key is not None for d in self.devices_of(user_id)
        )

    async def refresh(self, user_id: int, force: bool = False) -> list[PinnedDevice]:
        """Fetch the user's bundles, verify and pin them; raises ServerError when unreachable."""
        # One refresh per user at a time: a second caller waits and sees the finished result
        # (a message arriving while one is being sent fetches the same user's keys).
        lock = self._locks.setdefault(user_id, asyncio.Lock())
        async with lock:
            last = self._refreshed.get(user_id)
            if not force and last is not None and time.monotonic() - last < self._refresh_after:
                return self.devices_of(user_id)
            try:
                published = await self._client.devices(user_id)
            except ServerUnavailable:
                if self.devices_of(user_id):
                    return self.devices_of(user_id)  # the pinned keys are what we trust anyway
                raise
            await self._absorb(user_id, published)
            self._refreshed[user_id] = time.monotonic()
            return self.devices_of(user_id)

    async def _absorb(self, user_id: int, published: list[DeviceOut]) -> None:
        known_user = any(u == user_id for (u, _) in self._pinned)
        seen: set[str] = set()
        for out in published:
            if out.user_id != user_id or out.revoked:
                continue
            try:
                bundle = verify_bundle(
                    out.user_id,
                    out.device_id,
                    b64decode(out.identity_key),
                    b64decode(out.encryption_key),
                    out.created_at,
                    b64decode(out.signature),
                )
            except (BundleInvalid, ValueError) as e:
                log.warning("device %s of user %s has an invalid bundle: %s", out.device_id, user_id, e)
                continue
            seen.add(bundle.device_id)
            pinned = self._pinned.get((user_id, bundle.device_id))
            if pinned is None:
                is_own = user_id == self._own_user and bundle.device_id == self._own_device
                confirmed = user_id not in self._verified
                await self._store.pin_device(
                    user_id,
                    bundle.device_id,
                    bundle.identity_key,
                    bundle.encryption_key,
                    bundle.fingerprint,
                    confirmed,
                )
                self._pinned[(user_id, bundle.device_id)] = PinnedDevice(
                    user_id,
                    bundle.device_id,
                    bundle.identity_key,
                    bundle.encryption_key,
                    bundle.fingerprint,
                    confirmed,
                    False,
                    None,
                )
                if known_user and not is_own:
                    self._raise_warning(
                        KeyWarning(user_id, bundle.device_id, KeyChange.NEW_DEVICE, blocked=not confirmed)
                    )
            elif (pinned.identity_key, pinned.encryption_key) != (bundle.identity_key, bundle.encryption_key):
                if pinned.offered_identity_key != bundle.identity_key:
                    await self._store.record_offered_key(
                        user_id, bundle.device_id, bundle.identity_key, bundle.encryption_key
                    )
                    self._pinned[(user_id, bundle.device_id)] = PinnedDevice(
                        pinned.user_id,
                        pinned.device_id,
                        pinned.identity_key,
                        pinned.encryption_key,
                        pinned.fingerprint,
                        pinned.confirmed,
                        pinned.revoked,
                        bundle.identity_key,
                    )
                    self._raise_warning(
                        KeyWarning(
                            user_id,
                            bundle.device_id,
                            KeyChange.KEY_CHANGED,
                            blocked=user_id in self._verified,
                        )
                    )
            elif pinned.revoked:
                await self._store.set_revoked(user_id, bundle.device_id, False)
                self._pinned[(user_id, bundle.device_id)] = _with(pinned, revoked=False)
        for (u, device_id), pinned in list(self._pinned.items()):
            if u == user_id and device_id not in seen and not pinned.revoked:
                await self._store.set_revoked(user_id, device_id, True)
                self._pinned[(u, device_id)] = _with(pinned, revoked=True)
                self._warnings.get(user_id, {}).pop(device_id, None)  # a removed device needs no trust
                self._warn(DeviceRemoved(user_id, device_id))  # a notice, not a warning

    async def ensure_sender(self, user_id: int, device_id: str) -> bytes | None:
        """The pinned key of a sending device, fetching the user's bundles once if unknown."""
        key = self.identity_key(user_id, device_id)
        if key is None:
            await self.refresh(user_id, force=True)
            key = self.identity_key(user_id, device_id)
        return key

    async def recipients(self, user_id: int) -> list[Recipient]:
        """Devices to seal for: pinned, confirmed, not revoked; KeyChanged if the user is blocked."""
        await self.refresh(user_id)
        if self.blocked(user_id):
            changed = next(
                d for d in self.devices_of(user_id) if not d.confirmed or d.offered_identity_key is not None
            )
            raise KeyChanged(user_id, changed.device_id)
        return [
            Recipient(d.user_id, d.device_id, d.encryption_key)
            for d in self.devices_of(user_id)
            if d.confirmed
            and not d.revoked
            and not (d.user_id == self._own_user and d.device_id == self._own_device)
        ]

    async def set_verified(self, user_id: int, verified: bool) -> None:
        await self._store.set_verified(user_id, verified)
        if verified:
            self._verified.add(user_id)
            # Verified with the keys pinned now: what stays unsettled is a device still unconfirmed
            # or a changed key not accepted (`accept_change` settles those).
            unsettled = {
                d.device_id
                for d in self.devices_of(user_id)
                if not d.confirmed or d.offered_identity_key is not None
            }
            kept = {k: w for k, w in self._warnings.get(user_id, {}).items() if k in unsettled}
            if kept:
                self._warnings[user_id] = kept
            else:
                self._warnings.pop(user_id, None)
        else:
            self._verified.discard(user_id)

    async def accept_change(self, user_id: int) -> None:
        """The user re-confirmed: pin offered keys, confirm every device of the user."""
        for device in self.devices_of(user_id):
            offered = await self._store.offered_key(user_id, device.device_id)
            if offered is not None:
                identity_key, encryption_key = offered
                bundle_fp = device.fingerprint  # recomputed on next refresh; kept for the record
                await self._store.pin_device(
                    user_id, device.device_id, identity_key, encryption_key, bundle_fp, True
                )
        await self._store.confirm_devices(user_id)
        for device in await self._store.pinned_devices(user_id):
            self._pinned[(user_id, device.device_id)] = device
        self._warnings.pop(user_id, None)


def _with(device: PinnedDevice, *, revoked: bool) -> PinnedDevice:
    return PinnedDevice(
        device.user_id,
        device.device_id,
        device.identity_key,
        device.encryption_key,
        device.fingerprint,
        device.confirmed,
        revoked,
        device.offered_identity_key,
    )
