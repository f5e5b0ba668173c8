"""Mailbox growth: is a device's drain, and a REST page, as fast with 100,000 envelopes queued as
with 1,000?

    python -m bench.mailbox [--backlogs 1000 10000 100000] [--page 100] [--no-postgres]

Loopback only, bounded. One SQLite database (synchronous=FULL) holds, side by side, one device per
backlog with that many 512-byte envelopes queued (written straight into the store before the server
starts: the write path has its own benchmark in bench/relay.py). Then, on the real server:
1. REST `GET /me/mailbox?limit=100` on each device (median of repeats);
2. each device connects its socket and drains its mailbox as a peer does (`ready`, every row
   delivered, `drained`), acking in frames of 1,000 as they arrive; a `ping` after the last ack
   returns when the deletes are committed. Per envelope: the drain alone and with its acks;
3. the largest device acks all but its last page while draining: the REST page at the end of a
   100,000-row mailbox (after 99,900 deletes) beside the first page;
4. the query plans of every mailbox statement the store issues, captured from the store's own
   functions and explained on this SQLite file, and on PostgreSQL (127.0.0.1:5432, a scratch
   database filled the same way) when it is there.

Prints tables and writes bench/results/mailbox.json. Goal (issue 16): flat in the backlog.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import websockets
from sqlalchemy import create_engine, event, insert, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bench.relay import RESULTS, machine, run_bench
from signalling.protocol import MAX_ACK_IDS
from signalling.tokens import TokenService
from store import mailbox
from store.migrate import upgrade, upgrade_sync
from store.models import Device, MailboxEntry, User
from tests.support.server import RunningServer

OUT = RESULTS.with_name("mailbox.json")
JWT_SECRET = secrets.token_hex(32)
POSTGRES_DSN = os.environ.get("PEERPOST_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
SERVER_ENV = {
    "PEERPOST_SQLITE_SYNCHRONOUS": "FULL",
    "PEERPOST_JWT_SECRET": JWT_SECRET,
    "PEERPOST_ACCESS_TOKEN_TTL_SECONDS": "7200",
    "PEERPOST_MAILBOX_QUOTA_MESSAGES": "10000000",
    "PEERPOST_MAILBOX_QUOTA_BYTES": str(16 * 2**30),
    "PEERPOST_LOG_LEVEL": "warning",
}
ENVELOPE = os.urandom(512)


def _device(backlog: int) -> str:
    return f"dev-backlog-{backlog}"


def _world_rows(backlogs: Sequence[int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    names = ["sender", *(f"backlog{n}" for n in backlogs)]
    users = [
        {"username": n, "email": f"{n}@example.org", "password_hash": b"!", "token_version": 0} for n in names
    ]
    devices = [
        {
            "user_id": i + 1,
            "device_id": "dev-sender" if n == "sender" else f"dev-{n.replace('backlog', 'backlog-')}",
            "identity_key": b"\x01" * 32,
            "encryption_key": b"\x02" * 550,
            "signature": b"\x03" * 64,
            "signed_at": 0,
        }
        for i, n in enumerate(names)
    ]
    return users, devices


def _mail_rows(backlogs: Sequence[int]) -> list[dict[str, Any]]:
    """Rows of all devices interleaved in time, as mail arrives: no device's rows are contiguous."""
    now = datetime.now(UTC)
    expires = now + timedelta(days=30)
    rows = []
    longest = max(backlogs)
    for seq in range(longest):
        for user, n in enumerate(backlogs, start=2):
            if seq < n:
                rows.append(
                    {
                        "recipient_user": user,
                        "recipient_device": _device(n),
                        "sender_user": 1,
                        "sender_device": "dev-sender",
                        "message_id": f"{n:08x}{seq:024x}",
                        "envelope": ENVELOPE,
                        "size": len(ENVELOPE),
                        "created_at": now,
                        "expires_at": expires,
                    }
                )
    return rows


def fill_sqlite(path: Path, backlogs: Sequence[int]) -> None:
    upgrade_sync(f"sqlite+aiosqlite:///{path}")
    users, devices = _world_rows(backlogs)
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.execute(insert(User), users)
        conn.execute(insert(Device), devices)
        rows = _mail_rows(backlogs)
        for start in range(0, len(rows), 20_000):
            conn.execute(insert(MailboxEntry), rows[start : start + 20_000])
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
    engine.dispose()


# -- the query plans --------------------------------------------------------------------------------


async def captured_statements(engine: AsyncEngine, device: str) -> list[tuple[str, str, Any]]:
    """Run the store's own read functions and record the SQL they send (name, SQL, parameters)."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        seen.append((statement, parameters))

    event.listen(engine.sync_engine, "before_cursor_execute", record)
    out = []
    try:
        async with engine.connect() as conn:
            for name, call in (
                ("fetch_after (drain page, REST page)", lambda: mailbox.fetch_after(conn, device, 0, 100)),
                ("pending_count (the ready frame)", lambda: mailbox.pending_count(conn, device)),
                ("usage (quota, per device)", lambda: mailbox.usage(conn, [device])),
            ):
                seen.clear()
                await call()
                statement, params = seen[-1]
                out.append((name, statement, params))
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", record)
    return out


async def sqlite_plans(path: Path, device: str) -> dict[str, list[str]]:
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    plans: dict[str, list[str]] = {}
    try:
        statements = await captured_statements(engine, device)
        async with engine.connect() as conn:
            for name, statement, params in statements:
                rows = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, params)
                plans[name] = [str(r[-1]) for r in rows]
            # The group commit's own statements (store.mailbox._SQLITE_DELETE, purge_expired).
            delete = mailbox._SQLITE_DELETE.format(values="(?,?),(?,?)")
            rows = await conn.exec_driver_sql("EXPLAIN QUERY PLAN " + delete, (device, "a", device, "b"))
            plans["ack delete (group commit)"] = [str(r[-1]) for r in rows]
            rows = await conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN DELETE FROM mailbox WHERE expires_at <= ?", ("2000-01-01",)
            )
            plans["purge_expired"] = [str(r[-1]) for r in rows]
    finally:
        await engine.dispose()
    return plans


async def postgres_plans(backlogs: Sequence[int]) -> dict[str, list[str]] | str:
    """The same statements explained on PostgreSQL, in a scratch database filled the same way."""
    try:
        import asyncpg

        admin = await asyncio.wait_for(asyncpg.connect(POSTGRES_DSN), 5)
    except Exception as exc:
        return f"PostgreSQL not reachable at {POSTGRES_DSN}: {exc}"
    database = f"peerpost_bench_{secrets.token_hex(6)}"
    await admin.execute(f'CREATE DATABASE "{database}"')
    url = POSTGRES_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{database}"
    engine = create_async_engine(url)
    plans: dict[str, list[str]] = {}
    try:
        await upgrade(url)
        users, devices = _world_rows(backlogs)
        async with engine.begin() as conn:
            await conn.execute(insert(User), users)
            await conn.execute(insert(Device), devices)
            rows = _mail_rows(backlogs)
            for start in range(0, len(rows), 20_000):
                await conn.execute(insert(MailboxEntry), rows[start : start + 20_000])
        async with engine.begin() as conn:  # committed: statistics roll back with the transaction
            await conn.execute(text("ANALYZE"))
        device = _device(max(backlogs))
        statements = await captured_statements(engine, device)
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            pg = raw.driver_connection
            for name, statement, params in statements:
                plans[name] = [r[0] for r in await pg.fetch("EXPLAIN " + _numbered(statement), *params)]
            delete = "DELETE FROM mailbox WHERE mailbox.recipient_device = $1 AND mailbox.message_id = $2"
            plans["ack delete (group commit, executemany)"] = [
                r[0] for r in await pg.fetch("EXPLAIN " + delete, device, "a")
            ]
            plans["purge_expired"] = [
                r[0]
                for r in await pg.fetch(
                    "EXPLAIN DELETE FROM mailbox WHERE expires_at <= $1", datetime(2000, 1, 1, tzinfo=UTC)
                )
            ]
    finally:
        await engine.dispose()
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
    return plans


def _numbered(statement: str) -> str:
    """SQLAlchemy's asyncpg dialect already sends $n placeholders; keep the hook for other forms."""
    return statement


# -- the measurements -------------------------------------------------------------------------------


async def rest_page_ms(http: httpx.AsyncClient, token: str, device: str, limit: int, repeats: int) -> dict:
    times = []
    count = 0
    for _ in range(repeats):
        start = time.perf_counter()
        r = await http.get(
            "/me/mailbox",
            params={"device_id": device, "limit": limit},
            headers={"Authorization": f"Bearer {token}"},
        )
        times.append(1000 * (time.perf_counter() - start))
        r.raise_for_status()
        count = len(r.json())
    return {"median_ms": statistics.median(times), "max_ms": max(times), "rows": count}


async def drain(ws_url: str, token: str, device: str, keep: int) -> dict[str, Any]:
    """Connect, take every queued row, ack all but the last `keep`; time to `drained` and to the
    ping that follows the last ack (answered once the deletes are committed)."""
    start = time.perf_counter()
    ws = await websockets.connect(
        f"{ws_url}?device_id={device}", additional_headers={"Authorization": f"Bearer {token}"}, max_size=None
    )
    try:
        ready = json.loads(await ws.recv())
        pending = ready["pending"]
        ids: list[str] = []
        acked = 0
        to_ack = pending - keep
        async for frame in ws:
            if '"type":"drained"' in frame:
                break
            ids.append(json.loads(frame)["message_id"])
            while len(ids) - acked >= MAX_ACK_IDS and acked + MAX_ACK_IDS <= to_ack:
                await ws.send(json.dumps({"type": "ack", "message_ids": ids[acked : acked + MAX_ACK_IDS]}))
                acked += MAX_ACK_IDS
        drained = time.perf_counter()
        if acked < to_ack:
            await ws.send(json.dumps({"type": "ack", "message_ids": ids[acked:to_ack]}))
            acked = to_ack
        await ws.send(json.dumps({"type": "ping", "nonce": "end"}))
        async with asyncio.timeout(120):
            async for frame in ws:
                if '"type":"pong"' in frame:
                    break
        done = time.perf_counter()
    finally:
        await ws.close()
    if len(ids) != pending:
        raise RuntimeError(f"{device}: ready said {pending}, {len(ids)} were delivered")
    return {
        "pending": pending,
        "delivered": len(ids),
        "acked": acked,
        "drain_s": drained - start,
        "with_acks_s": done - start,
        "us_per_envelope": 1e6 * (drained - start) / max(pending, 1),
        "us_per_envelope_with_acks": 1e6 * (done - start) / max(pending, 1),
    }


async def query_ms(path: Path, device: str, repeats: int = 5) -> dict[str, float]:
    """The store's reads timed on their own, on the server's file (WAL: readers do not block)."""
    engine = create_async_engine(f"sqlite+aiosqlite:///{path}")
    out: dict[str, float] = {}
    try:
        async with engine.connect() as conn:
            for name, call in (
                ("fetch_after", lambda: mailbox.fetch_after(conn, device, 0, 100)),
                ("pending_count", lambda: mailbox.pending_count(conn, device)),
                ("usage", lambda: mailbox.usage(conn, [device])),
            ):
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    await call()
                    times.append(1000 * (time.perf_counter() - start))
                out[name] = statistics.median(times)
    finally:
        await engine.dispose()
    return out


async def main(args: argparse.Namespace) -> dict[str, Any]:
    backlogs = sorted(args.backlogs)
    load = {"start": os.getloadavg()}
    print(
        f"mailbox growth: backlogs {', '.join(map(str, backlogs))} of 512-byte envelopes, one SQLite file "
        f"(load average {load['start'][0]:.1f} on {os.cpu_count()} CPUs)",
        flush=True,
    )
    tokens = TokenService(JWT_SECRET, 7200, 3600)
    result: dict[str, Any] = {"backlogs": {}}
    with tempfile.TemporaryDirectory(prefix="peerpost-mailbox-") as tmp:
        data_dir = Path(tmp) / "server"
        data_dir.mkdir()
        db = data_dir / "peerpost.db"
        start = time.perf_counter()
        control = args.page  # a device holding just one page, never drained: the yardstick at the end
        if control in backlogs:
            raise SystemExit("--page must differ from every backlog")
        await asyncio.to_thread(fill_sqlite, db, [*backlogs, control])
        print(f"filled {sum(backlogs) + control} rows in {time.perf_counter() - start:.1f} s", flush=True)
        plans = await sqlite_plans(db, _device(max(backlogs)))
        queries = {n: await query_ms(db, _device(n)) for n in backlogs}
        async with (
            RunningServer(data_dir, env=SERVER_ENV) as server,
            httpx.AsyncClient(base_url=server.url, timeout=60) as http,
        ):
            token = {n: tokens.issue_access(i + 2, 0) for i, n in enumerate([*backlogs, control])}
            first_page = {
                n: await rest_page_ms(http, token[n], _device(n), args.page, args.repeats) for n in backlogs
            }
            drains = {}
            for n in backlogs:
                keep = args.page if n == max(backlogs) else 0
                drains[n] = await drain(server.ws_url, token[n], _device(n), keep)
            biggest = max(backlogs)
            # Interleaved, so the box's noise falls on both alike.
            end_times, control_times = [], []
            for _ in range(args.repeats):
                end_page = await rest_page_ms(http, token[biggest], _device(biggest), args.page, 1)
                end_times.append(end_page["median_ms"])
                control_page = await rest_page_ms(http, token[control], _device(control), args.page, 1)
                control_times.append(control_page["median_ms"])
            end_page = {
                "median_ms": statistics.median(end_times),
                "max_ms": max(end_times),
                "rows": end_page["rows"],
            }
            control_page = {"median_ms": statistics.median(control_times), "max_ms": max(control_times)}
        load["end"] = os.getloadavg()

    print(
        f"\n{'backlog':>8} {'drain s':>8} {'µs/env':>7} {'+acks s':>8} {'µs/env':>7} {'REST page ms':>13}"
        f" {'fetch_after':>11} {'pending_count':>13} {'usage':>7}  (query ms)"
    )
    for n in backlogs:
        d, q = drains[n], queries[n]
        print(
            f"{n:>8} {d['drain_s']:>8.2f} {d['us_per_envelope']:>7.0f} {d['with_acks_s']:>8.2f}"
            f" {d['us_per_envelope_with_acks']:>7.0f} {first_page[n]['median_ms']:>13.2f}"
            f" {q['fetch_after']:>11.2f} {q['pending_count']:>13.2f} {q['usage']:>7.2f}"
        )
        result["backlogs"][str(n)] = {"drain": d, "rest_first_page": first_page[n], "query_ms": q}
    print(
        f"REST page of {args.page} at the end of the {biggest}-row mailbox"
        f" (after {biggest - args.page} acks): {end_page['median_ms']:.2f} ms median"
        f" ({end_page['rows']} rows);"
        f" a {control}-row mailbox, interleaved: {control_page['median_ms']:.2f} ms"
    )
    print("\nSQLite query plans:")
    for name, plan in plans.items():
        print(f"  {name}: {' / '.join(plan)}")
    pg: dict[str, list[str]] | str = "skipped (--no-postgres)"
    if not args.no_postgres:
        pg = await postgres_plans(backlogs)
        print("\nPostgreSQL query plans:" if isinstance(pg, dict) else f"\nPostgreSQL: {pg}")
        if isinstance(pg, dict):
            for name, plan in pg.items():
                print(f"  {name}:")
                for line in plan:
                    print(f"      {line}")
    small, big = drains[min(backlogs)], drains[biggest]
    summary = {
        "us_per_envelope": {str(n): round(drains[n]["us_per_envelope"], 1) for n in backlogs},
        "us_per_envelope_with_acks": {
            str(n): round(drains[n]["us_per_envelope_with_acks"], 1) for n in backlogs
        },
        "drain_ratio_largest_to_smallest": round(big["us_per_envelope"] / small["us_per_envelope"], 2),
        "rest_page_end_of_largest_ms": round(end_page["median_ms"], 2),
        "rest_page_one_page_mailbox_ms": round(control_page["median_ms"], 2),
    }
    print("\nsummary:", json.dumps(summary))
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {**machine(), "load": load},
        "config": {"backlogs": backlogs, "page": args.page, "envelope_bytes": len(ENVELOPE)},
        **result,
        "rest_end_page_of_largest": end_page,
        "rest_page_of_one_page_mailbox": control_page,
        "plans": {"sqlite": plans, "postgresql": pg},
        "summary": summary,
    }


def cli() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backlogs", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--page", type=int, default=100, help="REST page size")
    parser.add_argument("--repeats", type=int, default=15, help="REST fetches per measurement")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL query plans")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        run_bench(main(args), args.out)


if __name__ == "__main__":
    cli()
