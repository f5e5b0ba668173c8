"""Blobs: encrypted files uploaded when no direct link could be had.

The bytes live on disk under `<data dir>/blobs/`, one file per blob, named by its random id; the
table keeps owner, size, hash, expiry and who may read it. A blob is written to a temporary file,
flushed and fsynced, then renamed into place (atomic on one file system), and only then recorded:
a crash leaves at worst an orphaned temporary file, never a row pointing at half a file.

Rules: an upload stops at `max_bytes`; a user's stored blobs never exceed `user_quota`; only the
uploader and the named readers may download; a blob is deleted by its uploader or on expiry.
The contents are ciphertext the server cannot read; this module never looks inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import delete, func, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from store.disk import DiskGuard
from store.errors import NotFound, QuotaExceeded, StoreError
from store.models import Blob, BlobReader, MailboxEntry

_WRITE_CHUNK = 1024 * 1024  # gather this much before one write in a worker thread
_ORPHAN_AGE_SECONDS = 3600.0


class BlobError(StoreError):
    """Base of the blob store's own failures."""


class BlobTooLarge(BlobError, QuotaExceeded):
    def __init__(self, limit: int) -> None:
        super().__init__(f"the upload is larger than the {limit}-byte limit for one blob")
        self.limit = limit


class BlobQuotaExceeded(BlobError, QuotaExceeded):
    def __init__(self, used: int, quota: int) -> None:
        super().__init__(
            f"your stored files would pass your {quota}-byte quota ({used} bytes used); "
            "delete some blobs or wait for them to expire"
        )
        self.used = used
        self.quota = quota


class BlobNotFound(BlobError, NotFound):
    def __init__(self, blob_id: str) -> None:
        super().__init__(f"there is no blob {blob_id} that you may read")
        self.blob_id = blob_id


@dataclass(frozen=True, slots=True)
class BlobInfo:
    blob_id: str
    owner_id: int
    size: int
    sha256: str
    created_at: datetime
    expires_at: datetime


class BlobStore:
    def __init__(
        self,
        engine: AsyncEngine,
        root: Path,
        *,
        max_bytes: int,
        user_quota: int,
        retention: timedelta,
        account_quota: int | None = None,
        disk: DiskGuard | None = None,
    ) -> None:
        self._engine = engine
        self.account_quota = account_quota
        self._disk = disk
        self.root = root
        self._tmp = root / "tmp"
        self.max_bytes = max_bytes
        self.user_quota = user_quota
        self.retention = retention
        self._quota_lock = asyncio.Lock()  # serialises quota check + insert within this process

    def path_of(self, blob_id: str) -> Path:
        if not blob_id.isalnum():
            raise BlobNotFound(blob_id)
        return self.root / blob_id

    async def used_by(self, owner_id: int) -> int:
        async with self._engine.connect() as conn:
            return await self._used(conn, owner_id)

    async def _used(self, conn: AsyncConnection, owner_id: int) -> int:
        """What counts against the owner's quota: its blobs, and (with an account quota) the
        envelopes it sent that still wait in mailboxes, so both share one account-wide limit."""
        blobs = int(
            (
                await conn.execute(
                    select(func.coalesce(func.sum(Blob.size), 0)).where(Blob.owner_id == owner_id)
                )
            ).scalar_one()
        )
        if self.account_quota is None:
            return blobs
        sent = int(
            (
                await conn.execute(
                    select(func.coalesce(func.sum(MailboxEntry.size), 0)).where(
                        MailboxEntry.sender_user == owner_id
                    )
                )
            ).scalar_one()
        )
        return blobs + sent

    @property
    def quota(self) -> int:
        return self.user_quota if self.account_quota is None else min(self.user_quota, self.account_quota)

    async def put(
        self,
        owner_id: int,
        readers: Sequence[int],
        chunks: AsyncIterator[bytes],
        declared_size: int | None = None,
        *,
        keep_for: timedelta | None = None,
    ) -> BlobInfo:
        """Stream `chunks` to disk and record the blob; nothing is kept if any limit is passed.

        `keep_for` (a disappearing message's file) shortens its life; never past the retention."""
        if declared_size is not None and declared_size > self.max_bytes:
            raise BlobTooLarge(self.max_bytes)
        if self._disk is not None and (full := self._disk.refusal()) is not None:
            raise full
        used = await self.used_by(owner_id)
        room = min(self.max_bytes, self.quota - used)
        if declared_size is not None and declared_size > self.quota - used:
            raise BlobQuotaExceeded(used, self.quota)
        await asyncio.to_thread(self._tmp.mkdir, parents=True, exist_ok=True)
        blob_id = secrets.token_hex(16)
        part = self._tmp / f"{blob_id}.part"
        digest = hashlib.sha256()
        size = 0
        handle: BinaryIO = await asyncio.to_thread(open, part, "wb")
        try:
            buffer = bytearray()
            async for chunk in chunks:
                size += len(chunk)
                if size > room:
                    if size > self.max_bytes:
                        raise BlobTooLarge(self.max_bytes)
                    raise BlobQuotaExceeded(used, self.quota)
                buffer += chunk
                if len(buffer) >= _WRITE_CHUNK:
                    data, buffer = bytes(buffer), bytearray()
                    await asyncio.to_thread(_write_and_hash, handle, digest, data)
            if buffer:
                await asyncio.to_thread(_write_and_hash, handle, digest, bytes(buffer))
            await asyncio.to_thread(_flush_and_sync, handle)
        except BaseException:
            await asyncio.to_thread(handle.close)
            await asyncio.to_thread(part.unlink, True)
            raise
        await asyncio.to_thread(handle.close)
        final = self.root / blob_id
        try:
            await asyncio.to_thread(os.replace, part, final)
            await asyncio.to_thread(_sync_dir, self.root)
            life = self.retention if keep_for is None else min(keep_for, self.retention)
            return await self._record(owner_id, readers, blob_id, size, digest.hexdigest(), life)
        except BaseException:
            await asyncio.to_thread(final.unlink, True)
            await asyncio.to_thread(part.unlink, True)
            raise

    async def _record(
        self, owner_id: int, readers: Sequence[int], blob_id: str, size: int, sha: str, life: timedelta
    ) -> BlobInfo:
        now = datetime.now(UTC)
        expires = now + life
        async with self._quota_lock, self._engine.begin() as conn:
            used_bytes = await self._used(conn, owner_id)
            if used_bytes + size > self.quota:
                raise BlobQuotaExceeded(used_bytes, self.quota)
            result = await conn.execute(
                insert(Blob)
                .values(
                    blob_id=blob_id,
                    owner_id=owner_id,
                    size=size,
                    sha256=sha,
                    created_at=now,
                    expires_at=expires,
                )
                .returning(Blob.id)
            )
            row_id = result.scalar_one()
            unique_readers = sorted({r for r in readers if r != owner_id})
            if unique_readers:
                await conn.execute(
                    insert(BlobReader), [{"blob_id": row_id, "user_id": r} for r in unique_readers]
                )
        return BlobInfo(blob_id, owner_id, size, sha, now, expires)

    async def find_readable(self, user_id: int, blob_id: str) -> tuple[BlobInfo, Path]:
        """The blob and its file, if `user_id` uploaded it or is one of its readers and it is live."""
        now = datetime.now(UTC)
        readers = select(BlobReader.blob_id).where(BlobReader.user_id == user_id)
        stmt = select(Blob).where(
            Blob.blob_id == blob_id,
            Blob.expires_at > now,
            or_(Blob.owner_id == user_id, Blob.id.in_(readers)),
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(stmt)).mappings().first()
        if row is None:
            raise BlobNotFound(blob_id)
        path = self.path_of(blob_id)
        if not await asyncio.to_thread(path.is_file):
            raise BlobNotFound(blob_id)
        info = BlobInfo(
            row["blob_id"], row["owner_id"], row["size"], row["sha256"], row["created_at"], row["expires_at"]
        )
        return info, path

    async def delete(self, owner_id: int, blob_id: str) -> None:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(Blob).where(Blob.blob_id == blob_id, Blob.owner_id == owner_id)
            )
            if not result.rowcount:
                raise BlobNotFound(blob_id)
        await asyncio.to_thread(self.path_of(blob_id).unlink, True)

    async def purge_expired(self, now: datetime | None = None) -> int:
        """Delete expired blobs (rows first, then files) and orphaned files of deleted accounts."""
        now = now or datetime.now(UTC)
        async with self._engine.begin() as conn:
            gone = (
                (await conn.execute(delete(Blob).where(Blob.expires_at <= now).returning(Blob.blob_id)))
                .scalars()
                .all()
            )
        for blob_id in gone:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(self.path_of(blob_id).unlink, True)
        await self._remove_orphans()
        return len(gone)

    async def _remove_orphans(self) -> None:
        """Files whose row went away with a deleted account (the cascade cannot reach the disk)."""
        if not await asyncio.to_thread(self.root.is_dir):
            return
        cutoff = time.time() - _ORPHAN_AGE_SECONDS  # younger files may be between rename and insert
        names = await asyncio.to_thread(
            lambda: [p.name for p in self.root.iterdir() if p.is_file() and p.stat().st_mtime < cutoff]
        )
        if not names:
            return
        async with self._engine.connect() as conn:
            known = set((await conn.execute(select(Blob.blob_id).where(Blob.blob_id.in_(names)))).scalars())
        for name in names:
            if name not in known:
                with contextlib.suppress(OSError):
                    await asyncio.to_thread((self.root / name).unlink, True)


def _write_and_hash(handle: BinaryIO, digest: hashlib._Hash, data: bytes) -> None:
    digest.update(data)
    handle.write(data)


def _flush_and_sync(handle: BinaryIO) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
