"""Login, refresh with rotation, logout, token checks, and login throttling."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from fastapi import FastAPI
from jose import jwt
from sqlalchemy import select, update

from signalling.protocol import CloseCode
from signalling.ratelimit import SlidingWindowLimiter
from store.models import RefreshToken, User, utcnow
from tests.server.conftest import PASSWORD, Account, AppFactory, client_for, login, register


def _secret(app: FastAPI) -> str:
    return (app.state.settings.data_dir / "jwt-secret").read_text().strip()


async def test_login_returns_a_bearer_pair_and_records_address_and_port(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    created = await register(client, "alice")
    async with app.state.sessions() as session:
        await session.execute(update(User).values(last_address=None, last_port=None))
        await session.commit()
    async with client_for(app, ("198.51.100.9", 61000)) as other_client:
        response = await login(other_client, "alice")
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == app.state.settings.access_token_ttl_seconds
    assert body["refresh_token"]
    claims = jwt.decode(body["access_token"], _secret(app), algorithms=["HS256"])
    assert claims["sub"] == str(created.json()["id"])
    assert claims["ver"] == 0
    assert len(claims["jti"]) == 32
    assert claims["exp"] - claims["iat"] == app.state.settings.access_token_ttl_seconds
    async with app.state.sessions() as session:
        user = await session.get(User, created.json()["id"])
        assert (user.last_address, user.last_port) == ("198.51.100.9", 61000)
        assert user.last_seen is not None


async def test_login_is_case_insensitive_on_the_username(client: httpx.AsyncClient, alice: Account) -> None:
    assert (await login(client, "ALICE")).status_code == 200


async def test_login_with_wrong_password_or_unknown_user_is_the_same_401(
    client: httpx.AsyncClient, alice: Account
) -> None:
    wrong = await login(client, "alice", "not the password")
    unknown = await login(client, "nobody", PASSWORD)
    silly = await login(client, "no spaces allowed", PASSWORD)
    for response in (wrong, unknown, silly):
        assert response.status_code == 401
        assert response.json() == {"detail": "Wrong username or password.", "code": "bad_credentials"}
        assert response.headers["www-authenticate"] == "Bearer"


async def test_login_without_form_fields_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/token", data={"username": "alice"})
    assert response.status_code == 422
    assert response.json()["detail"] == "Invalid request: password: is required."


async def test_refresh_rotates_and_the_old_token_is_spent(client: httpx.AsyncClient, alice: Account) -> None:
    first = await client.post("/token/refresh", json={"refresh_token": alice.refresh_token})
    assert first.status_code == 200
    pair = first.json()
    assert pair["refresh_token"] != alice.refresh_token
    me = await client.get("/users/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert me.status_code == 200
    second = await client.post("/token/refresh", json={"refresh_token": pair["refresh_token"]})
    assert second.status_code == 200


async def test_reusing_a_spent_refresh_token_revokes_the_whole_family(
    client: httpx.AsyncClient, alice: Account
) -> None:
    rotated = (await client.post("/token/refresh", json={"refresh_token": alice.refresh_token})).json()
    replay = await client.post("/token/refresh", json={"refresh_token": alice.refresh_token})
    assert replay.status_code == 401
    assert replay.json()["code"] == "refresh_reused"
    # the legitimate holder of the newer token is signed out too
    later = await client.post("/token/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert later.status_code == 401
    assert later.json()["code"] == "invalid_refresh"


async def test_reuse_does_not_touch_other_logins(client: httpx.AsyncClient, alice: Account) -> None:
    other_login = (await login(client, "alice")).json()
    await client.post("/token/refresh", json={"refresh_token": alice.refresh_token})
    await client.post("/token/refresh", json={"refresh_token": alice.refresh_token})  # reuse
    still_fine = await client.post("/token/refresh", json={"refresh_token": other_login["refresh_token"]})
    assert still_fine.status_code == 200


async def test_unknown_and_expired_refresh_tokens_are_401(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    unknown = await client.post("/token/refresh", json={"refresh_token": "made-up"})
    assert unknown.status_code == 401
    assert unknown.json()["code"] == "invalid_refresh"
    async with app.state.sessions() as session:
        await session.execute(update(RefreshToken).values(expires_at=utcnow()))
        await session.commit()
    expired = await client.post("/token/refresh", json={"refresh_token": alice.refresh_token})
    assert expired.status_code == 401
    assert expired.json()["code"] == "invalid_refresh"


async def test_refresh_body_must_be_json_with_refresh_token(client: httpx.AsyncClient) -> None:
    response = await client.post("/token/refresh", json={})
    assert response.status_code == 422
    assert response.json()["detail"] == "Invalid request: refresh_token: is required."


async def test_refresh_tokens_are_stored_only_as_hashes(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    async with app.state.sessions() as session:
        stored = (await session.execute(select(RefreshToken.token_hash))).scalars().all()
    assert stored
    assert all(len(h) == 32 for h in stored)
    assert alice.refresh_token.encode() not in b"".join(stored)


async def test_logout_stops_access_and_refresh_tokens_at_once_and_closes_sockets(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    second_session = (await login(client, "alice")).json()
    response = await client.post("/logout", headers=alice.headers)
    assert response.status_code == 204
    for token in (alice.access_token, second_session["access_token"]):
        after = await client.get("/users/me", headers={"Authorization": f"Bearer {token}"})
        assert after.status_code == 401
        assert after.json()["code"] == "token_revoked"
    for refresh in (alice.refresh_token, second_session["refresh_token"]):
        assert (await client.post("/token/refresh", json={"refresh_token": refresh})).status_code == 401
    assert app.state.hub.users == [(alice.id, CloseCode.ACCOUNT_GONE, "logged out")]
    assert (await login(client, "alice")).status_code == 200  # logging in again works


async def test_logout_needs_a_valid_token(client: httpx.AsyncClient) -> None:
    assert (await client.post("/logout")).status_code == 401
    assert (await client.post("/logout", headers={"Authorization": "Bearer nonsense"})).json()["code"] == (
        "invalid_token"
    )


async def test_expired_access_token_is_401_token_expired(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    now = int(time.time())
    claims = {
        "sub": str(alice.id),
        "ver": 0,
        "jti": "a" * 32,
        "iat": now - 100,
        "exp": now - 10,
        "typ": "access",
    }
    token = jwt.encode(claims, _secret(app), algorithm="HS256")
    response = await client.get("/users/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json()["code"] == "token_expired"


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(
            lambda claims, secret: jwt.encode(claims, "x" * 64, algorithm="HS256"), id="other-secret"
        ),
        pytest.param(
            lambda claims, secret: jwt.encode(claims, secret, algorithm="HS512"), id="other-algorithm"
        ),
        pytest.param(
            lambda claims, secret: jwt.encode({k: v for k, v in claims.items() if k != "jti"}, secret),
            id="no-jti",
        ),
        pytest.param(
            lambda claims, secret: jwt.encode({**claims, "typ": "refresh"}, secret), id="not-access"
        ),
        pytest.param(lambda claims, secret: jwt.encode({**claims, "sub": "abc"}, secret), id="bad-sub"),
    ],
)
async def test_forged_or_malformed_access_tokens_are_refused(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, forge
) -> None:
    now = int(time.time())
    claims = {"sub": str(alice.id), "ver": 0, "jti": "b" * 32, "iat": now, "exp": now + 60, "typ": "access"}
    token = forge(claims, _secret(app))
    response = await client.get("/users/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"


async def test_unsigned_alg_none_token_is_refused(client: httpx.AsyncClient, alice: Account) -> None:
    import base64
    import json

    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    now = int(time.time())
    token = (
        part({"alg": "none", "typ": "JWT"})
        + "."
        + part({"sub": str(alice.id), "ver": 0, "jti": "c" * 32, "exp": now + 60, "typ": "access"})
        + "."
    )
    response = await client.get("/users/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401


async def test_configured_jwt_secret_is_used_and_no_file_is_written(app_factory: AppFactory) -> None:
    async with app_factory(jwt_secret="s" * 40) as app, client_for(app) as client:
        await register(client, "alice")
        token = (await login(client, "alice")).json()["access_token"]
        assert jwt.decode(token, "s" * 40, algorithms=["HS256"])["sub"]
        assert not (app.state.settings.data_dir / "jwt-secret").exists()


# ------------------------------------------------------------------------------ throttling


async def test_too_many_attempts_for_one_username_is_429_with_retry_after(app_factory: AppFactory) -> None:
    async with (
        app_factory(login_attempts_per_username=3, login_window_seconds=60) as app,
        client_for(app) as client,
    ):
        await register(client, "alice")
        for _ in range(3):
            assert (await login(client, "alice", "wrong password")).status_code == 401
        blocked = await login(client, "alice", PASSWORD)  # even the right password waits
        assert blocked.status_code == 429
        assert blocked.json()["code"] == "rate_limited"
        assert 1 <= int(blocked.headers["retry-after"]) <= 60
        assert "try again in" in blocked.json()["detail"]
        # another username from the same address is not blocked by alice's counter
        await register(client, "bob")
        assert (await login(client, "bob")).status_code == 200


async def test_too_many_attempts_from_one_address_is_429_across_usernames(app_factory: AppFactory) -> None:
    async with app_factory(login_attempts_per_address=4, login_window_seconds=60) as app:
        async with client_for(app) as client:
            for i in range(4):
                assert (await login(client, f"guess{i}", "wrong password")).status_code == 401
            blocked = await login(client, "guess9", "wrong password")
            assert blocked.status_code == 429
            assert "retry-after" in blocked.headers
        async with client_for(app, ("192.0.2.50", 1234)) as elsewhere:
            assert (await login(elsewhere, "guess9", "wrong password")).status_code == 401


async def test_successful_logins_do_not_count_against_the_limit(app_factory: AppFactory) -> None:
    limits = {"login_attempts_per_username": 2, "login_attempts_per_address": 2}
    async with app_factory(**limits) as app, client_for(app) as client:
        await register(client, "alice")
        for _ in range(5):
            assert (await login(client, "alice")).status_code == 200


def test_sliding_window_forgets_attempts_older_than_the_window() -> None:
    now = [100.0]
    limiter = SlidingWindowLimiter(2, 10.0, clock=lambda: now[0])
    limiter.hit("k")
    now[0] = 104.0
    limiter.hit("k")
    assert limiter.retry_after("k") == pytest.approx(6.0)
    now[0] = 110.5  # the first attempt left the window
    assert limiter.retry_after("k") is None
    limiter.hit("k")
    assert limiter.retry_after("k") == pytest.approx(3.5)
    assert limiter.retry_after("other") is None


def test_sliding_window_memory_is_bounded() -> None:
    limiter = SlidingWindowLimiter(1, 60.0, max_keys=100)
    for i in range(1000):
        limiter.hit(f"addr{i}")
    assert len(limiter._hits) <= 100
    assert limiter.retry_after("addr999") is not None  # the newest keys are kept


async def test_bcrypt_cost_comes_from_settings(app_factory: AppFactory) -> None:
    async with app_factory(bcrypt_rounds=5) as app, client_for(app) as client:
        created = await register(client, "alice")
        async with app.state.sessions() as session:
            user = await session.get(User, created.json()["id"])
        assert user.password_hash.startswith(b"$2b$05$")


async def test_two_refreshes_racing_with_one_token_do_not_both_win(
    client: httpx.AsyncClient, alice: Account
) -> None:
    body = {"refresh_token": alice.refresh_token}
    first, second = await asyncio.gather(
        client.post("/token/refresh", json=body), client.post("/token/refresh", json=body)
    )
    statuses = sorted([first.status_code, second.status_code])
    assert statuses == [200, 401]
    loser = first if first.status_code == 401 else second
    assert loser.json()["code"] == "refresh_reused"
