"""`peerpost ui` and `peerpost up` as a person runs them: a process that prints a one-time link."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import httpx
import pytest

from peer.ui.security import SESSION_COOKIE
from tests.support.nodes import stop_nodes

REPO_ROOT = Path(__file__).resolve().parents[2]
LINK = re.compile(r"PeerPost UI: open (http://127\.0\.0\.1:(\d+))/launch\?token=(\S+)")
LOCAL_SERVER = re.compile(r"PeerPost server: (http://127\.0\.0\.1:\d+)")


async def _start(*args: str) -> asyncio.subprocess.Process:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    env.pop("PEERPOST_SERVER", None)
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "peer",
        *args,
        cwd=REPO_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )


async def _wait_for(proc: asyncio.subprocess.Process, pattern: re.Pattern[str]) -> re.Match[str]:
    assert proc.stdout is not None
    seen = []
    async with asyncio.timeout(30):
        while True:
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise AssertionError(f"process ended without {pattern.pattern!r}; output: {seen}")
            seen.append(line)
            if match := pattern.search(line):
                return match


async def _stop(proc: asyncio.subprocess.Process) -> int:
    proc.send_signal(signal.SIGINT)
    async with asyncio.timeout(20):
        return await proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _run(*args: str) -> str:
    """Run one `peerpost` command to its end; its stdout (it must succeed)."""
    proc = await _start(*args)
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, out.decode()
    return out.decode()


@pytest.fixture
def nodes(tmp_path):
    yield
    stop_nodes(tmp_path)


async def test_peerpost_ui_prints_a_link_that_opens_the_ui_once(server, tmp_path, nodes):
    profile = str(tmp_path / "p")
    out = await _run("--server", server.url, "--profile-dir", profile, "ui")
    base, _, token = LINK.search(out).groups()
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        launch = await client.get(f"/launch?token={token}")
        assert launch.status_code == 303
        assert SESSION_COOKIE in launch.cookies
        state = (await client.get("/api/state")).json()
        assert state["phase"] == "logged_out"
        assert state["settings"]["server_url"] == server.url
        page = await client.get("/")
        assert "<title>PeerPost</title>" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
    async with httpx.AsyncClient(base_url=base, timeout=5) as other:
        assert (await other.get(f"/launch?token={token}")).status_code == 403
        # Another window: `peerpost ui` again asks the same node for a fresh one-time link.
        again_base, _, again = LINK.search(await _run("--profile-dir", profile, "ui")).groups()
        assert again_base == base and again != token
        assert (await other.get(f"/launch?token={again}")).status_code == 303
        assert (await other.get("/api/state")).status_code == 200
    await _run("--profile-dir", profile, "stop")
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", int(base.rsplit(":", 1)[1]))) != 0, "the UI outlived the node"


@pytest.mark.parametrize("first", ["p", "q"])
async def test_peerpost_up_starts_a_local_server_and_the_last_node_to_stop_ends_it(tmp_path, nodes, first):
    server_port = _free_port()
    common = ("--server-port", str(server_port), "--server-data", str(tmp_path / "server"))
    out = await _run("--profile-dir", str(tmp_path / "p"), "up", *common)
    server_url = LOCAL_SERVER.search(out).group(1)
    assert server_url == f"http://127.0.0.1:{server_port}"
    base, _, token = LINK.search(out).groups()
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(f"{server_url}/health")).status_code == 200
        await client.get(f"{base}/launch?token={token}")
        state = (await client.get(f"{base}/api/state")).json()
        assert state["settings"]["server_url"] == server_url
    # A second person on this machine: the same command reuses the server instead of failing.
    second = await _run("--profile-dir", str(tmp_path / "q"), "up", *common)
    assert LOCAL_SERVER.search(second).group(1) == server_url and LINK.search(second)
    # p started the server; whichever node stops first, the server stays for the other one.
    last = "q" if first == "p" else "p"
    await _run("--profile-dir", str(tmp_path / first), "stop")
    async with httpx.AsyncClient(timeout=5) as client:
        assert (await client.get(f"{server_url}/health")).status_code == 200
    await _run("--profile-dir", str(tmp_path / last), "stop")
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", server_port)) != 0, "the local server outlived its last node"
