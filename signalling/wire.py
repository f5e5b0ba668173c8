"""What the hub needs of a device's WebSocket: the few calls of Starlette's `WebSocket` it uses.

Two things provide it: `signalling.ws_protocol.HubWebSocketProtocol` (the server's own `/ws`
protocol, `python -m signalling serve`) and Starlette's `WebSocket` (the app's `/ws` route under
any other ASGI server). Keeping the hub to this surface is what lets the first exist.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from starlette.websockets import WebSocketState


class Wire(Protocol):
    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def query_params(self) -> Mapping[str, str]: ...

    @property
    def application_state(self) -> WebSocketState: ...

    @property
    def client_state(self) -> WebSocketState: ...

    async def accept(self) -> None: ...

    async def receive(self) -> Any: ...

    async def receive_text(self) -> str: ...

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...
