"""`peerpost ui` and `peerpost up`: the web UI's two commands, attached to the `peerpost` group.

Kept apart from `peer/cli.py` so the CLI's other commands never load the web stack: the heavy
imports (Starlette, uvicorn) happen inside the commands.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any

import click

ANNOUNCE = "PeerPost UI: open {url}  (the link works once)"


def _announce(url: str) -> None:
    click.echo(ANNOUNCE.format(url=url))
    sys.stdout.flush()


def _saved_server(profile: Any) -> str | None:
    """The server this profile used before: its UI settings, else its login record."""
    from peer.ui.bridge import UiSettings

    settings = UiSettings.load(profile.path / "ui-settings.json", "")
    if settings.server_url:
        return settings.server_url
    meta = profile.load_meta()
    return meta.server_url if meta is not None else None


async def _serve(opts: Any, server_url: str, host: str, port: int, open_browser: bool) -> None:
    from peer.ui.bridge import PeerBridge
    from peer.ui.run import run_ui, settings_for

    profile = opts.profile_obj()
    settings = settings_for(profile.path, server_url, list(opts.ice_servers or []))
    if opts.ice_servers is not None:
        settings.ice_servers = [u for u in opts.ice_servers if u]  # explicit, even when empty
    settings.host_addresses = list(opts.host_addresses) or None
    bridge = PeerBridge(settings, profile)
    await run_ui(bridge, host, port, _announce, open_browser)


def _run(coro: Any) -> None:
    from peer.ui.run import LocalServerError
    from peer.ui.server import UiServerError

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(coro)
    except (UiServerError, LocalServerError) as err:
        raise click.ClickException(str(err)) from None


_host = click.option("--host", default="127.0.0.1", show_default=True, help="loopback address to listen on")
_port = click.option("--port", type=int, default=0, help="port (default: a free one)")
_open = click.option("--open", "open_browser", is_flag=True, help="open the link in the default browser")


@click.command("ui")
@_host
@_port
@_open
@click.pass_obj
def ui(opts: Any, host: str, port: int, open_browser: bool) -> None:
    """Serve the web UI on 127.0.0.1 and print a one-time link to open it."""
    server_url = opts.server or _saved_server(opts.profile_obj())
    if not server_url:
        raise click.ClickException(
            "no server configured: pass --server URL (or set PEERPOST_SERVER), or use `peerpost up`"
        )
    _run(_serve(opts, server_url, host, port, open_browser))


@click.command("up")
@_host
@_port
@_open
@click.option(
    "--server-port",
    type=int,
    default=8765,
    show_default=True,
    help="port of the local server (fixed, so a profile finds its server again next time)",
)
@click.option(
    "--server-data",
    type=click.Path(path_type=Path),
    help="data folder of the local server (default: beside the profiles)",
)
@click.pass_obj
def up(
    opts: Any, host: str, port: int, open_browser: bool, server_port: int, server_data: Path | None
) -> None:
    """Like `ui`, and start a local server first when no --server (PEERPOST_SERVER) is given."""
    if opts.server:
        _run(_serve(opts, opts.server, host, port, open_browser))
        return

    async def with_local_server() -> None:
        from peer.profile import data_root
        from peer.ui.run import local_server

        data = server_data or data_root() / "server"
        async with local_server(data, server_port) as url:
            click.echo(f"PeerPost server: {url} (data in {data})")
            await _serve(opts, url, host, port, open_browser)

    _run(with_local_server())


def add_commands(group: click.Group) -> None:
    """Attach `ui` and `up` to the `peerpost` group (called by peer/cli.py)."""
    group.add_command(ui)
    group.add_command(up)
