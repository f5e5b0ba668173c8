"""The app's ASGI `/ws` (for ASGI servers other than `python -m signalling serve`, which uses its
own protocol): the hub serves a Starlette `WebSocket` through the same `Wire` calls."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.server.conftest import running_app, settings_for


async def test_the_asgi_route_accepts_and_closes_a_bad_auth_frame_with_4401(tmp_path: Path) -> None:
    inbound: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    sent: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    await inbound.put({"type": "websocket.connect"})
    await inbound.put({"type": "websocket.receive", "text": '{"type":"auth","token":"nope"}'})
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "scheme": "ws",
        "subprotocols": [],
    }
    async with running_app(settings_for(tmp_path)) as app:
        served = asyncio.create_task(app(scope, inbound.get, sent.put))
        accept = await asyncio.wait_for(sent.get(), 10)
        close = await asyncio.wait_for(sent.get(), 10)
        await inbound.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(served, 10)
    assert accept["type"] == "websocket.accept"
    assert (close["type"], close["code"]) == ("websocket.close", 4401)
    assert "auth frame" in close["reason"]
