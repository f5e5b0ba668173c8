"""Bring a database to the current schema with Alembic, from code (the server's start-up, the CLI).

`upgrade(url)` is a coroutine so the app's lifespan can await it on its own loop; the Alembic
environment (`store/migrations/env.py`) runs on the connection handed to it here. On PostgreSQL an
advisory lock serialises instances that start at the same time; on SQLite foreign keys are off
while tables are rebuilt in batch mode and checked afterwards.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from store.db import create_engine, is_sqlite
from store.errors import MigrationError

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_PG_LOCK_KEY = 0x7065_6572_706F  # "peerpo": any constant shared by every instance


def alembic_config(url: str | None = None) -> Config:
    """An Alembic Config pointing at `store/migrations` (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise MigrationError("no migration scripts found")
    return head


def _upgrade_on(connection: Connection, config: Config, revision: str) -> None:
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def _current_on(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at `url` to `revision`; safe to run on every start."""
    engine = create_engine(url)
    config = alembic_config(url)
    try:
        async with engine.connect() as conn:
            sqlite = is_sqlite(url)
            if sqlite:
                await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            else:
                await conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_LOCK_KEY})
            try:
                await conn.run_sync(_upgrade_on, config, revision)
                await conn.commit()
                if sqlite:
                    broken = (await conn.exec_driver_sql("PRAGMA foreign_key_check")).fetchall()
                    if broken:
                        raise MigrationError(f"foreign key check failed after migration: {broken[:5]}")
            finally:
                if sqlite:
                    await conn.exec_driver_sql("PRAGMA foreign_keys=ON")
                else:
                    await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_LOCK_KEY})
                await conn.commit()
    except MigrationError:
        raise
    except Exception as exc:
        raise MigrationError(f"could not migrate the database: {exc}") from exc
    finally:
        await engine.dispose()


async def current_revision(url: str) -> str | None:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_current_on)
    finally:
        await engine.dispose()


def upgrade_sync(url: str, revision: str = "head") -> None:
    """For callers without a running loop (the `db upgrade` command)."""
    asyncio.run(upgrade(url, revision))
