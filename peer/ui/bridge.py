"""The one place that knows both the page's needs and the Peer's API.

The UI server's routes call `PeerBridge`; the bridge drives one `Peer` (started at login, closed at
logout) and translates its events into the small JSON events the page understands. Errors from the
peer (`PeerError`) and from crypto (`CryptoError`) become `UiError` with a sentence for a person.

The bridge holds no keys and writes no history itself: the peer owns both. It does own the UI's
settings file (server URL, ICE servers) and the temporary copies of files the browser uploads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from crypto import stego
from crypto.errors import StegoError
from peer.ui.events import EventHub

log = logging.getLogger(__name__)

Phase = Literal["logged_out", "keygen", "ready"]
MAX_STEGO_IMAGE_BYTES = 32 * 1024 * 1024
LOGIN_DEADLINE_S = 120.0


class UiError(Exception):
    """A failure the page shows as it is: `message` is a sentence for the person at the screen."""

    def __init__(self, message: str, status: int = 400, code: str = "error") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


@dataclass
class UiSettings:
    """What the settings screen edits; saved beside the profile so the next start uses it."""

    server_url: str
    ice_servers: list[str] = field(default_factory=list)
    host_addresses: list[str] | None = None
    path: Path | None = None

    @classmethod
    def load(cls, path: Path, server_url: str, ice_servers: list[str] | None = None) -> UiSettings:
        settings = cls(server_url=server_url, ice_servers=list(ice_servers or []), path=path)
        try:
            saved = json.loads(path.read_text("utf-8"))
        except FileNotFoundError:
            return settings
        except (OSError, ValueError) as err:
            log.warning("ignoring unreadable UI settings %s: %s", path, err)
            return settings
        settings.server_url = str(saved.get("server_url") or server_url)
        settings.ice_servers = [str(u) for u in saved.get("ice_servers") or []]
        return settings

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"server_url": self.server_url, "ice_servers": self.ice_servers}), "utf-8")
        os.replace(tmp, self.path)


def check_server_url(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UiError("Enter the server URL, for example http://127.0.0.1:8000.", code="bad_settings")
    url = value.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UiError(f"“{value}” is not a server URL; it should look like https://chat.example.org.")
    return url


def check_ice_servers(value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(u, str) for u in value):
        raise UiError("ICE servers must be a list of URLs.", code="bad_settings")
    urls = [u.strip() for u in value if u.strip()]
    for url in urls:
        if not url.startswith(("stun:", "turn:", "turns:")):
            raise UiError(f"“{url}” is not a STUN or TURN URL (it should start with stun: or turn:).")
    return urls


def _sentence(text: str) -> str:
    """Library messages start lower-case and end bare; the page shows sentences."""
    text = text.strip()
    if not text:
        return "Something went wrong."
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def spool_dir() -> Path:
    """Where uploads from the browser wait until the peer has sent them (private to this user)."""
    path = Path(tempfile.gettempdir()) / f"peerpost-ui-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


class PeerBridge:
    """Drives one Peer for the page: started at login, closed at logout or shutdown."""

    def __init__(self, settings: UiSettings, profile: Any, events: EventHub | None = None) -> None:
        self.settings = settings
        self.profile = profile
        self.events = events or EventHub()
        self.phase: Phase = "logged_out"
        self._peer: Any = None
        self._me: dict[str, Any] | None = None
        self._keygen: dict[str, Any] | None = None
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ state and settings

    def state(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "me": self._me,
            "keygen": self._keygen,
            "settings": self.settings_view(),
        }

    def settings_view(self) -> dict[str, Any]:
        return {
            "server_url": self.settings.server_url,
            "ice_servers": list(self.settings.ice_servers),
            "profile": getattr(self.profile, "name", str(self.profile)),
            "data_dir": str(getattr(self.profile, "path", "")),
            "device_id": (self._me or {}).get("device_id"),
        }

    def update_settings(self, server_url: Any, ice_servers: Any) -> dict[str, Any]:
        url = check_server_url(server_url)
        ice = check_ice_servers(ice_servers)
        if self.phase != "logged_out" and url != self.settings.server_url:
            raise UiError("Log out before switching to another server.", status=409, code="logged_in")
        self.settings.server_url = url
        self.settings.ice_servers = ice
        try:
            self.settings.save()
        except OSError as err:
            raise UiError(f"The settings could not be saved: {err.strerror}.", status=500) from err
        return self.settings_view()

    def _require_peer(self) -> Any:
        if self._peer is None or self.phase != "ready":
            raise UiError("Log in first.", status=401, code="not_logged_in")
        return self._peer

    # ------------------------------------------------------------------ steganography (no peer needed)

    async def stego_capacity(self, image: bytes) -> int:
        self._check_image(image)
        return await asyncio.to_thread(self._stego_call, stego.capacity, image)

    async def stego_hide(self, image: bytes, message: str, passphrase: str) -> bytes:
        self._check_image(image)
        if not message:
            raise UiError("Write the message to hide.", code="no_message")
        secret = message.encode("utf-8")
        if passphrase:
            return await asyncio.to_thread(
                self._stego_call, stego.hide_with_passphrase, image, secret, passphrase
            )
        return await asyncio.to_thread(self._stego_call, stego.embed, image, secret)

    async def stego_reveal(self, image: bytes, passphrase: str) -> str:
        self._check_image(image)
        hidden = await asyncio.to_thread(self._stego_call, stego.extract_hidden, image)
        if hidden.kind == stego.KIND_PASSPHRASE:
            if not passphrase:
                raise UiError("This message is locked with a passphrase; enter it to read the message.")
            data = await asyncio.to_thread(
                self._stego_call, stego.open_with_passphrase, hidden.data, passphrase
            )
        elif hidden.kind == stego.KIND_RAW:
            data = hidden.data
        else:
            raise UiError("This image hides an encrypted PeerPost envelope, not a plain message.")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise UiError("The image hides data that is not text.", code="not_text") from None

    @staticmethod
    def _check_image(image: bytes) -> None:
        if not image:
            raise UiError("The chosen image is empty.", code="no_image")
        if len(image) > MAX_STEGO_IMAGE_BYTES:
            raise UiError(
                f"Images up to {MAX_STEGO_IMAGE_BYTES // (1024 * 1024)} MB can be used.", status=413
            )

    @staticmethod
    def _stego_call(fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except StegoError as err:
            raise UiError(_sentence(str(err)), code=type(err).__name__) from err
