"""uvicorn's WebSocket protocol (the sans-I/O `websockets` one, uvicorn's default), minus what an
open socket no longer needs.

Why: a device's socket stays open for hours, and uvicorn's protocol object keeps the upgrade's
`Request` and `Response` (with all their headers) for the socket's whole life, though nothing reads
them once the handshake is answered, and an `asyncio.Queue` for received messages that costs ~2.3 KB
while empty. This class drops the first and swaps the second for `signalling.lean_queue`; the hub
drops the scope's copy of the request headers itself once the socket is authenticated. Measured
with `bench/scale.py` (docs/hub.md "10,000 devices").
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from signalling.lean_queue import SingleReaderQueue


class LeanWebSocketsProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn only put_nowait()s, get()s from the one ASGI task and asks empty().
        self.queue = SingleReaderQueue()  # type: ignore[assignment]

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            # The 101 is written: nothing reads the upgrade's request or response again.
            self.request = None  # type: ignore[assignment]
            self.response = None  # type: ignore[assignment]
