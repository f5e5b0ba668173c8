"""The local signalling server of `peerpost up`, shared by every node on this machine that uses it.

The first node that finds nothing on the port starts `python -m signalling serve` on 127.0.0.1
(its own session and log, `server.log` in the data folder, its pid in `server.pid`); later nodes
reuse it. Each node holds a shared lock on `server.users` while it uses the server; a node that
leaves and then gets the lock exclusively is the last one, and stops the server (SIGTERM, then
SIGKILL), whoever started it. So two people on one machine can stop their nodes in any order.
It only ever signals a process whose command line is this data folder's signalling server.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

log = logging.getLogger(__name__)

START_DEADLINE_S = 30.0
STOP_DEADLINE_S = 10.0
REPO_ROOT = str(Path(__file__).resolve().parents[2])


class LocalServerFailed(Exception):
    """The local server did not come up; the message says why."""


async def healthy(url: str, within: float = 2.0) -> bool:
    try:
        async with httpx.AsyncClient(timeout=within) as client:
            return (await client.get(url + "/health")).status_code == 200
    except httpx.HTTPError:
        return False


def _is_our_server(pid: int, data_dir: Path) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"signalling" in argv and os.fsencode(data_dir) in argv


def _running(pid: int) -> bool:
    """Alive and not a zombie (a child of ours that exited is reaped by the event loop)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def _wait_gone(pid: int, within: float) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        if not _running(pid):
            return True
        await asyncio.sleep(0.05)  # another session's process: there is nothing to await on
    return False


async def _start(data_dir: Path, port: int) -> int:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO_ROOT, env.get("PYTHONPATH")]))
    env.pop("PEERPOST_PASSWORD", None)
    out = os.open(data_dir / "server.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "signalling",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=True,  # it may outlive this node: other nodes use it too
        )
    finally:
        os.close(out)
    (data_dir / "server.pid").write_text(f"{proc.pid}\n")
    url = f"http://127.0.0.1:{port}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_DEADLINE_S
    while loop.time() < deadline:
        if proc.returncode is not None:
            raise LocalServerFailed(
                f"the local server exited (code {proc.returncode}); see {data_dir}/server.log"
            )
        if await healthy(url, 1.0):
            return proc.pid
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.1)
    proc.kill()
    raise LocalServerFailed(f"the local server did not answer within {START_DEADLINE_S:.0f} s")


async def _stop(data_dir: Path) -> None:
    try:
        pid = int((data_dir / "server.pid").read_text().strip())
    except (OSError, ValueError):
        return  # not one we started (someone runs `peerpost serve` there): not ours to stop
    if not _is_our_server(pid, data_dir):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if not await _wait_gone(pid, STOP_DEADLINE_S):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        await _wait_gone(pid, 2.0)
    (data_dir / "server.pid").unlink(missing_ok=True)


@contextlib.asynccontextmanager
async def shared_local_server(data_dir: Path, port: int) -> AsyncIterator[str]:
    """Use (or start) the local server on `port`; stop it on the way out if we were the last user."""
    await asyncio.to_thread(data_dir.mkdir, parents=True, exist_ok=True, mode=0o700)
    users = os.open(data_dir / "server.users", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        await asyncio.to_thread(fcntl.flock, users, fcntl.LOCK_SH)
        url = f"http://127.0.0.1:{port}"
        if await healthy(url):
            log.info("reusing the local server at %s", url)
        else:
            await _start(data_dir, port)
        try:
            yield url
        finally:
            fcntl.flock(users, fcntl.LOCK_UN)
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("the local server stays: other nodes use it")
            else:
                await _stop(data_dir)  # the last one out stops it (holding the lock: no one joins)
    finally:
        os.close(users)
