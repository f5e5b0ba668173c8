"""The store's one exception tree.

Repositories raise these instead of leaking driver errors (IntegrityError and friends), so the
layer above can turn them into words for a person without knowing which database is underneath.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base of every error the store raises on purpose."""


class NotFound(StoreError):
    """The row asked for does not exist (or is not visible to the asker)."""


class Conflict(StoreError):
    """The write would break a uniqueness rule."""


class UsernameTaken(Conflict):
    pass


class EmailTaken(Conflict):
    pass


class DuplicateContact(Conflict):
    """A contact row already exists in that direction."""


class DeviceIdTaken(Conflict):
    """The device id is used by another device, or by a revoked one (ids are never reused)."""


class TooManyDevices(Conflict):
    pass


class QuotaExceeded(StoreError):
    """A per-device or per-user storage limit would be passed."""


class RefreshTokenInvalid(StoreError):
    """Unknown, expired or revoked refresh token."""


class RefreshTokenReused(RefreshTokenInvalid):
    """A spent refresh token came back: its whole family has been revoked."""

    def __init__(self, family: str, user_id: int = 0) -> None:
        super().__init__(family)
        self.family = family
        self.user_id = user_id


class RefreshTokenDeviceRevoked(RefreshTokenInvalid):
    """The refresh token's device was revoked: its tokens died with it."""


class MigrationError(StoreError):
    """The schema could not be brought to the current revision."""
