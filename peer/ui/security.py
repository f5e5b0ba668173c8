"""Who may talk to the local UI server: the browser that opened the launch link, and nobody else.

The UI server listens on loopback, but loopback is not a boundary: any web page the user visits can
make the browser send requests to 127.0.0.1 (CSRF), and a hostile DNS name can be re-pointed at
127.0.0.1 to read the answers (DNS rebinding). So three checks guard every request:

* the `Host` header must name this server (`127.0.0.1:PORT`, `localhost:PORT` or `[::1]:PORT`),
  which defeats rebinding because the attacker's page sends its own host name;
* an `Origin` header, when present, must be this server's origin, and requests that change state
  (every method but GET/HEAD, and the WebSocket) must carry one, which defeats CSRF;
* the session cookie must be one this process signed, after the one-time launch token was
  exchanged for it.

This module never reads the peer, the keystore or any message: it only decides who is let in.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
from dataclasses import dataclass, field

from itsdangerous import BadSignature, URLSafeTimedSerializer

SESSION_COOKIE = "peerpost_ui"
SESSION_MAX_AGE_S = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class RequestRefused(Exception):
    """A request this server will not serve; `reason` is a sentence for the person at the browser."""

    def __init__(self, status: int, code: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.code = code
        self.reason = reason


@dataclass
class OriginPolicy:
    """The host names and origins that are this server, fixed once the port is known."""

    port: int
    hosts: frozenset[str] = field(init=False)
    origins: frozenset[str] = field(init=False)

    def __post_init__(self) -> None:
        names = ("127.0.0.1", "localhost", "[::1]")
        self.hosts = frozenset(f"{n}:{self.port}" for n in names)
        self.origins = frozenset(f"http://{n}:{self.port}" for n in names)

    def check(self, host: str | None, origin: str | None, method: str, websocket: bool) -> None:
        """Raise RequestRefused unless the request comes from a page this server served."""
        if host is None or host.lower() not in self.hosts:
            raise RequestRefused(
                421,
                "foreign_host",
                f"This PeerPost window only answers at http://127.0.0.1:{self.port}; "
                f"the request named the host {host!r}. Open the link printed by `peerpost ui`.",
            )
        if origin is not None and origin.lower() not in self.origins:
            raise RequestRefused(
                403,
                "foreign_origin",
                f"A page from {origin} tried to use your PeerPost window; it was refused.",
            )
        if origin is None and (websocket or method.upper() not in SAFE_METHODS):
            raise RequestRefused(
                403,
                "missing_origin",
                "This request did not say which page sent it (no Origin header), so it was refused.",
            )


class SessionGate:
    """The one-time launch token and the signed session cookies it turns into.

    The token is printed once on the terminal; the first request that presents it gets a session
    and the token is burnt, so a link copied from the scrollback or a proxy log opens nothing. The
    signing key lives only in this process: restarting `peerpost ui` invalidates every cookie.
    """

    def __init__(self, secret_key: bytes | None = None, launch_token: str | None = None) -> None:
        self._serializer = URLSafeTimedSerializer(
            secret_key or secrets.token_bytes(32), salt="peerpost-ui-session"
        )
        self._launch_token: str | None = launch_token or secrets.token_urlsafe(32)
        self._spare_tokens: set[str] = set()  # more links asked for (the resident node's `peerpost ui`)
        self._sessions: set[str] = set()

    @property
    def launch_token(self) -> str | None:
        """The token still waiting to be used, or None once it has been exchanged."""
        return self._launch_token

    def issue_launch_token(self) -> str:
        """Another one-time token, for one more window (each works once; earlier ones stay valid)."""
        token = secrets.token_urlsafe(32)
        self._spare_tokens.add(token)
        return token

    def redeem(self, token: str) -> str:
        """Exchange a launch token for a signed cookie value; each works exactly once."""
        spare = next((t for t in self._spare_tokens if hmac.compare_digest(token.encode(), t.encode())), None)
        if spare is not None:
            self._spare_tokens.discard(spare)
            return self._new_session()
        expected = self._launch_token
        if expected is None or not hmac.compare_digest(token.encode(), expected.encode()):
            raise RequestRefused(
                403,
                "launch_token_invalid",
                "This launch link is not valid or was already used. Each link opens the UI once; "
                "run `peerpost ui` again (or use the browser tab that opened it first).",
            )
        self._launch_token = None
        return self._new_session()

    def _new_session(self) -> str:
        session_id = secrets.token_urlsafe(24)
        self._sessions.add(session_id)
        return self._serializer.dumps(session_id)

    def check(self, cookie: str | None) -> str:
        """Return the session id behind a cookie value, or raise RequestRefused."""
        if not cookie:
            raise RequestRefused(
                401,
                "no_session",
                "You are not signed in to this PeerPost window. Open the link printed by `peerpost ui`.",
            )
        try:
            session_id = self._serializer.loads(cookie, max_age=SESSION_MAX_AGE_S)
        except BadSignature:
            raise RequestRefused(
                401,
                "bad_session",
                "This browser's PeerPost session is from an earlier run or has expired. "
                "Open the new link printed by `peerpost ui`.",
            ) from None
        if session_id not in self._sessions:
            raise RequestRefused(401, "bad_session", "This PeerPost session has ended.")
        return session_id

    def end(self, cookie: str | None) -> None:
        with contextlib.suppress(BadSignature):
            self._sessions.discard(self._serializer.loads(cookie or ""))
