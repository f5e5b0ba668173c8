"""Files sent while the server was out of reach: a small persistent queue the node replays.

A text message is sealed and put in the peer's outbox at once; a file cannot be: with the server
down it has no blob store to go to, and with no link no direct path. So the node remembers the
request (recipient and source path, in `<profile>/queued-files.json`, written atomically, mode
0600) and sends it when the server is back. Survives a kill -9 of the node. It never holds file
contents, only where the file is.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from peer.profile import write_private

FILE_NAME = "queued-files.json"


@dataclass(frozen=True)
class QueuedFile:
    queue_id: str
    user_id: int
    who: str
    path: str
    queued_at_ms: int


class FileQueue:
    def __init__(self, profile_dir: Path) -> None:
        self._path = profile_dir / FILE_NAME
        self._items: list[QueuedFile] = []

    def load(self) -> None:
        try:
            raw = json.loads(self._path.read_text("utf-8"))
        except FileNotFoundError:
            raw = []
        except (OSError, ValueError):
            raw = []  # a damaged queue must not stop the node; the files are still on disk
        self._items = [QueuedFile(**item) for item in raw if isinstance(item, dict)]

    def _save(self) -> None:
        write_private(self._path, json.dumps([asdict(i) for i in self._items]).encode())

    def add(self, user_id: int, who: str, path: str, now_ms: int) -> QueuedFile:
        item = QueuedFile(secrets.token_hex(8), user_id, who, path, now_ms)
        self._items.append(item)
        self._save()
        return item

    def remove(self, queue_id: str) -> None:
        self._items = [i for i in self._items if i.queue_id != queue_id]
        self._save()

    def items(self) -> list[QueuedFile]:
        return list(self._items)
