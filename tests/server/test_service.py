"""ICE configuration, health, the OpenAPI docs, the error shape, and settings from the environment."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from signalling.settings import Settings
from tests.server.conftest import AppFactory, client_for, make_account


async def test_ice_without_turn_secret_hands_out_stun_only(app_factory: AppFactory) -> None:
    urls = {"stun_urls": ["stun:127.0.0.1:3478"], "turn_urls": ["turn:127.0.0.1:3478"]}
    async with app_factory(**urls) as app, client_for(app) as client:
        alice = await make_account(client, "alice")
        response = await client.get("/ice", headers=alice.headers)
    assert response.status_code == 200
    assert response.json()["ice_servers"] == [
        {"urls": ["stun:127.0.0.1:3478"], "username": None, "credential": None}
    ]


async def test_ice_with_turn_secret_hands_out_turn_rest_credentials(app_factory: AppFactory) -> None:
    settings = {
        "stun_urls": ["stun:127.0.0.1:3478"],
        "turn_urls": ["turn:127.0.0.1:3478?transport=udp", "turn:127.0.0.1:3478?transport=tcp"],
        "turn_secret": "coturn-static-secret",
        "turn_ttl_seconds": 600,
    }
    async with app_factory(**settings) as app, client_for(app) as client:
        alice = await make_account(client, "alice")
        before = int(time.time())
        response = await client.get("/ice", headers=alice.headers)
        after = int(time.time())
    assert response.status_code == 200
    body = response.json()
    assert body["ttl"] == 600
    stun, turn = body["ice_servers"]
    assert stun["urls"] == ["stun:127.0.0.1:3478"]
    assert turn["urls"] == settings["turn_urls"]
    expiry, user = turn["username"].split(":")
    assert user == str(alice.id)
    assert before + 600 <= int(expiry) <= after + 600
    expected = base64.b64encode(
        hmac.new(b"coturn-static-secret", turn["username"].encode(), hashlib.sha1).digest()
    )
    assert turn["credential"] == expected.decode()


async def test_ice_needs_a_token(client: httpx.AsyncClient) -> None:
    assert (await client.get("/ice")).status_code == 401


async def test_ice_with_nothing_configured_is_an_empty_list(client: httpx.AsyncClient, alice) -> None:
    assert (await client.get("/ice", headers=alice.headers)).json()["ice_servers"] == []


async def test_health_answers_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_health_is_503_when_the_database_does_not_answer(
    app: FastAPI, client: httpx.AsyncClient, tmp_path
) -> None:
    not_a_dir = tmp_path / "plain-file"
    not_a_dir.write_text("x")
    broken = create_async_engine(f"sqlite+aiosqlite:///{not_a_dir}/peerpost.db")  # cannot be opened
    app.state.sessions = async_sessionmaker(broken)
    try:
        response = await client.get("/health")
    finally:
        await broken.dispose()
    assert response.status_code == 503
    assert response.json() == {"detail": "The database does not answer.", "code": "database_unavailable"}


async def test_openapi_docs_list_every_rest_route(client: httpx.AsyncClient) -> None:
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
    paths = (await client.get("/openapi.json")).json()["paths"]
    expected = {
        "/users/": {"post"},
        "/token": {"post"},
        "/token/refresh": {"post"},
        "/logout": {"post"},
        "/users/me": {"get", "patch"},
        "/users/self": {"delete"},
        "/users/search": {"get"},
        "/users/{user_id}": {"get"},
        "/me/contacts/": {"get", "post"},
        "/me/contacts/requests/incoming": {"get"},
        "/me/contacts/requests/outgoing": {"get"},
        "/me/contacts/{user_id}/accept": {"post"},
        "/me/contacts/{user_id}/decline": {"post"},
        "/me/contacts/{user_id}": {"patch", "delete"},
        "/me/devices": {"post"},
        "/users/{user_id}/devices": {"get"},
        "/me/devices/{device_id}": {"delete"},
        "/ice": {"get"},
        "/health": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert methods <= set(paths[path]), (path, set(paths[path]))


async def test_unknown_routes_and_methods_answer_in_the_error_shape(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not Found", "code": "not_found"}
    wrong_method = await client.put("/health")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["code"] == "method_not_allowed"
    not_json = await client.post(
        "/users/", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert not_json.status_code == 422
    assert not_json.json()["code"] == "invalid"


def test_settings_read_lists_from_env_as_commas_or_json(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("PEERPOST_STUN_URLS", "stun:127.0.0.1:3478, stun:127.0.0.1:3479")
    monkeypatch.setenv("PEERPOST_TURN_URLS", '["turn:127.0.0.1:3478"]')
    monkeypatch.setenv("PEERPOST_PRESENCE_GRACE_SECONDS", "0.25")
    monkeypatch.setenv("PEERPOST_DATA_DIR", str(tmp_path))
    settings = Settings()
    assert settings.stun_urls == ["stun:127.0.0.1:3478", "stun:127.0.0.1:3479"]
    assert settings.turn_urls == ["turn:127.0.0.1:3478"]
    assert settings.presence_grace_seconds == 0.25
    assert settings.effective_database_url == f"sqlite+aiosqlite:///{tmp_path.resolve()}/peerpost.db"
    assert settings.mailbox_retention_days == 30
    assert settings.jwt_secret is None and settings.turn_secret is None


def test_settings_refuse_nonsense_with_the_field_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEERPOST_BCRYPT_ROUNDS", "2")
    with pytest.raises(ValueError, match="bcrypt_rounds"):
        Settings()
