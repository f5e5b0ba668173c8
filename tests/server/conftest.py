"""The server app in process (httpx.ASGITransport, lifespan run by hand), and accounts to use it.

Each test gets a fresh app on a fresh SQLite file in tmp_path, migrated by the app's own lifespan.
bcrypt runs at cost 4 here; the test about bcrypt's cost sets its own.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from signalling.app import create_app
from signalling.settings import Settings

CLIENT_ADDRESS = ("203.0.113.7", 40123)
PASSWORD = "correct horse battery"


@dataclass
class Account:
    id: int
    username: str
    email: str
    password: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


@dataclass
class RecordingSockets:
    """Stands in for the hub's LiveSockets at the seam: records what REST asked it to close."""

    users: list[tuple[int, int, str]] = field(default_factory=list)
    devices: list[tuple[int, str, int, str]] = field(default_factory=list)
    reach_forgotten: int = 0

    async def disconnect_user(self, user_id: int, code: int, reason: str) -> None:
        self.users.append((user_id, code, reason))

    async def disconnect_device(self, user_id: int, device_id: str, code: int, reason: str) -> None:
        self.devices.append((user_id, device_id, code, reason))

    def forget_reach(self) -> None:
        self.reach_forgotten += 1


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path / "data",
        "bcrypt_rounds": 4,
        "sqlite_synchronous": "NORMAL",
        "stun_urls": [],
        "turn_urls": [],
        "ice_servers": [],
        "turn_secret": None,
        "jwt_secret": None,
        "database_url": None,
        "registrations_per_address": 1_000_000,
        "registrations_global": 1_000_000,
    }
    values.update(overrides)
    return Settings(**values)


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[FastAPI]:
    """The app with its lifespan entered (migrations run, state filled), as uvicorn would do it."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


def client_for(app: FastAPI, address: tuple[str, int] = CLIENT_ADDRESS) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=address)
    return httpx.AsyncClient(transport=transport, base_url="http://peerpost.test")


AppFactory = Callable[..., AbstractAsyncContextManager[FastAPI]]


@pytest.fixture
def app_factory(tmp_path: Path) -> AppFactory:
    """`async with app_factory(bcrypt_rounds=5, ...) as app:` for tests that need other settings."""
    counter = itertools.count()

    def make(**overrides: Any) -> AbstractAsyncContextManager[FastAPI]:
        return running_app(settings_for(tmp_path / f"app{next(counter)}", **overrides))

    return make


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[FastAPI]:
    async with running_app(settings_for(tmp_path)) as running:
        running.state.hub = RecordingSockets()
        yield running


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as c:
        yield c


async def register(
    client: httpx.AsyncClient, username: str, *, password: str = PASSWORD, email: str | None = None
) -> httpx.Response:
    body = {"username": username, "email": email or f"{username}@example.org", "password": password}
    return await client.post("/users/", json=body)


async def login(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/token", data={"username": username, "password": password})


async def make_account(client: httpx.AsyncClient, username: str, password: str = PASSWORD) -> Account:
    created = await register(client, username, password=password)
    assert created.status_code == 201, created.text
    tokens = await login(client, username, password)
    assert tokens.status_code == 200, tokens.text
    body = tokens.json()
    return Account(
        id=created.json()["id"],
        username=username,
        email=created.json()["email"],
        password=password,
        access_token=body["access_token"],
        refresh_token=body["refresh_token"],
    )


NewAccount = Callable[[str], Awaitable[Account]]


@pytest.fixture
def new_account(client: httpx.AsyncClient) -> NewAccount:
    async def make(username: str) -> Account:
        return await make_account(client, username)

    return make


@pytest.fixture
async def alice(new_account: NewAccount) -> Account:
    return await new_account("alice")


@pytest.fixture
async def bob(new_account: NewAccount) -> Account:
    return await new_account("bob")


@pytest.fixture
async def carol(new_account: NewAccount) -> Account:
    return await new_account("carol")
