"""The selected-pair report of a link (peer.icepair): what the NAT bed asserts paths with."""

from __future__ import annotations

import pytest

from peer.icepair import IcePair, selected_pair
from tests.peer.test_link import Pair


@pytest.fixture
async def pair(keyring):
    p = Pair(keyring[0], keyring[1])
    yield p
    await p.close()


async def test_open_loopback_link_reports_a_host_pair_on_both_sides(pair):
    link_a = await pair.a.connect(2, "device-bbbb", within=5)
    link_b = await pair.b.wait_for_link("device-aaaa", 3)
    seen_a, seen_b = link_a.selected_pair(), link_b.selected_pair()
    assert seen_a is not None and seen_b is not None
    assert (seen_a.local_type, seen_a.remote_type, seen_a.path) == ("host", "host", "host")
    assert seen_a.local_address == seen_b.remote_address
    assert seen_a.local_address.startswith("127.0.0.1:")
    assert seen_a.relay_transport is None
    await link_a.close()
    assert link_a.selected_pair() is None  # aioice forgets the pair once closed


def test_no_connection_means_no_pair():
    assert selected_pair(None) is None


@pytest.mark.parametrize(
    ("local", "remote", "path"),
    [
        ("host", "host", "host"),
        ("host", "srflx", "srflx"),
        ("host", "prflx", "srflx"),
        ("relay", "srflx", "relay"),
    ],
)
def test_path_names_the_most_indirect_end(local, remote, path):
    pair = IcePair(local, "1.1.1.1:1", remote, "2.2.2.2:2", "udp" if local == "relay" else None)
    assert pair.path == path
    assert pair.to_dict()["path"] == path
