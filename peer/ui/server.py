"""Run the UI app on loopback: bind the port first, so the Host/Origin policy knows it, then serve.

`UiServer` is an async context manager owning the uvicorn server task; leaving it stops the server
and closes the socket. It never binds anything but a loopback address.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from types import TracebackType

import uvicorn

from peer.ui.app import create_ui_app
from peer.ui.bridge import PeerBridge
from peer.ui.security import OriginPolicy, SessionGate

log = logging.getLogger(__name__)


class UiServerError(Exception):
    """The UI server could not start (port taken, not a loopback address)."""


def bind_loopback(host: str, port: int) -> socket.socket:
    try:
        if not ipaddress.ip_address(host).is_loopback:
            raise UiServerError(f"the UI only listens on loopback; {host} is not a loopback address")
    except ValueError:
        raise UiServerError(f"the UI host must be an IP address such as 127.0.0.1, not {host!r}") from None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UiServerError(f"cannot listen on {host}:{port}: {err.strerror}") from err
    sock.listen(128)
    sock.setblocking(False)
    return sock


class UiServer:
    def __init__(self, bridge: PeerBridge, host: str = "127.0.0.1", port: int = 0) -> None:
        self.bridge = bridge
        self._sock = bind_loopback(host, port)
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        self.policy = OriginPolicy(self.port)
        self.gate = SessionGate()
        self.app = create_ui_app(bridge, self.policy, self.gate)
        config = uvicorn.Config(
            self.app, log_level="warning", lifespan="off", ws="websockets-sansio", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def launch_url(self) -> str:
        token = self.gate.launch_token
        if token is None:
            raise UiServerError("the launch link was already used")
        return f"{self.url}/launch?token={token}"

    def new_launch_url(self) -> str:
        """A fresh one-time link for one more window on this server (the resident node's `ui`)."""
        return f"{self.url}/launch?token={self.gate.issue_launch_token()}"

    async def start(self) -> None:
        """Listen and serve; returns once the socket accepts connections (no polling)."""
        config = self._server.config
        if not config.loaded:
            config.load()
        self._server.lifespan = config.lifespan_class(config)
        await self._server.startup(sockets=[self._sock])
        self._task = asyncio.create_task(self._server.main_loop(), name="peerpost-ui")

    async def serve_forever(self) -> None:
        if self._task is None:
            await self.start()
        assert self._task is not None
        await asyncio.shield(self._task)

    async def stop(self) -> None:
        if self._task is not None:
            self._server.should_exit = True
            try:
                async with asyncio.timeout(5):
                    await asyncio.shield(self._task)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
            async with asyncio.timeout(10):
                await self._server.shutdown(sockets=[self._sock])
        self._sock.close()

    async def __aenter__(self) -> UiServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
