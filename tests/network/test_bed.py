"""The bed itself: raw aiortc endpoints take the path each scenario promises, and the bed leaves
nothing behind (namespaces, processes, host interfaces, routes), even after a crashed run."""

from __future__ import annotations

import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.network.bed import (
    REPO_ROOT,
    STATE_DIR,
    Bed,
    LanSpec,
    NatKind,
    process_gone,
    python_env,
    sweep_stale_runs,
)
from tests.network.probe import run_raw_probe
from tests.network.scenarios import SCENARIOS
from tests.network.turn import turn_rest_credentials


def _host_network() -> tuple[str, str, str, str]:
    """The host namespace's interfaces, routes, firewall rules and forwarding switch."""

    def out(*argv: str) -> str:
        return subprocess.run(list(argv), capture_output=True, text=True, check=True).stdout

    links = "\n".join(sorted(line.split(":")[1] for line in out("ip", "-o", "link").splitlines()))
    rules = "\n".join(line for line in out("iptables-save").splitlines() if not line.startswith("#"))
    return links, out("ip", "route"), rules, Path("/proc/sys/net/ipv4/ip_forward").read_text()


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_raw_aiortc_takes_the_scenario_path(make_bed, name):
    scenario = SCENARIOS[name]
    bed = make_bed(scenario)
    result = run_raw_probe(bed, scenario, connect_timeout=6.0)
    assert scenario.raw_outcome_ok(result), f"{name}: {result.summary()}; expected {scenario.expected}"


def test_bare_conntrack_flush_keeps_the_path_behind_a_port_preserving_nat(make_bed):
    """Why the mapping-dropped scenario rebinds: after a plain flush Linux recreates the same mapping."""
    scenario = SCENARIOS["mapping-dropped"]
    bed = make_bed(scenario)

    def flush(b: Bed) -> None:
        # conntrack -D exits non-zero when it deleted nothing: check=True proves the flush happened
        b.exec("A", ["conntrack", "-D", "-p", "udp"], check=True)

    result = run_raw_probe(bed, scenario, connect_timeout=6.0, drop=flush)
    assert result.connected and result.echo_before_drop is True
    assert result.echo_after_drop is True, result.summary()


def test_bed_removes_everything_and_never_touches_the_host_network():
    host_before = _host_network()
    with Bed(
        [LanSpec("A", NatKind.ENDPOINT_INDEPENDENT, ("a",)), LanSpec("B", NatKind.SYMMETRIC, ("b",))]
    ) as bed:
        created = set(bed._res.netns)
        assert created <= _netns()
        assert all(len(name) <= 15 for name in created)
        turn_pid = bed._res.processes[0].pid
        assert _host_network() == host_before  # every veth and bridge lives inside the bed
        for netns in created:
            routes = bed.exec(netns, ["ip", "route"])
            assert "default" not in routes
        assert bed.exec(bed.public.netns, ["sysctl", "-n", "net.ipv4.ip_forward"]).strip() == "0"
        state_file = bed._res.state_file
        workdir = bed.workdir
    assert not created & _netns()
    assert process_gone(turn_pid)
    assert not state_file.exists() and not workdir.exists()
    assert _host_network() == host_before


def test_two_beds_at_once_do_not_collide():
    scenario = SCENARIOS["same-lan"]
    with Bed(scenario.lans(), with_turn=True) as one, Bed(scenario.lans(), with_turn=True) as two:
        assert one.run != two.run
        assert not set(one._res.netns) & set(two._res.netns)
        # the same addresses in both; each bed's endpoints connect to their own partner at once
        with ThreadPoolExecutor(2) as pool:
            results = list(
                pool.map(lambda bed: run_raw_probe(bed, scenario, connect_timeout=6.0), (one, two))
            )
        assert all(scenario.raw_outcome_ok(r) for r in results), [r.summary() for r in results]


def test_crashed_run_is_swept_by_the_next_one():
    script = (
        "import sys\n"
        "from tests.network.bed import Bed, LanSpec, NatKind\n"
        "bed = Bed([LanSpec('A', NatKind.SYMMETRIC, ('a',))]).__enter__()\n"
        "print(bed.run, ' '.join(bed._res.netns), flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=python_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        run, *namespaces = proc.stdout.readline().split()
    finally:
        proc.send_signal(signal.SIGKILL)  # no finaliser, no context exit: a crash
        proc.wait(timeout=5)
    assert set(namespaces) <= _netns()
    leftover = [
        p
        for ns in namespaces
        for p in subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
    ]
    assert leftover  # its coturn outlived it
    removed = sweep_stale_runs()
    assert set(namespaces) <= set(removed)
    assert not set(namespaces) & _netns()
    assert not (STATE_DIR / f"{run}.json").exists()
    assert all(process_gone(int(pid)) for pid in leftover)


def test_conntrack_flush_empties_the_nat_table(make_bed):
    bed = make_bed([LanSpec("A", NatKind.ENDPOINT_INDEPENDENT, ("a",))])
    bed.exec("a", ["bash", "-c", f"echo x > /dev/udp/{bed.public.address}/9"], check=False)
    assert "dport=9" in bed.conntrack_entries("A")
    bed.flush_conntrack("A")
    assert "dport=9" not in bed.conntrack_entries("A")


def _mapped_ports(bed: Bed, lan: str) -> dict[int, int]:
    """destination port -> the NAT's public source port, from the NAT's conntrack table."""
    ports = {}
    for line in bed.conntrack_entries(lan).splitlines():
        dports = [int(f.split("=", 1)[1]) for f in line.split() if f.startswith("dport=")]
        if len(dports) == 2:
            ports[dports[0]] = dports[1]  # original direction's dport -> reply direction's dport
    return ports


@pytest.mark.parametrize(
    ("kind", "same_mapping"), [(NatKind.ENDPOINT_INDEPENDENT, True), (NatKind.SYMMETRIC, False)]
)
def test_nat_kinds_map_one_socket_as_named(make_bed, kind, same_mapping):
    bed = make_bed([LanSpec("A", kind, ("a",))], with_turn=False)
    script = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        f"for port in (7001, 7002, 7003):\n    s.sendto(b'x', ('{bed.public.address}', port))\n"
    )
    bed.exec("a", [sys.executable, "-c", script])
    mapped = _mapped_ports(bed, "A")
    assert set(mapped) == {7001, 7002, 7003}
    assert (len(set(mapped.values())) == 1) is same_mapping, mapped


_ALLOCATE = """
import asyncio, sys
from aioice import turn
async def main(host, transport, username, password):
    try:
        relay, _ = await asyncio.wait_for(turn.create_turn_endpoint(
            asyncio.DatagramProtocol, (host, 3478), username, password, transport=transport), 10)
    except Exception as e:
        print("refused", type(e).__name__, e)
        return
    print("allocated", relay.get_extra_info("related_address"))
    relay.close()
asyncio.run(main(*sys.argv[1:]))
"""


@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_coturn_relays_only_for_credentials_from_the_shared_secret(make_bed, transport):
    bed = make_bed([LanSpec("A", NatKind.ENDPOINT_INDEPENDENT, ("a",))])
    assert bed.turn is not None

    def allocate(username: str, password: str) -> str:
        argv = [sys.executable, "-c", _ALLOCATE, bed.public.address, transport, username, password]
        return bed.exec("a", argv).strip()

    unauthorized = "(401 - Unauthorized)"
    assert allocate(*turn_rest_credentials(bed.turn.secret, "alice", ttl=600)).startswith("allocated")
    forged = allocate(*turn_rest_credentials("not the secret", "alice", ttl=600))
    assert forged.startswith("refused") and forged.endswith(unauthorized)
    expired = allocate(*turn_rest_credentials(bed.turn.secret, "alice", ttl=-60))
    assert expired.startswith("refused") and expired.endswith(unauthorized)
