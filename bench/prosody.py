"""Debian's Prosody, run for a benchmark: a generated config in a temporary folder, loopback only.

`RunningProsody()` writes `prosody.cfg.lua` (127.0.0.1 and a free c2s port, the epoll backend,
Nagle off, opportunistic writes, internal file storage, mod_offline and in-band registration on, TLS, s2s and
mod_limits off, plain SASL allowed on loopback), starts `prosody -F` as the `prosody` user when run
as root (Prosody refuses to run as root), waits for its c2s port, and stops it on exit. Accounts
are made in band by `bench.xmpp.XmppClient.login(register=True)`.

Nothing is installed here: `scripts/bootstrap.sh --test` installs the package; `available()` says
whether it is.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

DOMAIN = "bench.localhost"
PROSODY = "/usr/bin/prosody"


def available() -> bool:
    return shutil.which("prosody") is not None or Path(PROSODY).exists()


def version() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "prosody"], capture_output=True, text=True)
        if out.returncode == 0:
            return out.stdout.strip()
    return "unknown"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONFIG = """-- written by bench/prosody.py for one benchmark run; loopback only
pidfile = "{dir}/prosody.pid"
data_path = "{dir}/data"
log = {{ warn = "{dir}/prosody.log" }}
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {port} }}
c2s_direct_tls_ports = {{}}
legacy_ssl_ports = {{}}
s2s_ports = {{}}
network_backend = "epoll"
-- Nagle is on in Prosody by default; our servers set TCP_NODELAY, so this one does too (0.12's
-- server_epoll reads `nagle`; a `tcp_nodelay` key is ignored). Writes go out at once instead of at
-- the next writable event (`opportunistic_writes`), its best latency setting.
network_settings = {{ nagle = false; opportunistic_writes = {opportunistic} }}
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; "register"; "offline"; "posix"; }}
modules_disabled = {{ "s2s"; "tls"; "limits"; "c2s_direct_tls"; }}
allow_registration = true
min_seconds_between_registrations = 0
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
storage = "internal"
storage_archive_item_limit = 10000000
certificates = "{dir}/certs"
admins = {{}}
VirtualHost "{domain}"
"""


class ProsodyFailed(RuntimeError):
    """Prosody exited or did not open its port; the message carries its log."""


class RunningProsody:
    def __init__(self, start_timeout: float = 20.0, *, opportunistic_writes: bool = True) -> None:
        self.port = _free_port()
        self.opportunistic_writes = opportunistic_writes
        self.domain = DOMAIN
        self.start_timeout = start_timeout
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.dir = Path()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "prosody.log").read_text()[-4000:]
        return ""

    def offline_stored(self, username: str) -> int:
        """Messages in a user's mod_offline archive (internal storage: one `item(` per message)."""
        path = self.dir / "data" / self.domain.replace(".", "%2e") / "offline" / f"{username}.list"
        with contextlib.suppress(FileNotFoundError):
            return path.read_text().count("item(")
        return 0

    def start(self) -> RunningProsody:
        self._tmp = tempfile.TemporaryDirectory(prefix="peerpost-prosody-")
        self.dir = Path(self._tmp.name)
        (self.dir / "data").mkdir()
        (self.dir / "certs").mkdir()
        config = self.dir / "prosody.cfg.lua"
        config.write_text(
            CONFIG.format(
                dir=self.dir,
                port=self.port,
                domain=self.domain,
                opportunistic=str(self.opportunistic_writes).lower(),
            )
        )
        cmd = [PROSODY, "-F", "--config", str(config)]
        if os.geteuid() == 0:  # Prosody refuses to run as root: give it its own user and the folder
            user = pwd.getpwnam("prosody")
            for path in [self.dir, *self.dir.rglob("*")]:
                os.chown(path, user.pw_uid, user.pw_gid)
            cmd = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", *cmd]
        self.process = subprocess.Popen(
            cmd, cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:  # polling an external process, with a deadline
            if self.process.poll() is not None:
                raise ProsodyFailed(f"prosody exited with {self.process.returncode}:\n{self.log}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return self
            time.sleep(0.05)
        self.stop()
        raise ProsodyFailed(f"prosody did not open 127.0.0.1:{self.port}:\n{self.log}")

    def pid(self) -> int | None:
        """Prosody's own process (setpriv execs it, so the child is it)."""
        return None if self.process is None else self.process.pid

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> RunningProsody:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
