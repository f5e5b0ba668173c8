"""`peerpost`: the command line of a PeerPost device, a client of the profile's resident node.

Every command but `register`, `login`, `serve` and `db` talks to the profile's node over its local
API (peer/resident: JSON-RPC 2.0 on `<profile>/node.sock`); the first command that needs the node
starts it, handing it the password once (`PEERPOST_PASSWORD`, `--password-file`, or a hidden
prompt), as gpg starts gpg-agent. So any number of commands and UI windows run at once on one
profile, a warm `send` costs a socket round trip, and links stay up between commands.

This module is imported by every command, so it loads only click and the stdlib-only client at
the top; the peer, aiortc, rich and the web UI load inside the commands that need them. Errors
are one clear line on stderr and exit status 1, never a traceback.

`serve` and `db upgrade` run `python -m signalling ...` as a child process (the peer never
imports the server) and pass SIGTERM/SIGINT on to it, so stopping `serve` stops the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from peer.errors import PeerError
from peer.profile import DEFAULT_PROFILE, Profile, data_root
from peer.resident import client as node_client
from peer.resident.client import NodeClient, NodeNotRunning, NodeStartFailed
from peer.resident.rpc import ErrorCode, NodeState, RpcError

if TYPE_CHECKING:
    from peer.views import PeerSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
STOP_DEADLINE_S = 30.0
UI_ANNOUNCE = "PeerPost UI: open {url}  (the link works once)"


@dataclass
class Options:
    server: str | None
    profile: str
    profile_dir: Path | None
    password_file: Path | None
    as_json: bool
    host_addresses: tuple[str, ...]
    ice_servers: tuple[str, ...] | None
    direct: bool
    verbose: int = 0

    def profile_obj(self) -> Profile:
        return Profile.at(self.profile_dir.resolve()) if self.profile_dir else Profile.named(self.profile)

    def settings(self, online: bool = True) -> PeerSettings:
        from aiortc import RTCIceServer

        from peer.views import PeerSettings

        ice = None
        if self.ice_servers is not None:
            ice = tuple(RTCIceServer(urls=u) for u in self.ice_servers if u)
        return PeerSettings(
            online=online,
            host_addresses=self.host_addresses or None,
            ice_servers=ice,
            direct=self.direct,
            reconnect_cap=5.0,  # a resident node: back within seconds of the server
        )

    def global_args(self) -> list[str]:
        """These options again, for the node process this command starts."""
        args = ["--profile-dir", str(self.profile_obj().path)]
        if self.server:
            args += ["--server", self.server]
        for address in self.host_addresses:
            args += ["--host-address", address]
        for url in self.ice_servers or ():
            args += ["--ice-server", url]
        if self.ice_servers is not None and not self.ice_servers:
            args += ["--ice-server", ""]
        if not self.direct:
            args.append("--no-direct")
        if self.verbose:
            args.append("-" + "v" * self.verbose)
        return args


def password_for(opts: Options, confirm: bool = False) -> str:
    if opts.password_file is not None:
        try:
            return opts.password_file.read_text().rstrip("\n")
        except OSError as e:
            raise click.ClickException(
                f"cannot read the password file {opts.password_file}: {e.strerror}"
            ) from e
    env = os.environ.get("PEERPOST_PASSWORD")
    if env:
        return env
    if not sys.stdin.isatty():
        raise click.ClickException("no password: set PEERPOST_PASSWORD or pass --password-file")
    return click.prompt("Password", hide_input=True, confirmation_prompt=confirm)  # type: ignore[no-any-return]


def emit(opts: Options, data: Any, human: Callable[[], None] | None = None) -> None:
    if opts.as_json or human is None:
        click.echo(json.dumps(data, default=str))
    else:
        human()


# --------------------------------------------------------------------------------------------------
# talking to the node
# --------------------------------------------------------------------------------------------------


def _has_account(profile: Profile) -> bool:
    return profile.load_meta() is not None and profile.keystore_path.exists()


def node_for(
    opts: Options, *, start: bool = True, need_account: bool = True, extra: list[str] | None = None
) -> NodeClient:
    """A connection to the profile's node, starting it (with the password) when it is not running."""
    profile = opts.profile_obj()
    with contextlib.suppress(NodeNotRunning):
        return node_client.connect(profile.path)
    if not start:
        raise click.ClickException(f"no node runs for profile {profile.name!r}")
    has_account = _has_account(profile)
    if need_account and not has_account:
        raise click.ClickException(
            f"profile {profile.name!r} has no account on this device yet: "
            "run `peerpost register USER EMAIL` or `peerpost login USER`"
        )
    password = password_for(opts) if has_account else None
    argv = [*node_client.own_argv(), *opts.global_args(), "daemon", "--detach", *(extra or [])]
    try:
        return node_client.start_node(profile.path, argv, password)
    except NodeStartFailed as e:
        raise click.ClickException(str(e)) from None


def call(opts: Options, method: str, node: NodeClient | None = None, **params: Any) -> Any:
    """One call to the node; unlocks a locked node with the password and tries once more."""
    own = node is None
    node = node or node_for(opts)
    try:
        try:
            return node.call(method, **params)
        except RpcError as e:
            if e.code != ErrorCode.LOCKED:
                raise
            node.call("unlock", password=password_for(opts))
            return node.call(method, **params)
    except RpcError as e:
        raise click.ClickException(e.message) from None
    except NodeNotRunning as e:
        raise click.ClickException(f"the node of this profile stopped: {e}") from None
    finally:
        if own:
            node.close()


def _follow(node: NodeClient, on_event: Callable[[dict[str, Any]], None]) -> Any:
    """Read the node's events on their own connection in a thread (daemon: ends with the command)."""
    import threading

    def run() -> None:
        with contextlib.suppress(OSError, ValueError, NodeNotRunning):
            for event in node.events():
                on_event(event)

    thread = threading.Thread(target=run, name="peerpost-events", daemon=True)
    thread.start()
    return thread


# --------------------------------------------------------------------------------------------------
# the group
# --------------------------------------------------------------------------------------------------


class OneLineErrors(click.Group):
    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        except click.exceptions.Exit as e:
            sys.exit(e.exit_code)
        except click.ClickException as e:
            click.echo(f"error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        except (PeerError, RpcError) as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            sys.exit(130)
        except Exception as e:  # the last line of defence: still one line, never a traceback
            click.echo(f"error: {type(e).__name__}: {e}", err=True)
            sys.exit(1)


@click.group(cls=OneLineErrors)
@click.option("--server", envvar="PEERPOST_SERVER", help="server URL, e.g. http://127.0.0.1:8765")
@click.option(
    "--profile",
    envvar="PEERPOST_PROFILE",
    default=DEFAULT_PROFILE,
    show_default=True,
    help="which local identity (one per person and device)",
)
@click.option(
    "--profile-dir",
    envvar="PEERPOST_PROFILE_DIR",
    type=click.Path(path_type=Path),
    help="an explicit profile folder instead of a named one",
)
@click.option("--password-file", type=click.Path(path_type=Path), help="read the password from this file")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.option(
    "--host-address",
    "host_addresses",
    multiple=True,
    envvar="PEERPOST_HOST_ADDRESSES",
    help="only reveal these local addresses as ICE host candidates (repeat)",
)
@click.option(
    "--ice-server", "ice_servers", multiple=True, help="STUN/TURN URL (repeat); default: the server's"
)
@click.option("--no-direct", is_flag=True, help="never try direct links (server only)")
@click.option("-v", "--verbose", count=True, help="log to stderr (-v: info, -vv: debug)")
@click.pass_context
def main(
    ctx: click.Context,
    server: str | None,
    profile: str,
    profile_dir: Path | None,
    password_file: Path | None,
    as_json: bool,
    host_addresses: tuple[str, ...],
    ice_servers: tuple[str, ...],
    no_direct: bool,
    verbose: int,
) -> None:
    """PeerPost: end-to-end encrypted messages, direct when possible, through the server when not.

    Each profile has one resident node (started by the first command that needs it, or by
    `peerpost up` / `peerpost daemon`; ended by `peerpost stop`); every command talks to it.
    """
    _setup_logging(verbose)
    if isinstance(host_addresses, str):
        host_addresses = tuple(host_addresses.split())
    ctx.obj = Options(
        server,
        profile,
        profile_dir,
        password_file,
        as_json,
        host_addresses,
        ice_servers or None,
        not no_direct,
        verbose,
    )


def _setup_logging(verbose: int) -> None:
    """Quiet by default: warnings a user should see arrive as events or as the one error line.

    `logging` loads only when something in this process can log (not for a thin client's call).
    """
    if "logging" not in sys.modules and verbose == 0:
        return
    import logging

    level = {0: logging.ERROR, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose < 2:
        for noisy in ("aioice", "aiortc", "websockets", "httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


# --------------------------------------------------------------------------------------------------
# account: in this process (there is no session yet for a node to hold)
# --------------------------------------------------------------------------------------------------


class _LazyKeygenBar:
    """A key-generation bar that appears only when keys are really being made."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Any = None
        self._task: Any = None

    def update(self, fraction: float, label: str) -> None:
        if not self.enabled:
            return
        if self._progress is None:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.percentage:>3.0f}%"),
                console=Console(stderr=True),  # stdout stays the command's answer
            )
            self._task = self._progress.add_task("generating device keys", total=1.0)
            self._progress.start()
        self._progress.update(self._task, completed=fraction, description=label or "generating device keys")

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()


def _run_async(factory: Callable[[], Any]) -> Any:
    import asyncio
    import logging

    if not logging.getLogger().handlers:
        _setup_logging_now(logging)

    from crypto.errors import CryptoError

    try:
        try:
            import uvloop
        except ImportError:
            return asyncio.run(factory())
        return uvloop.run(factory())
    except (PeerError, CryptoError) as e:
        raise click.ClickException(str(e)) from None
    except ValueError as e:  # pydantic's ValidationError of a request body built here
        errors = getattr(e, "errors", None)
        if not callable(errors):
            raise
        raise click.ClickException(validation_sentence(errors())) from None


def _setup_logging_now(logging: Any) -> None:
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("aioice", "aiortc", "websockets", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def validation_sentence(errors: list[dict[str, Any]]) -> str:
    """Pydantic's errors as one line a person reads: which field, what is wrong with it."""
    parts = []
    for err in errors:
        field = ".".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int)) or "input"
        if err.get("type") == "string_pattern_mismatch" and field == "username":
            what = "3 to 32 characters: letters, digits, '_', '.' or '-'"
        else:
            what = str(err.get("msg", "is not valid")).removeprefix("Value error, ")
        parts.append(f"{field}: {what}")
    return "; ".join(parts)


def _guard_profile(profile: Profile, username: str, registering: bool) -> None:
    """Who owns this profile is on disk: refuse the wrong one before anything reaches the server."""
    meta = profile.load_meta()
    if meta is None:
        return
    if registering:
        raise click.ClickException(
            f"profile {profile.name!r} already belongs to {meta.username}; "
            "pick another with --profile to register a new account"
        )
    if meta.username.lower() != username.lower():
        raise click.ClickException(
            f"profile {profile.name!r} belongs to {meta.username}, not {username}; "
            "pick another with --profile"
        )


def _account(
    opts: Options, username: str, action: Callable[[Any, Callable[[float, str], None]], Any]
) -> dict[str, Any]:
    from peer.node import Peer

    profile = opts.profile_obj()
    bar = _LazyKeygenBar(enabled=not opts.as_json and sys.stderr.isatty())

    async def body() -> dict[str, Any]:
        async with Peer(profile, opts.server, settings=opts.settings(online=False)) as peer:
            try:
                me = await action(peer, bar.update)
            finally:
                bar.close()
            return {"user_id": me.user_id, "username": me.username, "device_id": me.device_id}

    return _run_async(body)  # type: ignore[no-any-return]


@main.command()
@click.argument("username")
@click.argument("email")
@click.pass_obj
def register(opts: Options, username: str, email: str) -> None:
    """Create an account and this device's keys (the profile must be new)."""
    profile = opts.profile_obj()
    _guard_profile(profile, username, registering=True)
    password = password_for(opts, confirm=True)
    result = _account(
        opts, username, lambda p, progress: p.register(username, email, password, progress=progress)
    )
    _tell_running_node(profile, password)
    emit(opts, result, lambda: click.echo(f"registered {result['username']} (id {result['user_id']})"))


def _tell_running_node(profile: Profile, password: str) -> None:
    """A node already running on this profile (`peerpost up` on a new profile) takes the session."""
    with contextlib.suppress(NodeNotRunning, RpcError), node_client.connect(profile.path, timeout=90) as node:
        node.call("unlock", password=password)


@main.command()
@click.argument("username")
@click.pass_obj
def login(opts: Options, username: str) -> None:
    """Log in (the first login on this profile generates and publishes device keys)."""
    profile = opts.profile_obj()
    _guard_profile(profile, username, registering=False)
    with contextlib.suppress(NodeNotRunning), node_client.connect(profile.path) as node:
        status = node.call("status")
        if status["state"] == NodeState.READY:
            result = {**status["user"], "device_id": status["device_id"]}
            emit(opts, result, lambda: click.echo(f"logged in as {result['username']} (node running)"))
            return
    password = password_for(opts)
    new_device = not _has_account(profile)
    result = _account(opts, username, lambda p, progress: p.login(username, password, progress=progress))
    _tell_running_node(profile, password)  # a locked or logged-out node takes the new session

    def human() -> None:
        click.echo(f"logged in as {result['username']}")
        if new_device:
            click.echo("this device starts with an empty history: earlier messages stay on your others")

    emit(opts, result, human)


@main.command()
@click.pass_obj
def logout(opts: Options) -> None:
    """Revoke this session's tokens on the server (the keys stay, sealed, on this device)."""
    call(opts, "logout")
    emit(opts, {"logged_out": True}, lambda: click.echo("logged out"))


@main.command()
@click.pass_obj
def whoami(opts: Options) -> None:
    """Who this profile is."""
    result = call(opts, "whoami")
    emit(
        opts,
        result,
        lambda: click.echo(
            f"{result['username']} (id {result['user_id']}), "
            f"device {result['device_id']} at {result['server']}"
        ),
    )


# --------------------------------------------------------------------------------------------------
# the node itself
# --------------------------------------------------------------------------------------------------


def _read_stdin_password() -> str | None:
    line = sys.stdin.readline().rstrip("\n")
    return line or None


@main.command()
@click.option("--detach", is_flag=True, hidden=True, help="started by another command: password on stdin")
@click.option("--ui-host", default="127.0.0.1", show_default=True, help="loopback address of the web UI")
@click.option("--ui-port", type=int, default=0, help="port of the web UI (default: a free one)")
@click.option(
    "--local-server-port", type=int, default=None, help="run (or reuse) a local server on this port"
)
@click.option("--local-server-data", type=click.Path(path_type=Path), default=None, help="its data folder")
@click.pass_obj
def daemon(
    opts: Options,
    detach: bool,
    ui_host: str,
    ui_port: int,
    local_server_port: int | None,
    local_server_data: Path | None,
) -> None:
    """Run this profile's resident node in the foreground until SIGTERM/SIGINT (or `peerpost stop`)."""
    import asyncio

    from peer.resident.node import LocalServerOptions, ResidentNode, UiOptions

    profile = opts.profile_obj()
    import logging

    if not logging.getLogger().handlers:
        _setup_logging_now(logging)
    if detach:
        password = _read_stdin_password()
        if not opts.verbose:
            logging.getLogger().setLevel(logging.WARNING)
    else:
        password = password_for(opts) if _has_account(profile) else None
    local = None
    if local_server_port is not None:
        local = LocalServerOptions(local_server_data or data_root() / "server", local_server_port)
    server = opts.server
    if server is None:
        meta = profile.load_meta()
        server = meta.server_url if meta is not None else None
    if server is None and local is None:
        raise click.ClickException("no server given: pass --server URL (or set PEERPOST_SERVER)")
    ui = UiOptions(ui_host, ui_port, opts.ice_servers, opts.host_addresses or None)
    node = ResidentNode(profile, server, opts.settings(), ui, local)

    def ready(state: NodeState) -> None:
        if detach:
            sys.stdout.write(node_client.READY_LINE + "\n")
            sys.stdout.flush()
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)  # nobody reads our stdout any more
            os.close(devnull)
        else:
            click.echo(f"PeerPost node for profile {profile.name!r}: {state}, socket {node.socket_path}")

    from crypto.errors import CryptoError

    try:
        try:
            import uvloop

            uvloop.run(node.run(password, ready))
        except ImportError:
            asyncio.run(node.run(password, ready))
    except (PeerError, CryptoError, OSError) as e:
        if detach:
            sys.stdout.write(f"error: {e}\n")
            sys.stdout.flush()
            logging.getLogger("peer.cli").error("the node did not start: %s", e)
            sys.exit(1)
        raise click.ClickException(str(e)) from None


def _wait_stopped(profile: Profile) -> bool:
    """Wait until no node holds the profile's lock (it has closed everything it started)."""
    import fcntl
    import time

    from peer.resident import rpc

    path = profile.path / rpc.LOCK_NAME
    if not path.exists():
        return True
    fd = os.open(path, os.O_RDWR)
    try:
        deadline = time.monotonic() + STOP_DEADLINE_S
        while time.monotonic() < deadline:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                time.sleep(0.05)  # polling a lock held by another process: there is no event to wait on
                continue
            fcntl.flock(fd, fcntl.LOCK_UN)
            return True
        return False
    finally:
        os.close(fd)


@main.command()
@click.pass_obj
def stop(opts: Options) -> None:
    """Stop this profile's node (it closes its links, UI and anything it started)."""
    profile = opts.profile_obj()
    try:
        with node_client.connect(profile.path, timeout=10) as node:
            node.call("stop")
    except NodeNotRunning:
        emit(opts, {"stopped": False, "running": False}, lambda: click.echo("no node was running"))
        return
    if not _wait_stopped(profile):
        raise click.ClickException(f"the node did not stop within {STOP_DEADLINE_S:.0f} s")
    emit(opts, {"stopped": True}, lambda: click.echo("stopped"))


@main.command()
@click.pass_obj
def lock(opts: Options) -> None:
    """Drop the keys from the node's memory; the next command asks for the password again."""
    try:
        with node_client.connect(opts.profile_obj().path, timeout=10) as node:
            result = node.call("lock")
    except NodeNotRunning:
        result = {"state": "stopped"}
    emit(
        opts, result, lambda: click.echo("locked" if result["state"] != "stopped" else "no node was running")
    )


@main.command()
@click.pass_obj
def status(opts: Options) -> None:
    """Whether this profile's node runs, and what it holds (state, user, server, links)."""
    try:
        with node_client.connect(opts.profile_obj().path, timeout=10) as node:
            result = node.call("status")
    except NodeNotRunning:
        result = {"state": "stopped"}

    def human() -> None:
        if result["state"] == "stopped":
            click.echo("no node is running for this profile")
            return
        who = result["user"]["username"] if result.get("user") else "nobody"
        online = "online" if result["online"] else "offline"
        links = sum(1 for link in result["links"] if link["open"])
        click.echo(f"node {result['state']} (pid {result['pid']}): {who}, {online}, {links} open link(s)")

    emit(opts, result, human)


# --------------------------------------------------------------------------------------------------
# contacts and devices
# --------------------------------------------------------------------------------------------------


def _table(headers: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*headers)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


@main.group()
def contacts() -> None:
    """Contacts: list, requests, search, add, accept, decline, remove, group, remark."""


def _contact_table(rows: list[dict[str, Any]]) -> None:
    _table(
        ["id", "username", "name", "status", "direction", "group", "remark", "online"],
        [
            [
                str(r["user_id"]),
                r["username"],
                r.get("display_name") or "",
                r["status"],
                r["direction"],
                r.get("group") or "",
                r.get("remark") or "",
                "●" if r.get("online") else "",
            ]
            for r in rows
        ],
    )


@contacts.command("list")
@click.option("--status", type=click.Choice(["pending", "accepted", "declined", "blocked"]))
@click.option("--group")
@click.pass_obj
def contacts_list(opts: Options, status: str | None, group: str | None) -> None:
    """Your contacts (from the server; the local copy when it is out of reach)."""
    rows = call(opts, "contacts.list", status=status, group=group)
    emit(opts, rows, lambda: _contact_table(rows))


@contacts.command("requests")
@click.pass_obj
def contacts_requests(opts: Options) -> None:
    """Contact requests waiting: the ones you got and the ones you sent."""
    result = call(opts, "contacts.requests")
    emit(opts, result, lambda: _contact_table(result["incoming"] + result["outgoing"]))


@contacts.command("search")
@click.argument("query")
@click.pass_obj
def contacts_search(opts: Options, query: str) -> None:
    """Find users by name."""
    rows = call(opts, "contacts.search", query=query)
    emit(opts, rows, lambda: [click.echo(f"{r['id']:>6}  {r['username']}") for r in rows] and None)


def _contact_op(name: str, doc: str, done: str) -> None:
    @contacts.command(name, help=doc)
    @click.argument("who")
    @click.pass_obj
    def command(opts: Options, who: str) -> None:
        result = call(opts, f"contacts.{name}", who=who)
        emit(opts, result, lambda: click.echo(done.format(who=who)))


_contact_op("accept", "Accept a contact request.", "{who} is now your contact")
_contact_op("decline", "Decline a contact request.", "declined {who}")
_contact_op("remove", "Remove a contact.", "removed {who}")


@contacts.command("add")
@click.argument("who")
@click.pass_obj
def contacts_add(opts: Options, who: str) -> None:
    """Send a contact request (by username or id)."""
    result = call(opts, "contacts.add", who=who)
    emit(opts, result, lambda: click.echo(f"asked {result['username']}; status {result['status']}"))


@contacts.command("group")
@click.argument("who")
@click.argument("group", required=False)
@click.pass_obj
def contacts_group(opts: Options, who: str, group: str | None) -> None:
    """Put a contact in a group (no GROUP: clear it)."""
    result = call(opts, "contacts.set", who=who, group=group)
    emit(opts, result, lambda: click.echo(f"{result['username']}: group {result.get('group') or '-'}"))


@contacts.command("remark")
@click.argument("who")
@click.argument("remark", required=False)
@click.pass_obj
def contacts_remark(opts: Options, who: str, remark: str | None) -> None:
    """Set a private remark on a contact (no REMARK: clear it)."""
    result = call(opts, "contacts.set", who=who, remark=remark)
    emit(opts, result, lambda: click.echo(f"{result['username']}: remark {result.get('remark') or '-'}"))


@main.command("safety-number")
@click.argument("who")
@click.option("--qr/--no-qr", default=True, help="also print a QR code")
@click.pass_obj
def safety_number_cmd(opts: Options, who: str, qr: bool) -> None:
    """The safety number to compare with a contact (digits and a terminal QR code)."""
    result = call(opts, "safety_number", who=who)

    def human() -> None:
        click.echo(result["formatted"])
        if qr:
            click.echo(result["qr"])
        click.echo("verified" if result["verified"] else "not verified yet")

    emit(opts, {k: v for k, v in result.items() if k != "qr"}, human)


@main.command()
@click.argument("who")
@click.option("--yes", is_flag=True, help="do not ask; you compared the safety number already")
@click.option("--undo", is_flag=True, help="remove the verified mark")
@click.pass_obj
def verify(opts: Options, who: str, yes: bool, undo: bool) -> None:
    """Mark a contact verified after comparing safety numbers (also re-confirms a changed key)."""
    if not undo and not yes:
        number = call(opts, "safety_number", who=who)
        click.echo(number["formatted"])
        if not click.confirm("Does it match what your contact sees?"):
            raise click.ClickException("not verified")
    result = call(opts, "verify", who=who, undo=undo)
    emit(opts, result, lambda: click.echo("verified" if result["verified"] else "verification removed"))


# --------------------------------------------------------------------------------------------------
# messages
# --------------------------------------------------------------------------------------------------


def _local_time(ms: int) -> Any:
    import datetime as dt

    return dt.datetime.fromtimestamp(ms / 1000).astimezone()


def _what(m: dict[str, Any]) -> str:
    if m["kind"] == "deleted":
        return "[message deleted]"
    if m["kind"] == "timer":
        return f"[{m['text']}]"
    if m["kind"] == "text":
        return str(m["text"]) + (" (edited)" if m.get("edited_at_ms") else "")
    file = m.get("file") or {}
    return f"[file {file.get('name', '?')}, {file.get('size', 0)} B]"


def _status_word(m: dict[str, Any]) -> str:
    if m["state"] == "sending" and not m.get("path"):
        return "queued here"
    return f"{m.get('path') or '-'}, {m['state']}"


class Transcript:
    """Messages as a person reads them: names, times, a separator when the day changes."""

    def __init__(self, names: dict[str, str]) -> None:
        self.names = names
        self._day: Any = None

    def name(self, user_id: int) -> str:
        return self.names.get(str(user_id), f"user {user_id}")

    def lines(self, m: dict[str, Any]) -> list[str]:
        when = _local_time(m["sent_at_ms"])
        out = []
        if when.date() != self._day:
            self._day = when.date()
            out.append(f"── {when:%a %d %b %Y} ──")
        who = "me" if m["outgoing"] else self.name(m["sender_user"])
        status = f"  ({_status_word(m)})" if m["outgoing"] else ""
        out.append(f"{when:%H:%M} {who}: {_what(m)}{status}")
        return out


def _sent_line(who: str, m: dict[str, Any]) -> str:
    if m["state"] == "failed":
        raise click.ClickException(f"not sent to {who}: {m.get('reason') or 'no device could take it'}")
    if m["state"] == "sending" and not m.get("path"):
        return f"queued for {who}: goes out when the server or a direct link is back"
    path = m.get("path")
    how = {
        "direct": "direct",
        "relayed": "through the server",
        "queued": "queued on the server until they are online",
    }.get(path or "", path or "pending")
    return f"sent to {who} ({how})"


@main.group("group")
def group_cmd() -> None:
    """Groups: create, add, remove, leave, list, members, rename, promote (address one as #NAME)."""


def _group_line(g: dict[str, Any]) -> str:
    role = " (admin)" if g["role"] == "admin" else ""
    state = "" if g["active"] else " - you are no longer in it"
    return f"#{g['name']}  {g['members']} members{role}  id {g['group_id']}{state}"


@group_cmd.command("create")
@click.argument("name")
@click.argument("users", nargs=-1)
@click.pass_obj
def group_create(opts: Options, name: str, users: tuple[str, ...]) -> None:
    """Create a group with you as admin and USERS (your accepted contacts) in it."""
    g = call(opts, "group.create", name=name, members=list(users))
    emit(opts, g, lambda: click.echo(f"created {_group_line(g)}"))


@group_cmd.command("add")
@click.argument("name")
@click.argument("users", nargs=-1, required=True)
@click.pass_obj
def group_add(opts: Options, name: str, users: tuple[str, ...]) -> None:
    """Add USERS to the group NAME (admins only)."""
    g = call(opts, "group.add", group=name, who=list(users))
    emit(opts, g, lambda: click.echo(f"added {', '.join(users)}: {_group_line(g)}"))


@group_cmd.command("remove")
@click.argument("name")
@click.argument("user")
@click.pass_obj
def group_remove(opts: Options, name: str, user: str) -> None:
    """Remove USER from the group NAME (admins only); they cannot read what follows."""
    g = call(opts, "group.remove", group=name, who=user)
    emit(opts, g, lambda: click.echo(f"removed {user}: {_group_line(g)}"))


@group_cmd.command("leave")
@click.argument("name")
@click.pass_obj
def group_leave(opts: Options, name: str) -> None:
    """Leave the group NAME."""
    result = call(opts, "group.leave", group=name)
    emit(opts, result, lambda: click.echo(f"you left {name}"))


@group_cmd.command("rename")
@click.argument("name")
@click.argument("new")
@click.pass_obj
def group_rename(opts: Options, name: str, new: str) -> None:
    """Rename the group NAME to NEW (admins only)."""
    g = call(opts, "group.rename", group=name, name=new)
    emit(opts, g, lambda: click.echo(f"renamed: {_group_line(g)}"))


@group_cmd.command("promote")
@click.argument("name")
@click.argument("user")
@click.pass_obj
def group_promote(opts: Options, name: str, user: str) -> None:
    """Make USER an admin of the group NAME (admins only)."""
    g = call(opts, "group.promote", group=name, who=user)
    emit(opts, g, lambda: click.echo(f"{user} is now an admin of #{g['name']}"))


@group_cmd.command("list")
@click.pass_obj
def group_list(opts: Options) -> None:
    """Your groups, as this device verified them (works offline)."""
    rows = call(opts, "group.list")
    emit(opts, rows, lambda: [click.echo(_group_line(g)) for g in rows] and None)


@group_cmd.command("members")
@click.argument("name")
@click.pass_obj
def group_members(opts: Options, name: str) -> None:
    """The members of the group NAME, admins marked."""
    rows = call(opts, "group.members", group=name)
    emit(
        opts,
        rows,
        lambda: _table(
            ["id", "username", "role", ""],
            [[str(m["user_id"]), m["username"], m["role"], "me" if m["is_me"] else ""] for m in rows],
        ),
    )


@main.command()
@click.argument("who")
@click.argument("text", nargs=-1, required=True)
@click.pass_obj
def send(opts: Options, who: str, text: tuple[str, ...]) -> None:
    """Send a text message (queued on this device when the server is out of reach)."""
    result = call(opts, "send", to=who, text=" ".join(text))
    line = _sent_line(who, result)
    emit(opts, result, lambda: click.echo(line))


@main.command("send-file")
@click.argument("who")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_obj
def send_file(opts: Options, who: str, path: Path) -> None:
    """Send a file (direct when possible, else as an encrypted blob), with a progress bar."""
    source = path.resolve()
    node = node_for(opts)
    bar: Any = None
    task: Any = None
    if not opts.as_json and sys.stderr.isatty():
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        bar = Progress(
            TextColumn(path.name),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[via]}"),
            console=Console(stderr=True),
        )
        task = bar.add_task("send", total=source.stat().st_size, via="")
        events = node_client.connect(opts.profile_obj().path)

        def progress(event: dict[str, Any]) -> None:
            if event.get("type") == "file_progress" and event.get("outgoing"):
                bar.update(task, total=event["total"], completed=event["done"], via=event["via"])

        _follow(events, progress)
    try:
        with bar if bar is not None else contextlib.nullcontext():
            result = call(opts, "send_file", node, to=who, path=str(source))
    finally:
        node.close()
    emit(
        opts,
        result,
        lambda: click.echo(_sent_line(who, result).replace(f"to {who}", f"{path.name} to {who}", 1)),
    )


@main.command()
@click.argument("who", required=False)
@click.option("--limit", default=50, show_default=True, help="at most this many, the newest")
@click.option("--ids", is_flag=True, help="show each message's id (for `edit` and `delete`)")
@click.pass_obj
def history(opts: Options, who: str | None, limit: int, ids: bool) -> None:
    """Stored messages (decrypted on this device; works with the server down), oldest first."""
    with node_for(opts) as node:
        rows = call(opts, "history", node, limit=limit, **({"with": who} if who else {}))
        names = {} if opts.as_json else call(opts, "names", node)

    def human() -> None:
        transcript = Transcript(names)
        for m in rows:
            for line in transcript.lines(m):
                click.echo(f"{m['message_id']}  {line}" if ids and not line.startswith("──") else line)

    emit(opts, rows, human)


@main.command()
@click.pass_obj
def listen(opts: Options) -> None:
    """Stay online and print every event as one JSON line (for scripts); Ctrl-C ends."""
    signal.signal(signal.SIGTERM, _exit_quietly)
    node = node_for(opts)
    me = call(opts, "whoami", node)
    try:
        events = node.events()
        sys.stdout.write(json.dumps({"type": "listening", "user_id": me["user_id"]}) + "\n")
        sys.stdout.flush()
        for event in events:
            sys.stdout.write(json.dumps(event, default=str) + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return
    finally:
        node.close()
    raise click.ClickException("the node stopped")


def _exit_quietly(_signum: int, _frame: Any) -> None:
    """SIGTERM ends a client command as Ctrl-D or Ctrl-C would: status 0 (the node keeps running)."""
    sys.exit(0)


def _contact_line(event: str, who: str) -> str | None:
    """Someone else's change to your contacts, in words (your own changes need no telling)."""
    return {
        "requested": f"  · {who} asked to be your contact (peerpost contacts accept {who})",
        "accepted": f"  · {who} is now your contact",
        "declined": f"  · {who} declined your contact request",
        "removed": f"  · {who} is no longer your contact",
    }.get(event)


def describe(event: dict[str, Any], transcript: Transcript, conversation: str) -> list[str]:
    """An event as the chat shows it, or nothing (own sends are already one line each)."""
    kind = event.get("type")
    if kind == "message":
        m = event["message"]
        if m["conversation"] != conversation or m["outgoing"]:
            return []
        return transcript.lines(m)
    if kind == "message_state" and event.get("state") == "failed":
        return [f"  ! not delivered: {event.get('reason') or 'no device could take it'}"]
    if kind == "presence" and event.get("device_id") is None:
        return [f"  · {transcript.name(event['user_id'])} is {'online' if event['online'] else 'offline'}"]
    if kind == "typing" and event.get("active") and event.get("conversation") == conversation:
        return [f"  · {transcript.name(event['user_id'])} is typing…"]
    if kind == "key_warning":
        blocked = " - sending blocked until you verify again" if event["blocked"] else ""
        what = "has a new device" if event.get("change") == "new_device" else "changed their key"
        return [f"  ! {transcript.name(event['user_id'])} {what}{blocked}"]
    if kind == "signal_rejected":
        return [f"  ! {event['reason']}"]
    if kind == "connection":
        return [
            "  · connected to the server"
            if event["online"]
            else f"  · server out of reach ({event.get('reason') or 'disconnected'}); messages wait here"
        ]
    if kind == "contact" and not event.get("by_me"):
        line = _contact_line(event["event"], event["username"])
        return [line] if line else []
    if kind == "error":
        return [f"  ! {event['message']}"]
    return []


@main.command()
@click.argument("who")
@click.pass_obj
def chat(opts: Options, who: str) -> None:
    """Interactive chat: type lines to send; live messages, presence, path and state. Ctrl-D ends."""
    import threading

    signal.signal(signal.SIGTERM, _exit_quietly)
    node = node_for(opts)
    printing = threading.Lock()
    try:
        target = call(opts, "resolve", node, who=who)
        names = call(opts, "names", node)
        transcript = Transcript(names)
        conversation = target.get("conversation") or f"u:{target['user_id']}"
        for m in call(opts, "history", node, limit=20, **{"with": who}):
            for line in transcript.lines(m):
                click.echo(line)

        def show(event: dict[str, Any]) -> None:
            lines = describe(event, transcript, conversation)
            with printing:
                for line in lines:
                    click.echo(line)

        _follow(node_client.connect(opts.profile_obj().path), show)
        for raw in sys.stdin:
            text = raw.rstrip("\n")
            if not text.strip():
                continue
            try:
                m = call(opts, "send", node, to=who, text=text)
                with printing:
                    click.echo(f"  · {_sent_line(who, m)}")
            except click.ClickException as e:
                with printing:
                    click.echo(f"  ! {e.format_message()}", err=True)
    except KeyboardInterrupt:
        pass
    finally:
        node.close()


# --------------------------------------------------------------------------------------------------
# the web UI, served by the node
# --------------------------------------------------------------------------------------------------


def _announce_ui(opts: Options, node: NodeClient, open_browser: bool) -> None:
    url = call(opts, "ui.link", node)["url"]
    click.echo(UI_ANNOUNCE.format(url=url))
    sys.stdout.flush()
    if open_browser:
        import webbrowser

        webbrowser.open(url)


_host = click.option("--host", default="127.0.0.1", show_default=True, help="loopback address of the UI")
_port = click.option("--port", type=int, default=0, help="port of the UI (default: a free one)")
_open = click.option("--open", "open_browser", is_flag=True, help="open the link in the default browser")


@main.command()
@_host
@_port
@_open
@click.pass_obj
def ui(opts: Options, host: str, port: int, open_browser: bool) -> None:
    """Print a one-time link to the web UI of this profile's node (starting the node if needed).

    Each link opens one browser window; run it again for another. All windows and commands
    share the one node.
    """
    profile = opts.profile_obj()
    if not opts.server and not _has_account(profile) and not node_client.running(profile.path):
        raise click.ClickException(
            "no server configured: pass --server URL (or set PEERPOST_SERVER), or use `peerpost up`"
        )
    with node_for(opts, need_account=False, extra=["--ui-host", host, "--ui-port", str(port)]) as node:
        _announce_ui(opts, node, open_browser)


@main.command()
@_host
@_port
@_open
@click.option(
    "--server-port",
    type=int,
    default=8765,
    show_default=True,
    help="port of the local server (fixed, so every profile on this machine finds it)",
)
@click.option(
    "--server-data",
    type=click.Path(path_type=Path),
    help="data folder of the local server (default: beside the profiles)",
)
@click.pass_obj
def up(
    opts: Options, host: str, port: int, open_browser: bool, server_port: int, server_data: Path | None
) -> None:
    """Start this profile's node (and a local server when none is given) and print a UI link.

    Without --server (PEERPOST_SERVER) and without a server remembered by the profile, the node
    runs a server on 127.0.0.1:--server-port, or reuses the one already there, so a second person
    on this machine runs the same command with their own --profile. `peerpost stop` ends it.
    """
    profile = opts.profile_obj()
    extra = ["--ui-host", host, "--ui-port", str(port)]
    meta = profile.load_meta()
    if not opts.server and meta is None:
        data = (server_data or data_root() / "server").resolve()
        extra += ["--local-server-port", str(server_port), "--local-server-data", str(data)]
    with node_for(opts, need_account=False, extra=extra) as node:
        status_now = call(opts, "status", node)
        if "--local-server-port" in extra:
            click.echo(f"PeerPost server: {status_now['server']}")
        _announce_ui(opts, node, open_browser)
        click.echo(f"the node runs in the background; `peerpost --profile {profile.name} stop` ends it")


# --------------------------------------------------------------------------------------------------
# the server, as a child process
# --------------------------------------------------------------------------------------------------


def _signalling(args: list[str]) -> None:
    """Run `python -m signalling ARGS` and pass SIGTERM/SIGINT/SIGHUP on, so nothing outlives us."""
    import subprocess

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    child = subprocess.Popen([sys.executable, "-m", "signalling", *args], env=env)  # noqa: S603

    asked: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        asked.append(signum)
        # SIGTERM whatever came: the server's clean shutdown (a Ctrl-C in a terminal reaches
        # the child by itself too, as the whole foreground process group gets it).
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    try:
        code = child.wait()
    finally:
        if child.poll() is None:  # we are leaving for another reason: never orphan the server
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
    if asked and code in (-signal.SIGTERM, 128 + signal.SIGTERM, 0):
        sys.exit(0)  # we were asked to stop, and the server stopped: that is success
    sys.exit(128 - code if code < 0 else code)


_PASS_ON = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


@main.command(context_settings=_PASS_ON, add_help_option=False)
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the signalling server; every option goes to it (`peerpost serve --help` lists them)."""
    _signalling(["serve", *ctx.args])


@main.group()
def db() -> None:
    """The server's database."""


@db.command(context_settings=_PASS_ON, add_help_option=False)
@click.pass_context
def upgrade(ctx: click.Context) -> None:
    """Apply database migrations (`python -m signalling db upgrade ...`; --help lists options)."""
    _signalling(["db", "upgrade", *ctx.args])


from peer import cli_daily  # noqa: E402  (devices, account, edit/delete, block: issue 15)

cli_daily.register(main)

if __name__ == "__main__":  # pragma: no cover
    main(prog_name="peerpost")
