"""A contact cannot plant mailbox rows that come back forever (issue #11, finding 17).

The server keys a row by the frame's `message_id`; a hostile contact sends an envelope whose header
carries another id. The receiving peer drops it (it is not what the frame claims) and acks the
frame's id, so the row is deleted instead of coming back on every connect.
"""

from __future__ import annotations

import asyncio
import json
import secrets

import websockets

from crypto import envelope as env
from crypto.payload import Text
from peer import Peer
from signalling.protocol import b64encode
from tests.peer.conftest import PASSWORD, World, fixed_keys


async def test_an_envelope_whose_header_id_is_not_the_frames_is_dropped_and_its_row_acked(
    world: World,
) -> None:
    alice, bob = await world.pair()
    alice_id, alice_device = alice.me.user_id, alice.me.device_id
    bob_id, bob_device = bob.me.user_id, bob.me.device_id
    token = alice._client.tokens.access_token
    await bob.close()
    await alice.close()  # alice's socket is now free for a hand-made one

    header_id, frame_id = secrets.token_hex(16), secrets.token_hex(16)
    sealed = env.seal(
        Text("planted"),
        env.LocalDevice(alice_id, alice_device, fixed_keys(0)),
        [env.Recipient(bob_id, bob_device, fixed_keys(1).encryption_public_der())],
        f"u:{bob_id}",
        message_id=header_id,
    )
    url = f"{world.server.ws_url}?device_id={alice_device}"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {token}"}) as ws:
        frame = {
            "type": "send",
            "ref": "r1",
            "message_id": frame_id,
            "envelope": b64encode(sealed),
            "recipients": [{"user_id": bob_id, "device_id": bob_device}],
        }
        await ws.send(json.dumps(frame))
        async with asyncio.timeout(10):
            while (answer := json.loads(await ws.recv()))["type"] != "accepted":
                assert answer["type"] != "error", answer

    again = world.peer("bob", 1)
    events = world.record(again)
    await again.unlock(PASSWORD)
    await again.wait_online(10)
    dropped = await events.wait_for(lambda e: e.type == "error" and frame_id in e.message)
    assert header_id in dropped.message
    assert [m.text for m in await again.history(alice_id)] == []
    await asyncio.wait_for(_drained(again, bob_device), 10)  # the frame's id was acked: row gone


async def _drained(peer: Peer, device_id: str) -> None:
    items = await peer._client.mailbox(device_id)
    while items:
        await asyncio.sleep(0.05)  # polling the external server, bounded by the caller's wait_for
        items = await peer._client.mailbox(device_id)
