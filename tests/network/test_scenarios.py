"""PeerPost peers and the real server across the bed's NATs: each scenario takes the path the
issue promises, asserted on the ICE pair each peer reports and on every message arriving once."""

from __future__ import annotations

import time

from tests.network.bed import Bed
from tests.network.runs import Outcome, run_peerpost
from tests.network.scenarios import SCENARIOS, Scenario

SERVER_PATHS = ("relayed", "queued")


def _run(make_bed, record_property, name: str) -> tuple[Outcome, Scenario, Bed]:
    """Run the scenario and attach its timings to the test report (junit properties)."""
    scenario = SCENARIOS[name]
    bed = make_bed(scenario)
    outcome = run_peerpost(bed, scenario)
    record_property("setup_ms", outcome.setup_ms)
    record_property("latency_p50_ms", outcome.p50())
    record_property("latency_p95_ms", outcome.p95())
    record_property("pair", (outcome.pair_alice or {}).get("path"))
    return outcome, scenario, bed


def _assert_relayed_with_server_issued_credentials(outcome: Outcome, bed: Bed) -> None:
    """Both peers allocated on coturn with the TURN REST credentials the server gave each of them
    (username `<expiry>:<user id>`), so the server's GET /ice and coturn agree on the secret."""
    assert bed.turn is not None
    usernames = bed.turn.allocation_usernames()
    assert {name.split(":", 1)[1] for name in usernames} == {str(uid) for uid in outcome.user_ids}, usernames
    assert all(int(name.split(":", 1)[0]) > time.time() for name in usernames)


def _nothing_lost(outcome: Outcome) -> None:
    assert outcome.sent, "the scenario sent nothing"
    assert outcome.lost == [], f"lost: {outcome.lost}"
    assert outcome.duplicates == [], f"shown twice: {outcome.duplicates}"
    assert sorted(outcome.history) == sorted(outcome.sent)


def _assert_direct(outcome: Outcome, scenario: Scenario) -> None:
    assert outcome.link_opened, f"no link opened; alice's link went {outcome.link_states}"
    assert outcome.pair_alice is not None and outcome.pair_bob is not None
    assert outcome.pair_alice["path"] == scenario.pair, outcome.pair_alice
    assert outcome.pair_bob["path"] == scenario.pair, outcome.pair_bob
    assert set(outcome.paths) == {"direct"}, outcome.paths
    assert outcome.setup_ms is not None  # its size is reported by bench/nat.py, not asserted
    _nothing_lost(outcome)


def _assert_mailbox(outcome: Outcome, scenario: Scenario) -> None:
    assert "connecting" in outcome.link_states, "the peer never tried a direct link"
    assert not outcome.link_opened, f"a link opened: {outcome.pair_alice}"
    # alice's attempt failed; later ones (bob's own, for his receipts) may still be under way at the end
    assert outcome.link_states[outcome.link_states.index("connecting") + 1] in ("failed", "closed"), (
        outcome.link_states
    )
    assert set(outcome.paths) <= set(SERVER_PATHS), outcome.paths
    # the server has it as soon as the link deadline runs out, not after aiortc's own ~60 s
    assert max(outcome.first_send_ms) < (scenario.link_deadline + 2) * 1000, outcome.first_send_ms
    # after that failure no message waits for a link again: each goes to the server at once
    assert outcome.later_send_ms, "no message was sent after the failed link attempt"
    assert max(outcome.later_send_ms) < scenario.link_deadline * 1000 / 2, outcome.later_send_ms
    _nothing_lost(outcome)


def test_peers_on_one_lan_link_directly_over_host_candidates(make_bed, record_property):
    outcome, scenario, _ = _run(make_bed, record_property, "same-lan")
    _assert_direct(outcome, scenario)
    assert (outcome.pair_alice["local_type"], outcome.pair_alice["remote_type"]) == ("host", "host")
    assert outcome.pair_alice["remote_address"].startswith("10.77.1.")  # bob's LAN address


def test_peers_behind_cone_nats_punch_a_hole_with_stun(make_bed, record_property):
    outcome, scenario, _ = _run(make_bed, record_property, "cone")
    _assert_direct(outcome, scenario)
    # each side talks to the other's NAT mapping on the public segment
    assert outcome.pair_alice["remote_type"] == "srflx" and outcome.pair_alice["remote_address"].startswith(
        "100.64.0.12:"
    )
    assert outcome.pair_bob["remote_address"].startswith("100.64.0.11:")


def test_peers_behind_symmetric_nats_get_a_direct_channel_over_turn_relay(make_bed, record_property):
    outcome, scenario, bed = _run(make_bed, record_property, "symmetric-turn")
    _assert_direct(outcome, scenario)
    _assert_relayed_with_server_issued_credentials(outcome, bed)
    relays = [p for p in (outcome.pair_alice, outcome.pair_bob) if p["local_type"] == "relay"]
    assert relays and all(p["relay_transport"] == "udp" for p in relays)


def test_symmetric_nats_without_turn_fall_back_to_the_mailbox_within_the_link_deadline(
    make_bed, record_property
):
    _assert_mailbox(*_run(make_bed, record_property, "symmetric")[:2])


def test_udp_blocked_peers_reach_the_relay_over_tcp(make_bed, record_property):
    outcome, scenario, bed = _run(make_bed, record_property, "udp-blocked-turn-tcp")
    _assert_direct(outcome, scenario)
    _assert_relayed_with_server_issued_credentials(outcome, bed)
    # both are behind the UDP block: each one's own end of the pair is a relay it reaches over TCP
    for pair in (outcome.pair_alice, outcome.pair_bob):
        assert (pair["local_type"], pair["relay_transport"]) == ("relay", "tcp"), pair


def test_udp_blocked_without_turn_falls_back_to_the_mailbox(make_bed, record_property):
    _assert_mailbox(*_run(make_bed, record_property, "udp-blocked")[:2])


def test_dropped_nat_mapping_fails_the_link_and_the_mailbox_takes_over_without_loss(
    make_bed, record_property
):
    outcome, _, _ = _run(make_bed, record_property, "mapping-dropped")
    assert outcome.link_opened and outcome.pair_alice["path"] == "srflx"
    assert outcome.paths == ["direct"] * 3  # before the drop
    assert outcome.link_failure in ("failed", "closed")
    assert outcome.detect_ms is not None  # how soon is reported by bench/nat.py, not asserted
    assert len(outcome.paths_after_drop) == 6 and set(outcome.paths_after_drop) <= set(SERVER_PATHS)
    _nothing_lost(outcome)
