"""The WebSocket hub through a real server: live delivery, signalling, errors that keep the socket,
and the socket's life (replace, flood, logout, deletion)."""

from __future__ import annotations

import asyncio
import json

import websockets

from signalling.protocol import PROTOCOL_VERSION, CloseCode, b64decode
from tests.hub.world import DeviceClient, World, opaque_envelope
from tests.support.server import RunningServer


async def test_send_to_connected_contact_is_delivered_live_and_accepted(world: World) -> None:
    alice, bob = await world.account(), await world.account()
    await world.befriend(alice, bob)
    a, b = await world.connect(alice), await world.connect(bob)
    envelope = opaque_envelope()
    frame = a.send_frame([(bob.user_id, bob.device_id)], envelope, ref="r1")
    await a.send(frame)

    accepted = await a.expect("accepted")
    assert accepted["ref"] == "r1" and accepted["message_id"] == frame["message_id"]
    assert accepted["live"] == [bob.device_id] and accepted["queued"] == [bob.device_id]
    delivered = await b.expect("deliver")
    assert delivered["queued"] is False
    assert b64decode(delivered["envelope"]) == envelope
    assert (delivered["sender_user"], delivered["sender_device"]) == (alice.user_id, alice.device_id)
    await a.close()
    await b.close()


async def test_live_delivery_not_acked_comes_back_from_the_mailbox(world: World) -> None:
    alice, bob = await world.account(), await world.account()
    await world.befriend(alice, bob)
    a, b = await world.connect(alice), await world.connect(bob)
    frame = a.send_frame([(bob.user_id, bob.device_id)], opaque_envelope())
    await a.send(frame)
    await b.expect("deliver")
    await b.close()  # dropped before acking
    b = await world.connect(bob, wait_drained=False)
    assert b.ready["pending"] == 1
    again = await b.expect("deliver")
    assert again["message_id"] == frame["message_id"] and again["queued"] is True
    await b.send({"type": "ack", "message_id": frame["message_id"]})
    await b.expect("drained")
    await b.close()
    b = await world.connect(bob, wait_drained=False)
    assert b.ready["pending"] == 0
    await a.close()
    await b.close()


async def test_signal_is_relayed_to_a_contact_with_the_sender_filled_in(world: World) -> None:
    alice, bob = await world.account(), await world.account()
    await world.befriend(alice, bob)
    a, b = await world.connect(alice), await world.connect(bob)
    await a.send(
        {
            "type": "signal",
            "kind": "offer",
            "to_user": bob.user_id,
            "to_device": bob.device_id,
            "from_user": 999,  # a lie the server must overwrite
            "from_device": "forged-device",
            "payload": {"sdp": "v=0", "sig": "abc"},
        }
    )
    relayed = await b.expect("signal")
    assert relayed["from_user"] == alice.user_id and relayed["from_device"] == alice.device_id
    assert relayed["payload"] == {"sdp": "v=0", "sig": "abc"} and relayed["kind"] == "offer"
    await a.close()
    await b.close()


async def test_frames_to_strangers_and_unknown_devices_get_errors_and_the_socket_stays_up(
    world: World,
) -> None:
    alice, stranger, pending = await world.account(), await world.account(), await world.account()
    r = await world.http.post("/me/contacts/", json={"friend_id": pending.user_id}, headers=alice.auth)
    assert r.status_code == 201  # asked, never accepted
    a = await world.connect(alice)
    s = await world.connect(stranger)

    await a.send(
        {"type": "signal", "kind": "offer", "to_user": stranger.user_id, "to_device": stranger.device_id}
    )
    assert (await a.expect("error"))["code"] == "not_a_contact"
    await a.send(a.send_frame([(pending.user_id, pending.device_id)], opaque_envelope(), ref="p"))
    error = await a.expect("error")
    assert error["code"] == "not_a_contact" and error["ref"] == "p"
    await a.send(a.send_frame([(stranger.user_id, "dev-doesnotexist")], opaque_envelope(), ref="u"))
    error = await a.expect("error")
    assert error["code"] == "unknown_device" and error["ref"] == "u"
    assert error["device_id"] == "dev-doesnotexist"  # the device named in a field, not only in text
    # A device of someone else, claimed to be the stranger's: also unknown to that user.
    await a.send(a.send_frame([(stranger.user_id, alice.device_id)], opaque_envelope(), ref="w"))
    error = await a.expect("error")
    assert (error["code"], error["device_id"]) == ("unknown_device", alice.device_id)

    await a.send({"type": "ping", "nonce": "still-here"})
    assert (await a.expect("pong"))["nonce"] == "still-here"
    r = await world.http.get("/me/mailbox", params={"device_id": stranger.device_id}, headers=stranger.auth)
    assert r.status_code == 200 and r.json() == []  # nothing was stored for anyone
    assert s.backlog == []
    await a.close()
    await s.close()


async def test_malformed_unknown_and_oversize_frames_get_errors_and_the_socket_stays_up(
    world: World, hub_server: RunningServer
) -> None:
    alice = await world.account()
    a = await world.connect(alice)
    await a.send("this is not json")
    error = await a.expect("error")
    assert error["code"] == "malformed" and "JSON" in error["message"]
    await a.send(json.dumps({"type": "teleport", "to": 1}))
    assert (await a.expect("error"))["code"] == "malformed"
    await a.send(
        json.dumps({"type": "send", "ref": "m", "message_id": "nothex", "envelope": "x", "recipients": []})
    )
    error = await a.expect("error")
    assert error["code"] == "malformed" and error["ref"] == "m" and "message_id" in error["message"]
    await a.ws.send(b"\x00\x01binary")
    assert (await a.expect("error"))["code"] == "malformed"
    big = a.send_frame([(alice.user_id, alice.device_id)], b"\x00" * 70_000)  # over the 64 KiB limit
    await a.send(big)
    error = await a.expect("error")
    assert error["code"] == "too_large" and "65536" in error["message"]

    await a.send({"type": "ping", "nonce": "alive"})
    assert (await a.expect("pong"))["nonce"] == "alive"
    await a.close()


async def test_auth_by_first_frame_works_and_a_bad_token_is_closed_unauthorized(world: World) -> None:
    alice = await world.account()
    a = await world.connect(alice, by_frame=True)
    assert a.ready["user_id"] == alice.user_id and a.ready["device_id"] == alice.device_id
    await a.close()

    alice.token = alice.token[:-4] + "AAAA"
    bad = await _raw_connect(world)
    await bad.send(json.dumps({"type": "auth", "token": alice.token, "device_id": alice.device_id}))
    code, reason = await _closed(bad)
    assert code == CloseCode.UNAUTHORIZED and "token" in reason


async def test_a_device_of_another_account_is_refused(world: World) -> None:
    alice, bob = await world.account(), await world.account()
    bob.device_id = alice.device_id  # bob's token, alice's device
    ws = await _raw_connect(world)
    await ws.send(json.dumps({"type": "auth", "token": bob.token, "device_id": alice.device_id}))
    code, reason = await _closed(ws)
    assert code == CloseCode.UNAUTHORIZED and alice.device_id in reason


async def test_a_new_socket_replaces_the_old_one_for_the_same_device(world: World) -> None:
    alice, bob = await world.account(), await world.account()
    await world.befriend(alice, bob)
    first = await world.connect(bob)
    second = await world.connect(bob)
    code, _ = await first.closed()
    assert code == CloseCode.REPLACED
    a = await world.connect(alice)
    await a.send(a.send_frame([(bob.user_id, bob.device_id)], opaque_envelope()))
    accepted = await a.expect("accepted")
    assert accepted["live"] == [bob.device_id]
    assert (await second.expect("deliver"))["queued"] is False
    await a.close()
    await second.close()


async def test_logout_closes_the_live_socket_immediately(world: World) -> None:
    alice = await world.account()
    a = await world.connect(alice)
    loop = asyncio.get_running_loop()
    started = loop.time()
    r = await world.http.post("/logout", headers=alice.auth)
    assert r.status_code == 204
    code, _ = await a.closed(deadline=2.0)
    assert code == CloseCode.ACCOUNT_GONE
    assert loop.time() - started < 2.0
    again = await _raw_connect(world, alice.device_id, alice.token)
    assert (await _closed(again))[0] == CloseCode.UNAUTHORIZED  # the old token is dead too


async def test_account_deletion_closes_the_live_socket_immediately(world: World) -> None:
    alice = await world.account()
    a = await world.connect(alice)
    r = await world.http.delete("/users/self", headers=alice.auth)
    assert r.status_code == 204
    code, _ = await a.closed(deadline=2.0)
    assert code == CloseCode.ACCOUNT_GONE


async def test_presence_goes_to_accepted_contacts_only_with_a_grace_for_reconnects(world: World) -> None:
    alice, bob, carol = await world.account(), await world.account(), await world.account()
    await world.befriend(alice, bob)
    r = await world.http.post("/me/contacts/", json={"friend_id": carol.user_id}, headers=alice.auth)
    assert r.status_code == 201  # carol is only asked: she must learn nothing
    b = await world.connect(bob)
    c = await world.connect(carol)

    a = await world.connect(alice)
    online = await b.expect("presence")
    assert online == {**online, "user_id": alice.user_id, "device_id": alice.device_id, "online": True}
    contacts = (await world.http.get("/me/contacts/", headers=bob.auth)).json()
    assert [x["online"] for x in contacts if x["user_id"] == alice.user_id] == [True]

    # Drop and come back inside the grace (0.5 s): bob hears nothing.
    await a.close()
    a = await world.connect(alice)
    await a.close()  # now gone for good
    offline = await b.expect("presence", deadline=3.0)
    assert offline["user_id"] == alice.user_id and offline["online"] is False
    assert offline["last_seen"] is not None
    # Between the two edges bob saw no second "online": the reconnect stayed quiet.
    assert [f for f in b.backlog if f["type"] == "presence"] == []

    await c.send({"type": "ping", "nonce": "sync"})
    await c.expect("pong")
    assert [f for f in c.backlog if f["type"] == "presence"] == []
    me = (await world.http.get("/users/me", headers=alice.auth)).json()
    assert me["last_seen"] is not None
    await b.close()
    await c.close()


async def test_a_flood_closes_the_socket_with_rate_limited(tmp_path) -> None:
    env = {"PEERPOST_WS_RATE_PER_SECOND": "20", "PEERPOST_WS_RATE_BURST": "40"}
    async with (
        RunningServer(tmp_path / "flood", env=env) as server,
        World(server.url, server.ws_url) as world,
    ):
        alice = await world.account()
        a = await world.connect(alice)
        for i in range(200):
            try:
                await a.send({"type": "ping", "nonce": str(i)})
            except Exception:
                break
        code, reason = await a.closed()
        assert code == CloseCode.RATE_LIMITED
        assert "too many frames" in reason and "20" in reason
        # A calm client on the same server is untouched.
        calm = await world.connect(alice)
        await calm.send({"type": "ping"})
        await calm.expect("pong")
        await calm.close()


async def test_acking_a_large_backlog_at_once_is_not_a_flood(tmp_path) -> None:
    env = {"PEERPOST_WS_RATE_PER_SECOND": "20", "PEERPOST_WS_RATE_BURST": "40"}
    async with RunningServer(tmp_path / "acks", env=env) as server, World(server.url, server.ws_url) as world:
        bob, senders = await world.account(), [await world.account() for _ in range(2)]
        for sender in senders:  # two senders, each within its own budget: 70 rows for bob
            await world.befriend(sender, bob)
            s = await world.connect(sender)
            for _ in range(35):
                await s.send(s.send_frame([(bob.user_id, bob.device_id)], opaque_envelope(64)))
            for _ in range(35):
                await s.expect("accepted")
            await s.close()
        b = await world.connect(bob, wait_drained=False)
        assert b.ready["pending"] == 70
        for _ in range(70):  # 70 acks as fast as they come: past the burst of 40, yet legitimate
            frame = await b.expect("deliver")
            await b.send({"type": "ack", "message_id": frame["message_id"]})
        await b.send({"type": "ping", "nonce": "done"})
        assert (await b.expect("pong"))["nonce"] == "done"
        for _ in range(45):  # acks of nothing delivered are charged like any frame
            await b.send({"type": "ack", "message_id": "0" * 32})
        assert (await b.closed())[0] == CloseCode.RATE_LIMITED


async def _raw_connect(world: World, device_id: str | None = None, token: str | None = None):
    import websockets

    if device_id is None:
        return await websockets.connect(world.ws_url)
    return await websockets.connect(
        f"{world.ws_url}?device_id={device_id}", additional_headers={"Authorization": f"Bearer {token}"}
    )


async def _closed(ws) -> tuple[int | None, str]:
    import websockets

    async with asyncio.timeout(5):
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed as exc:
            return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")


async def test_revoking_a_device_closes_its_socket_and_senders_get_unknown_device(world: World) -> None:
    alice, bob = await world.account(), await world.account(devices=2)
    await world.befriend(alice, bob)
    a = await world.connect(alice)
    await a.send(a.send_frame([(bob.user_id, bob.devices[0])], opaque_envelope()))
    await a.expect("accepted")  # the permission is cached now; revocation must still win
    doomed, other = await world.connect(bob, bob.devices[0]), await world.connect(bob, bob.devices[1])
    r = await world.http.delete(f"/me/devices/{bob.devices[0]}", headers=bob.auth)
    assert r.status_code == 204
    assert (await doomed.closed(deadline=2.0))[0] == CloseCode.ACCOUNT_GONE
    await a.send(a.send_frame([(bob.user_id, bob.devices[0])], opaque_envelope(), ref="late"))
    error = await a.expect("error")
    assert error["code"] == "unknown_device" and error["ref"] == "late"
    await other.send({"type": "ping"})
    await other.expect("pong")  # the user's other device is untouched
    await a.close()
    await other.close()


async def test_a_signal_to_a_device_that_is_not_connected_names_the_device(world: World) -> None:
    alice, bob = await world.account(), await world.account()
    await world.befriend(alice, bob)
    a = await world.connect(alice)  # bob's device is published but offline
    await a.send({"type": "signal", "kind": "offer", "to_user": bob.user_id, "to_device": bob.device_id})
    error = await a.expect("error")
    assert (error["code"], error["device_id"], error["ref"]) == ("unknown_device", bob.device_id, None)


async def test_ready_names_the_protocol_and_an_unspoken_one_is_refused_with_4426(world: World) -> None:
    alice = await world.account()
    a = await world.connect(alice)
    assert a.ready["protocol"] == PROTOCOL_VERSION
    by_frame = DeviceClient(world.ws_url, alice, alice.device_id)
    await by_frame.open(by_frame=True)  # an auth frame without `protocol` speaks 1
    assert by_frame.ready["protocol"] == PROTOCOL_VERSION
    future = DeviceClient(world.ws_url + "?protocol=99", alice, alice.device_id)
    future.ws = await websockets.connect(future.ws_url, max_size=None)
    await future.send({"type": "auth", "token": alice.token, "device_id": alice.device_id})
    code, reason = await future.closed()
    assert code == CloseCode.UNSUPPORTED_PROTOCOL and "speaks 1" in reason
