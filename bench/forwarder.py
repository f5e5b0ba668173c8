"""The baseline of bench/relay.py: a bare FastAPI WebSocket forwarder, no auth, no store.

A client connects to `/ws?id=<name>` and sends JSON text frames carrying `"to": "<name>"`; the
forwarder hands each frame unchanged to that socket. This is the most a Python hub on this stack
can do per message, which is what the real hub is measured against.
"""

from __future__ import annotations

import json

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()
sockets: dict[str, WebSocket] = {}  # one process, one benchmark run: the registry is the app's


@app.websocket("/ws")
async def forward(ws: WebSocket) -> None:
    name = ws.query_params["id"]
    await ws.accept()
    sockets[name] = ws
    try:
        while True:
            text = await ws.receive_text()
            target = sockets.get(json.loads(text)["to"])
            if target is not None:
                await target.send_text(text)
    except WebSocketDisconnect:
        pass
    finally:
        if sockets.get(name) is ws:
            del sockets[name]


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}
