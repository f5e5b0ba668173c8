"""The peer's one exception tree. Code catches narrow; only the CLI and UI turn these into words.

Everything a `Peer` method raises on purpose is a `PeerError`: failures of the parts below it
(crypto, the local disk) are mapped at the boundary (`peer.node` wraps `CryptoError` as
`CryptoFailure`), the way httpx maps transport errors into its own tree. The messages say what is
wrong, never what to type: advice such as "run `peerpost login`" belongs to the edge that knows
its commands (`advice()` below is the CLI's wording, kept here so every edge words it alike).
"""

from __future__ import annotations

from enum import StrEnum


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


class NoServer(ConfigError):
    """No server URL was given and the profile has none saved."""


class ProfileTaken(ConfigError):
    """The profile already belongs to another account (checked before anything is sent)."""


class LoginNeeded(StrEnum):
    """Why a peer has no session."""

    NEVER = "never"  # the profile has never logged in on this device
    LOGGED_OUT = "logged_out"  # the stored session is gone (logout, or it could not be read)
    EXPIRED = "expired"  # the server no longer accepts the stored session
    NOT_STARTED = "not_started"  # this Peer object has not logged in or unlocked yet


class NotLoggedIn(PeerError):
    """The profile (or this Peer object) has no session; `reason` says which case."""

    def __init__(self, message: str, reason: LoginNeeded = LoginNeeded.NOT_STARTED) -> None:
        super().__init__(message)
        self.reason = reason


class PeerStateError(PeerError):
    """The call does not fit the peer's lifecycle (logging in twice, using a closed peer)."""


class WrongPassword(PeerError):
    """The keystore did not open with this password."""


class KeyChanged(PeerError):
    """A verified contact's device key changed: sending waits until the user re-confirms."""

    def __init__(self, user_id: int, device_id: str, message: str | None = None) -> None:
        super().__init__(
            message or f"the key of device {device_id} of user {user_id} changed since it was verified"
        )
        self.user_id = user_id
        self.device_id = device_id


class UnknownContact(PeerError):
    """No such user, or not an accepted contact."""


class TransferFailed(PeerError):
    """A file transfer could not complete (hash mismatch, aborted by the other side, bad chunk)."""


class CryptoFailure(PeerError):
    """A crypto operation failed under a Peer call (tampered data, a bad image); `str` says what."""


def advice(error: PeerError) -> str | None:
    """What the person should do next, in the CLI's words; None when the message says it all."""
    if isinstance(error, NotLoggedIn):
        if error.reason is LoginNeeded.NOT_STARTED:
            return None
        return (
            "run `peerpost login` first"
            if error.reason is LoginNeeded.NEVER
            else "run `peerpost login` again"
        )
    if isinstance(error, NoServer):
        return "pass --server URL (or set PEERPOST_SERVER)"
    if isinstance(error, ProfileTaken):
        return "pick another with --profile"
    if isinstance(error, KeyChanged):
        return "compare the safety number (`peerpost safety-number`), then `peerpost verify`"
    return None
