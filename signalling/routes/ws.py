"""WS /ws: the live socket of one device. All the logic is in `signalling.hub`; this is the door."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from signalling.hub import Hub

router = APIRouter()


@router.websocket("/ws")
async def device_socket(websocket: WebSocket) -> None:
    hub: Hub = websocket.app.state.hub
    await hub.serve(websocket)
