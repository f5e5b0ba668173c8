"""The FastAPI application factory.

`create_app(settings)` builds a fresh app with no module-level state: its lifespan migrates the
database, opens the engine, and keeps everything the routes need on `app.state`:

- `settings`, `engine`, `sessions` (async_sessionmaker), `tokens` (TokenService),
  `passwords` (PasswordHasher), `login_limits` and `registration_limits`
  (signalling.account_limits), `claim_limits` (signalling.claim_limits), `disk`
  (store.disk.DiskGuard);
- `presence` (`signalling.presence.PresenceView`) and `hub` (`signalling.presence.LiveSockets`):
  defaults here; the hub replaces both in its own lifespan.

Routers plug in through `ROUTE_MODULES`: each module has a `router`, and may have a `lifespan(app)`
async context manager that is entered (in list order) once the store is ready, and left in reverse
order before the engine closes. The hub adds its modules (`ws`, `mailbox`, `blobs`) to that list.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from types import ModuleType

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi_offline import FastAPIOffline
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from signalling import data_dir, openapi
from signalling.account_limits import LoginLimits, RegistrationLimits
from signalling.claim_limits import ClaimLimits
from signalling.errors import install_error_handlers
from signalling.http_guard import HttpGuard
from signalling.passwords import PasswordHasher
from signalling.presence import MemoryPresence, NoLiveSockets
from signalling.routes import (
    blobs,
    blocks,
    contacts,
    contract,
    devices,
    groups,
    health,
    ice,
    mailbox,
    metrics,
    prekeys,
    tokens,
    users,
    ws,
)
from signalling.settings import Settings
from signalling.tokens import TokenService, load_or_create_secret
from store import migrate
from store.db import create_engine, session_factory
from store.disk import DiskGuard

log = logging.getLogger("peerpost.server")

# Order matters only for the docs page and for lifespans (entered in this order).
ROUTE_MODULES: tuple[ModuleType, ...] = (
    health,
    metrics,
    tokens,
    users,
    contacts,
    groups,
    blocks,
    devices,
    prekeys,
    ice,
    ws,
    mailbox,
    blobs,
    contract,
)


class PeerPostApp(FastAPI):
    """The FastAPI app, with `/ws` sockets handed straight to the hub.

    Why: a WebSocket lives for hours, and every ASGI layer it passes through stays suspended for
    its whole life: FastAPI's and Starlette's middleware, the router, the route's dependency exit
    stacks. Measured with tracemalloc (bench/scale.py, docs/hub.md "10,000 devices"), those frames
    held ~10 KB per idle socket, and none of them does anything for `/ws`: the hub authenticates
    the socket itself, and no HTTP exception handler applies to a WebSocket. The route in
    `signalling.routes.ws` stays for every other way to reach the app (tests' in-process ASGI).
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == "/ws":
            scope["app"] = self
            await self.state.hub.serve(WebSocket(scope, receive, send))
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        data_dir.secure(settings.data_dir)
        url = settings.effective_database_url
        await migrate.upgrade(url)
        engine = create_engine(url, synchronous=settings.sqlite_synchronous)
        async with engine.connect():  # opens the WAL and its index, so they are tightened too
            data_dir.secure(settings.data_dir)
        secret = (
            settings.jwt_secret.get_secret_value()
            if settings.jwt_secret is not None
            else load_or_create_secret(settings.data_dir)
        )
        app.state.settings = settings
        app.state.engine = engine
        app.state.sessions = session_factory(engine)
        app.state.tokens = TokenService(
            secret, settings.access_token_ttl_seconds, settings.refresh_token_ttl_seconds
        )
        app.state.passwords = PasswordHasher(
            settings.bcrypt_rounds, settings.bcrypt_concurrency, settings.password_queue
        )
        app.state.login_limits = LoginLimits(settings)
        app.state.registration_limits = RegistrationLimits(settings)
        app.state.claim_limits = ClaimLimits(settings)
        app.state.disk = DiskGuard(settings.data_dir, settings.disk_min_free_bytes)
        app.state.presence = MemoryPresence()
        app.state.hub = NoLiveSockets()
        try:
            async with AsyncExitStack() as stack:
                for module in ROUTE_MODULES:
                    module_lifespan = getattr(module, "lifespan", None)
                    if module_lifespan is not None:
                        await stack.enter_async_context(module_lifespan(app))
                log.info(
                    "PeerPost server ready (database %s)", engine.url.render_as_string(hide_password=True)
                )
                yield
        finally:
            await engine.dispose()

    docs = "/docs" if settings.docs_enabled else None
    app = FastAPIOffline(
        docs_url=docs,
        redoc_url="/redoc" if settings.docs_enabled else None,
        title="PeerPost signalling server",
        description="Accounts, contacts, device key bundles, presence, WebRTC signalling and a blind "
        "store-and-forward mailbox. The server only ever sees ciphertext.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.__class__ = PeerPostApp  # fastapi_offline builds a plain FastAPI; this only adds `__call__`
    app.state.settings = settings
    install_error_handlers(app)
    # Outside the routes' exception handling: a body over its limit is refused while it is read.
    app.add_middleware(
        HttpGuard,
        body_max_bytes=settings.body_max_bytes,
        unauthenticated_max_bytes=settings.body_max_bytes_unauthenticated,
        body_idle_timeout=settings.http_body_timeout_seconds,
    )
    for module in ROUTE_MODULES:
        app.include_router(module.router)
    app.state.http_routes = [r for m in ROUTE_MODULES for r in m.router.routes if isinstance(r, APIRoute)]
    openapi.install(app)
    return app
