"""A stateful fuzz of the frame protocol against a real server (Hypothesis RuleBasedStateMachine).

Four devices of three befriended users connect (header or `auth` frame), send envelopes to each
other, ack some of what they got, signal, disconnect and come back, and throw bad frames, in
random order. What must hold through all of it:

- every `send` is answered (`accepted`, or `error` with its ref) and the socket stays up;
- every accepted message reaches each of its recipient devices: never twice on one socket, never
  again once that device acked it (a device that had it and did not ack gets it again on its next
  socket, by design), and in the order its sender sent them;
- a bad frame gets an `error` frame (`malformed` or `too_large`) and the socket stays up;
- the mailbox over REST answers 200 with only accepted, un-acked messages (never a 5xx);
- a signal to a connected device arrives; one to a device that is not connected is answered
  `unknown_device` naming it (or, while the server has not yet noticed the close, relayed);
- the server never logs a traceback.

The check at the end connects every device, drains it and acks everything, so "never lost" is
checked too. Bounded (examples and steps) to stay well under a minute.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from websockets.sync.client import ClientConnection, connect

from signalling.protocol import b64encode
from tests.hub.conftest import HUB_TEST_ENV
from tests.support.bundles import opaque_bundle
from tests.support.server import RunningServer

# Sockets open and close at the machine's whim, not in `with` blocks; websockets warns about that.
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager")

PASSWORD = "correct horse battery"
DEVICES = 4  # alice has two devices, bob and carol one each
WAIT = 10.0  # seconds any one frame may take on a loaded box (a deadline, not a measurement)

BAD_FRAMES = st.one_of(
    st.sampled_from(
        [
            "not json",
            "[1, 2, 3]",
            '"a string"',
            "{}",
            '{"type": "teleport"}',
            '{"type": "send", "ref": "r"}',
            '{"type": "send", "ref": "r", "message_id": "xyz", "envelope": "AA", "recipients": []}',
            '{"type": "ack"}',
            '{"type": "ack", "message_id": "NOT-HEX"}',
            '{"type": "signal", "kind": "offer", "to_user": 99999999999999999999999, "to_device": "dev-1234"}',  # noqa: E501
            '{"type": "ping", "nonce": "' + "n" * 65 + '"}',
            '{"type": "auth", "token": "x", "device_id": "dev-123456"}',
            "[" * 1000 + "]" * 1000,
            '{"a":' * 1000 + "1" + "}" * 1000,
        ]
    ),
    st.text(max_size=40),
    st.binary(min_size=1, max_size=40),
)


@dataclass
class Device:
    user_id: int
    device_id: str
    token: str
    ws: ClientConnection | None = None
    seen_on_socket: set[str] = field(default_factory=set)  # delivered on the current socket
    delivered: list[str] = field(default_factory=list)  # every delivery, in arrival order
    unacked: list[str] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)
    frames: list[dict[str, Any]] = field(default_factory=list)  # read, not yet looked at


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[RunningServer]:
    with RunningServer(env=HUB_TEST_ENV) as running:
        yield running


def _account(http: httpx.Client, devices: int) -> list[Device]:
    name = f"f{secrets.token_hex(5)}"
    made = http.post("/users/", json={"username": name, "email": f"{name}@example.org", "password": PASSWORD})
    assert made.status_code == 201, made.text
    token = http.post("/token", data={"username": name, "password": PASSWORD}).json()["access_token"]
    out = []
    for _ in range(devices):
        device_id = f"dev-{secrets.token_hex(6)}"
        bundle = opaque_bundle(device_id)
        published = http.post("/me/devices", json=bundle, headers={"Authorization": f"Bearer {token}"})
        assert published.status_code == 201, published.text
        out.append(Device(made.json()["id"], device_id, token))
    return out


def _befriend(http: httpx.Client, a: Device, b: Device) -> None:
    asked = http.post(
        "/me/contacts/", json={"friend_id": b.user_id}, headers={"Authorization": f"Bearer {a.token}"}
    )
    assert asked.status_code == 201, asked.text
    accepted = http.post(f"/me/contacts/{a.user_id}/accept", headers={"Authorization": f"Bearer {b.token}"})
    assert accepted.status_code == 200, accepted.text


class FrameProtocol(RuleBasedStateMachine):
    server: RunningServer

    def __init__(self) -> None:
        super().__init__()
        self.devices: list[Device] = []
        self.sent: dict[tuple[str, str], list[str]] = {}  # (sender device, recipient device) -> ids in order
        self.expected: dict[str, set[str]] = {}  # recipient device -> every id accepted for it

    @initialize()
    def build_world(self) -> None:
        with httpx.Client(base_url=self.server.url, timeout=30) as http:
            alice, bob, carol = _account(http, 2), _account(http, 1), _account(http, 1)
            _befriend(http, alice[0], bob[0])
            _befriend(http, alice[0], carol[0])
            _befriend(http, bob[0], carol[0])
        self.devices = alice + bob + carol
        self.expected = {d.device_id: set() for d in self.devices}

    # -- reading ---------------------------------------------------------------------------------

    def _take(self, dev: Device, frame: dict[str, Any]) -> None:
        """Book-keeping for every frame read: deliveries are checked the moment they arrive."""
        if frame.get("type") == "deliver":
            message_id = frame["message_id"]
            assert message_id not in dev.seen_on_socket, f"{message_id} came twice on one socket"
            assert message_id not in dev.acked, f"{message_id} came again after {dev.device_id} acked it"
            assert message_id in self.expected[dev.device_id], (
                f"{message_id} was never accepted for this device"
            )
            dev.seen_on_socket.add(message_id)
            dev.delivered.append(message_id)
            dev.unacked.append(message_id)
        else:
            dev.frames.append(frame)

    def _read_until(self, dev: Device, kind: str | None, where: Any = None) -> dict[str, Any]:
        """The next frame of type `kind` (any type: None) that `where` accepts; others are kept."""

        def wanted(frame: dict[str, Any]) -> bool:
            return (kind is None or frame["type"] == kind) and (where is None or where(frame))

        for i, frame in enumerate(dev.frames):
            if wanted(frame):
                return dev.frames.pop(i)
        assert dev.ws is not None
        deadline = time.monotonic() + WAIT
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no {kind} frame on {dev.device_id}; kept {dev.frames[-5:]}"
            frame = json.loads(dev.ws.recv(timeout=left))
            if wanted(frame):
                if kind == "deliver":
                    self._take(dev, frame)
                return frame
            self._take(dev, frame)

    def _barrier(self, dev: Device) -> None:
        """A ping's pong comes after everything this socket sent before it has been acted on."""
        nonce = secrets.token_hex(4)
        assert dev.ws is not None
        dev.ws.send(json.dumps({"type": "ping", "nonce": nonce}))
        self._read_until(dev, "pong", lambda f: f.get("nonce") == nonce)

    # -- rules -----------------------------------------------------------------------------------

    @rule(index=st.integers(0, DEVICES - 1), by_frame=st.booleans())
    def connect(self, index: int, by_frame: bool) -> None:
        dev = self.devices[index]
        if dev.ws is not None:
            return
        if by_frame:
            dev.ws = connect(self.server.ws_url, max_size=None, open_timeout=WAIT)
            dev.ws.send(json.dumps({"type": "auth", "token": dev.token, "device_id": dev.device_id}))
        else:
            dev.ws = connect(
                f"{self.server.ws_url}?device_id={dev.device_id}&protocol=1",
                additional_headers={"Authorization": f"Bearer {dev.token}"},
                max_size=None,
                open_timeout=WAIT,
            )
        dev.seen_on_socket, dev.frames, dev.unacked = set(), [], []
        ready = self._read_until(dev, "ready")
        assert ready["device_id"] == dev.device_id
        self._read_until(dev, "drained")

    @precondition(lambda self: any(d.ws is not None for d in self.devices))
    @rule(index=st.integers(0, DEVICES - 1))
    def disconnect(self, index: int) -> None:
        dev = self.devices[index]
        if dev.ws is None:
            return
        dev.ws.close()
        dev.ws = None

    @precondition(lambda self: any(d.ws is not None for d in self.devices))
    @rule(
        sender=st.integers(0, DEVICES - 1),
        to=st.sets(st.integers(0, DEVICES - 1), min_size=1, max_size=DEVICES),
        size=st.integers(1, 3000),
    )
    def send(self, sender: int, to: set[int], size: int) -> None:
        dev = self.devices[sender]
        if dev.ws is None:
            return
        targets = [self.devices[i] for i in sorted(to) if i != sender]
        if not targets:
            return
        ref, message_id = secrets.token_hex(4), secrets.token_hex(16)
        frame = {
            "type": "send",
            "ref": ref,
            "message_id": message_id,
            "envelope": b64encode(secrets.token_bytes(size)),
            "recipients": [{"user_id": t.user_id, "device_id": t.device_id} for t in targets],
        }
        for t in targets:  # accepted may race ahead of our bookkeeping on the recipients' side
            self.expected[t.device_id].add(message_id)
        dev.ws.send(json.dumps(frame))
        answer = self._read_until(
            dev, None, lambda f: f["type"] in ("accepted", "error") and f.get("ref") == ref
        )
        if answer["type"] == "error":  # refused (none are expected here): stored for nobody
            for t in targets:
                self.expected[t.device_id].discard(message_id)
            raise AssertionError(f"a valid send was refused: {answer}")
        assert answer["message_id"] == message_id
        # live: pushed to now; queued: stored for (a device pushed live and not yet acked is both)
        assert set(answer["live"]) | set(answer["queued"]) == {t.device_id for t in targets}, answer
        for t in targets:
            self.sent.setdefault((dev.device_id, t.device_id), []).append(message_id)

    @precondition(lambda self: any(d.ws is not None and d.unacked for d in self.devices))
    @rule(index=st.integers(0, DEVICES - 1), how_many=st.integers(1, 5), batched=st.booleans())
    def ack(self, index: int, how_many: int, batched: bool) -> None:
        dev = self.devices[index]
        if dev.ws is None or not dev.unacked:
            return
        ids, dev.unacked = dev.unacked[:how_many], dev.unacked[how_many:]
        if batched:
            dev.ws.send(json.dumps({"type": "ack", "message_ids": ids}))
        else:
            for message_id in ids:
                dev.ws.send(json.dumps({"type": "ack", "message_id": message_id}))
        self._barrier(dev)  # the acks are committed: no socket of this device gets them again
        dev.acked.update(ids)

    @precondition(lambda self: any(d.ws is not None for d in self.devices))
    @rule(sender=st.integers(0, DEVICES - 1), to=st.integers(0, DEVICES - 1))
    def signal(self, sender: int, to: int) -> None:
        dev, target = self.devices[sender], self.devices[to]
        if dev.ws is None or sender == to:
            return
        nonce = secrets.token_hex(16)
        payload = {"nonce": nonce, "sig": b64encode(b"s" * 64), "sdp": "v=0"}
        dev.ws.send(
            json.dumps(
                {
                    "type": "signal",
                    "kind": "offer",
                    "to_user": target.user_id,
                    "to_device": target.device_id,
                    "payload": payload,
                }
            )
        )
        self._barrier(dev)
        errors = [f for f in dev.frames if f["type"] == "error" and f.get("device_id") == target.device_id]
        dev.frames = [f for f in dev.frames if f not in errors]
        if target.ws is not None:
            assert not errors, errors
            got = self._read_until(target, "signal", lambda f: f["payload"].get("nonce") == nonce)
            assert (got["from_user"], got["from_device"]) == (dev.user_id, dev.device_id)
        for error in errors:
            assert error["code"] == "unknown_device" and error["ref"] is None, error

    @precondition(lambda self: any(d.ws is not None for d in self.devices))
    @rule(index=st.integers(0, DEVICES - 1), bad=BAD_FRAMES)
    def bad_frame(self, index: int, bad: str | bytes) -> None:
        dev = self.devices[index]
        if dev.ws is None:
            return
        dev.ws.send(bad)
        self._barrier(dev)  # the socket is still up and answering
        errors = [f for f in dev.frames if f["type"] == "error"]
        assert errors, f"no error frame for {bad!r:.80}"
        assert all(e["code"] in ("malformed", "too_large") for e in errors), errors
        dev.frames = [f for f in dev.frames if f["type"] != "error"]

    @rule(index=st.integers(0, DEVICES - 1))
    def read_mailbox_over_rest(self, index: int) -> None:
        """The REST view of a device's mailbox: never a 5xx, only accepted, un-acked messages."""
        dev = self.devices[index]
        answer = httpx.get(
            f"{self.server.url}/me/mailbox",
            params={"device_id": dev.device_id, "limit": 500},
            headers={"Authorization": f"Bearer {dev.token}"},
            timeout=WAIT,
        )
        assert answer.status_code == 200, answer.text
        stored = {row["message_id"] for row in answer.json()}
        assert stored <= self.expected[dev.device_id], stored - self.expected[dev.device_id]
        assert not stored & dev.acked, f"acked rows still stored: {sorted(stored & dev.acked)[:3]}"

    # -- invariants ------------------------------------------------------------------------------

    @invariant()
    def server_logs_no_traceback(self) -> None:
        assert "Traceback" not in self.server.output, self.server.output

    def teardown(self) -> None:
        try:
            for dev in self.devices:  # everyone comes back, drains and acks: nothing was lost
                if dev.ws is not None:
                    dev.ws.close()
                    dev.ws = None
                self.connect(self.devices.index(dev), by_frame=False)
                if dev.unacked:
                    assert dev.ws is not None
                    dev.ws.send(json.dumps({"type": "ack", "message_ids": dev.unacked[:1000]}))
                    self._barrier(dev)
                got = set(dev.delivered)
                missing = self.expected[dev.device_id] - got
                assert not missing, f"{dev.device_id} never got {sorted(missing)[:3]}"
            for (sender, recipient), ids in self.sent.items():
                arrived = next(d for d in self.devices if d.device_id == recipient).delivered
                first_seen = [m for i, m in enumerate(arrived) if m in ids and m not in arrived[:i]]
                assert first_seen == ids, f"{sender} -> {recipient}: sent {ids}, first arrived {first_seen}"
        finally:
            for dev in self.devices:
                if dev.ws is not None:
                    dev.ws.close()


def test_random_frame_sequences_keep_every_promise(fuzz_server: RunningServer) -> None:
    """10 sequences of 25 steps here (~20 s); PEERPOST_FUZZ_EXAMPLES / _STEPS run longer hunts."""
    FrameProtocol.server = fuzz_server
    run_state_machine_as_test(
        FrameProtocol,
        settings=settings(
            max_examples=int(os.environ.get("PEERPOST_FUZZ_EXAMPLES", "10")),
            stateful_step_count=int(os.environ.get("PEERPOST_FUZZ_STEPS", "25")),
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
