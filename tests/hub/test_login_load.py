"""The event loop stays responsive while logins hash passwords (bcrypt cost 12, in threads)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.hub.world import PASSWORD, World
from tests.support.server import RunningServer


async def test_ws_ping_round_trip_stays_under_50ms_while_five_logins_run(tmp_path: Path) -> None:
    env = {"PEERPOST_BCRYPT_ROUNDS": "12", "PEERPOST_LOGIN_ATTEMPTS_PER_ADDRESS": "100"}
    async with RunningServer(tmp_path / "srv", env=env) as server, World(server.url, server.ws_url) as world:
        watcher = await world.account()
        others = [await world.account() for _ in range(5)]
        ws = await world.connect(watcher)

        async def login(name: str) -> int:
            r = await world.http.post("/token", data={"username": name, "password": PASSWORD})
            return r.status_code

        logins = [asyncio.create_task(login(o.username)) for o in others]
        rtts: list[float] = []
        try:
            while not all(t.done() for t in logins):
                nonce = str(len(rtts))
                started = time.perf_counter()
                await ws.send({"type": "ping", "nonce": nonce})
                await ws.expect("pong", where=lambda f, n=nonce: f["nonce"] == n)
                rtts.append((time.perf_counter() - started) * 1000)
                await asyncio.sleep(0.01)  # pacing between probes, not synchronisation
            statuses = [await t for t in logins]
        finally:
            for t in logins:
                t.cancel()
        assert statuses == [200] * 5
        assert len(rtts) >= 10, "the logins finished before the loop could be probed"
        assert max(rtts) < 50, f"ping RTTs (ms) while logging in: {sorted(rtts)[-5:]}"
        await ws.close()
