"""Fixtures for the resident node's tests: `peerpost` run as a person runs it, against a real server.

`Cli` runs commands as subprocesses with a private PEERPOST_HOME, the password in the environment
and host candidates on 127.0.0.1 only; every node those commands start is stopped after the test.
`Listener` is a running `peerpost listen` whose JSON lines a test waits on (with a deadline).
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.support.nodes import node_pid, stop_nodes
from tests.support.server import REPO_ROOT, RunningServer

PASSWORD = "correct horse battery"
SERVER_ENV = {"PEERPOST_PRESENCE_GRACE_SECONDS": "0.2"}


@dataclass
class Cli:
    home: Path
    server: RunningServer

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO_ROOT),
            "PEERPOST_HOME": str(self.home),
            "PEERPOST_PASSWORD": PASSWORD,
            "PEERPOST_HOST_ADDRESSES": "127.0.0.1",
            "XDG_DOWNLOAD_DIR": str(self.home / "downloads"),  # received files stay in the test's folder
            **extra,
        }
        env.pop("PEERPOST_SERVER", None)
        env.pop("PEERPOST_PROFILE_DIR", None)
        return env

    def run(self, profile: str, *args: str, check: bool = True, stdin: str = "", timeout: float = 90):
        result = subprocess.run(
            [sys.executable, "-m", "peer", "--profile", profile, *args],
            cwd=REPO_ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            input=stdin,
            timeout=timeout,
        )
        if check:
            assert result.returncode == 0, f"{args}: {result.stderr}"
        return result

    def json(self, profile: str, *args: str) -> Any:
        return json.loads(self.run(profile, "--json", *args).stdout)

    def register(self, profile: str, username: str) -> dict[str, Any]:
        result = self.run(
            profile, "--server", self.server.url, "--json", "register", username, f"{username}@example.org"
        )
        return json.loads(result.stdout)

    def profile_dir(self, profile: str) -> Path:
        return self.home / "profiles" / profile

    def node_pid(self, profile: str) -> int | None:
        return node_pid(self.profile_dir(profile))

    def listen(self, profile: str) -> Listener:
        proc = subprocess.Popen(
            [sys.executable, "-m", "peer", "--profile", profile, "listen"],
            cwd=REPO_ROOT,
            env=self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        listener = Listener(proc)
        listener.start()
        listener.wait_for(lambda e: e["type"] == "listening", within=60)
        return listener


@dataclass
class Listener:
    proc: subprocess.Popen[str]
    events: list[dict[str, Any]] = field(default_factory=list)
    _queue: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)

    def start(self) -> None:
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(json.loads(line))
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], within: float = 30) -> dict[str, Any]:
        for seen in self.events:
            if predicate(seen):
                return seen
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"no such event within {within} s; saw {[e['type'] for e in self.events]}"
                )
            try:
                event = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if event is None:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"the listener ended ({self.proc.wait()}): {err}")
            self.events.append(event)
            if predicate(event):
                return event

    def texts(self) -> list[str]:
        return [e["message"]["text"] for e in self.events if e["type"] == "message" and e["message"]["text"]]

    def stop(self) -> int:
        self.proc.terminate()
        return self.proc.wait(15)


def received(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["type"] == "message" and e["message"]["text"] == text


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = RunningServer(tmp_path_factory.mktemp("server"), env=SERVER_ENV)
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def cli(server: RunningServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    """One PEERPOST_HOME per test module (registering costs an RSA-4096 key per user)."""
    home = tmp_path_factory.mktemp("home")
    try:
        yield Cli(home, server)
    finally:
        stop_nodes(home)


@pytest.fixture(scope="module")
def pair(cli: Cli) -> Cli:
    """alice and bob, registered on their own profiles 'a' and 'b', contacts of each other."""
    both = [threading.Thread(target=cli.register, args=args) for args in (("a", "alice"), ("b", "bob"))]
    for t in both:
        t.start()
    for t in both:
        t.join(120)
    cli.run("a", "contacts", "add", "bob")
    cli.run("b", "contacts", "accept", "alice")
    return cli
