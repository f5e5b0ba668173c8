"""A PeerPost world inside a bed: the real signalling server on the public host, real peers behind
the NATs, each a process driven over JSON lines (`peer_agent`).

The test process stays in the host namespace and never opens a socket into the bed: it talks to
the processes through their pipes, so nothing it does can leak out of the namespaces.
"""

from __future__ import annotations

import itertools
import json
import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.network.bed import PUBLIC_IP, Bed, BedError, python_env
from tests.network.scenarios import Scenario

LISTENING = re.compile(r"^peerpost-server listening on (http://\S+)\s*$")
SERVER_ENV = {
    "PEERPOST_BCRYPT_ROUNDS": "4",
    "PEERPOST_SQLITE_SYNCHRONOUS": "NORMAL",
    "PEERPOST_LOG_LEVEL": "warning",
    "PEERPOST_PRESENCE_GRACE_SECONDS": "0.2",
}


_request_ids = itertools.count(1)


class AgentError(BedError):
    """A peer agent answered a command with an error, or did not answer in time."""


class _Lines:
    """A process's stdout as JSON records, read by a thread; waits take a deadline."""

    def __init__(self, proc: subprocess.Popen, name: str) -> None:
        self.name = name
        self.records: list[dict[str, Any]] = []
        self.tail: list[str] = []
        self._changed = threading.Condition()
        self._ended = False
        self._thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self._thread.start()

    def _pump(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self._changed:
                if line.startswith("{"):
                    self.records.append(json.loads(line))
                else:
                    self.tail = [*self.tail[-40:], line.rstrip()]
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait(self, match: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for record in self.records:
                    if match(record):
                        return record
                left = deadline - time.monotonic()
                if self._ended or left <= 0:
                    state = "ended" if self._ended else f"gave nothing within {timeout:.0f} s"
                    raise AgentError(f"{self.name} {state} waiting for {what}; last output: {self.tail[-8:]}")
                self._changed.wait(left)

    def find(self, match: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self._changed:
            return [r for r in self.records if match(r)]


@dataclass
class PeerHandle:
    name: str
    host: str
    proc: subprocess.Popen
    lines: _Lines
    user_id: int = 0
    device_id: str = ""

    def send_command(self, cmd: str, **args: Any) -> int:
        request_id = next(_request_ids)
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"id": request_id, "cmd": cmd, **args}) + "\n")
        self.proc.stdin.flush()
        return request_id

    def reply(self, request_id: int, timeout: float) -> Any:
        record = self.lines.wait(
            lambda r: r.get("kind") == "reply" and r.get("id") == request_id, timeout, f"reply #{request_id}"
        )
        if not record["ok"]:
            raise AgentError(f"{self.name}: {record['error']}")
        return record["result"]

    def call(self, cmd: str, timeout: float = 20.0, **args: Any) -> Any:
        return self.reply(self.send_command(cmd, **args), timeout)

    def wait_event(
        self, match: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        record = self.lines.wait(
            lambda r: r.get("kind") == "event" and match({**r["event"], "t": r["t"]}), timeout, what
        )
        return {**record["event"], "t": record["t"]}

    def events(self, type_: str) -> list[dict[str, Any]]:
        return [
            {**r["event"], "t": r["t"]}
            for r in self.lines.find(lambda r: r.get("kind") == "event" and r["event"]["type"] == type_)
        ]


def start_server(bed: Bed, scenario: Scenario) -> str:
    """The signalling server on the public host, handing out this scenario's ICE servers."""
    assert bed.turn is not None
    env = dict(SERVER_ENV)
    if scenario.stun:
        env["PEERPOST_STUN_URLS"] = bed.turn.stun_url()
    if scenario.turn:
        env["PEERPOST_TURN_URLS"] = bed.turn.turn_url(scenario.turn)
        env["PEERPOST_TURN_SECRET"] = bed.turn.secret
    data_dir = bed.workdir / "server"
    argv = bed.python_argv(
        "signalling", "serve", "--host", PUBLIC_IP, "--port", "0", "--data-dir", str(data_dir)
    )
    proc = bed.spawn(
        "pub", argv, env=python_env(env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:  # drains the server's output for its whole life: it never blocks on a pipe
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 30
    seen: list[str] = []
    while True:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            raise BedError(f"the server did not announce itself within 30 s: {seen[-10:]}") from None
        if line is None:
            raise BedError(f"the server exited ({proc.wait()}): {seen[-10:]}")
        seen.append(line.rstrip())
        match = LISTENING.match(line)
        if match:
            return match.group(1)


def start_peer(
    bed: Bed, host: str, name: str, keys: int, server_url: str, scenario: Scenario, **timers: float
) -> PeerHandle:
    args = [
        "--server",
        server_url,
        "--username",
        name,
        "--profile",
        str(bed.workdir / "peers" / name),
        "--keys",
        str(keys),
        "--link-deadline",
        str(scenario.link_deadline),
    ]
    for key, value in timers.items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    log = open(bed.workdir / f"agent-{name}.log", "w")  # noqa: SIM115 - the child owns it
    try:
        proc = bed.spawn(
            host,
            bed.python_argv("tests.network.peer_agent", *args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
    finally:
        log.close()
    return PeerHandle(name, host, proc, _Lines(proc, name))


@dataclass
class Pair:
    alice: PeerHandle
    bob: PeerHandle
    server_url: str


def build_pair(bed: Bed, scenario: Scenario, **timers: float) -> Pair:
    """Server up, alice on host a and bob on host b registered, online, and accepted contacts."""
    url = start_server(bed, scenario)
    alice = start_peer(bed, "a", "alice", 0, url, scenario, **timers)
    bob = start_peer(bed, "b", "bob", 1, url, scenario, **timers)
    for handle in (alice, bob):
        ready = handle.lines.wait(lambda r: r.get("kind") == "ready", 60, "ready")
        handle.user_id, handle.device_id = ready["user_id"], ready["device_id"]
    alice.call("add_contact", who="bob")
    bob.call("accept", user_id=alice.user_id)
    return Pair(alice, bob, url)
