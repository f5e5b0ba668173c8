"""`peerpost serve` stops the server it started when it gets SIGTERM or SIGINT (no orphan)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import REPO_ROOT


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_serve_stops_the_server_it_started(tmp_path, sig):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PEERPOST_BCRYPT_ROUNDS": "4"}
    serve = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "peer",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path),
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert serve.stdout is not None
        for line in serve.stdout:
            if "listening on" in line:
                break
        else:
            raise AssertionError("serve ended before it was listening")
        children = _children(serve.pid)
        assert len(children) == 1
        serve.send_signal(sig)
        assert serve.wait(30) == 0  # the server shut down cleanly
        assert not _alive(children[0]), "the server outlived `peerpost serve`"
    finally:
        if serve.poll() is None:
            serve.kill()


def test_serve_help_lists_the_servers_options():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "peer", "serve", "--help"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0
    assert "--port" in result.stdout and "--data-dir" in result.stdout


def test_every_subcommand_has_help_text():
    from click import Group

    from peer.cli import main

    def walk(group: Group, prefix: str) -> list[str]:
        missing = []
        for name, command in group.commands.items():
            if not (command.help or command.short_help):
                missing.append(prefix + name)
            if isinstance(command, Group):
                missing += walk(command, prefix + name + " ")
        return missing

    assert walk(main, "") == []
