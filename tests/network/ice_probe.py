"""A bare aiortc endpoint run inside one bed namespace: proves what ICE alone achieves there.

Talks JSON lines: the offerer prints its offer on stdout and reads the answer on stdin; the
answerer reads the offer and prints its answer. Both then print one `result` line: whether the data
channel opened, set-up time, and the selected candidate pair; the offerer also measures round trips
over the channel. It reads aioice internals for the pair on purpose: this is the reference that
PeerPost's own report is checked against, and it must not depend on PeerPost.

    python -m tests.network.ice_probe --role offer --ice '[{"urls": ["stun:100.64.0.1:3478"]}]'
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import sys
import time
from typing import Any

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription

HOLD_LIMIT_S = 120.0  # an endpoint never outlives a forgotten orchestrator by more than this


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def selected_pair(pc: RTCPeerConnection) -> dict[str, Any] | None:
    ice = pc.sctp.transport.transport if pc.sctp else None
    if ice is None:
        return None
    connection = ice._connection  # aioice.Connection
    pair = connection._nominated.get(1)
    if pair is None:
        return None
    local, remote = pair.local_candidate, pair.remote_candidate
    return {
        "local_type": local.type,
        "local_address": f"{local.host}:{local.port}",
        "remote_type": remote.type,
        "remote_address": f"{remote.host}:{remote.port}",
        "relay_transport": connection.turn_transport if local.type == "relay" else None,
    }


async def stdin_reader() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def read_json(reader: asyncio.StreamReader, wait_s: float) -> dict[str, Any]:
    async with asyncio.timeout(wait_s):
        line = await reader.readline()
    if not line:
        raise SystemExit("peer went away before sending its description")
    return json.loads(line)


async def run(role: str, ice: list[dict[str, Any]], wait_s: float, pings: int) -> None:
    reader = await stdin_reader()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[RTCIceServer(**s) for s in ice]))
    opened = asyncio.Event()
    channel_box: list[Any] = []
    echoes: asyncio.Queue[str] = asyncio.Queue()
    started = time.monotonic()
    try:
        if role == "offer":
            channel = pc.createDataChannel("probe")
            channel_box.append(channel)
            channel.on("open", opened.set)
            channel.on("message", echoes.put_nowait)
            await pc.setLocalDescription(await pc.createOffer())
            emit({"type": "offer", "sdp": pc.localDescription.sdp, "gather_ms": _ms(started)})
            answer = await read_json(reader, wait_s)
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        else:

            @pc.on("datachannel")
            def _on_channel(channel: Any) -> None:
                channel_box.append(channel)
                channel.on("message", lambda message: channel.send(message))
                opened.set()  # the answering side may never see "open" (aiortc #1228)

            offer = await read_json(reader, wait_s)
            started = time.monotonic()
            await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            emit({"type": "answer", "sdp": pc.localDescription.sdp, "gather_ms": _ms(started)})
        try:
            async with asyncio.timeout(wait_s):
                await opened.wait()
        except TimeoutError:
            emit({"type": "result", "connected": False, "ice_state": pc.iceConnectionState})
            return
        setup_ms = _ms(started)
        rtts: list[float] = []
        if role == "offer":
            channel = channel_box[0]
            async with asyncio.timeout(wait_s):
                for i in range(pings):
                    sent = time.monotonic()
                    channel.send(f"ping {i}")
                    while await echoes.get() != f"ping {i}":
                        pass
                    rtts.append(_ms(sent))
        emit(
            {
                "type": "result",
                "connected": True,
                "setup_ms": setup_ms,
                "rtt_ms": rtts,
                "pair": selected_pair(pc),
            }
        )
        if role == "offer":
            await answer_echo_requests(reader, channel_box[0], echoes)
        else:
            async with asyncio.timeout(HOLD_LIMIT_S):
                await reader.read()  # keep echoing until the orchestrator closes stdin
    finally:
        await pc.close()


async def answer_echo_requests(
    reader: asyncio.StreamReader, channel: Any, echoes: asyncio.Queue[str]
) -> None:
    """Until stdin closes: on each `{"cmd": "echo", "within": s}` line, send one message and say
    whether its echo came back in time (the orchestrator breaks the path in between)."""
    async with asyncio.timeout(HOLD_LIMIT_S):
        for n in itertools.count():
            line = await reader.readline()
            if not line:
                return
            within = float(json.loads(line)["within"])
            sent = time.monotonic()
            ok = False
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    channel.send(f"again {n}")
                    while await echoes.get() != f"again {n}":
                        pass
                    ok = True
            emit({"type": "echo", "ok": ok, "ms": _ms(sent) if ok else None})


def _ms(since: float) -> float:
    return round((time.monotonic() - since) * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", choices=["offer", "answer"], required=True)
    parser.add_argument("--ice", required=True, help="JSON list of RTCIceServer dicts")
    parser.add_argument("--timeout", type=float, default=12.0)
    parser.add_argument("--pings", type=int, default=20)
    args = parser.parse_args()
    if os.environ.get("ICE_PROBE_DEBUG"):
        logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    asyncio.run(run(args.role, json.loads(args.ice), args.timeout, args.pings))


if __name__ == "__main__":
    main()
