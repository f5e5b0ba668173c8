"""File transfers: encrypted chunks over a direct link (paced, acknowledged, resumable) or a blob.

Direct: the file offer (manifest with the file key) travels first as an ordinary envelope; once
the receiver has stored it, the sender streams `crypto.filestream` chunks over the link with
back-pressure (the link's bufferedAmount thresholds) and a bounded window of unacknowledged
chunks. The receiver writes chunk i only when it expects i, acknowledges it, and checks the whole
file's SHA-256 before an atomic rename into the downloads folder. When the link breaks the sender
gets a new one and resumes after the last acknowledged chunk.

Blob: the same encrypted chunks are streamed to the server (`POST /blobs`, readable only by the
recipients) and the offer names the blob; the receiver streams it back and decrypts chunk by chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crypto.errors import FileStreamError
from crypto.filestream import FileManifest, decrypt_chunk, decrypt_chunks, encrypt_chunks
from peer import frames
from peer.atomicfile import atomic_output
from peer.client import ServerClient
from peer.errors import LinkFailed, PeerError, ServerError, ServerUnavailable, TransferFailed
from peer.events import Event, FileProgress, FileReceived
from peer.link import Link
from peer.linkset import LinkSet
from peer.localstore import LocalStore, TransferRecord
from peer.profile import Profile

log = logging.getLogger(__name__)

_BLOB_DELETE_RETRY_PAUSES = (1.0, 3.0, 6.0)  # seconds between tries of a transient failure

WINDOW = 64  # chunks in flight without an ack (4 MiB at the default chunk size)
PERSIST_EVERY = 16
ACK_EVERY = 4  # chunks per acknowledgement (the last chunk is always acknowledged)


@dataclass
class _Outgoing:
    manifest: FileManifest
    acked: dict[str, int] = field(default_factory=dict)  # device -> highest acknowledged index
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    aborted: dict[str, str] = field(default_factory=dict)


@dataclass
class _Incoming:
    record: TransferRecord
    manifest: FileManifest
    next_index: int
    partial: Path
    sender_device: str
    message_id: str
    fd: int | None = None  # the partial file, open while chunks arrive
    digest: Any = None  # running SHA-256 while every chunk so far came through this process

    def write(self, index: int, sealed: bytes, plain: bytes) -> None:
        """Keep chunk `index` as it came (still encrypted: attachments stay sealed at rest)."""
        if self.fd is None:
            self.fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT, 0o600)
        os.pwrite(self.fd, sealed, index * self.manifest.encrypted_chunk_length(0))
        if self.digest is not None:
            self.digest.update(plain)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class FileTransfers:
    def __init__(
        self,
        store: LocalStore,
        client: ServerClient,
        links: LinkSet,
        profile: Profile,
        publish: Callable[[Event], None],
        link_deadline: float,
        stall_after: float,
        download_dir: Path | None = None,
        device_online: Callable[[int, str], bool] | None = None,
    ) -> None:
        self._device_online = device_online
        self._store = store
        self._client = client
        self._links = links
        self._profile = profile
        self._publish = publish
        self._link_deadline = link_deadline
        self._stall_after = stall_after
        self._download_dir = download_dir
        self._out: dict[str, _Outgoing] = {}
        self._in: dict[str, _Incoming] = {}
        self._completed: dict[str, asyncio.Event] = {}

    # ---------------------------------------------------------------------------------------------
    # sending
    # ---------------------------------------------------------------------------------------------

    def on_chunk_ack(self, device_id: str, ack: frames.ChunkAck) -> None:
        out = self._out.get(ack.transfer_id)
        if out is not None and ack.index > out.acked.get(device_id, -1):
            out.acked[device_id] = ack.index
            out.progress.set()

    def on_abort(self, device_id: str, abort: frames.FileAbort) -> None:
        out = self._out.get(abort.transfer_id)
        if out is not None:
            out.aborted[device_id] = abort.reason
            out.progress.set()

    async def send_direct(
        self,
        transfer_id: str,
        manifest: FileManifest,
        path: Path,
        user_id: int,
        device_id: str,
        max_links: int = 5,
    ) -> None:
        """Stream the file to one device over direct links, resuming after each broken link."""
        out = self._out.setdefault(transfer_id, _Outgoing(manifest))
        last = manifest.chunk_count - 1
        links_used = 0
        try:
            while out.acked.get(device_id, -1) < last:
                if device_id in out.aborted:
                    raise TransferFailed(f"the receiver refused the file: {out.aborted[device_id]}")
                try:
                    link = self._links.open_link(device_id)
                    if link is None:
                        if self._device_online is not None and not self._device_online(user_id, device_id):
                            raise TransferFailed(f"device {device_id} went offline")
                        if links_used >= max_links:
                            raise TransferFailed(
                                f"no direct link to device {device_id} after {max_links} tries"
                            )
                        links_used += 1
                        link = await self._links.connect(user_id, device_id, within=self._link_deadline)
                    await self._stream(transfer_id, out, path, link, device_id)
                except LinkFailed as e:
                    log.info("file %s to %s: link broke (%s); resuming", transfer_id, device_id, e)
        finally:
            if all(out.acked.get(d, -1) >= last for d in out.acked):
                self._out.pop(transfer_id, None)

    async def _stream(self, transfer_id: str, out: _Outgoing, path: Path, link: Link, device_id: str) -> None:
        manifest = out.manifest
        last = manifest.chunk_count - 1
        start = out.acked.get(device_id, -1) + 1
        total = manifest.encrypted_size
        async for index, data in _sealed_batches(manifest, path, start):
            while index - out.acked.get(device_id, -1) > WINDOW:
                await self._await_progress(out, link)
            await link.send_paced(frames.Chunk(transfer_id, index, data))
            if index % PERSIST_EVERY == 0:
                self._publish(
                    FileProgress(
                        transfer_id,
                        True,
                        _done_bytes(manifest, out.acked.get(device_id, -1)),
                        total,
                        "direct",
                    )
                )
        while out.acked.get(device_id, -1) < last:
            await self._await_progress(out, link)
        self._publish(FileProgress(transfer_id, True, total, total, "direct"))

    async def _await_progress(self, out: _Outgoing, link: Link) -> None:
        out.progress.clear()
        if link.ended:
            raise LinkFailed(link.failure or "link ended")
        ended = asyncio.ensure_future(link.wait_ended())
        progressed = asyncio.ensure_future(out.progress.wait())
        try:
            async with asyncio.timeout(self._stall_after):
                await asyncio.wait({ended, progressed}, return_when=asyncio.FIRST_COMPLETED)
        except TimeoutError as e:
            raise LinkFailed(f"no chunk acknowledged for {self._stall_after} s") from e
        finally:
            ended.cancel()
            progressed.cancel()
            await asyncio.gather(ended, progressed, return_exceptions=True)
        if link.ended:
            raise LinkFailed(link.failure or "link ended")

    async def upload_blob(
        self,
        manifest: FileManifest,
        path: Path,
        readers: list[int],
        transfer_id: str,
        expires_in: int | None = None,
        *,
        group_id: str | None = None,
    ) -> str:
        """Stream the encrypted chunks to the server; returns the blob id. `expires_in`: the
        conversation's disappearing timer, so the server's copy goes with the message. With
        `group_id`: stored once, every member of that group may read it."""
        total = manifest.encrypted_size

        async def body() -> AsyncIterator[bytes]:
            chunks = encrypt_chunks(manifest, path, 0)
            sent = 0
            while True:
                batch = await asyncio.to_thread(_take, chunks, 16)
                if not batch:
                    break
                data = b"".join(batch)
                sent += len(data)
                self._publish(FileProgress(transfer_id, True, sent, total, "blob"))
                yield data

        blob = await self._client.upload_blob(body(), readers, expires_in=expires_in, group_id=group_id)
        return blob.blob_id

    async def delete_blob(self, blob_id: str) -> None:
        """Delete a blob I uploaded (a file deleted for everyone, or expired); gone already is fine.

        A busy or briefly unreachable server (a timeout, a 429 or a 5xx) is tried again a few times
        over about ten seconds: the blob's own expiry is only the backstop, and until the server
        purges it the ciphertext of a "deleted" file would stay on its disk."""
        for attempt, pause in enumerate((*_BLOB_DELETE_RETRY_PAUSES, None)):
            try:
                await self._client.delete_blob(blob_id)
                return
            except ServerError as e:
                transient = isinstance(e, ServerUnavailable) or e.status in (429, 500, 502, 503, 504)
                if not transient or pause is None:
                    log.info("blob %s was not deleted (attempt %d): %s", blob_id, attempt + 1, e)
                    return
                log.info("blob %s: deleting failed for now (%s), again in %.0f s", blob_id, e, pause)
                await asyncio.sleep(pause)
            except PeerError as e:  # not logged in any more, a closed peer
                log.info("blob %s was not deleted: %s", blob_id, e)
                return

    # ---------------------------------------------------------------------------------------------
    # receiving
    # ---------------------------------------------------------------------------------------------

    async def expect(
        self,
        message_id: str,
        conversation: str,
        manifest: FileManifest,
        sender_device: str,
        blob_id: str | None,
    ) -> None:
        """Record an incoming file (before the offer is acknowledged, so chunks find it)."""
        existing = await self._store.get_transfer(message_id)
        record = existing or TransferRecord(
            transfer_id=message_id,
            outgoing=False,
            conversation=conversation,
            manifest=manifest.to_dict(),
            local_path=str(self._profile.partial / message_id),
            next_index=0,
            state="receiving",
            blob_id=blob_id,
        )
        if existing is None:
            await self._store.save_transfer(record)
        partial = Path(record.local_path)
        if record.state == "done":
            return
        # What is on disk is the truth: whole chunks only (a crash may leave a torn tail).
        next_index = _whole_chunks(partial, manifest)
        incoming = _Incoming(record, manifest, next_index, partial, sender_device, message_id)
        if next_index == 0:
            incoming.digest = hashlib.sha256()  # whole file seen here: no re-read at the end
        self._in[message_id] = incoming
        self._completed.setdefault(message_id, asyncio.Event())

    async def on_chunk(self, link: Link, chunk: frames.Chunk) -> None:
        incoming = self._in.get(chunk.transfer_id)
        if incoming is None or incoming.sender_device != link.remote_device:
            return
        if chunk.index < incoming.next_index:  # a resend of something already written
            with contextlib.suppress(LinkFailed):
                link.send(frames.ChunkAck(chunk.transfer_id, incoming.next_index - 1))
            return
        if chunk.index > incoming.next_index:
            return  # a gap: the sender resumes from our last ack
        try:
            plain = decrypt_chunk(incoming.manifest, chunk.index, chunk.data)
        except FileStreamError as e:
            with contextlib.suppress(LinkFailed):
                link.send(frames.FileAbort(chunk.transfer_id, str(e)))
            await self._fail(incoming, str(e))
            return
        incoming.write(chunk.index, chunk.data, plain)
        incoming.next_index += 1
        manifest = incoming.manifest
        if chunk.index % ACK_EVERY == ACK_EVERY - 1 or incoming.next_index == manifest.chunk_count:
            with contextlib.suppress(LinkFailed):
                link.send(frames.ChunkAck(chunk.transfer_id, chunk.index))
        if incoming.next_index % PERSIST_EVERY == 0 or incoming.next_index == manifest.chunk_count:
            await self._store.transfer_progress(chunk.transfer_id, incoming.next_index)
            done = min(incoming.next_index * manifest.chunk_size, manifest.size)
            self._publish(FileProgress(chunk.transfer_id, False, done, manifest.size, "direct"))
        if incoming.next_index == manifest.chunk_count:
            await self._finish(incoming)

    async def download_blob(self, message_id: str) -> None:
        incoming = self._in.get(message_id)
        if incoming is None or incoming.record.blob_id is None:
            return
        manifest = incoming.manifest
        buffer = bytearray()
        index = 0
        incoming.partial.unlink(missing_ok=True)
        incoming.digest = hashlib.sha256()
        with contextlib.closing(_Closer(incoming)):
            async for piece in self._client.download_blob(incoming.record.blob_id):
                buffer += piece
                while index < manifest.chunk_count and len(buffer) >= manifest.encrypted_chunk_length(index):
                    size = manifest.encrypted_chunk_length(index)
                    try:
                        sealed = bytes(buffer[:size])
                        incoming.write(index, sealed, decrypt_chunk(manifest, index, sealed))
                    except FileStreamError as e:
                        await self._fail(incoming, str(e))
                        return
                    del buffer[:size]
                    index += 1
                self._publish(
                    FileProgress(
                        message_id,
                        False,
                        min(index * manifest.chunk_size, manifest.size),
                        manifest.size,
                        "blob",
                    )
                )
        if index != manifest.chunk_count or buffer:
            await self._fail(incoming, f"the blob ended after {index} of {manifest.chunk_count} chunks")
            return
        incoming.next_index = index
        await self._finish(incoming)

    async def _finish(self, incoming: _Incoming) -> None:
        incoming.release()
        manifest = incoming.manifest
        try:
            if incoming.digest is not None:
                await asyncio.to_thread(_fsync, incoming.partial)
                if incoming.digest.hexdigest() != manifest.sha256:
                    raise FileStreamError(f"file {manifest.name!r} does not match its manifest's SHA-256")
            else:  # resumed from a partial file on disk: check the assembled whole
                await asyncio.to_thread(_check_sealed, manifest, incoming.partial)
        except (FileStreamError, OSError) as e:
            await self._fail(incoming, str(e))
            return
        sealed = self._profile.downloads / f"{incoming.message_id}.sealed"
        # Atomic: the stored file appears whole and checked, or not at all.
        await asyncio.to_thread(os.replace, incoming.partial, sealed)
        export = None
        if self._download_dir is not None:
            try:
                export = await asyncio.to_thread(
                    export_sealed, manifest, sealed, self._download_dir, incoming.message_id
                )
            except OSError as e:
                log.warning("could not copy file %s to %s: %s", incoming.message_id, self._download_dir, e)
        record = incoming.record
        await self._store.save_transfer(
            TransferRecord(
                record.transfer_id,
                False,
                record.conversation,
                record.manifest,
                str(sealed),
                incoming.manifest.chunk_count,
                "done",
                record.blob_id,
                str(export) if export else None,
            )
        )
        self._in.pop(incoming.message_id, None)
        self._publish(
            FileReceived(
                incoming.message_id,
                str(export) if export else "",
                incoming.manifest.name,
                incoming.manifest.size,
            )
        )
        self._completed.setdefault(incoming.message_id, asyncio.Event()).set()

    async def _fail(self, incoming: _Incoming, reason: str) -> None:
        log.warning("file %s failed: %s", incoming.message_id, reason)
        incoming.release()
        incoming.partial.unlink(missing_ok=True)
        await self._store.transfer_progress(incoming.message_id, 0, state=f"failed: {reason}"[:200])
        self._in.pop(incoming.message_id, None)
        self._completed.setdefault(incoming.message_id, asyncio.Event()).set()

    def close(self) -> None:
        """Release open partial files (the partial data stays: a later run resumes from it)."""
        for incoming in self._in.values():
            incoming.release()

    async def wait_received(self, message_id: str, within: float) -> TransferRecord | None:
        event = self._completed.setdefault(message_id, asyncio.Event())
        async with asyncio.timeout(within):
            await event.wait()
        return await self._store.get_transfer(message_id)


async def _sealed_batches(manifest: FileManifest, path: Path, start: int) -> AsyncIterator[tuple[int, bytes]]:
    """Chunks `start..` read and encrypted in a worker thread, 16 at a time (disk and AES off the loop)."""
    chunks = encrypt_chunks(manifest, path, start)
    index = start
    try:
        while batch := await asyncio.to_thread(_take, chunks, 16):
            for data in batch:
                yield index, data
                index += 1
    finally:
        with contextlib.suppress(ValueError):  # still running in the worker after a cancel
            chunks.close()


def _whole_chunks(partial: Path, manifest: FileManifest) -> int:
    try:
        size = partial.stat().st_size
    except FileNotFoundError:
        return 0
    return min(size // manifest.encrypted_chunk_length(0), manifest.chunk_count)


def _sealed_chunks(manifest: FileManifest, path: Path) -> Iterator[bytes]:
    with path.open("rb") as f:
        for index in range(manifest.chunk_count):
            yield f.read(manifest.encrypted_chunk_length(index))


def _check_sealed(manifest: FileManifest, path: Path) -> None:
    for _ in decrypt_chunks(manifest, _sealed_chunks(manifest, path)):
        pass  # decrypt_chunks checks every chunk, the count and the SHA-256


def export_sealed(manifest: FileManifest, sealed: Path, folder: Path, message_id: str) -> Path:
    """Decrypt a stored file into `folder` (atomically, under a free name); blocking."""
    folder.mkdir(parents=True, exist_ok=True)
    target = _unique(folder, manifest.name, message_id)
    with atomic_output(target, 0o666) as out:  # an ordinary download: the umask decides
        for plain in decrypt_chunks(manifest, _sealed_chunks(manifest, sealed)):
            out.write(plain)
    return target


def _take(iterator, n: int) -> list[bytes]:
    out = []
    for item in iterator:
        out.append(item)
        if len(out) == n:
            break
    return out


def _done_bytes(manifest: FileManifest, acked: int) -> int:
    return min(
        (acked + 1) * (manifest.encrypted_size // max(1, manifest.chunk_count)), manifest.encrypted_size
    )


class _Closer:
    def __init__(self, incoming: _Incoming) -> None:
        self._incoming = incoming

    def close(self) -> None:
        self._incoming.release()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unique(folder: Path, name: str, message_id: str) -> Path:
    safe = Path(name).name or f"file-{message_id[:8]}"
    candidate = folder / safe
    if not candidate.exists():
        return candidate
    stem, suffix = os.path.splitext(safe)
    return folder / f"{stem}-{message_id[:8]}{suffix}"
