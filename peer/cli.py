"""`peerpost`: the command line of a PeerPost device.

Every command runs unattended when asked to: the password comes from `PEERPOST_PASSWORD` or
`--password-file` (else a hidden prompt on a terminal), the server and profile from flags or
`PEERPOST_SERVER` / `PEERPOST_PROFILE` / `PEERPOST_PROFILE_DIR`, and `--json` prints machine output.
Errors are one clear line on stderr and exit status 1, never a traceback.

`serve` and `db upgrade` start `python -m signalling ...` as a child process: the peer never
imports the server. `ui` and `up` belong to the web UI (`peer.ui.cli.add_commands`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from aiortc import RTCIceServer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from crypto.errors import CryptoError
from peer.errors import PeerError, advice
from peer.events import Event
from peer.node import MessageView, Peer, PeerSettings
from peer.profile import DEFAULT_PROFILE, Profile

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parents[1]
console = Console()
errors = Console(stderr=True)


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

    def profile_obj(self) -> Profile:
        return Profile.at(self.profile_dir) if self.profile_dir else Profile.named(self.profile)

    def settings(self, online: bool = True) -> PeerSettings:
        ice = None
        if self.ice_servers is not None:
            ice = tuple(RTCIceServer(urls=u) for u in self.ice_servers if u)
        return PeerSettings(
            online=online,
            host_addresses=self.host_addresses or None,
            ice_servers=ice,
            direct=self.direct,
        )


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
    return click.prompt("Password", hide_input=True, confirmation_prompt=confirm)


def run(coro_factory: Callable[[], Awaitable[T]]) -> T:
    """Run one command's coroutine; turn every expected failure into one line and exit 1."""
    try:
        with contextlib.suppress(ImportError):
            import uvloop

            return uvloop.run(coro_factory())  # type: ignore[arg-type]
        return asyncio.run(coro_factory())  # type: ignore[arg-type]
    except PeerError as e:
        hint = advice(e)  # core errors say what is wrong; the CLI says what to type
        raise click.ClickException(f"{e}: {hint}" if hint else str(e)) from None
    except CryptoError as e:
        raise click.ClickException(str(e)) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None


def emit(opts: Options, data: Any, human: Callable[[], None] | None = None) -> None:
    if opts.as_json or human is None:
        click.echo(json.dumps(data, default=str))
    else:
        human()


async def with_peer(opts: Options, body: Callable[[Peer], Awaitable[T]], online: bool = True) -> T:
    """Unlock the profile's stored session, run `body`, close everything."""
    async with Peer(opts.profile_obj(), opts.server, settings=opts.settings(online)) as peer:
        await peer.unlock(password_for(opts))
        if online:
            await peer.wait_online(10)
        return await body(peer)


def _resolve_ctx(ctx: click.Context) -> Options:
    return ctx.ensure_object(Options)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------------------------------
# the group
# --------------------------------------------------------------------------------------------------


class OneLineErrors(click.Group):
    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        try:
            return super().main(*args, standalone_mode=False, **kwargs)
        except click.exceptions.Abort:
            errors.print("aborted")
            sys.exit(1)
        except click.ClickException as e:
            errors.print(f"error: {e.format_message()}", markup=False, highlight=False)
            sys.exit(e.exit_code)
        except Exception as e:  # the last line of defence: still one line, never a traceback
            errors.print(f"error: {type(e).__name__}: {e}", markup=False, highlight=False)
            sys.exit(1)


@click.group(cls=OneLineErrors)
@click.option("--server", envvar="PEERPOST_SERVER", help="server URL, e.g. http://127.0.0.1:8000")
@click.option("--profile", envvar="PEERPOST_PROFILE", default=DEFAULT_PROFILE, show_default=True)
@click.option(
    "--profile-dir", envvar="PEERPOST_PROFILE_DIR", type=click.Path(path_type=Path), help="explicit dir"
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
    """PeerPost: end-to-end encrypted messages, direct when possible, through the server when not."""
    # Quiet by default: warnings the user should see arrive as events or as the one error line.
    level = {0: logging.ERROR, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if verbose < 2:
        for noisy in ("aioice", "aiortc", "websockets", "httpx", "httpcore"):
            logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
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
    )


# --------------------------------------------------------------------------------------------------
# account
# --------------------------------------------------------------------------------------------------


def _keygen_bar() -> tuple[Progress, Callable[[float, str], None]]:
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"))
    task = progress.add_task("generating device keys", total=1.0)

    def update(fraction: float, label: str) -> None:
        progress.update(task, completed=fraction, description=label or "generating device keys")

    return progress, update


@main.command()
@click.argument("username")
@click.argument("email")
@click.pass_obj
def register(opts: Options, username: str, email: str) -> None:
    """Create an account and this device's keys."""
    password = password_for(opts, confirm=True)

    async def body() -> dict[str, Any]:
        async with Peer(opts.profile_obj(), opts.server, settings=opts.settings(online=False)) as peer:
            progress, update = _keygen_bar()
            with progress if not opts.as_json else contextlib.nullcontext():
                me = await peer.register(username, email, password, progress=update)
            return {"user_id": me.user_id, "username": me.username, "device_id": me.device_id}

    result = run(body)
    emit(
        opts,
        result,
        lambda: console.print(f"registered [bold]{result['username']}[/] (id {result['user_id']})"),
    )


@main.command()
@click.argument("username")
@click.pass_obj
def login(opts: Options, username: str) -> None:
    """Log in (the first login on this profile generates and publishes device keys)."""
    password = password_for(opts)

    async def body() -> dict[str, Any]:
        async with Peer(opts.profile_obj(), opts.server, settings=opts.settings(online=False)) as peer:
            progress, update = _keygen_bar()
            with progress if not opts.as_json else contextlib.nullcontext():
                me = await peer.login(username, password, progress=update)
            return {"user_id": me.user_id, "username": me.username, "device_id": me.device_id}

    result = run(body)
    emit(opts, result, lambda: console.print(f"logged in as [bold]{result['username']}[/]"))


@main.command()
@click.pass_obj
def logout(opts: Options) -> None:
    """Revoke this session's tokens on the server."""

    async def body(peer: Peer) -> None:
        await peer.logout()

    run(lambda: with_peer(opts, body, online=False))
    emit(opts, {"logged_out": True}, lambda: console.print("logged out"))


@main.command()
@click.pass_obj
def whoami(opts: Options) -> None:
    """Who this profile is."""

    async def body(peer: Peer) -> dict[str, Any]:
        me = peer.me
        return {
            "user_id": me.user_id,
            "username": me.username,
            "device_id": me.device_id,
            "server": me.server_url,
        }

    result = run(lambda: with_peer(opts, body, online=False))
    emit(
        opts,
        result,
        lambda: console.print(
            f"{result['username']} (id {result['user_id']}), "
            f"device {result['device_id']} at {result['server']}"
        ),
    )


# --------------------------------------------------------------------------------------------------
# contacts and devices
# --------------------------------------------------------------------------------------------------


@main.group()
def contacts() -> None:
    """Contacts: list, search, add, accept, decline, remove, group, remark."""


def _contact_table(rows: list[dict[str, Any]]) -> None:
    table = Table("id", "username", "status", "direction", "group", "remark", "online")
    for r in rows:
        table.add_row(
            str(r["user_id"]),
            r["username"],
            r["status"],
            r["direction"],
            r.get("group") or "",
            r.get("remark") or "",
            "●" if r.get("online") else "",
        )
    console.print(table)


@contacts.command("list")
@click.option("--status", type=click.Choice(["pending", "accepted", "declined", "blocked"]))
@click.option("--group")
@click.pass_obj
def contacts_list(opts: Options, status: str | None, group: str | None) -> None:
    async def body(peer: Peer) -> list[dict[str, Any]]:
        return [c.model_dump(mode="json") for c in await peer.contacts(status, group)]

    rows = run(lambda: with_peer(opts, body, online=False))
    emit(opts, rows, lambda: _contact_table(rows))


@contacts.command("requests")
@click.pass_obj
def contacts_requests(opts: Options) -> None:
    async def body(peer: Peer) -> dict[str, Any]:
        incoming, outgoing = await peer.contact_requests()
        return {
            "incoming": [c.model_dump(mode="json") for c in incoming],
            "outgoing": [c.model_dump(mode="json") for c in outgoing],
        }

    result = run(lambda: with_peer(opts, body, online=False))
    emit(opts, result, lambda: _contact_table(result["incoming"] + result["outgoing"]))


@contacts.command("search")
@click.argument("query")
@click.pass_obj
def contacts_search(opts: Options, query: str) -> None:
    async def body(peer: Peer) -> list[dict[str, Any]]:
        return [u.model_dump(mode="json") for u in await peer.search(query)]

    rows = run(lambda: with_peer(opts, body, online=False))
    emit(opts, rows, lambda: [console.print(f"{r['id']:>6}  {r['username']}") for r in rows] and None)


def _contact_op(name: str, doc: str, op: Callable[[Peer, int], Awaitable[Any]]) -> None:
    @contacts.command(name, help=doc)
    @click.argument("who")
    @click.pass_obj
    def command(opts: Options, who: str) -> None:
        async def body(peer: Peer) -> Any:
            result = await op(peer, await peer.resolve_user(who))
            return result.model_dump(mode="json") if hasattr(result, "model_dump") else {"ok": True}

        result = run(lambda: with_peer(opts, body, online=False))
        emit(opts, result, lambda: console.print(f"{name}: done"))


_contact_op("accept", "Accept a contact request.", lambda p, u: p.accept_contact(u))
_contact_op("decline", "Decline a contact request.", lambda p, u: p.decline_contact(u))
_contact_op("remove", "Remove a contact.", lambda p, u: p.remove_contact(u))


@contacts.command("add")
@click.argument("who")
@click.pass_obj
def contacts_add(opts: Options, who: str) -> None:
    """Send a contact request (by username or id)."""

    async def body(peer: Peer) -> dict[str, Any]:
        return (await peer.add_contact(who)).model_dump(mode="json")

    result = run(lambda: with_peer(opts, body, online=False))
    emit(opts, result, lambda: console.print(f"asked {result['username']}; status {result['status']}"))


@contacts.command("group")
@click.argument("who")
@click.argument("group", required=False)
@click.pass_obj
def contacts_group(opts: Options, who: str, group: str | None) -> None:
    """Put a contact in a group (no GROUP: clear it)."""

    async def body(peer: Peer) -> dict[str, Any]:
        return (await peer.set_contact(await peer.resolve_user(who), group=group)).model_dump(mode="json")

    result = run(lambda: with_peer(opts, body, online=False))
    emit(opts, result, lambda: console.print(f"{result['username']}: group {result.get('group') or '-'}"))


@contacts.command("remark")
@click.argument("who")
@click.argument("remark", required=False)
@click.pass_obj
def contacts_remark(opts: Options, who: str, remark: str | None) -> None:
    """Set a private remark on a contact (no REMARK: clear it)."""

    async def body(peer: Peer) -> dict[str, Any]:
        return (await peer.set_contact(await peer.resolve_user(who), remark=remark)).model_dump(mode="json")

    result = run(lambda: with_peer(opts, body, online=False))
    emit(opts, result, lambda: console.print(f"{result['username']}: remark {result.get('remark') or '-'}"))


@main.command()
@click.argument("who", required=False)
@click.pass_obj
def devices(opts: Options, who: str | None) -> None:
    """Devices (and their pinned keys) of a user, or your own."""

    async def body(peer: Peer) -> list[dict[str, Any]]:
        uid = await peer.resolve_user(who) if who else None
        return [d.to_dict() for d in await peer.devices(uid)]

    rows = run(lambda: with_peer(opts, body, online=False))

    def human() -> None:
        table = Table("device", "fingerprint", "state")
        for d in rows:
            state = "this device" if d["this_device"] else "revoked" if d["revoked"] else ""
            if d["key_changed"]:
                state = "KEY CHANGED (not trusted)"
            elif not d["confirmed"]:
                state = "new, not confirmed"
            table.add_row(d["device_id"], d["fingerprint"][:32], state)
        console.print(table)

    emit(opts, rows, human)


@main.command("safety-number")
@click.argument("who")
@click.option("--qr/--no-qr", default=True, help="also print a QR code")
@click.pass_obj
def safety_number_cmd(opts: Options, who: str, qr: bool) -> None:
    """The safety number to compare with a contact (digits and a terminal QR code)."""

    async def body(peer: Peer) -> dict[str, Any]:
        sn = await peer.safety_number(await peer.resolve_user(who))
        return {
            "user_id": sn.user_id,
            "digits": sn.digits,
            "formatted": sn.formatted,
            "qr": sn.qr_text,
            "verified": sn.verified,
        }

    result = run(lambda: with_peer(opts, body, online=False))

    def human() -> None:
        console.print(result["formatted"])
        if qr:
            click.echo(result["qr"])
        console.print("verified" if result["verified"] else "not verified yet")

    emit(opts, {k: v for k, v in result.items() if k != "qr"}, human)


@main.command()
@click.argument("who")
@click.option("--yes", is_flag=True, help="do not ask; you compared the safety number already")
@click.option("--undo", is_flag=True, help="remove the verified mark")
@click.pass_obj
def verify(opts: Options, who: str, yes: bool, undo: bool) -> None:
    """Mark a contact verified after comparing safety numbers (also re-confirms a changed key)."""

    async def body(peer: Peer) -> dict[str, Any]:
        uid = await peer.resolve_user(who)
        if undo:
            await peer.unverify_contact(uid)
            return {"user_id": uid, "verified": False}
        sn = await peer.safety_number(uid)
        if not yes:
            console.print(sn.formatted)
            if not await asyncio.to_thread(click.confirm, "Does it match what your contact sees?"):
                raise PeerError("not verified")
        await peer.accept_key_change(uid)
        await peer.verify_contact(uid)
        return {"user_id": uid, "verified": True}

    result = run(lambda: with_peer(opts, body, online=False))
    emit(opts, result, lambda: console.print("verified" if result["verified"] else "verification removed"))


# --------------------------------------------------------------------------------------------------
# messages
# --------------------------------------------------------------------------------------------------


def _line(m: dict[str, Any], me: int) -> str:
    who = "me" if m["outgoing"] else f"user {m['sender_user']}"
    what = m["text"] if m["kind"] == "text" else f"[file {m['file']['name']} {m['file']['size']} B]"
    status = f"{m.get('path') or '-'}/{m.get('state')}"
    return f"{who}: {what}  ({status})"


@main.command()
@click.argument("who")
@click.argument("text", nargs=-1, required=True)
@click.pass_obj
def send(opts: Options, who: str, text: tuple[str, ...]) -> None:
    """Send a text message."""

    async def body(peer: Peer) -> dict[str, Any]:
        view = await peer.send_text(await peer.resolve_user(who), " ".join(text))
        return view.to_dict()

    result = run(lambda: with_peer(opts, body))
    emit(opts, result, lambda: console.print(f"sent ({result['path'] or 'pending'}, {result['state']})"))


@main.command("send-file")
@click.argument("who")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_obj
def send_file(opts: Options, who: str, path: Path) -> None:
    """Send a file (direct when possible, else as an encrypted blob), with a progress bar."""

    async def body(peer: Peer) -> dict[str, Any]:
        uid = await peer.resolve_user(who)
        queue = peer.subscribe()
        bar = Progress(
            TextColumn(path.name),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TextColumn("{task.fields[via]}"),
        )
        size = (await asyncio.to_thread(path.stat)).st_size
        task_id = bar.add_task("send", total=size, via="")

        async def follow() -> None:
            while (event := await queue.get()) is not None:
                if event.type == "file_progress" and event.outgoing:
                    bar.update(task_id, total=event.total, completed=event.done, via=event.via)

        follower = asyncio.ensure_future(follow())
        try:
            with bar if not opts.as_json else contextlib.nullcontext():
                view = await peer.send_file(uid, path)
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            peer.unsubscribe(queue)
        return view.to_dict()

    result = run(lambda: with_peer(opts, body))
    emit(opts, result, lambda: console.print(f"sent {path.name} ({result['path']}, {result['state']})"))


@main.command()
@click.argument("who", required=False)
@click.option("--limit", default=50, show_default=True)
@click.pass_obj
def history(opts: Options, who: str | None, limit: int) -> None:
    """Stored messages (decrypted locally), oldest first."""

    async def body(peer: Peer) -> list[dict[str, Any]]:
        to = await peer.resolve_user(who) if who else None
        return [m.to_dict() for m in await peer.history(to, limit)]

    rows = run(lambda: with_peer(opts, body, online=False))
    emit(opts, rows, lambda: [console.print(_line(m, 0), markup=False) for m in rows] and None)


async def _until_signal(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


@main.command()
@click.pass_obj
def listen(opts: Options) -> None:
    """Stay online and print every event as one JSON line (for scripts); Ctrl-C ends."""

    async def body(peer: Peer) -> None:
        stop = asyncio.Event()
        queue = peer.subscribe()

        async def pump() -> None:
            while (event := await queue.get()) is not None:
                sys.stdout.write(json.dumps(event.to_dict(), default=str) + "\n")
                sys.stdout.flush()

        printer = asyncio.ensure_future(pump())
        try:
            sys.stdout.write(json.dumps({"type": "listening", "user_id": peer.me.user_id}) + "\n")
            sys.stdout.flush()
            await _until_signal(stop)
        finally:
            printer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await printer
            peer.unsubscribe(queue)

    run(lambda: with_peer(opts, body))


def _contact_line(event: str, who: str) -> str | None:
    """Someone else's change to your contacts, in words (your own changes need no telling)."""
    return {
        "requested": f"  · {who} asked to be your contact (peerpost accept {who})",
        "accepted": f"  · {who} is now your contact",
        "declined": f"  · {who} declined your contact request",
        "removed": f"  · {who} is no longer your contact",
    }.get(event)


def _describe(event: Event) -> str | None:
    d = event.to_dict()
    match event.type:
        case "message":
            m = d["message"]
            return _line(m, 0)
        case "message_state":
            return f"  · {d['message_id'][:8]} {d['state']} ({d['path'] or '-'})"
        case "presence":
            return f"  · user {d['user_id']} is {'online' if d['online'] else 'offline'}"
        case "typing":
            return f"  · user {d['user_id']} is typing…" if d["active"] else None
        case "key_warning":
            blocked = " - sending blocked until you verify again" if d["blocked"] else ""
            return f"  ! the key of device {d['device_id']} changed{blocked}"
        case "signal_rejected":
            return f"  ! {d['reason']}"
        case "link":
            return f"  · direct link {d['state']}"
        case "contact" if not d["by_me"]:
            return _contact_line(d["event"], d["username"])
        case "error":
            return f"  ! {d['message']}"
    return None


@main.command()
@click.argument("who")
@click.pass_obj
def chat(opts: Options, who: str) -> None:
    """Interactive chat: type lines to send; live messages, presence, path and state. Ctrl-D ends."""

    async def body(peer: Peer) -> None:
        uid = await peer.resolve_user(who)
        conversation = f"u:{uid}"
        for m in await peer.history(uid, 20):
            console.print(_line(m.to_dict(), 0), markup=False)
        queue = peer.subscribe()

        async def show() -> None:
            while (event := await queue.get()) is not None:
                if event.type == "message" and event.to_dict()["message"]["conversation"] != conversation:
                    continue
                line = _describe(event)
                if line:
                    console.print(line, markup=False)

        shower = asyncio.ensure_future(show())
        try:
            while True:
                line = await asyncio.to_thread(sys.stdin.readline)
                if not line:
                    break
                text = line.rstrip("\n")
                if text:
                    view: MessageView = await peer.send_text(uid, text)
                    console.print(f"  · sent {view.message_id[:8]} ({view.path or 'pending'})", markup=False)
        finally:
            shower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await shower
            peer.unsubscribe(queue)

    run(lambda: with_peer(opts, body))


# --------------------------------------------------------------------------------------------------
# the server, as a child process
# --------------------------------------------------------------------------------------------------


def _signalling(args: list[str]) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    try:
        code = subprocess.call([sys.executable, "-m", "signalling", *args], env=env)  # noqa: S603
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the signalling server (`python -m signalling serve ...`, all options passed on)."""
    _signalling(["serve", *ctx.args])


@main.group()
def db() -> None:
    """The server's database."""


@db.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def upgrade(ctx: click.Context) -> None:
    """Apply database migrations (`python -m signalling db upgrade ...`)."""
    _signalling(["db", "upgrade", *ctx.args])


def _ui_hook() -> None:
    """The web UI adds `ui` and `up` here when it is installed (peer.ui.cli.add_commands(main))."""
    try:
        from peer.ui import cli as ui_cli  # type: ignore[attr-defined]
    except ImportError:
        ui_cli = None
    if ui_cli is not None and hasattr(ui_cli, "add_commands"):
        ui_cli.add_commands(main)
        return

    for name in ("ui", "up"):

        @main.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
        def missing() -> None:
            raise click.ClickException("the web UI is not part of this installation")


_ui_hook()
