"""WS /ws: the live socket of one device. The logic is in `signalling.hub`; this is the door, and
the lifespan that builds the hub (and its backplane) for the app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI, WebSocket

from signalling import memory
from signalling.backplane import Backplane, InProcessBackplane, RedisBackplane
from signalling.deps import authenticate_token
from signalling.hub import Hub, HubLimits
from signalling.settings import Settings

log = logging.getLogger(__name__)
router = APIRouter()


def make_backplane(settings: Settings) -> Backplane:
    if settings.backplane_url:
        return RedisBackplane(
            settings.backplane_url, prefix=settings.backplane_prefix, ttl=settings.backplane_ttl_seconds
        )
    return InProcessBackplane()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings

    async def authenticate(token: str) -> tuple[int, str | None]:
        user = await authenticate_token(app, token)
        return user.id, app.state.tokens.decode_access(token).device

    hub = Hub(
        app.state.engine,
        authenticate,
        HubLimits.from_settings(settings),
        make_backplane(settings),
        disk=app.state.disk,
    )
    await hub.start()
    app.state.hub = hub
    app.state.presence = hub.presence
    memory.tune()  # the collector and allocator settings, and why: signalling.memory
    try:
        yield
    finally:
        await hub.close()


@router.websocket("/ws")
async def device_socket(websocket: WebSocket) -> None:
    hub: Hub = websocket.app.state.hub
    await hub.serve(websocket)
