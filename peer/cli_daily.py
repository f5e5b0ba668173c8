"""`peerpost` commands for what people do every day (issue 15): devices, password, account,
edit, delete, block, unblock, blocked. Registered on the main group by `register(main)`, so
peer/cli.py stays one import and one call for all of them.

Like every command they are clients of the profile's node (docs/local-api.md, "daily" calls).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from peer.cli import Options, _table, call, emit, node_for, password_for


def _when(iso: str | None) -> str:
    if not iso:
        return "never"
    import datetime as dt

    return f"{dt.datetime.fromisoformat(iso).astimezone():%Y-%m-%d %H:%M}"


class _DevicesGroup(click.Group):
    """`devices` lists mine, `devices WHO` someone's pinned keys, `devices rename|revoke ...`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and not args[0].startswith("-") and args[0] not in self.commands:
            args = ["of", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_DevicesGroup, invoke_without_command=True)
@click.pass_context
def devices(ctx: click.Context) -> None:
    """Your devices (name, added, last seen, this one); `devices USER`: their pinned keys."""
    if ctx.invoked_subcommand is not None:
        return
    opts: Options = ctx.obj
    rows = call(opts, "devices.mine")
    emit(
        opts,
        rows,
        lambda: _table(
            ["device", "name", "added", "last seen", ""],
            [
                [
                    d["device_id"],
                    d["name"] or "",
                    _when(d["added_at"]),
                    "now" if d["this_device"] else _when(d["last_seen"]),
                    "this device" if d["this_device"] else "",
                ]
                for d in rows
            ],
        ),
    )


@devices.command("of", hidden=True)
@click.argument("who")
@click.pass_obj
def devices_of(opts: Options, who: str) -> None:
    """Devices (and their pinned keys) of a user."""
    rows = call(opts, "devices", who=who)

    def state(d: dict[str, Any]) -> str:
        if d["key_changed"]:
            return "KEY CHANGED (not trusted)"
        if d["this_device"]:
            return "this device"
        if d["revoked"]:
            return "removed"
        return "" if d["confirmed"] else "new, not confirmed"

    emit(
        opts,
        rows,
        lambda: _table(
            ["device", "fingerprint", "state"],
            [[d["device_id"], d["fingerprint"][:32], state(d)] for d in rows],
        ),
    )


@devices.command("rename")
@click.argument("device_id")
@click.argument("name", nargs=-1)
@click.pass_obj
def devices_rename(opts: Options, device_id: str, name: tuple[str, ...]) -> None:
    """Name one of your devices (no NAME: clear it)."""
    result = call(opts, "devices.rename", device_id=device_id, name=" ".join(name) or None)
    emit(opts, result, lambda: click.echo(f"{device_id}: {result['name'] or 'no name'}"))


@devices.command("revoke")
@click.argument("device_id")
@click.option("--yes", is_flag=True, help="do not ask")
@click.pass_obj
def devices_revoke(opts: Options, device_id: str, yes: bool) -> None:
    """Revoke another device of yours (a lost laptop): it gets nothing more, its links drop."""
    if not yes and not click.confirm(f"Revoke device {device_id}? It cannot be undone"):
        raise click.ClickException("not revoked")
    result = call(opts, "devices.revoke", device_id=device_id)
    emit(opts, result, lambda: click.echo(f"revoked {device_id}; it gets no further message"))


@devices.command("send-history")
@click.argument("device_id")
@click.option("--yes", is_flag=True, help="do not ask (you confirm on this, the old, device)")
@click.pass_obj
def devices_send_history(opts: Options, device_id: str, yes: bool) -> None:
    """Send your history to a new device of yours, over a direct link, end to end encrypted."""
    if not yes and not click.confirm(f"Send your whole message history to your device {device_id}?"):
        raise click.ClickException("not sent")
    result = call(opts, "devices.send_history", device_id=device_id)
    emit(opts, result, lambda: click.echo(f"sent {result['sent']} messages to {device_id}"))


def _read_secret(path: Path | None, prompt: str) -> str:
    if path is not None:
        try:
            return path.read_text().rstrip("\n")
        except OSError as e:
            raise click.ClickException(f"cannot read {path}: {e.strerror}") from e
    if not sys.stdin.isatty():
        raise click.ClickException("no new password: pass --new-password-file (stdin is not a terminal)")
    return str(click.prompt(prompt, hide_input=True, confirmation_prompt=True))


@click.command("password")
@click.option("--new-password-file", type=click.Path(path_type=Path), help="read the new password here")
@click.pass_obj
def password(opts: Options, new_password_file: Path | None) -> None:
    """Change your password: re-seals this device's keystore and signs out your other sessions."""
    current = password_for(opts)
    new = _read_secret(new_password_file, "New password")
    result = call(opts, "account.password", current=current, new=new)
    emit(
        opts,
        result,
        lambda: click.echo("password changed; your other devices must log in with the new one"),
    )


@click.group()
def account() -> None:
    """Your account: display name, e-mail, deletion."""


@account.command("show")
@click.pass_obj
def account_show(opts: Options) -> None:
    """Your username, display name and e-mail."""
    me = call(opts, "account.show")
    emit(opts, me, lambda: click.echo(f"{me['username']}  {me.get('display_name') or '-'}  {me['email']}"))


@account.command("name")
@click.argument("name", nargs=-1)
@click.pass_obj
def account_name(opts: Options, name: tuple[str, ...]) -> None:
    """Set the display name your contacts see beside your username (no NAME: clear it)."""
    result = call(opts, "account.name", name=" ".join(name) or None)
    emit(opts, result, lambda: click.echo(f"display name: {result['display_name'] or '-'}"))


@account.command("email")
@click.argument("email")
@click.pass_obj
def account_email(opts: Options, email: str) -> None:
    """Change your e-mail address (needs the current password)."""
    result = call(opts, "account.email", email=email, password=password_for(opts))
    emit(opts, result, lambda: click.echo(f"e-mail is now {result['email']}"))


@account.command("delete")
@click.option("--confirm", "typed", help="your username, typed to confirm (else you are asked)")
@click.pass_obj
def account_delete(opts: Options, typed: str | None) -> None:
    """Delete your account on the server, for good (type your username to confirm)."""
    me = call(opts, "whoami")
    if typed is None:
        if not sys.stdin.isatty():
            raise click.ClickException("pass --confirm USERNAME (stdin is not a terminal)")
        typed = click.prompt(f"This deletes {me['username']} for good. Type the username to confirm")
    result = call(opts, "account.delete", password=password_for(opts), confirm=typed)
    emit(opts, result, lambda: click.echo(f"account {me['username']} deleted"))


@click.command("edit")
@click.argument("message_id")
@click.argument("text", nargs=-1, required=True)
@click.pass_obj
def edit(opts: Options, message_id: str, text: tuple[str, ...]) -> None:
    """Replace the text of a message you sent (ids: `peerpost history --ids`)."""
    result = call(opts, "message.edit", id=message_id, text=" ".join(text))
    emit(opts, result, lambda: click.echo(f"edited: {result['text']}"))


@click.command("delete")
@click.argument("message_id")
@click.option("--everyone", is_flag=True, help="delete it for everyone (your own messages, in the window)")
@click.pass_obj
def delete(opts: Options, message_id: str, everyone: bool) -> None:
    """Delete a message on this device, or with --everyone on every device of the conversation."""
    result = call(opts, "message.delete", id=message_id, everyone=everyone)
    emit(opts, result, lambda: click.echo("deleted for everyone" if everyone else "deleted on this device"))


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _duration(text: str) -> int:
    """'30s', '5m', '1h', '7d', '1w', a number of seconds, or 'off'."""
    text = text.strip().lower()
    if text in ("off", "0"):
        return 0
    unit = _UNITS.get(text[-1:])
    number = text[:-1] if unit else text
    if not number.isdigit():
        raise click.BadParameter(f"{text!r}: say e.g. 30s, 5m, 1h, 7d, 1w or off")
    return int(number) * (unit or 1)


@click.command("timer")
@click.argument("who")
@click.argument("duration", required=False)
@click.pass_obj
def timer(opts: Options, who: str, duration: str | None) -> None:
    """Disappearing messages with WHO: set the timer (30s, 5m, 1h, 7d, 1w, off) or show it."""
    if duration is None:
        result = call(opts, "timer", None, **{"with": who})
    else:
        result = call(opts, "timer", None, seconds=_duration(duration), **{"with": who})

    def human() -> None:
        from peer.disappearing import describe

        click.echo(describe(result["seconds"]) + f" with {who}")

    emit(opts, result, human)


@click.command("search")
@click.argument("query", nargs=-1, required=True)
@click.option("--with", "who", help="only in the conversation with this person")
@click.option("--limit", default=50, show_default=True, help="at most this many, the newest")
@click.pass_obj
def search(opts: Options, query: tuple[str, ...], who: str | None, limit: int) -> None:
    """Search your history on this device (every word, as a prefix; newest first)."""
    from peer.cli import Transcript

    with node_for(opts) as node:
        rows = call(
            opts, "search", node, query=" ".join(query), limit=limit, **({"with": who} if who else {})
        )
        names = {} if opts.as_json else call(opts, "names", node)

    def human() -> None:
        if not rows:
            click.echo("nothing found")
            return
        transcript = Transcript(names)
        for m in reversed(rows):  # oldest first, as a transcript reads
            for line in transcript.lines(m):
                click.echo(line)

    emit(opts, rows, human)


def _blocked_table(rows: list[dict[str, Any]]) -> None:
    if not rows:
        click.echo("you have blocked nobody")
        return
    _table(
        ["id", "username", "since"],
        [[str(r["user_id"]), r["username"], _when(r["created_at"])] for r in rows],
    )


@click.command("block")
@click.argument("who", required=False)
@click.pass_obj
def block(opts: Options, who: str | None) -> None:
    """Block someone: no requests, messages, calls or presence from them (no WHO: the list)."""
    if who is None:
        rows = call(opts, "blocks.list")
        emit(opts, rows, lambda: _blocked_table(rows))
        return
    result = call(opts, "block", who=who)
    emit(opts, result, lambda: click.echo(f"blocked {result['username']}"))


@click.command("unblock")
@click.argument("who")
@click.pass_obj
def unblock(opts: Options, who: str) -> None:
    """Unblock someone (they are not a contact again until one of you asks)."""
    result = call(opts, "unblock", who=who)
    emit(opts, result, lambda: click.echo(f"unblocked {who}"))


@click.command("blocked")
@click.pass_obj
def blocked(opts: Options) -> None:
    """The people you blocked."""
    rows = call(opts, "blocks.list")
    emit(opts, rows, lambda: _blocked_table(rows))


def register(main: click.Group) -> None:
    for command in (devices, password, account, edit, delete, timer, search, block, unblock, blocked):
        main.add_command(command)
