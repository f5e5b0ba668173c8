"""The UI's settings as the resident node starts its web UI: saved ones, overridden by the
command line. (Serving the UI and the local server of `peerpost up` moved to the resident node:
`peer/resident/node.py`, `peer/resident/localserver.py`.)
"""

from __future__ import annotations

from pathlib import Path

from peer.ui.bridge import UiSettings


def settings_for(profile_path: Path, server_url: str | None, ice_servers: list[str]) -> UiSettings:
    """The UI settings: saved ones, overridden by what the command line says explicitly."""
    settings = UiSettings.load(profile_path / "ui-settings.json", server_url or "", ice_servers)
    if server_url:
        settings.server_url = server_url
    if ice_servers:
        settings.ice_servers = ice_servers
    return settings
