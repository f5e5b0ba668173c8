"""The peer's one exception tree. Code catches narrow; only the CLI and UI turn these into words."""

from __future__ import annotations


class PeerError(Exception):
    """Base of everything the peer raises on purpose. `str(e)` is one sentence for a person."""


class ConfigError(PeerError):
    """A setting or argument is wrong (bad server URL, unknown profile, bad host address)."""


class FrameError(PeerError):
    """A data-channel message that is not a well-formed frame."""


class LinkFailed(PeerError):
    """A direct link could not be set up in time, or died."""


class SignalRejected(LinkFailed):
    """An offer or answer whose signature did not verify against the pinned key: never applied."""


class DeliveryTimeout(PeerError):
    """The receiver did not acknowledge within the deadline (the router then uses the server)."""


class ServerError(PeerError):
    """The server answered with an error; `code` is its stable word, `status` the HTTP status."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class ServerUnavailable(ServerError):
    """The server could not be reached (connection refused, timeout)."""


class AuthFailed(ServerError):
    """Wrong username or password, or a token the server no longer accepts."""


class NotLoggedIn(PeerError):
    """The profile has no session: run `peerpost login` first."""


class WrongPassword(PeerError):
    """The keystore did not open with this password."""


class KeyChanged(PeerError):
    """A verified contact's device key changed: sending waits until the user re-confirms."""

    def __init__(self, user_id: int, device_id: str, message: str | None = None) -> None:
        super().__init__(
            message
            or f"the key of device {device_id} of user {user_id} changed; verify the safety number "
            "again before sending"
        )
        self.user_id = user_id
        self.device_id = device_id


class UnknownContact(PeerError):
    """No such user, or not an accepted contact."""


class TransferFailed(PeerError):
    """A file transfer could not complete (hash mismatch, aborted by the other side, bad chunk)."""
