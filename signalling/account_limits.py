"""Throttles of the account routes: login, the current-password check of a profile change, and
registration. Per process, like every limiter in `signalling.ratelimit`.

Login failures are counted per (name, address) and per address, so a stranger who types wrong
passwords for "alice" locks out only themselves (from their address), never alice at home. Across
all addresses a name has a ceiling too, but passing it only slows the answers (a growing delay, at
most `backoff_max` seconds), it never refuses: a distributed guesser gets a few guesses a second,
alice still gets in. `PATCH /users/me` checks `current_password` through the same counters.

Registration costs a bcrypt hash and makes an account: it is limited per address and globally.
"""

from __future__ import annotations

from signalling.errors import TooManyRequests
from signalling.ratelimit import SlidingWindowLimiter
from signalling.settings import Settings


class LoginLimits:
    def __init__(self, settings: Settings) -> None:
        window = settings.login_window_seconds
        self.per_name_address = SlidingWindowLimiter(settings.login_attempts_per_username, window)
        self.per_address = SlidingWindowLimiter(settings.login_attempts_per_address, window)
        self.per_account = SlidingWindowLimiter(settings.login_failures_per_account, window)
        self.backoff_max = settings.login_backoff_max_seconds

    @staticmethod
    def _keys(username: str, address: str) -> tuple[str, str]:
        name = username.lower()[:64]  # bounded: the key lives in memory for a window
        return f"{name}\x00{address}", name

    def check(self, username: str, address: str) -> float:
        """Refuse (429) when this name from this address, or this address, has failed too often;
        else count the attempt and return the delay to apply before checking the password."""
        pair, name = self._keys(username, address)
        waits = [self.per_name_address.retry_after(pair), self.per_address.retry_after(address)]
        wait = max((w for w in waits if w is not None), default=None)
        if wait is not None:
            raise TooManyRequests(
                "Too many failed attempts for this account from your address; "
                f"try again in {int(wait) + 1} s.",
                retry_after=wait,
            )
        self.per_name_address.hit(pair)
        self.per_address.hit(address)
        over = self.per_account.count(name) - self.per_account.limit
        if over < 0:
            return 0.0
        return min(self.backoff_max, 0.25 * (over + 1))

    def failed(self, username: str) -> None:
        self.per_account.hit(self._keys(username, "")[1])

    def succeeded(self, username: str, address: str) -> None:
        pair, _ = self._keys(username, address)
        self.per_name_address.undo(pair)
        self.per_address.undo(address)


class RegistrationLimits:
    def __init__(self, settings: Settings) -> None:
        window = settings.registration_window_seconds
        self.per_address = SlidingWindowLimiter(settings.registrations_per_address, window)
        self.overall = SlidingWindowLimiter(settings.registrations_global, window)
        self.refused = 0

    def check(self, address: str) -> None:
        """Count a registration from `address`, or refuse it (429) when a limit is reached."""
        mine = self.per_address.retry_after(address)
        everyone = self.overall.retry_after("all")
        if mine is not None or everyone is not None:
            self.refused += 1
            wait = max(w for w in (mine, everyone) if w is not None)
            who = "from your address" if mine is not None else "on this server"
            raise TooManyRequests(
                f"Too many new accounts {who} just now; try again in {int(wait) + 1} s.", retry_after=wait
            )
        self.per_address.hit(address)
        self.overall.hit("all")
