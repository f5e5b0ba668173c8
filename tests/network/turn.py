"""coturn for the NAT bed: a generated config, a time-limited credential, nothing global.

The bed starts its own `turnserver` inside the public namespace with everything (config, user
database, log, pid file) in the bed's temporary folder, so it never touches /etc/turnserver.conf,
/var/lib/turn or a daemon the distribution may have started. Credentials follow the TURN REST API
scheme (username `"<unix expiry>:<user>"`, password `base64(HMAC-SHA1(secret, username))`): the same
rule the signalling server applies when it hands them out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass
from pathlib import Path

TURN_PORT = 3478
REALM = "peerpost.test"


@dataclass(frozen=True)
class TurnConfig:
    """What the bed needs to start coturn and to tell peers where it is."""

    listen_ip: str
    relay_ip: str
    secret: str
    workdir: Path
    port: int = TURN_PORT
    min_port: int = 49152
    max_port: int = 49407

    @property
    def config_path(self) -> Path:
        return self.workdir / "turnserver.conf"

    @property
    def log_path(self) -> Path:
        return self.workdir / "turnserver.log"

    def stun_url(self) -> str:
        return f"stun:{self.listen_ip}:{self.port}"

    def turn_url(self, transport: str = "udp") -> str:
        if transport not in ("udp", "tcp"):
            raise ValueError(f"TURN transport must be udp or tcp, got {transport!r}")
        return f"turn:{self.listen_ip}:{self.port}?transport={transport}"

    def render(self) -> str:
        """The turnserver.conf text: STUN and TURN on UDP and TCP, REST-API shared secret auth."""
        lines = [
            f"listening-ip={self.listen_ip}",
            f"relay-ip={self.relay_ip}",
            f"listening-port={self.port}",
            f"min-port={self.min_port}",
            f"max-port={self.max_port}",
            f"realm={REALM}",
            "use-auth-secret",
            f"static-auth-secret={self.secret}",
            "fingerprint",
            "no-tls",
            "no-dtls",
            "no-cli",
            "no-multicast-peers",
            "no-software-attribute",
            f"userdb={self.workdir / 'turndb.sqlite'}",
            f"pidfile={self.workdir / 'turnserver.pid'}",
            f"log-file={self.log_path}",
            "simple-log",
            "new-log-timestamp",
            "verbose",  # session lines (who allocated, with which username): tests read them
        ]
        return "\n".join(lines) + "\n"

    def write(self) -> Path:
        self.config_path.write_text(self.render())
        self.config_path.chmod(0o600)  # holds the shared secret
        return self.config_path

    def allocation_usernames(self) -> list[str]:
        """The username of every allocation coturn granted so far, from its log."""
        names = []
        for log in sorted(self.workdir.glob("turnserver*.log")):
            names += re.findall(r": new, realm=<[^>]*>, username=<([^>]*)>", log.read_text())
        return names

    def argv(self) -> list[str]:
        return ["turnserver", "-c", str(self.config_path), "--no-stdout-log"]


def turn_rest_credentials(
    secret: str, user: str, ttl: int = 3600, now: float | None = None
) -> tuple[str, str]:
    """A (username, password) pair valid for `ttl` seconds, as coturn's use-auth-secret expects."""
    expiry = int(now if now is not None else time.time()) + ttl
    username = f"{expiry}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode("ascii")
