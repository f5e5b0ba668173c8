"""Where one local identity lives on disk: a profile directory per account and device.

Profiles sit in the platform's user data dir (platformdirs) under `profiles/<name>`; `--profile`
picks the name so several peers can run on one machine, and tests pass a directory explicitly.
A profile holds `profile.json` (server URL, username, ids: nothing secret), the keystore (private
keys, sealed under the password), `session.sealed` (tokens, sealed under the keystore's storage
key) and `local.db` (history, contacts, pinned keys).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from peer.errors import ConfigError

APP_NAME = "peerpost"
DEFAULT_PROFILE = "default"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def data_root() -> Path:
    override = os.environ.get("PEERPOST_HOME")
    if override:
        return Path(override)
    import platformdirs  # only here: every `peerpost` command imports this module

    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


@dataclass
class ProfileMeta:
    server_url: str
    username: str
    user_id: int
    device_id: str


@dataclass(frozen=True)
class Profile:
    name: str
    path: Path

    @classmethod
    def named(cls, name: str = DEFAULT_PROFILE, root: Path | None = None) -> Profile:
        if not _NAME.match(name):
            raise ConfigError(f"profile name {name!r} may use only letters, digits, '_', '.', '-'")
        return cls(name, (root or data_root()) / "profiles" / name)

    @classmethod
    def at(cls, path: str | os.PathLike[str]) -> Profile:
        """A profile in an explicit directory (tests, portable installs)."""
        p = Path(path)
        return cls(p.name, p)

    def ensure(self) -> Profile:
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.path / "files").mkdir(exist_ok=True, mode=0o700)
        (self.path / "partial").mkdir(exist_ok=True, mode=0o700)
        return self

    @property
    def keystore_path(self) -> Path:
        return self.path / "keystore.bin"

    @property
    def session_path(self) -> Path:
        return self.path / "session.sealed"

    @property
    def db_path(self) -> Path:
        return self.path / "local.db"

    @property
    def meta_path(self) -> Path:
        return self.path / "profile.json"

    @property
    def downloads(self) -> Path:
        return self.path / "files"

    @property
    def partial(self) -> Path:
        return self.path / "partial"

    def load_meta(self) -> ProfileMeta | None:
        try:
            raw = json.loads(self.meta_path.read_text())
            return ProfileMeta(**raw)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as e:
            raise ConfigError(f"profile file {self.meta_path} is damaged: {e}") from e

    def save_meta(self, meta: ProfileMeta) -> None:
        self.ensure()
        write_private(self.meta_path, json.dumps(asdict(meta), indent=2).encode())


def write_private(path: Path, data: bytes) -> None:
    """Write a file atomically with mode 0600 (`peer.atomicfile`)."""
    from peer.atomicfile import write_atomic  # here: every `peerpost` command imports this module

    write_atomic(path, data, 0o600)
