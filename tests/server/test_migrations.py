"""Alembic migrations on a fresh SQLite file and on a real PostgreSQL; the SQLite connection pragmas."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import warnings
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from store import migrate
from store.db import create_engine
from store.models import Base
from tests.server.conftest import AppFactory, client_for, make_account
from tests.support.server import REPO_ROOT, RunningServer

MODEL_TABLES = set(Base.metadata.tables)
PG_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/test"


def _schema_state(conn: Connection) -> tuple[set[str], list, set[str]]:
    inspector = inspect(conn)
    tables = set(inspector.get_table_names())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # expression indexes cannot be reflected on SQLite
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    # expression indexes are not reflected on SQLite: ask the catalogue directly
    catalogue = (
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'users'"
        if conn.dialect.name == "sqlite"
        else "SELECT indexname FROM pg_indexes WHERE tablename = 'users'"
    )
    indexes = set(conn.execute(text(catalogue)).scalars())
    return tables, diff, indexes


async def _check_schema(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            tables, diff, indexes = await conn.run_sync(_schema_state)
    finally:
        await engine.dispose()
    assert tables == MODEL_TABLES | {"alembic_version"}
    assert diff == [], f"store/models.py and the migrations disagree: {diff}"
    assert "uq_users_username_lower" in indexes
    assert await migrate.current_revision(url) == migrate.head_revision()


async def test_upgrade_builds_the_whole_schema_on_a_fresh_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/fresh.db"
    assert await migrate.current_revision(url) is None
    await migrate.upgrade(url)
    await _check_schema(url)


async def test_upgrade_again_keeps_the_data(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/again.db"
    await migrate.upgrade(url)
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text("INSERT INTO users (username, email, password_hash) VALUES ('alice', 'a@x.org', x'00')")
            )
        await migrate.upgrade(url)
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT username FROM users"))).scalars().all() == ["alice"]
    finally:
        await engine.dispose()


async def test_sqlite_connections_use_wal_foreign_keys_and_a_busy_timeout(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/pragmas.db"
    await migrate.upgrade(url)
    for synchronous, expected in (("FULL", 2), ("NORMAL", 1)):
        engine = create_engine(url, synchronous=synchronous)
        try:
            async with engine.connect() as conn:
                pragma = {
                    name: (await conn.exec_driver_sql(f"PRAGMA {name}")).scalar()
                    for name in ("journal_mode", "foreign_keys", "synchronous", "busy_timeout")
                }
        finally:
            await engine.dispose()
        assert pragma == {
            "journal_mode": "wal",
            "foreign_keys": 1,
            "synchronous": expected,
            "busy_timeout": 30000,
        }


async def test_case_insensitive_username_uniqueness_is_enforced_by_the_database(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/unique.db"
    await migrate.upgrade(url)
    engine = create_engine(url)
    insert = "INSERT INTO users (username, email, password_hash) VALUES (:u, :e, x'00')"
    try:
        async with engine.begin() as conn:
            await conn.execute(text(insert), {"u": "Alice", "e": "1@example.org"})
        with pytest.raises(Exception, match="UNIQUE"):
            async with engine.begin() as conn:
                await conn.execute(text(insert), {"u": "alice", "e": "2@example.org"})
    finally:
        await engine.dispose()


def test_db_upgrade_command_migrates_the_data_dir(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    cmd = [sys.executable, "-m", "signalling", "db", "upgrade", "--data-dir", str(tmp_path / "data")]
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"database is at the current schema (revision {migrate.head_revision()})"
    assert (tmp_path / "data" / "peerpost.db").exists()


def test_db_upgrade_command_reports_an_unreachable_database_clearly(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    url = "postgresql+asyncpg://nobody@127.0.0.1:1/none"
    cmd = [sys.executable, "-m", "signalling", "db", "upgrade", "--database-url", url]
    result = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "Error: could not migrate the database" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------ PostgreSQL


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A database of its own on the local PostgreSQL, dropped afterwards."""
    name = f"peerpost_test_{secrets.token_hex(6)}"
    try:
        admin = await asyncpg.connect(PG_ADMIN_DSN, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {PG_ADMIN_DSN} ({exc}); start it or deselect -m 'not postgres'"
        )
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql+asyncpg://postgres@127.0.0.1:5432/{name}"
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.mark.postgres
async def test_upgrade_builds_the_whole_schema_on_postgresql(pg_url: str) -> None:
    await migrate.upgrade(pg_url)
    await _check_schema(pg_url)
    await migrate.upgrade(pg_url)  # a second start is a no-op


@pytest.mark.postgres
async def test_the_api_works_on_postgresql(pg_url: str, app_factory: AppFactory) -> None:
    async with app_factory(database_url=pg_url) as app, client_for(app) as client:
        alice = await make_account(client, "alice")
        bob = await make_account(client, "bob")
        assert (
            await client.post("/me/contacts/", json={"username": "bob"}, headers=alice.headers)
        ).status_code == 201
        assert (await client.post(f"/me/contacts/{alice.id}/accept", headers=bob.headers)).status_code == 200
        contacts = (await client.get("/me/contacts/", headers=alice.headers)).json()
        assert [(c["username"], c["status"]) for c in contacts] == [("bob", "accepted")]
        assert (
            await client.post(
                "/users/", json={"username": "ALICE", "email": "x@example.org", "password": "password1"}
            )
        ).status_code == 409
        rotated = await client.post("/token/refresh", json={"refresh_token": alice.refresh_token})
        assert rotated.status_code == 200
        assert (
            await client.post("/token/refresh", json={"refresh_token": alice.refresh_token})
        ).status_code == 401
        # The reuse revoked the family, and its access tokens with it (issue #11, finding 11).
        assert (await client.get("/users/me", headers=alice.headers)).status_code == 401
        again = (await client.post("/token", data={"username": "alice", "password": alice.password})).json()
        fresh = {"Authorization": f"Bearer {again['access_token']}"}
        assert (await client.delete("/users/self", headers=fresh)).status_code == 204
        assert (await client.get("/me/contacts/", headers=bob.headers)).json() == []


@pytest.mark.postgres
async def test_revoking_a_device_ends_its_tokens_on_postgresql(pg_url: str, app_factory: AppFactory) -> None:
    from tests.server.test_devices import bundle

    async with app_factory(database_url=pg_url) as app, client_for(app) as client:
        alice = await make_account(client, "alice")
        pairs = {}
        for seed, device in enumerate(("laptop-0001", "phone-00001"), start=1):
            published = await client.post(
                "/me/devices", json=bundle(device, seed=seed), headers=alice.headers
            )
            assert published.status_code == 201
            form = {"username": "alice", "password": alice.password, "device_id": device}
            pairs[device] = (await client.post("/token", data=form)).json()
        laptop, phone = ({"Authorization": f"Bearer {pairs[d]['access_token']}"} for d in pairs)
        assert (await client.delete("/me/devices/laptop-0001", headers=phone)).status_code == 204
        refused = await client.get("/users/me", headers=laptop)
        assert refused.status_code == 401 and refused.json()["code"] == "device_revoked"
        renewed = await client.post(
            "/token/refresh", json={"refresh_token": pairs["laptop-0001"]["refresh_token"]}
        )
        assert renewed.status_code == 401 and renewed.json()["code"] == "device_revoked"
        assert (await client.get("/users/me", headers=phone)).status_code == 200
        renewed = await client.post(
            "/token/refresh", json={"refresh_token": pairs["phone-00001"]["refresh_token"]}
        )
        assert renewed.status_code == 200


@pytest.mark.postgres
def test_serve_runs_on_postgresql(pg_url: str, tmp_path: Path) -> None:
    with RunningServer(tmp_path / "server", database_url=pg_url) as server:
        response = httpx.post(
            server.url + "/users/",
            json={"username": "alice", "email": "a@example.org", "password": "password1"},
        )
        assert response.status_code == 201
        assert not server.database_path.exists()  # nothing went to SQLite
