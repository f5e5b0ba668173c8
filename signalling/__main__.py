"""Command line of the server: `python -m signalling serve` and `python -m signalling db upgrade`.

`serve` binds the socket itself (so `--port 0` works), runs uvicorn with the app from
`create_app`, and prints exactly one line once the app is ready and listening:
`peerpost-server listening on http://HOST:PORT` (tests and `peerpost serve` wait for it).
"""

from __future__ import annotations

import os
import resource
import socket
import sys
from pathlib import Path
from typing import Any

import click
import uvicorn
from pydantic import ValidationError

from signalling.data_dir import PRIVATE_UMASK
from signalling.http_protocol import GuardedH11Protocol
from signalling.settings import Settings
from signalling.ws_protocol import HubWebSocketProtocol


def _settings(**overrides: Any) -> Settings:
    given = {key: value for key, value in overrides.items() if value is not None}
    try:
        return Settings(**given)
    except ValidationError as exc:
        problems = "; ".join(
            f"PEERPOST_{'_'.join(str(p) for p in error['loc']).upper()}: {error['msg']}"
            for error in exc.errors()
        )
        raise click.ClickException(f"bad setting: {problems}") from exc


class _AnnouncingServer(uvicorn.Server):
    """Prints the listening line after start-up completed (lifespan done, socket listening)."""

    def __init__(self, config: uvicorn.Config, announce: str) -> None:
        super().__init__(config)
        self._announce = announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            print(self._announce, flush=True)


def _connection_cap(wanted: int) -> int:
    """Raise the open-file limit as far as allowed; the connection cap stays below it, so the cap
    answers 503 before accept() fails with "too many open files" (which resets connections)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(16, min(wanted, soft - 64))  # database, blobs and the listening socket need some


def _migrate_or_explain(settings: Settings) -> None:
    from store.errors import MigrationError
    from store.migrate import upgrade_sync

    try:
        upgrade_sync(settings.effective_database_url)
    except MigrationError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group()
def main() -> None:
    """PeerPost signalling server."""


@main.command()
@click.option("--host", default=None, help="address to listen on (default 127.0.0.1)")
@click.option("--port", type=int, default=None, help="port to listen on; 0 picks a free one")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="where the database lives")
@click.option("--database-url", default=None, help="SQLAlchemy async URL (default: SQLite in the data dir)")
def serve(host: str | None, port: int | None, data_dir: Path | None, database_url: str | None) -> None:
    """Run the server until interrupted."""
    from signalling.app import create_app

    settings = _settings(host=host, port=port, data_dir=data_dir, database_url=database_url)
    os.umask(PRIVATE_UMASK)  # the database, its journal, the JWT secret and blobs: 0600 (signalling.data_dir)
    max_connections = _connection_cap(settings.max_connections)
    GuardedH11Protocol.configure(
        header_timeout=settings.http_header_timeout_seconds, per_address=settings.max_connections_per_address
    )
    _migrate_or_explain(settings)  # fail with one clear line, not a lifespan traceback
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}"
        ) from exc
    bound_port = sock.getsockname()[1]
    shown_host = f"[{settings.host}]" if family == socket.AF_INET6 else settings.host
    app = create_app(settings)
    # Frames up to 4x the limit reach the hub, which answers `too_large` and keeps the socket.
    ws_max_size = settings.max_frame_bytes * 4 + 65536
    config = uvicorn.Config(
        app,
        log_level=settings.log_level,
        proxy_headers=settings.forwarded_allow_ips is not None,
        forwarded_allow_ips=settings.forwarded_allow_ips,
        server_header=False,
        # Slow and greedy clients (signalling.http_protocol, docs/server.md "Behind a proxy"): h11 for
        # its bound on incomplete headers, with a header deadline and a per-address cap added.
        http=GuardedH11Protocol,
        timeout_keep_alive=int(max(1, settings.http_keepalive_timeout_seconds)),
        h11_max_incomplete_event_size=settings.http_max_header_bytes,
        limit_concurrency=max_connections,
        ws_max_size=ws_max_size,
        # Envelopes are ciphertext: compressing them costs CPU on both ends and saves nothing (the
        # hub's protocol negotiates no extension at all).
        ws_per_message_deflate=False,
        # `/ws` speaks straight to the hub, without ASGI (signalling.ws_protocol: ~10 KB less per
        # idle socket); uvicorn's h11 protocol reads the upgrade request and hands the socket over.
        ws=HubWebSocketProtocol.for_app(
            app, max_size=ws_max_size, ping_interval=settings.ws_ping_interval_seconds
        ),
    )
    server = _AnnouncingServer(config, f"peerpost-server listening on http://{shown_host}:{bound_port}")
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(1)


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None)
@click.option("--database-url", default=None)
def upgrade(data_dir: Path | None, database_url: str | None) -> None:
    """Migrate the database to the current schema (the server also does this on start)."""
    from store.migrate import head_revision

    settings = _settings(data_dir=data_dir, database_url=database_url)
    _migrate_or_explain(settings)
    click.echo(f"database is at the current schema (revision {head_revision()})")


if __name__ == "__main__":
    main()
