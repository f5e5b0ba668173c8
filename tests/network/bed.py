"""The NAT test bed: hosts in network namespaces, real iptables NATs, coturn on a public segment.

Topology (one bed; every name carries a per-run id, so two runs never collide)::

                      public segment 100.64.0.0/24 (bridge "pub" inside the public namespace)
     +----------------------------------------------------------------------------------+
     | <id>-pub  100.64.0.1: signalling server, coturn (STUN/TURN on UDP and TCP 3478)   |
     +---------------+-------------------------------------------------+----------------+
                     | veth wan 100.64.0.11                            | veth wan 100.64.0.12
              +------+------+                                   +------+------+
              | <id>-natA   |  iptables NAT of one kind         | <id>-natB   |
              +------+------+                                   +------+------+
                     | bridge "lan" 10.77.1.1/24                       | bridge "lan" 10.77.2.1/24
              +------+------+                                   +------+------+
              | <id>-a      | 10.77.1.10 (peer)                 | <id>-b      | 10.77.2.10
              +-------------+                                   +-------------+

What it must never do: touch the host's own network. Every veth is created directly inside the
bed's namespaces (never in the host namespace), no namespace has a default route, forwarding is
switched on only inside the NAT namespaces, and the host's sysctls and iptables are left alone.
Everything it creates (namespaces, and with them links and bridges; processes; the temp folder) is
removed by `close()`, which the context manager, a finaliser and the next run's stale-run sweep call.

Run it by hand: `python -m tests.network.bed --scenario cone` (see `--help`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from tests.network.turn import TurnConfig, turn_rest_credentials

REPO_ROOT = Path(__file__).resolve().parents[2]
STATE_DIR = Path("/run/peerpost-nat-bed")
DEFAULT_PREFIX = "pp"
IFNAMSIZ = 15  # Linux limit for interface names; the bed keeps netns names within it too

PUBLIC_NET = ipaddress.ip_network("100.64.0.0/24")
PUBLIC_IP = "100.64.0.1"  # the public host: signalling server and coturn
VOID_GATEWAY = "100.64.0.254"  # where the public host sends packets for private addresses
REQUIRED_TOOLS = ("ip", "ss", "sysctl", "iptables", "iptables-restore", "conntrack", "turnserver")


class BedError(RuntimeError):
    """The bed could not be built or driven; the message says which step and why."""


class NatKind(StrEnum):
    """How a LAN's NAT treats traffic to the public segment."""

    ENDPOINT_INDEPENDENT = "eim"  # MASQUERADE: one mapping per inside socket, port kept
    SYMMETRIC = "symmetric"  # MASQUERADE --random-fully: a fresh port for every destination
    UDP_BLOCKED = "udp-blocked"  # only TCP leaves the LAN


@dataclass(frozen=True)
class LanSpec:
    """One LAN: a NAT of `nat` kind in front of the named hosts."""

    name: str
    nat: NatKind
    hosts: tuple[str, ...]


@dataclass(frozen=True)
class Host:
    name: str
    netns: str
    address: str


@dataclass(frozen=True)
class Nat:
    lan: str
    netns: str
    kind: NatKind
    wan_address: str
    lan_address: str


def unavailable_reason() -> str | None:
    """Why the bed cannot run here (one line), or None when it can."""
    if sys.platform != "linux":
        return f"the NAT bed needs Linux network namespaces, this is {sys.platform}"
    if os.geteuid() != 0:
        return "the NAT bed needs root (network namespaces, iptables); run the tests as root"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"the NAT bed needs {', '.join(missing)} (scripts/bootstrap.sh --test installs them)"
    return None


def _run(argv: Sequence[str], *, input_text: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(list(argv), input=input_text, capture_output=True, text=True, check=False)
    if check and proc.returncode != 0:
        raise BedError(f"`{' '.join(argv)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def _process_start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # field 22 (starttime) counted after the parenthesised command name, which may hold spaces
    return stat.rsplit(")", 1)[1].split()[19]


def _netns_list() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def process_gone(pid: int) -> bool:
    """True once the process has exited (a zombie waiting for its parent counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


def _kill_netns_processes(netns: str) -> None:
    """SIGKILL what still runs inside one of the bed's own namespaces, then delete the namespace."""
    pids = [int(p) for p in _run(["ip", "netns", "pids", netns], check=False).split()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 3
    while not all(process_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.02)  # the kernel finishes a SIGKILL asynchronously; bounded wait
    _run(["ip", "netns", "delete", netns], check=False)


def sweep_stale_runs(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Remove namespaces left behind by crashed earlier runs with this prefix; returns their names.

    A run is stale when the process that wrote its state file is gone, or when a namespace with
    the bed's name pattern has no state file at all (a run always writes the file first).
    """
    pattern = re.compile(rf"^{re.escape(prefix)}[0-9a-f]{{4}}-")
    live_runs: set[str] = set()
    removed: list[str] = []
    if STATE_DIR.is_dir():
        for state_file in STATE_DIR.glob(f"{prefix}*.json"):
            try:
                state = json.loads(state_file.read_text())
            except (OSError, ValueError):
                state_file.unlink(missing_ok=True)
                continue
            if _process_start_time(state["pid"]) == state["start"]:
                live_runs.add(state["run"])
                continue
            for netns in state.get("netns", []):
                if netns in _netns_list():
                    _kill_netns_processes(netns)
                    removed.append(netns)
            shutil.rmtree(state.get("workdir", "/nonexistent"), ignore_errors=True)
            state_file.unlink(missing_ok=True)
    for netns in _netns_list():
        if pattern.match(netns) and netns.split("-", 1)[0] not in live_runs:
            _kill_netns_processes(netns)
            removed.append(netns)
    return removed


@dataclass
class _Resources:
    """Everything a bed owns, apart from the Bed object so a finaliser can free it."""

    run: str
    state_file: Path
    workdir: Path
    netns: list[str] = field(default_factory=list)
    processes: list[subprocess.Popen] = field(default_factory=list)
    closed: bool = False

    def release(self) -> None:
        if self.closed:
            return
        self.closed = True
        for proc in reversed(self.processes):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        deadline = time.monotonic() + 3
        for proc in self.processes:
            try:
                proc.wait(timeout=max(0.05, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=3)
        for netns in reversed(self.netns):
            _kill_netns_processes(netns)
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.state_file.unlink(missing_ok=True)


class Bed:
    """A set of namespaces wired as LANs behind NATs plus a public segment; a context manager."""

    def __init__(
        self,
        lans: Sequence[LanSpec],
        *,
        prefix: str = DEFAULT_PREFIX,
        with_turn: bool = True,
    ) -> None:
        reason = unavailable_reason()
        if reason:
            raise BedError(reason)
        if not re.fullmatch(r"[a-z]{1,4}", prefix):
            raise BedError(f"prefix must be 1-4 lowercase letters, got {prefix!r}")
        names = [h for lan in lans for h in lan.hosts] + [lan.name for lan in lans]
        if len(set(names)) != len(names) or "pub" in names:
            raise BedError(f"LAN and host names must be unique and not 'pub': {names}")
        self.prefix = prefix
        self.lans = list(lans)
        self.with_turn = with_turn
        self.hosts: dict[str, Host] = {}
        self.nats: dict[str, Nat] = {}
        self.turn: TurnConfig | None = None
        self._lock = threading.Lock()
        sweep_stale_runs(prefix)
        existing = set(_netns_list())
        while True:
            run = prefix + secrets.token_hex(2)
            if not any(n.startswith(run + "-") for n in existing):
                break
        self.run = run
        STATE_DIR.mkdir(mode=0o700, exist_ok=True)
        workdir = Path(tempfile.mkdtemp(prefix=f"{run}-"))
        self._res = _Resources(run=run, state_file=STATE_DIR / f"{run}.json", workdir=workdir)
        self._finalizer = weakref.finalize(self, self._res.release)
        self.public = Host("pub", self._netns_name("pub"), PUBLIC_IP)

    # ------------------------------------------------------------------ naming and state

    @property
    def workdir(self) -> Path:
        return self._res.workdir

    def _netns_name(self, role: str) -> str:
        name = f"{self.run}-{role}"
        if len(name) > IFNAMSIZ:
            raise BedError(f"namespace name {name!r} is longer than {IFNAMSIZ} characters")
        return name

    def _write_state(self) -> None:
        state = {
            "run": self.run,
            "pid": os.getpid(),
            "start": _process_start_time(os.getpid()),
            "netns": self._res.netns,
            "workdir": str(self.workdir),
        }
        self._res.state_file.write_text(json.dumps(state))

    def _add_netns(self, role: str) -> str:
        name = self._netns_name(role)
        self._res.netns.append(name)
        self._write_state()  # before creating it, so a crash right after still leaves a record
        _run(["ip", "netns", "add", name])
        # IPv6 off: no link-local candidates, no DAD delays, no router solicitations.
        self.exec(
            name,
            [
                "sh",
                "-c",
                "sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1"
                " && ip link set lo up",
            ],
        )
        return name

    # ------------------------------------------------------------------ building

    def __enter__(self) -> Bed:
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def build(self) -> None:
        pub = self._add_netns("pub")
        _run(["ip", "-n", pub, "link", "add", "pub", "type", "bridge"])
        _run(["ip", "-n", pub, "addr", "add", f"{PUBLIC_IP}/{PUBLIC_NET.prefixlen}", "dev", "pub"])
        _run(["ip", "-n", pub, "link", "set", "pub", "up"])
        # On the internet a packet to a private address vanishes somewhere upstream; here it would
        # fail at once with "network unreachable", and coturn closes an allocation whose relay
        # socket sees that error (peers offer their 10.77.x host candidates). So route them to a
        # gateway that does not exist (a fixed MAC nobody owns): they leave without an error and
        # die on the public segment, as they would upstream.
        _run(
            [
                "ip",
                "-n",
                pub,
                "neigh",
                "add",
                VOID_GATEWAY,
                "lladdr",
                "02:00:00:00:00:01",
                "dev",
                "pub",
                "nud",
                "permanent",
            ]
        )
        _run(["ip", "-n", pub, "route", "add", "10.0.0.0/8", "via", VOID_GATEWAY])
        for index, lan in enumerate(self.lans, start=1):
            self._build_lan(index, lan)
        if self.with_turn:
            self.start_turn()

    def _build_lan(self, index: int, lan: LanSpec) -> None:
        pub = self.public.netns
        nat_ns = self._add_netns(f"nat{lan.name}")
        wan_ip = str(PUBLIC_NET.network_address + 10 + index)
        lan_net = ipaddress.ip_network(f"10.77.{index}.0/24")
        lan_ip = str(lan_net.network_address + 1)
        port = f"n-{lan.name}"
        _run(["ip", "-n", nat_ns, "link", "add", "wan", "type", "veth", "peer", "name", port, "netns", pub])
        _run(["ip", "-n", pub, "link", "set", port, "master", "pub", "up"])
        _run(["ip", "-n", nat_ns, "addr", "add", f"{wan_ip}/{PUBLIC_NET.prefixlen}", "dev", "wan"])
        _run(["ip", "-n", nat_ns, "link", "set", "wan", "up"])
        _run(["ip", "-n", nat_ns, "link", "add", "lan", "type", "bridge"])
        _run(["ip", "-n", nat_ns, "addr", "add", f"{lan_ip}/{lan_net.prefixlen}", "dev", "lan"])
        _run(["ip", "-n", nat_ns, "link", "set", "lan", "up"])
        self.exec(nat_ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self.exec(nat_ns, ["iptables-restore"], input_text=nat_rules(lan.nat))
        self.nats[lan.name] = Nat(lan.name, nat_ns, lan.nat, wan_ip, lan_ip)
        for offset, host in enumerate(lan.hosts):
            host_ns = self._add_netns(host)
            address = str(lan_net.network_address + 10 + offset)
            hport = f"h-{host}"
            _run(
                [
                    "ip",
                    "-n",
                    nat_ns,
                    "link",
                    "add",
                    hport,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "eth0",
                    "netns",
                    host_ns,
                ]
            )
            _run(["ip", "-n", nat_ns, "link", "set", hport, "master", "lan", "up"])
            _run(["ip", "-n", host_ns, "addr", "add", f"{address}/{lan_net.prefixlen}", "dev", "eth0"])
            _run(["ip", "-n", host_ns, "link", "set", "eth0", "up"])
            # Only the public segment is routed, via this LAN's NAT: no default route anywhere.
            _run(["ip", "-n", host_ns, "route", "add", str(PUBLIC_NET), "via", lan_ip])
            self.hosts[host] = Host(host, host_ns, address)

    def start_turn(self) -> TurnConfig:
        """Start coturn in the public namespace and wait until it listens on UDP and TCP."""
        turn = TurnConfig(
            listen_ip=PUBLIC_IP,
            relay_ip=PUBLIC_IP,
            secret=secrets.token_hex(16),
            workdir=self.workdir / "turn",
        )
        turn.workdir.mkdir()
        turn.write()
        proc = self.spawn(
            self.public.netns, turn.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:  # an external process: poll its sockets with a deadline
            if proc.poll() is not None:
                raise BedError(f"turnserver exited with {proc.returncode}; log: {self._turn_log_tail(turn)}")
            sockets = self.exec(self.public.netns, ["ss", "-Hlnut", f"sport = :{turn.port}"])
            if "udp" in sockets and "tcp" in sockets:
                break
            if time.monotonic() > deadline:
                raise BedError(f"turnserver did not listen within 10 s; log: {self._turn_log_tail(turn)}")
            time.sleep(0.05)
        self.turn = turn
        return turn

    @staticmethod
    def _turn_log_tail(turn: TurnConfig) -> str:
        logs = sorted(turn.workdir.glob("turnserver*.log"))
        return logs[-1].read_text()[-800:] if logs else "(no log)"

    # ------------------------------------------------------------------ driving

    def netns_of(self, host: str) -> str:
        if host == "pub":
            return self.public.netns
        if host in self.hosts:
            return self.hosts[host].netns
        if host in self.nats:
            return self.nats[host].netns
        raise BedError(f"no host, NAT or public namespace called {host!r} in this bed")

    def exec_argv(self, where: str, argv: Sequence[str]) -> list[str]:
        """argv that runs `argv` inside a namespace (host name, LAN name for its NAT, or netns)."""
        netns = where if where in self._res.netns else self.netns_of(where)
        return ["ip", "netns", "exec", netns, *argv]

    def exec(
        self, where: str, argv: Sequence[str], *, input_text: str | None = None, check: bool = True
    ) -> str:
        return _run(self.exec_argv(where, argv), input_text=input_text, check=check)

    def spawn(self, where: str, argv: Sequence[str], **popen: object) -> subprocess.Popen:
        """Start a process in a namespace; the bed terminates it on close."""
        popen.setdefault("cwd", str(REPO_ROOT))
        popen.setdefault("env", python_env())
        with self._lock:
            if self._res.closed:
                raise BedError("the bed is closed")
            proc = subprocess.Popen(self.exec_argv(where, argv), **popen)  # type: ignore[call-overload]
            self._res.processes.append(proc)
        return proc

    def track(self, proc: subprocess.Popen) -> None:
        """Adopt a process started elsewhere (e.g. asyncio) so close() ends it too."""
        with self._lock:
            self._res.processes.append(proc)

    def python_argv(self, module: str, *args: str) -> list[str]:
        return [sys.executable, "-m", module, *args]

    def conntrack_entries(self, lan: str, proto: str = "udp") -> str:
        return self.exec(self.nats[lan].netns, ["conntrack", "-L", "-p", proto], check=False)

    def flush_conntrack(self, lan: str, proto: str | None = "udp") -> None:
        """Drop the NAT's mappings (all, or of one protocol) as a NAT reboot or timeout would."""
        argv = ["conntrack", "-D", "-p", proto] if proto else ["conntrack", "-F"]
        self.exec(self.nats[lan].netns, argv, check=False)  # exits 1 when there was nothing to drop

    def drop_udp_mappings(self, lan: str) -> None:
        """The NAT forgets its UDP mappings and hands out new ports from now on (NAT rebinding).

        Linux keeps a freed source port when it can, so a bare flush would often recreate the very
        same mapping; a home router that lost its table does not. Switching UDP to random ports
        before flushing makes every new mapping differ from the one the remote peer knows. TCP
        (the signalling socket) keeps its mappings.
        """
        nat = self.nats[lan].netns
        self.exec(
            nat,
            [
                "iptables",
                "-t",
                "nat",
                "-R",
                "POSTROUTING",
                "1",
                "-o",
                "wan",
                "-p",
                "udp",
                "-j",
                "MASQUERADE",
                "--random-fully",
            ],
        )
        self.flush_conntrack(lan, "udp")

    def turn_ice_servers(
        self, *, stun: bool = True, turn: str | None = "udp", user: str = "bed"
    ) -> list[dict]:
        """ICE servers as RTCIceServer dicts: STUN first, then one TURN url of the given transport."""
        if self.turn is None:
            raise BedError("this bed runs no coturn")
        servers: list[dict] = []
        if stun:
            servers.append({"urls": [self.turn.stun_url()]})
        if turn:
            username, password = turn_rest_credentials(self.turn.secret, user)
            servers.append({"urls": [self.turn.turn_url(turn)], "username": username, "credential": password})
        return servers

    def close(self) -> None:
        self._finalizer()


def nat_rules(kind: NatKind) -> str:
    """iptables-restore input for a NAT namespace with a `wan` and a `lan` interface."""
    masquerade_udp = "-A POSTROUTING -o wan -p udp -j MASQUERADE"
    if kind == NatKind.SYMMETRIC:
        masquerade_udp += " --random-fully"
    filter_rules = [
        # The NAT host itself must not answer unsolicited packets: without this the hole punch in
        # the endpoint-independent case fails (field notes).
        "-A INPUT -i wan -p udp -m conntrack --ctstate NEW -j DROP",
        # Nothing from outside may open a connection into the LAN.
        "-A FORWARD -i wan -o lan -m conntrack --ctstate NEW -j DROP",
    ]
    if kind == NatKind.UDP_BLOCKED:
        filter_rules.append("-A FORWARD -i lan -o wan -p udp -j DROP")
    return "\n".join(
        [
            "*nat",
            ":PREROUTING ACCEPT [0:0]",
            ":INPUT ACCEPT [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            ":POSTROUTING ACCEPT [0:0]",
            masquerade_udp,
            "-A POSTROUTING -o wan -j MASQUERADE",
            "COMMIT",
            "*filter",
            ":INPUT ACCEPT [0:0]",
            ":FORWARD ACCEPT [0:0]",
            ":OUTPUT ACCEPT [0:0]",
            *filter_rules,
            "COMMIT",
            "",
        ]
    )


def python_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for our Python processes inside namespaces: the repo on the path, no proxies."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so `with Bed(...)` cleans up when a person's run is killed."""

    def _raise(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    # The command line lives in tests.network.cli; importing it (rather than running this file's
    # code as __main__) keeps one copy of NatKind, so scenario comparisons hold.
    from tests.network.cli import main

    sys.exit(main())
