"""One real PeerPost peer inside a bed namespace, driven over stdin/stdout JSON lines.

It is the library's public `Peer` API (the same one `peerpost` and the web UI use) behind a small
command loop, so a test on the host can drive peers that live on other network hosts. Every line it
prints carries `t` (CLOCK_MONOTONIC, shared by all namespaces of one machine), so message latency
is the receiver's `t` minus the sender's.

Out:  {"kind": "ready", ...} once registered and online; {"kind": "reply", "id": n, "ok": ...,
      "result"|"error"} per command; {"kind": "event", "event": {...}} for every Peer event (a
      `link` event that opens also names its ICE pair).
In:   {"id": n, "cmd": "add_contact"|"accept"|"contacts"|"devices"|"connect"|"link"|"send"|
      "history", ...arguments}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from peer import Peer, PeerSettings, Profile
from peer.errors import PeerError
from peer.events import Event
from tests.support.keys import fixed_device_keys

PASSWORD = "correct horse battery"
RUN_LIMIT_S = 240.0  # an agent never outlives a forgotten test by more than this


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps({"t": time.monotonic(), **obj}, default=str) + "\n")
    sys.stdout.flush()


class Agent:
    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    def event_record(self, event: Event) -> dict[str, Any]:
        record = event.to_dict()
        if event.type == "link" and record.get("state") == "open":
            link = self.peer.link_to(record["device_id"])
            pair = link.selected_pair() if link is not None else None
            record["pair"] = pair.to_dict() if pair else None
        return record

    async def pump_events(self, queue: asyncio.Queue[Event | None]) -> None:
        while (event := await queue.get()) is not None:
            emit({"kind": "event", "event": self.event_record(event)})

    async def run_command(self, request: dict[str, Any]) -> None:
        handler = getattr(self, f"cmd_{request.get('cmd')}", None)
        if handler is None:
            emit(
                {"kind": "reply", "id": request.get("id"), "ok": False, "error": f"unknown command {request}"}
            )
            return
        args = {k: v for k, v in request.items() if k not in ("id", "cmd")}
        try:
            result = await handler(**args)
        except (PeerError, TimeoutError) as e:
            emit({"kind": "reply", "id": request["id"], "ok": False, "error": f"{type(e).__name__}: {e}"})
            return
        emit({"kind": "reply", "id": request["id"], "ok": True, "result": result})

    async def cmd_add_contact(self, who: str) -> dict[str, Any]:
        return (await self.peer.add_contact(who)).model_dump(mode="json")

    async def cmd_accept(self, user_id: int) -> dict[str, Any]:
        return (await self.peer.accept_contact(user_id)).model_dump(mode="json")

    async def cmd_contacts(self) -> list[dict[str, Any]]:
        return [c.model_dump(mode="json") for c in await self.peer.contacts()]

    async def cmd_devices(self, user_id: int) -> list[str]:
        return [d.device_id for d in await self.peer.devices(user_id)]

    async def cmd_connect(self, user_id: int, device_id: str, within: float) -> dict[str, Any]:
        started = time.monotonic()
        link = await self.peer.linkset.connect(user_id, device_id, within=within)
        pair = link.selected_pair()
        return {"setup_ms": (time.monotonic() - started) * 1000, "pair": pair.to_dict() if pair else None}

    async def cmd_link(self, device_id: str) -> dict[str, Any]:
        link = self.peer.link_to(device_id)
        if link is None:
            return {"state": None, "pair": None}
        pair = link.selected_pair()
        return {"state": str(link.state), "failure": link.failure, "pair": pair.to_dict() if pair else None}

    async def cmd_send(self, to: int, bodies: list[str]) -> list[dict[str, Any]]:
        """Send several texts at once (they share one link attempt); each with its own timing."""

        async def one(body: str) -> dict[str, Any]:
            started = time.monotonic()
            view = await self.peer.send_text(to, body)
            return {**view.to_dict(), "t_send": started, "send_ms": (time.monotonic() - started) * 1000}

        return list(await asyncio.gather(*(one(b) for b in bodies)))

    async def cmd_history(self, to: int) -> list[dict[str, Any]]:
        return [m.to_dict() for m in await self.peer.history(to, limit=1000)]


async def main(args: argparse.Namespace) -> None:
    settings = PeerSettings(
        ice_servers=None,  # ask the server: STUN/TURN urls and TURN REST credentials from GET /ice
        link_deadline=args.link_deadline,
        ack_deadline=args.ack_deadline,
        server_deadline=15.0,
        keepalive=args.keepalive,
        dead_after=args.dead_after,
        reconnect_base=0.1,
        reconnect_cap=1.0,
        device_keys=fixed_device_keys(args.keys),
        scrypt_n=1 << 10,
    )
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with (
        asyncio.timeout(RUN_LIMIT_S),
        Peer(Profile.at(Path(args.profile)), args.server, settings=settings) as peer,
    ):
        agent = Agent(peer)
        queue = peer.subscribe()
        async with asyncio.TaskGroup() as tasks:
            pump = tasks.create_task(agent.pump_events(queue))
            me = await peer.register(args.username, f"{args.username}@example.org", PASSWORD)
            if not await peer.wait_online(15):
                raise SystemExit("the peer did not get online within 15 s")
            emit({"kind": "ready", "user_id": me.user_id, "device_id": me.device_id})
            while line := await reader.readline():
                tasks.create_task(agent.run_command(json.loads(line)))
            # stdin closed: the test is done with us; let running commands end with the peer
            peer.unsubscribe(queue)
            pump.cancel()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--username", required=True)
    parser.add_argument("--profile", required=True)
    parser.add_argument("--keys", type=int, required=True, help="index of the committed test device keys")
    parser.add_argument("--link-deadline", type=float, default=6.0)
    parser.add_argument("--ack-deadline", type=float, default=1.5)
    parser.add_argument("--keepalive", type=float, default=0.5)
    parser.add_argument("--dead-after", type=float, default=3.0)
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
