"""Blobs through a real server: streamed upload, download by uploader and named readers only,
size limit and quota, delete."""

from __future__ import annotations

import asyncio
import hashlib
import os
from datetime import datetime, timedelta
from pathlib import Path

from tests.hub.world import World
from tests.support.server import RunningServer


async def test_a_reader_downloads_the_blob_and_a_stranger_cannot_see_it(world: World) -> None:
    alice, bob, eve = await world.account(), await world.account(), await world.account()
    await world.befriend(alice, bob)
    data = os.urandom(300_000)

    async def body():
        for i in range(0, len(data), 65536):
            yield data[i : i + 65536]

    r = await world.http.post(
        "/blobs", params={"readers": str(bob.user_id)}, content=body(), headers=alice.auth
    )
    assert r.status_code == 201, r.text
    blob = r.json()
    assert blob["size"] == len(data) and blob["sha256"] == hashlib.sha256(data).hexdigest()

    for reader in (alice, bob):
        got = await world.http.get(f"/blobs/{blob['blob_id']}", headers=reader.auth)
        assert got.status_code == 200 and got.content == data
    r = await world.http.get(f"/blobs/{blob['blob_id']}", headers=eve.auth)
    assert r.status_code == 404 and r.json()["code"] == "not_found"

    r = await world.http.delete(f"/blobs/{blob['blob_id']}", headers=bob.auth)
    assert r.status_code == 404  # only the uploader deletes
    r = await world.http.delete(f"/blobs/{blob['blob_id']}", headers=alice.auth)
    assert r.status_code == 204
    assert (await world.http.get(f"/blobs/{blob['blob_id']}", headers=bob.auth)).status_code == 404


async def test_readers_must_be_accepted_contacts(world: World) -> None:
    alice, eve = await world.account(), await world.account()
    r = await world.http.post(
        "/blobs", params={"readers": str(eve.user_id)}, content=b"x", headers=alice.auth
    )
    assert r.status_code == 403 and r.json()["code"] == "not_a_contact"
    r = await world.http.post("/blobs", params={"readers": "two"}, content=b"x", headers=alice.auth)
    assert r.status_code == 422 and r.json()["field"] == "readers" and "readers" in r.json()["detail"]
    r = await world.http.post("/blobs", params={"readers": str(2**64)}, content=b"x", headers=alice.auth)
    assert r.status_code == 422 and r.json()["field"] == "readers"


async def test_an_upload_past_the_limit_or_the_quota_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    env = {"PEERPOST_BLOB_MAX_BYTES": "100000", "PEERPOST_BLOB_QUOTA_BYTES_PER_USER": "150000"}
    async with RunningServer(tmp_path / "srv", env=env) as server, World(server.url, server.ws_url) as world:
        alice = await world.account()

        async def stream(size: int):  # no Content-Length: the limit must hold while streaming
            for _ in range(size // 10_000):
                yield os.urandom(10_000)

        r = await world.http.post("/blobs", content=stream(120_000), headers=alice.auth)
        assert r.status_code == 413 and r.json()["code"] == "too_large"
        r = await world.http.post("/blobs", content=stream(90_000), headers=alice.auth)
        assert r.status_code == 201
        r = await world.http.post("/blobs", content=stream(90_000), headers=alice.auth)
        assert r.status_code == 413 and r.json()["code"] == "quota"
        blob_dir = server.data_dir / "blobs"
        files = [p for p in blob_dir.rglob("*") if p.is_file()]
        assert len(files) == 1  # the refused uploads left no file, not even a temporary one


async def test_a_disappearing_files_blob_goes_at_its_expiry_never_later_than_the_retention(
    tmp_path: Path,
) -> None:
    env = {"PEERPOST_BLOB_RETENTION_DAYS": "1", "PEERPOST_MAILBOX_PURGE_INTERVAL_SECONDS": "0.2"}
    async with RunningServer(tmp_path / "srv", env=env) as server, World(server.url, server.ws_url) as world:
        alice, bob = await world.account(), await world.account()
        await world.befriend(alice, bob)
        readers = {"readers": str(bob.user_id)}

        def life(blob: dict) -> timedelta:
            return datetime.fromisoformat(blob["expires_at"]) - datetime.fromisoformat(blob["created_at"])

        kept = await world.http.post("/blobs", params=readers, content=b"kept", headers=alice.auth)
        assert kept.status_code == 201 and life(kept.json()) == timedelta(days=1)
        capped = await world.http.post(
            "/blobs", params={**readers, "expires_in": str(28 * 86400)}, content=b"x", headers=alice.auth
        )
        assert capped.status_code == 201 and life(capped.json()) == timedelta(days=1)  # the retention caps it
        refused = await world.http.post(
            "/blobs", params={**readers, "expires_in": str(28 * 86400 + 1)}, content=b"x", headers=alice.auth
        )
        assert refused.status_code == 422 and refused.json()["field"] == "expires_in"
        assert (
            await world.http.post("/blobs", params={**readers, "expires_in": "0"}, headers=alice.auth)
        ).status_code == 422

        short = await world.http.post(
            "/blobs", params={**readers, "expires_in": "1"}, content=b"gone soon", headers=alice.auth
        )
        assert short.status_code == 201 and life(short.json()) == timedelta(seconds=1)
        blob_id = short.json()["blob_id"]
        on_disk = server.data_dir / "blobs" / blob_id

        async def purged() -> bool:
            answer = await world.http.get(f"/blobs/{blob_id}", headers=bob.auth)
            return answer.status_code == 404 and not on_disk.exists()

        for _ in range(300):  # the purge runs every 0.2 s; 30 s at most
            if await purged():
                break
            await asyncio.sleep(0.1)
        assert await purged(), "the expired blob is still served or on disk"
        # The one without an expiry is still there for its reader.
        got = await world.http.get(f"/blobs/{kept.json()['blob_id']}", headers=bob.auth)
        assert got.status_code == 200 and got.content == b"kept"
        assert (server.data_dir / "blobs" / kept.json()["blob_id"]).exists()  # where blobs are kept
