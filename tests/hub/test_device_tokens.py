"""Tokens per device (issue 15, "devices"): revoking a device ends its tokens and sockets at once,
through a real server; the account's other devices keep working."""

from __future__ import annotations

import dataclasses
import json

import websockets

from signalling.protocol import CloseCode
from tests.hub.world import PASSWORD, Account, World


async def _device_login(world: World, account: Account, device_id: str) -> tuple[Account, str]:
    """A login naming `device_id`: the account as that device sees it, and its refresh token."""
    r = await world.http.post(
        "/token", data={"username": account.username, "password": PASSWORD, "device_id": device_id}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    return dataclasses.replace(account, token=body["access_token"], device_id=device_id), body[
        "refresh_token"
    ]


async def _refused(world: World, token: str, device_id: str) -> tuple[int | None, str]:
    async with websockets.connect(world.ws_url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token, "device_id": device_id}))
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed as exc:
            return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd is not None else (None, "")


async def test_revoking_a_device_ends_its_tokens_and_socket_and_the_other_device_keeps_going(
    world: World,
) -> None:
    alice = await world.account(devices=2)
    laptop, laptop_refresh = await _device_login(world, alice, alice.devices[0])
    phone, phone_refresh = await _device_login(world, alice, alice.devices[1])
    laptop_socket = await world.connect(laptop)
    phone_socket = await world.connect(phone)

    r = await world.http.delete(f"/me/devices/{laptop.device_id}", headers=phone.auth)
    assert r.status_code == 204

    code, _ = await laptop_socket.closed()
    assert code == CloseCode.ACCOUNT_GONE
    me = await world.http.get("/users/me", headers=laptop.auth)
    assert me.status_code == 401 and me.json()["code"] == "device_revoked"
    assert laptop.device_id in me.json()["detail"]
    renewed = await world.http.post("/token/refresh", json={"refresh_token": laptop_refresh})
    assert renewed.status_code == 401 and renewed.json()["code"] == "device_revoked"
    # The laptop's token opens no socket, not even as the account's other device.
    code, reason = await _refused(world, laptop.token, phone.device_id)
    assert code == CloseCode.UNAUTHORIZED and "token" in reason
    again = await world.http.post(
        "/token", data={"username": alice.username, "password": PASSWORD, "device_id": laptop.device_id}
    )
    assert again.status_code == 401 and again.json()["code"] == "device_revoked"

    # The phone: its socket is still up, its token and its refresh still work.
    await phone_socket.send({"type": "ping", "nonce": "still here"})
    assert (await phone_socket.expect("pong"))["nonce"] == "still here"
    assert (await world.http.get("/users/me", headers=phone.auth)).status_code == 200
    renewed = await world.http.post("/token/refresh", json={"refresh_token": phone_refresh})
    assert renewed.status_code == 200, renewed.text
    fresh = {"Authorization": f"Bearer {renewed.json()['access_token']}"}
    assert (await world.http.get(f"/users/{alice.user_id}/devices", headers=fresh)).status_code == 200
    await phone_socket.close()


async def test_a_login_that_names_no_device_keeps_the_accounts_tokens(world: World) -> None:
    alice = await world.account(devices=2)  # one login (naming none) published both devices
    r = await world.http.delete(f"/me/devices/{alice.devices[0]}", headers=alice.auth)
    assert r.status_code == 204
    assert (await world.http.get("/users/me", headers=alice.auth)).status_code == 200


async def test_a_devices_token_cannot_open_a_socket_as_another_device_of_the_account(world: World) -> None:
    alice = await world.account(devices=2)
    laptop, _ = await _device_login(world, alice, alice.devices[0])
    phone, _ = await _device_login(world, alice, alice.devices[1])

    code, reason = await _refused(world, laptop.token, phone.device_id)
    assert code == CloseCode.UNAUTHORIZED
    assert laptop.device_id in reason and phone.device_id in reason
    # Its own device it may speak as.
    own = await world.connect(laptop)
    await own.send({"type": "ping", "nonce": "mine"})
    assert (await own.expect("pong"))["nonce"] == "mine"
    await own.close()
