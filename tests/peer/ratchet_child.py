"""A child process for the kill -9 tests: seals or opens pairwise messages in a loop on a real
local store, printing one line after each commit, until the parent kills it with SIGKILL.

    python -m tests.peer.ratchet_child send  DB PEER_USER PEER_DEVICE
    python -m tests.peer.ratchet_child receive DB INBOX_DIR

`send` seals "m<i>" to the peer and writes each sealed message into the store's `outbox` table in
the same transaction as the ratchet state. `receive` opens the files of INBOX_DIR in name order
(the same bytes may be handed again after a restart) and saves each message in its transaction.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from peer.localstore import LocalStore
from peer.prekeystock import PrekeyStock
from peer.sessions import Outcome, SessionManager, new_message_id
from tests.peer.sessionworld import STORAGE_KEY, store_text
from tests.support.keys import fixed_device_keys

DEVICES = {"alice-laptop-0": (1, 0), "bob-phone-00001": (2, 1)}


def inbox(folder: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(folder.iterdir())]


async def no_claim(user_id: int, device_id: str) -> None:
    raise AssertionError("the child only uses the session that exists")


async def main(argv: list[str]) -> None:
    role, db = argv[0], Path(argv[1])
    me = db.name.split(".")[0]
    user_id, key_index = DEVICES[me]
    keys = fixed_device_keys(key_index)
    pins = {(u, d): fixed_device_keys(k).identity_public_bytes() for d, (u, k) in DEVICES.items()}
    store = LocalStore(db, STORAGE_KEY)
    await store.open()
    sessions = SessionManager(
        store,
        keys,
        user_id,
        me,
        pinned=lambda u, d: pins.get((u, d)),
        claim=no_claim,
        prekeys=PrekeyStock(store, keys, me),
    )
    if role == "send":
        peer_user, peer_device = int(argv[2]), argv[3]
        i = 0
        while True:
            mid = new_message_id()

            def outbox(db, out, i: int = i) -> None:  # type: ignore[no-untyped-def]
                db.execute(
                    "INSERT INTO outbox (message_id, envelope, created_ms) VALUES (?,?,?)",
                    (out.message_id, out.data, i),
                )

            await sessions.seal(peer_user, peer_device, f"m{i}".encode(), mid, also=outbox)
            print(mid, flush=True)
            i += 1
    else:
        for data in inbox(Path(argv[2])):
            r = await sessions.open(data, store_with=store_text(store))
            assert r.outcome in (Outcome.DELIVERED, Outcome.DUPLICATE), r.reason
            print(r.outcome.value, r.message_id, flush=True)
        print("done", flush=True)
        await store.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
