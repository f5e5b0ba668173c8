"""A real PeerPost server in a subprocess, for integration tests.

`RunningServer` starts `python -m signalling serve --port 0` with a temporary (or given) data dir,
reads the one `peerpost-server listening on http://...` line, waits for `GET /health` to answer 200,
and stops the process on exit. `kill()` is a SIGKILL (nothing flushed, nothing cleaned up);
`restart()` starts a new process on the same data dir, and the same port when it is still free.

Use it as `async with RunningServer() as server:` or synchronously via `start()`/`stop()`.
Settings go in as `env={"PEERPOST_PRESENCE_GRACE_SECONDS": "0.2", ...}`; tests default to a low
bcrypt cost (`PEERPOST_BCRYPT_ROUNDS=4`) and no registration limit unless they pass their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from types import TracebackType

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
LISTENING = re.compile(r"^peerpost-server listening on (http://\S+):(\d+)\s*$")
TEST_DEFAULT_ENV = {
    "PEERPOST_BCRYPT_ROUNDS": "4",
    "PEERPOST_SQLITE_SYNCHRONOUS": "NORMAL",
    "PEERPOST_LOG_LEVEL": "warning",
    # Every test account registers from 127.0.0.1; the registration limits get their own tests.
    "PEERPOST_REGISTRATIONS_PER_ADDRESS": "1000000",
    "PEERPOST_REGISTRATIONS_GLOBAL": "1000000",
}


class ServerFailed(RuntimeError):
    """The server process exited or did not come up in time; the message carries its output."""


class RunningServer:
    def __init__(
        self,
        data_dir: Path | str | None = None,
        *,
        env: dict[str, str] | None = None,
        database_url: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        start_timeout: float = 30.0,
        module: str = "signalling",
    ) -> None:
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if data_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="peerpost-server-")
            data_dir = self._tmp.name
        self.data_dir = Path(data_dir)
        self.database_url = database_url
        self.host = host
        self.port = port
        self.env = {**TEST_DEFAULT_ENV, **(env or {})}
        self.start_timeout = start_timeout
        self.module = module  # benchmarks run `bench.probed_server`, the same CLI with probes in it
        self.process: subprocess.Popen[str] | None = None
        self.url = ""
        self._output: deque[str] = deque(maxlen=200)
        self._reader: threading.Thread | None = None

    # ---------------------------------------------------------------------------- properties
    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/ws"

    @property
    def database_path(self) -> Path:
        return self.data_dir / "peerpost.db"

    @property
    def output(self) -> str:
        """The last lines the process wrote (stdout and stderr), for failure messages."""
        return "\n".join(self._output)

    # ---------------------------------------------------------------------------- lifecycle
    def start(self) -> RunningServer:
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("server already running")
        cmd = [sys.executable, "-m", self.module, "serve", "--host", self.host, "--port", str(self.port)]
        cmd += ["--data-dir", str(self.data_dir)]
        if self.database_url:
            cmd += ["--database-url", self.database_url]
        env = {**os.environ, **self.env, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}
        self._output.clear()
        self.process = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        announced = threading.Event()
        found: list[tuple[str, int]] = []

        def read() -> None:
            assert self.process is not None and self.process.stdout is not None
            for line in self.process.stdout:
                self._output.append(line.rstrip("\n"))
                match = LISTENING.match(line)
                if match and not found:
                    found.append((match.group(1), int(match.group(2))))
                    announced.set()
            announced.set()  # EOF: the process is gone

        self._reader = threading.Thread(target=read, name="peerpost-server-output", daemon=True)
        self._reader.start()
        if not announced.wait(self.start_timeout) or not found:
            self._terminate()
            raise ServerFailed(f"server did not announce its address:\n{self.output}")
        base, port = found[0]
        self.port = port
        self.url = f"{base}:{port}"
        self._wait_healthy()
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last_error = ""
        while time.monotonic() < deadline:  # polling an external process, with a deadline
            if self.process is None or self.process.poll() is not None:
                raise ServerFailed(f"server exited during start-up:\n{self.output}")
            try:
                if httpx.get(self.url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError as exc:
                last_error = str(exc)
            time.sleep(0.05)
        self._terminate()
        raise ServerFailed(f"/health never answered 200 ({last_error}):\n{self.output}")

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to flush or clean up."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self._join_reader()

    def stop(self) -> None:
        """SIGTERM and wait for a clean shutdown (SIGKILL after 10 s)."""
        self._terminate()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def restart(self) -> RunningServer:
        """Start again on the same data dir, and on the same port when it is still free."""
        self._terminate()
        try:
            return self.start()
        except ServerFailed:
            if "cannot listen" not in self.output:
                raise
            self.port = 0
            return self.start()

    def _terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._join_reader()

    def _join_reader(self) -> None:
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        if self.process is not None and self.process.stdout is not None:
            with contextlib.suppress(OSError):
                self.process.stdout.close()

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    # ---------------------------------------------------------------------------- context managers
    def __enter__(self) -> RunningServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def __aenter__(self) -> RunningServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await asyncio.to_thread(self.stop)
