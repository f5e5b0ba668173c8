"""`peerpost ui` and `peerpost up`: run the bridge and the UI server until interrupted.

`up` is for a single machine that has no server yet: it starts `python -m signalling serve` as a
child process on loopback (the peer never imports the server package), waits for its one
"listening" line, and stops it again on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from peer.ui.bridge import PeerBridge, UiSettings
from peer.ui.server import UiServer

LISTENING = re.compile(r"peerpost-server listening on (http://\S+)")
SERVER_START_DEADLINE_S = 30.0
REPO_ROOT = str(Path(__file__).resolve().parents[2])


class LocalServerError(Exception):
    """The local server started by `peerpost up` did not come up."""


@contextlib.asynccontextmanager
async def local_server(data_dir: Path, port: int = 0) -> AsyncIterator[str]:
    """Start a signalling server on 127.0.0.1 with its data in `data_dir`; yield its URL."""
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True, mode=0o700)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signalling",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        stdout=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None
    try:
        try:
            async with asyncio.timeout(SERVER_START_DEADLINE_S):
                while True:
                    line = await proc.stdout.readline()
                    if not line:
                        raise LocalServerError(
                            f"the local server exited (code {await proc.wait()}) before it was listening"
                        )
                    match = LISTENING.search(line.decode("utf-8", "replace"))
                    if match:
                        break
        except TimeoutError:
            raise LocalServerError(
                f"the local server did not start within {SERVER_START_DEADLINE_S:.0f} s"
            ) from None
        drain = asyncio.create_task(_discard(proc.stdout))
        try:
            yield match.group(1)
        finally:
            drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drain
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def _discard(stream: asyncio.StreamReader) -> None:
    # Keep reading the child's stdout so a chatty server never blocks on a full pipe.
    while await stream.read(65536):
        pass


async def run_ui(
    bridge: PeerBridge,
    host: str = "127.0.0.1",
    port: int = 0,
    announce: Callable[[str], None] = print,
    open_browser: bool = False,
) -> None:
    """Serve the UI until cancelled; `announce` gets the one-time launch URL."""
    async with UiServer(bridge, host, port) as server:
        url = server.launch_url()
        announce(url)
        if open_browser:
            import webbrowser

            await asyncio.to_thread(webbrowser.open, url)
        try:
            await server.serve_forever()
        finally:
            await bridge.close()


def settings_for(profile_path: Path, server_url: str | None, ice_servers: list[str]) -> UiSettings:
    """The UI settings: saved ones, overridden by what the command line says explicitly."""
    settings = UiSettings.load(profile_path / "ui-settings.json", server_url or "", ice_servers)
    if server_url:
        settings.server_url = server_url
    if ice_servers:
        settings.ice_servers = ice_servers
    return settings
