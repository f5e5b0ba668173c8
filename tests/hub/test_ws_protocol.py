"""The hub's own WebSocket protocol (signalling/ws_protocol.py) speaks RFC 6455 as the old stack did:
what a raw client sees on the wire for each rule, against the real server.

The raw client below writes frames by hand (masked, fragmented, broken on purpose); the rest of the
hub suite talks to the same server through the `websockets` client library.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
from collections.abc import AsyncIterator

import pytest

from tests.hub.conftest import HUB_TEST_ENV
from tests.hub.world import World
from tests.support.server import RunningServer

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_MESSAGE = 65536 * 4 + 65536  # PEERPOST_MAX_FRAME_BYTES=65536 in HUB_TEST_ENV: 4x + 64 KiB


def client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, length: int | None = None
) -> bytes:
    n = len(payload) if length is None else length
    first = (0x80 if fin else 0) | opcode
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((first, mask_bit | n))
    elif n < 65536:
        head = struct.pack("!BBH", first, mask_bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, mask_bit | 127, n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class RawClient:
    """One TCP connection that did the upgrade by hand and reads the server's frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int) -> None:
        self.reader, self.writer, self.status = reader, writer, status

    @classmethod
    async def connect(cls, server: RunningServer, path: str = "/ws", version: str = "13") -> RawClient:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {server.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n\r\n".encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        return cls(reader, writer, int(head.split(b" ", 2)[1]))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def frame(self, deadline: float = 5.0) -> tuple[int, bytes]:
        async with asyncio.timeout(deadline):
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            assert not b1 & 0x80, "server frames are not masked"
            return b0 & 0x0F, await self.reader.readexactly(n)

    async def close_frame(self, deadline: float = 5.0) -> tuple[int, str]:
        """Read until the server's close frame: its code and reason (pings on the way are skipped)."""
        while True:
            opcode, payload = await self.frame(deadline)
            if opcode == OP_CLOSE:
                return int.from_bytes(payload[:2], "big"), payload[2:].decode()

    async def eof(self, deadline: float = 5.0) -> bool:
        async with asyncio.timeout(deadline):
            return await self.reader.read() == b""

    def shut(self) -> None:
        self.writer.close()


@pytest.fixture
async def raw(hub_server: RunningServer) -> AsyncIterator[RawClient]:
    client = await RawClient.connect(hub_server)
    assert client.status == 101
    yield client
    client.shut()


async def test_an_unmasked_client_frame_closes_the_socket_with_1002(raw: RawClient) -> None:
    raw.send(client_frame(OP_TEXT, b'{"type":"auth"}', masked=False))
    code, reason = await raw.close_frame()
    assert code == 1002
    assert "masked" in reason
    assert await raw.eof()


async def test_a_text_frame_that_is_not_utf8_closes_the_socket_with_1007(raw: RawClient) -> None:
    raw.send(client_frame(OP_TEXT, b"\xff\xfe not utf-8"))
    code, _ = await raw.close_frame()
    assert code == 1007


async def test_a_message_over_the_size_limit_closes_with_1009_before_its_payload_is_sent(
    raw: RawClient,
) -> None:
    raw.send(client_frame(OP_TEXT, b"", length=MAX_MESSAGE + 1)[:14])  # the header and mask only
    code, reason = await raw.close_frame()
    assert code == 1009
    assert str(MAX_MESSAGE) in reason


async def test_fragments_over_the_size_limit_together_close_with_1009(raw: RawClient) -> None:
    half = b"x" * (MAX_MESSAGE // 2 + 1)
    raw.send(client_frame(OP_TEXT, half, fin=False) + client_frame(OP_CONT, half))
    code, _ = await raw.close_frame()
    assert code == 1009


async def test_a_ping_is_answered_with_a_pong_of_the_same_payload(raw: RawClient) -> None:
    raw.send(client_frame(OP_PING, b"are you there"))
    assert await raw.frame() == (OP_PONG, b"are you there")


async def test_a_continuation_without_a_message_closes_with_1002(raw: RawClient) -> None:
    raw.send(client_frame(OP_CONT, b"orphan"))
    code, _ = await raw.close_frame()
    assert code == 1002


async def test_a_fragmented_auth_frame_is_reassembled_and_authenticates(
    hub_server: RunningServer, world: World
) -> None:
    account = await world.account()
    auth = json.dumps({"type": "auth", "token": account.token, "device_id": account.device_id}).encode()
    client = await RawClient.connect(hub_server)
    try:
        client.send(client_frame(OP_TEXT, auth[:10], fin=False))
        client.send(client_frame(OP_PING, b"between"))  # a control frame may come between fragments
        client.send(client_frame(OP_CONT, auth[10:20], fin=False) + client_frame(OP_CONT, auth[20:]))
        assert await client.frame() == (OP_PONG, b"between")
        opcode, payload = await client.frame()
        assert opcode == OP_TEXT
        assert json.loads(payload)["type"] == "ready"
    finally:
        client.shut()


async def test_a_client_close_is_echoed_and_the_connection_ends(raw: RawClient) -> None:
    raw.send(client_frame(OP_CLOSE, (1000).to_bytes(2, "big") + b"bye"))
    code, _ = await raw.close_frame()
    assert code == 1000
    assert await raw.eof()


async def test_an_invalid_close_code_closes_with_1002(raw: RawClient) -> None:
    raw.send(client_frame(OP_CLOSE, (999).to_bytes(2, "big")))
    code, _ = await raw.close_frame()
    assert code == 1002


async def test_a_binary_frame_is_refused_and_the_socket_stays_up(
    hub_server: RunningServer, world: World
) -> None:
    account = await world.account()
    auth = json.dumps({"type": "auth", "token": account.token, "device_id": account.device_id}).encode()
    client = await RawClient.connect(hub_server)
    try:
        client.send(client_frame(OP_TEXT, auth))
        types = []
        while "drained" not in types:
            opcode, payload = await client.frame()
            types.append(json.loads(payload)["type"])
        client.send(client_frame(OP_BINARY, b"\x00\x01"))
        opcode, payload = await client.frame()
        assert (opcode, json.loads(payload)["code"]) == (OP_TEXT, "malformed")
        client.send(client_frame(OP_TEXT, b'{"type":"ping","nonce":"still-up"}'))
        opcode, payload = await client.frame()
        assert json.loads(payload) == {"type": "pong", "nonce": "still-up"}
    finally:
        client.shut()


async def test_an_upgrade_to_another_path_is_refused_with_403(hub_server: RunningServer) -> None:
    client = await RawClient.connect(hub_server, path="/not-the-hub")
    try:
        assert client.status == 403
    finally:
        client.shut()


async def test_an_unsupported_websocket_version_is_refused_with_426(hub_server: RunningServer) -> None:
    client = await RawClient.connect(hub_server, version="8")
    try:
        assert client.status == 426
    finally:
        client.shut()


async def test_keepalive_closes_a_client_that_never_answers_pings_and_keeps_one_that_does() -> None:
    env = {**HUB_TEST_ENV, "PEERPOST_WS_PING_INTERVAL_SECONDS": "0.2"}
    async with RunningServer(env=env) as server:
        silent = await RawClient.connect(server)
        answering = await RawClient.connect(server)

        async def answer_pings(count: int) -> int:
            """Answer pings until `count` were seen after the silent socket was closed."""
            after = 0
            while after < count:
                opcode, payload = await answering.frame()
                assert opcode == OP_PING
                answering.send(client_frame(OP_PONG, payload))
                after += silent_closed.is_set()
            return after

        silent_closed = asyncio.Event()
        answered = asyncio.create_task(answer_pings(2))
        try:
            opcode, _ = await silent.frame()
            assert opcode == OP_PING
            assert await silent.close_frame() == (1011, "keepalive ping timeout")
            silent_closed.set()
            assert await answered == 2  # two more intervals passed, and it is still served
            answering.send(client_frame(OP_PING, b"alive"))
            while (frame := await answering.frame()) != (OP_PONG, b"alive"):
                assert frame[0] == OP_PING
                answering.send(client_frame(OP_PONG, frame[1]))
        finally:
            answered.cancel()
            silent.shut()
            answering.shut()
