"""Fixtures shared by every test package."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import RunningServer


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RunningServer]:
    """A real server subprocess on an ephemeral port with its own data dir (function-scoped)."""
    with RunningServer(tmp_path / "server") as running:
        yield running
