"""The server's data directory is private: folder 0700, every file in it 0600.

It holds the database (password hashes, refresh-token hashes, ciphertext), the JWT secret and the
blobs; none of it is for other local users. `serve` sets the process umask to 077 before anything
is created, and `secure()` tightens what an older version (or a copy) left readable, at every
start. It never deletes or moves anything.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077


def secure(data_dir: Path) -> None:
    """mkdir -p with 0700, then chmod the tree: folders 0700, files 0600 (symlinks left alone)."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    for root, dirs, files in os.walk(data_dir):
        for name in dirs:
            path = Path(root) / name
            if not path.is_symlink():
                os.chmod(path, 0o700)
        for name in files:
            path = Path(root) / name
            if not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) & 0o077:
                os.chmod(path, 0o600)
