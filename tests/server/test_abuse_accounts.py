"""Accounts under abuse, through a real server (issue #11, findings 4, 9-13, 18).

Clients come from different loopback addresses (127.0.0.x) so per-address limits can be seen: the
server takes the TCP peer address as the client's (no proxy headers are trusted in tests)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from tests.hub.world import PASSWORD, World
from tests.support.server import RunningServer

ACCOUNT_ENV = {
    "PEERPOST_LOGIN_ATTEMPTS_PER_USERNAME": "5",
    "PEERPOST_LOGIN_ATTEMPTS_PER_ADDRESS": "20",
    "PEERPOST_LOGIN_FAILURES_PER_ACCOUNT": "8",
    "PEERPOST_LOGIN_BACKOFF_MAX_SECONDS": "0.2",
    "PEERPOST_PRESENCE_GRACE_SECONDS": "0",
}


@pytest.fixture(scope="module")
def account_server() -> Iterator[RunningServer]:
    with RunningServer(env=ACCOUNT_ENV) as running:
        yield running


@pytest.fixture
async def world(account_server: RunningServer) -> AsyncIterator[World]:
    async with World(account_server.url, account_server.ws_url) as built:
        yield built


def client_from(server: RunningServer, address: str) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(base_url=server.url, transport=transport, timeout=30)


async def login(http: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await http.post("/token", data={"username": username, "password": password})


# -- 9. wrong passwords from one address do not lock the owner out ------------------------------


async def test_wrong_passwords_from_one_address_lock_out_only_that_address(
    world: World, account_server: RunningServer
) -> None:
    alice = await world.account()
    async with (
        client_from(account_server, "127.0.0.21") as stranger,
        client_from(account_server, "127.0.0.22") as home,
    ):
        for _ in range(5):
            assert (await login(stranger, alice.username, "wrong password")).status_code == 401
        refused = await login(stranger, alice.username, PASSWORD)
        assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
        assert "Retry-After" in refused.headers
        assert (await login(home, alice.username, PASSWORD)).status_code == 200


async def test_guessing_from_many_addresses_only_slows_the_account_never_locks_it(
    world: World, account_server: RunningServer
) -> None:
    alice = await world.account()
    for n in range(4):  # 4 addresses x 4 failures: twice the account-wide ceiling of 8
        async with client_from(account_server, f"127.0.1.{n + 1}") as guesser:
            for _ in range(4):
                assert (await login(guesser, alice.username, "wrong password")).status_code == 401
    async with client_from(account_server, "127.0.1.99") as home:
        assert (await login(home, alice.username, PASSWORD)).status_code == 200


# -- 10. the current password of a profile change goes through the same limiter ---------------


async def test_guessing_the_current_password_in_a_profile_change_is_limited(
    world: World, account_server: RunningServer
) -> None:
    alice = await world.account()
    async with client_from(account_server, "127.0.0.31") as http:
        codes = []
        for _ in range(8):
            r = await http.patch(
                "/users/me",
                json={"password": "new password 1", "current_password": "guess"},
                headers=alice.auth,
            )
            codes.append(r.status_code)
        assert codes[:5] == [403] * 5
        assert 429 in codes[5:]
        no_password = await http.patch("/users/me", json={"email": "x@example.org"}, headers=alice.auth)
        assert no_password.status_code == 403 and no_password.json()["code"] == "current_password_required"


# -- 11. a refresh family revoked for reuse takes its access tokens with it -----------------------


async def test_access_tokens_of_a_family_revoked_for_reuse_die_at_once(world: World) -> None:
    alice = await world.account()
    first = (await login(world.http, alice.username, PASSWORD)).json()
    other = (await login(world.http, alice.username, PASSWORD)).json()  # another device's login
    rotated = (await world.http.post("/token/refresh", json={"refresh_token": first["refresh_token"]})).json()
    url = f"{world.ws_url}?device_id={alice.device_id}"
    ws = await websockets.connect(
        url, additional_headers={"Authorization": f"Bearer {rotated['access_token']}"}
    )
    async with asyncio.timeout(10):
        while '"ready"' not in await ws.recv():
            pass
    stolen = await world.http.post("/token/refresh", json={"refresh_token": first["refresh_token"]})
    assert stolen.status_code == 401 and stolen.json()["code"] == "refresh_reused"
    for token in (first["access_token"], rotated["access_token"]):
        r = await world.http.get("/users/me", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 401 and r.json()["code"] == "token_revoked"
    with pytest.raises(websockets.ConnectionClosed) as closed:  # the socket opened with it closes too
        async with asyncio.timeout(10):
            while True:
                await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    mine = await world.http.get("/users/me", headers={"Authorization": f"Bearer {other['access_token']}"})
    assert mine.status_code == 200  # the other login's family is untouched


# -- 12. look-alike names ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("paypal", "paypaI"),
        ("paypal", "PAYPAL"),
        ("microsoft", "rnicrosoft"),
        ("google", "g00gle"),
        ("bill", "bi1l"),
    ],
)
async def test_look_alike_names_are_one_name(world: World, first: str, second: str) -> None:
    suffix = secrets.token_hex(3)
    a = await world.http.post(
        "/users/",
        json={"username": first + suffix, "email": f"{first}{suffix}@example.org", "password": PASSWORD},
    )
    assert a.status_code == 201, a.text
    b = await world.http.post(
        "/users/",
        json={"username": second + suffix, "email": f"{second}{suffix}@example.net", "password": PASSWORD},
    )
    assert b.status_code == 409 and b.json()["code"] == "username_taken"
    assert first + suffix in b.json()["detail"] or "already taken" in b.json()["detail"]


async def test_names_that_only_look_different_to_a_machine_are_both_allowed(world: World) -> None:
    suffix = secrets.token_hex(3)
    for name in (f"anna{suffix}", f"hanna{suffix}", f"anna_{suffix}"):
        r = await world.http.post(
            "/users/", json={"username": name, "email": f"{name}@example.org", "password": PASSWORD}
        )
        assert r.status_code == 201, r.text


# -- 18. device ids of deleted accounts are never published again -------------------------------


async def test_a_deleted_accounts_device_id_cannot_be_published_again(world: World) -> None:
    gone = await world.account()
    device = gone.device_id
    assert (await world.http.delete("/users/self", headers=gone.auth)).status_code == 204
    newcomer = await world.account(devices=0)
    bundle = await _bundle(device)
    r = await world.http.post("/me/devices", json=bundle, headers=newcomer.auth)
    assert r.status_code == 409 and r.json()["code"] == "device_taken"


async def _bundle(device_id: str) -> dict:
    import time

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    from signalling.protocol import b64encode
    from tests.hub.world import rsa_public_der

    identity = ed25519.Ed25519PrivateKey.generate()
    public = identity.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {
        "device_id": device_id,
        "identity_key": b64encode(public),
        "encryption_key": b64encode(rsa_public_der()),
        "created_at": int(time.time()),
        "signature": b64encode(identity.sign(device_id.encode())),
    }


# -- 13. block, and the decline cool-down --------------------------------------------------------


async def test_a_blocked_user_reaches_the_blocker_in_no_way(world: World) -> None:
    alice, mallory = await world.account(), await world.account()
    await world.befriend(mallory, alice)
    watcher = await world.connect(alice)
    r = await world.http.post("/me/blocks", json={"username": mallory.username}, headers=alice.auth)
    assert r.status_code == 201 and r.json()["user_id"] == mallory.user_id
    told = await watcher.expect("contact", where=lambda f: f["event"] == "blocked")
    assert told["user_id"] == mallory.user_id and told["by_me"] is True
    listed = (await world.http.get("/me/blocks", headers=alice.auth)).json()
    assert [b["user_id"] for b in listed] == [mallory.user_id]

    # Requests: mallory's new request is hers alone; alice never sees or hears it.
    ask = await world.http.post("/me/contacts/", json={"friend_id": alice.user_id}, headers=mallory.auth)
    assert ask.status_code == 201
    assert (await world.http.get("/me/contacts/requests/incoming", headers=alice.auth)).json() == []
    accept = await world.http.post(f"/me/contacts/{mallory.user_id}/accept", headers=alice.auth)
    assert accept.status_code == 404
    # Messages and signals: refused as to any stranger.
    bad = await world.connect(mallory)
    await bad.send(bad.send_frame([(alice.user_id, alice.device_id)], b"hello?"))
    assert (await bad.expect("error"))["code"] == "not_a_contact"
    await bad.send(
        {
            "type": "signal",
            "kind": "offer",
            "to_user": alice.user_id,
            "to_device": alice.device_id,
            "payload": {},
        }
    )
    assert (await bad.expect("error"))["code"] == "not_a_contact"
    await bad.close()
    # Presence: mallory came and went; alice heard nothing of it (nor of the request).
    nonce = secrets.token_hex(4)
    await watcher.send({"type": "ping", "nonce": nonce})
    await watcher.expect("pong", where=lambda f: f.get("nonce") == nonce)
    leaked = [f for f in watcher.backlog if f.get("user_id") == mallory.user_id]
    assert leaked == [], leaked
    # Adding a blocked user is refused until the block is lifted.
    again = await world.http.post("/me/contacts/", json={"friend_id": mallory.user_id}, headers=alice.auth)
    assert again.status_code == 409 and again.json()["code"] == "blocked"
    assert (await world.http.delete(f"/me/blocks/{mallory.user_id}", headers=alice.auth)).status_code == 204
    await watcher.expect("contact", where=lambda f: f["event"] == "unblocked")
    assert (await world.http.get("/me/blocks", headers=alice.auth)).json() == []
    await watcher.close()


async def test_a_declined_request_cannot_be_repeated_during_the_cool_down(world: World) -> None:
    alice, pest = await world.account(), await world.account()
    for attempt in range(2):
        ask = await world.http.post("/me/contacts/", json={"friend_id": alice.user_id}, headers=pest.auth)
        if attempt == 0:
            assert ask.status_code == 201
            assert (
                await world.http.post(f"/me/contacts/{pest.user_id}/decline", headers=alice.auth)
            ).status_code == 204
            # The asker deletes the declined row to ask afresh ...
            assert (
                await world.http.delete(f"/me/contacts/{alice.user_id}", headers=pest.auth)
            ).status_code == 204
        else:  # ... and is told to wait.
            assert ask.status_code == 429 and "declined" in ask.json()["detail"]
            assert int(ask.headers["Retry-After"]) > 3600
    assert (await world.http.get("/me/contacts/requests/incoming", headers=alice.auth)).json() == []


# -- 4. registration flood -----------------------------------------------------------------------


def test_registrations_are_limited_per_address_and_overall(tmp_path: Path) -> None:
    env = {"PEERPOST_REGISTRATIONS_PER_ADDRESS": "3", "PEERPOST_REGISTRATIONS_GLOBAL": "5"}

    async def run(server: RunningServer) -> None:
        async def register(http: httpx.AsyncClient) -> httpx.Response:
            name = f"r{secrets.token_hex(5)}"
            return await http.post(
                "/users/", json={"username": name, "email": f"{name}@example.org", "password": PASSWORD}
            )

        async with client_from(server, "127.0.2.1") as one, client_from(server, "127.0.2.2") as two:
            assert [(await register(one)).status_code for _ in range(4)] == [201, 201, 201, 429]
            second = [await register(two) for _ in range(3)]
            assert [r.status_code for r in second] == [201, 201, 429]
            assert "on this server" in second[-1].json()["detail"]

    with RunningServer(tmp_path / "s", env=env) as server:
        asyncio.run(run(server))


def test_a_login_during_a_registration_flood_is_served_and_the_flood_is_refused(tmp_path: Path) -> None:
    env = {"PEERPOST_BCRYPT_ROUNDS": "10", "PEERPOST_BCRYPT_CONCURRENCY": "1", "PEERPOST_PASSWORD_QUEUE": "2"}

    async def run(server: RunningServer) -> None:
        async with client_from(server, "127.0.3.1") as http:
            name = f"l{secrets.token_hex(5)}"
            created = await http.post(
                "/users/", json={"username": name, "email": f"{name}@example.org", "password": PASSWORD}
            )
            assert created.status_code == 201

            async def register(i: int) -> int:
                async with client_from(server, f"127.0.4.{i + 1}") as flood:
                    user = f"f{secrets.token_hex(5)}"
                    r = await flood.post(
                        "/users/",
                        json={"username": user, "email": f"{user}@example.org", "password": PASSWORD},
                    )
                    return r.status_code

            flood = [asyncio.ensure_future(register(i)) for i in range(30)]
            logged_in = await login(http, name, PASSWORD)
            codes = await asyncio.gather(*flood)
            assert logged_in.status_code == 200
            assert 503 in codes  # the short queue refuses the rest at once ...
            assert codes.count(201) >= 1  # ... while some get through
            assert set(codes) <= {201, 503}

    with RunningServer(tmp_path / "s", env=env) as server:
        asyncio.run(run(server))
