"""The client side of the local API: connect to a profile's node, call it, follow its events,
and start it when it is not running (as gpg-agent is started by gpg).

Stdlib only and synchronous on purpose: every `peerpost` command imports this, and a warm
`peerpost send` must cost little more than the interpreter's start. It never imports the peer.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peer.resident import rpc

if TYPE_CHECKING:
    import subprocess

START_DEADLINE_S = 90.0  # unlock (scrypt) + first connect to the server; a busy box is slow
READY_LINE = "ready"
MAX_LOG_BYTES = 5 << 20


class NodeNotRunning(Exception):
    """No node answers on this profile's socket."""


class NodeStartFailed(Exception):
    """The node process could not be started; the message says why (its own words)."""


def socket_path(profile_dir: Path) -> Path:
    return profile_dir / rpc.SOCKET_NAME


class NodeClient:
    """One connection to a node. `call` is a request and its answer; `events` follows notifications."""

    def __init__(self, path: Path, timeout: float | None = None) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            self._sock.close()
            raise NodeNotRunning(str(path)) from e
        except OSError as e:
            self._sock.close()
            raise NodeNotRunning(f"{path}: {e.strerror}") from e
        self._reader = self._sock.makefile("rb")
        self._ids = itertools.count(1)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._reader.close()
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> NodeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _read(self) -> dict[str, Any] | None:
        line = self._reader.readline(rpc.MAX_LINE_BYTES + 1)
        if not line:
            return None
        return json.loads(line)

    def call(self, method: str, **params: Any) -> Any:
        """Send one request and return its result; raises RpcError with the node's own sentence."""
        request_id = next(self._ids)
        try:
            self._sock.sendall(rpc.request(request_id, method, params))
        except OSError as e:
            raise NodeNotRunning(f"the node went away: {e.strerror}") from e
        while True:
            message = self._read()
            if message is None:
                raise NodeNotRunning("the node closed the connection before it answered")
            if message.get("id") != request_id:
                continue  # a notification between our request and its answer
            if "error" in message:
                err = message["error"]
                kind = (err.get("data") or {}).get("type")
                raise rpc.RpcError(
                    int(err.get("code", rpc.ErrorCode.INTERNAL)), str(err.get("message")), kind
                )
            return message.get("result")

    def events(self) -> Iterator[dict[str, Any]]:
        """Subscribe, then yield every event (a dict as `Event.to_dict()` gives it) until the node ends."""
        self.call("subscribe")
        while (message := self._read()) is not None:
            if message.get("method") == rpc.EVENT_METHOD:
                yield message.get("params") or {}


def connect(profile_dir: Path, timeout: float | None = None) -> NodeClient:
    return NodeClient(socket_path(profile_dir), timeout)


def running(profile_dir: Path) -> bool:
    try:
        connect(profile_dir, timeout=2).close()
    except NodeNotRunning:
        return False
    return True


@contextlib.contextmanager
def _start_lock(profile_dir: Path) -> Iterator[None]:
    """Only one command at a time starts this profile's node (the others then find it running)."""
    profile_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(profile_dir / "node.start.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def start_node(profile_dir: Path, argv: list[str], password: str | None) -> NodeClient:
    """Start the node detached (its own session, its log in the profile) and connect to it.

    `argv` is the command line that runs `peerpost ... daemon --detach`. The password goes in on
    the node's stdin, never in its environment or arguments (both are readable by the user's other
    processes for the node's whole life). The node says `ready` or `error: ...` on its stdout.
    """
    import subprocess

    with _start_lock(profile_dir):
        with contextlib.suppress(NodeNotRunning):
            return connect(profile_dir)  # another command started it meanwhile
        env = {k: v for k, v in os.environ.items() if k != "PEERPOST_PASSWORD"}
        log_path = profile_dir / rpc.LOG_NAME
        with contextlib.suppress(OSError):
            if log_path.stat().st_size > MAX_LOG_BYTES:  # one old generation is kept
                log_path.replace(log_path.with_name(rpc.LOG_NAME + ".1"))
        log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=profile_dir,
                env=env,
                start_new_session=True,  # not in the terminal's process group: Ctrl-C there spares it
            )
        finally:
            log.close()
        assert proc.stdin is not None and proc.stdout is not None
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(((password or "") + "\n").encode())
            proc.stdin.close()
        line = _read_line(proc, START_DEADLINE_S)
        proc.stdout.close()
        if line != READY_LINE:
            if proc.poll() is None and not line:
                proc.kill()
            raise NodeStartFailed(_reason(line, profile_dir))
        return connect(profile_dir)


def _read_line(proc: subprocess.Popen[bytes], within: float) -> str:
    import select
    import time

    assert proc.stdout is not None
    deadline = time.monotonic() + within
    buffer = b""
    fd = proc.stdout.fileno()
    while b"\n" not in buffer:
        left = deadline - time.monotonic()
        if left <= 0:
            return ""
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            return ""
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buffer += chunk
    return buffer.split(b"\n", 1)[0].decode("utf-8", "replace").strip()


def _reason(line: str, profile_dir: Path) -> str:
    if line.startswith("error:"):
        return line[len("error:") :].strip()
    tail = ""
    with contextlib.suppress(OSError):
        lines = (profile_dir / rpc.LOG_NAME).read_text("utf-8", "replace").strip().splitlines()
        tail = lines[-1] if lines else ""
    if not line:
        return f"the node did not start within {START_DEADLINE_S:.0f} s" + (f" ({tail})" if tail else "")
    return f"the node did not start: {line or tail}"


def own_argv() -> list[str]:
    """How to run `peerpost` again from this process (the same interpreter and code)."""
    return [sys.executable, "-m", "peer"]
