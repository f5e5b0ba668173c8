"""Chunked AEAD streams for files: constant memory, resumable, every fault named by chunk index.

A fresh 256-bit key and 8-byte nonce prefix per file. Chunk *i* on the wire is
`u32 index || AES-256-GCM(key, prefix || u32 i, plaintext_i, AAD = domain || u32 i || last_flag)`.
The cleartext index lets the receiver tell a reordered or duplicated chunk (`ChunkOutOfOrder`)
from an altered one (`ChunkTampered`); the index is still authenticated through the nonce and AAD.
The last-chunk flag and the chunk count in the (signed, encrypted) manifest catch truncation.
An empty file is one empty last chunk, so even it cannot be truncated unnoticed.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._codec import b64d, b64e
from .errors import ChunkOutOfOrder, ChunkTampered, FileStreamError, StreamTruncated

DEFAULT_CHUNK_SIZE = 65536
MIN_CHUNK_SIZE = 1024
MAX_CHUNK_SIZE = 1 << 20  # aiortc messages top out at 256 KiB; 1 MiB leaves room for other carriers
MAX_NAME_BYTES = 255
NONCE_PREFIX_BYTES = 8
CHUNK_HEADER_BYTES = 4
TAG_BYTES = 16
_AAD_DOMAIN = b"peerpost/file/v1\x00"
_INDEX = struct.Struct(">I")


@dataclass(frozen=True)
class FileManifest:
    """Everything a receiver needs to decrypt and check a file; travels inside an envelope."""

    name: str
    size: int
    sha256: str
    chunk_size: int
    chunk_count: int
    key: bytes
    nonce_prefix: bytes

    def __post_init__(self) -> None:
        _validate(self)

    def __repr__(self) -> str:  # the key stays out of logs
        return (
            f"FileManifest(name={self.name!r}, size={self.size}, sha256={self.sha256[:16]}…, "
            f"chunk_size={self.chunk_size}, chunk_count={self.chunk_count})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "sha256": self.sha256,
            "chunk_size": self.chunk_size,
            "chunk_count": self.chunk_count,
            "key": b64e(self.key),
            "nonce_prefix": b64e(self.nonce_prefix),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileManifest:
        if not isinstance(data, dict):
            raise FileStreamError("file manifest must be an object")
        expected = {"name", "size", "sha256", "chunk_size", "chunk_count", "key", "nonce_prefix"}
        if set(data) != expected:
            missing, extra = expected - set(data), set(data) - expected
            raise FileStreamError(
                f"file manifest fields wrong: missing {sorted(missing)}, extra {sorted(extra)}"
            )
        try:
            key = b64d(data["key"])
            prefix = b64d(data["nonce_prefix"])
        except ValueError as e:
            raise FileStreamError(f"file manifest key or nonce prefix is not base64url: {e}") from e
        return cls(
            name=data["name"],
            size=data["size"],
            sha256=data["sha256"],
            chunk_size=data["chunk_size"],
            chunk_count=data["chunk_count"],
            key=key,
            nonce_prefix=prefix,
        )

    def plain_chunk_length(self, index: int) -> int:
        if index < self.chunk_count - 1:
            return self.chunk_size
        return self.size - self.chunk_size * (self.chunk_count - 1)

    def encrypted_chunk_length(self, index: int) -> int:
        return CHUNK_HEADER_BYTES + self.plain_chunk_length(index) + TAG_BYTES

    @property
    def encrypted_size(self) -> int:
        """Total bytes of the encrypted stream (e.g. a blob upload's length)."""
        return self.size + self.chunk_count * (CHUNK_HEADER_BYTES + TAG_BYTES)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(m: FileManifest) -> None:
    if not isinstance(m.name, str) or not m.name or len(m.name.encode("utf-8")) > MAX_NAME_BYTES:
        raise FileStreamError(f"file name must be 1-{MAX_NAME_BYTES} bytes of UTF-8")
    # A name is a leaf, never a path: the receiver may join it to a download folder.
    if any(c in m.name for c in "/\\\x00") or m.name in {".", ".."}:
        raise FileStreamError(f"file name {m.name!r} must not contain a path separator or be . or ..")
    if not _is_int(m.size) or m.size < 0:
        raise FileStreamError("file size must be a non-negative integer")
    if not _is_int(m.chunk_size) or not MIN_CHUNK_SIZE <= m.chunk_size <= MAX_CHUNK_SIZE:
        raise FileStreamError(f"chunk size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes")
    expected_count = max(1, -(-m.size // m.chunk_size))
    if m.chunk_count != expected_count:
        raise FileStreamError(
            f"chunk count {m.chunk_count} does not match size {m.size} / chunk size {m.chunk_size}"
        )
    if expected_count >= 2**32:
        raise FileStreamError("file has too many chunks for a 32-bit index")
    if (
        not isinstance(m.sha256, str)
        or len(m.sha256) != 64
        or any(c not in "0123456789abcdef" for c in m.sha256)
    ):
        raise FileStreamError("sha256 must be 64 lowercase hex digits")
    if not isinstance(m.key, bytes) or len(m.key) != 32:
        raise FileStreamError("file key must be 32 bytes")
    if not isinstance(m.nonce_prefix, bytes) or len(m.nonce_prefix) != NONCE_PREFIX_BYTES:
        raise FileStreamError(f"nonce prefix must be {NONCE_PREFIX_BYTES} bytes")


def _aad(index: int, last: bool) -> bytes:
    return _AAD_DOMAIN + _INDEX.pack(index) + (b"\x01" if last else b"\x00")


def prepare_file(path: str | os.PathLike[str], chunk_size: int = DEFAULT_CHUNK_SIZE) -> FileManifest:
    """Hash the file (constant memory) and choose a fresh key and nonce prefix for it.

    Blocking for large files: async callers use `asyncio.to_thread`.
    """
    p = Path(path)
    digest = hashlib.sha256()
    size = 0
    with p.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            size += len(block)
    if not _is_int(chunk_size) or not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise FileStreamError(f"chunk size must be {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes")
    return FileManifest(
        name=p.name,
        size=size,
        sha256=digest.hexdigest(),
        chunk_size=chunk_size,
        chunk_count=max(1, -(-size // chunk_size)),
        key=AESGCM.generate_key(256),
        nonce_prefix=os.urandom(NONCE_PREFIX_BYTES),
    )


def encrypt_chunk(manifest: FileManifest, index: int, plaintext: bytes) -> bytes:
    """Seal chunk `index` (for callers that hold chunks in memory rather than in a file)."""
    if not 0 <= index < manifest.chunk_count:
        raise ChunkOutOfOrder(index, message=f"chunk {index} is outside 0..{manifest.chunk_count - 1}")
    if len(plaintext) != manifest.plain_chunk_length(index):
        raise FileStreamError(
            f"chunk {index} holds {len(plaintext)} bytes, the manifest says "
            f"{manifest.plain_chunk_length(index)}: the file changed since it was prepared"
        )
    header = _INDEX.pack(index)
    last = index == manifest.chunk_count - 1
    return header + AESGCM(manifest.key).encrypt(manifest.nonce_prefix + header, plaintext, _aad(index, last))


def encrypt_chunks(
    manifest: FileManifest, path: str | os.PathLike[str], start: int = 0
) -> Generator[bytes, None, None]:
    """Yield encrypted chunks `start..chunk_count-1` read from `path`, one chunk in memory at a time."""
    if not 0 <= start < manifest.chunk_count:
        raise ChunkOutOfOrder(
            start, message=f"cannot start at chunk {start}: the file has {manifest.chunk_count}"
        )
    aead = AESGCM(manifest.key)
    prefix = manifest.nonce_prefix
    last_index = manifest.chunk_count - 1
    # One reused read buffer (no allocation per chunk): ~5% faster than f.read() at 64 KiB chunks.
    buffer = memoryview(bytearray(manifest.chunk_size))
    with Path(path).open("rb", buffering=0) as f:
        f.seek(start * manifest.chunk_size)
        for index in range(start, manifest.chunk_count):
            want = manifest.plain_chunk_length(index)
            view = buffer[:want]
            got = f.readinto(view) or 0
            if got != want:  # regular files fill in one call; anything else gets a second chance
                got += _read_exactly(f, view[got:])
            if got != want or (index == last_index and f.read(1)):
                raise FileStreamError(
                    f"file {manifest.name!r} changed since it was prepared (chunk {index} differs in length)"
                )
            header = _INDEX.pack(index)
            yield header + aead.encrypt(prefix + header, view, _aad(index, index == last_index))


def _read_exactly(f: io.RawIOBase, into: memoryview) -> int:
    filled = 0
    while filled < len(into):
        n = f.readinto(into[filled:])
        if not n:
            break
        filled += n
    return filled


def decrypt_chunk(manifest: FileManifest, index: int, data: bytes) -> bytes:
    """Open one encrypted chunk that must be chunk `index` of this file."""
    return _decrypt(AESGCM(manifest.key), manifest, index, data)


def _decrypt(aead: AESGCM, manifest: FileManifest, index: int, data: bytes) -> bytes:
    if not 0 <= index < manifest.chunk_count:
        raise ChunkOutOfOrder(index, message=f"chunk {index} is outside 0..{manifest.chunk_count - 1}")
    if len(data) < CHUNK_HEADER_BYTES + TAG_BYTES:
        raise ChunkTampered(index, f"file chunk {index} is {len(data)} bytes: too short to be a chunk")
    (claimed,) = _INDEX.unpack_from(data)
    if claimed != index:
        if claimed >= manifest.chunk_count:
            raise ChunkTampered(index, f"file chunk {index} carries an impossible index {claimed}")
        raise ChunkOutOfOrder(index, got=claimed)
    if len(data) != manifest.encrypted_chunk_length(index):
        raise ChunkTampered(
            index,
            f"file chunk {index} is {len(data)} bytes, expected {manifest.encrypted_chunk_length(index)}",
        )
    header = data[:CHUNK_HEADER_BYTES]
    try:
        return aead.decrypt(
            manifest.nonce_prefix + header,
            memoryview(data)[CHUNK_HEADER_BYTES:],  # no 64 KiB copy per chunk
            _aad(index, index == manifest.chunk_count - 1),
        )
    except InvalidTag as e:
        raise ChunkTampered(index) from e


def decrypt_chunks(
    manifest: FileManifest, chunks: Iterable[bytes], start: int = 0, *, verify_sha256: bool = True
) -> Iterator[bytes]:
    """Open chunks `start, start+1, …` in order; checks order, the last flag and the count.

    From `start == 0` the SHA-256 of the whole plaintext is also checked against the manifest at the
    end (on resume the caller checks the assembled file with `verify_file`). The chunk tags, count
    and last flag already prove the stream is exactly what the manifest's sender sealed; the hash
    only catches a sender whose manifest disagrees with its own file, and costs about half the
    throughput here (SHA-256 is slower than AES-GCM), so `verify_sha256=False` may skip it.
    """
    if not 0 <= start < manifest.chunk_count:
        raise ChunkOutOfOrder(
            start, message=f"cannot start at chunk {start}: the file has {manifest.chunk_count}"
        )
    aead = AESGCM(manifest.key)
    digest = hashlib.sha256() if start == 0 and verify_sha256 else None
    index = start
    for data in chunks:
        if index >= manifest.chunk_count:
            got = _INDEX.unpack_from(data)[0] if len(data) >= CHUNK_HEADER_BYTES else None
            raise ChunkOutOfOrder(
                index, got=got, message=f"extra data after the last chunk ({manifest.chunk_count - 1})"
            )
        plain = _decrypt(aead, manifest, index, data)
        if digest is not None:
            digest.update(plain)
        yield plain
        index += 1
    if index < manifest.chunk_count:
        raise StreamTruncated(received=index, expected=manifest.chunk_count)
    if digest is not None and digest.hexdigest() != manifest.sha256:
        raise FileStreamError(f"file {manifest.name!r} decrypted but does not match the manifest's SHA-256")


def verify_file(manifest: FileManifest, path: str | os.PathLike[str]) -> None:
    """Check an assembled file's size and SHA-256 against the manifest (after a resumed transfer)."""
    digest = hashlib.sha256()
    size = 0
    with Path(path).open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
            size += len(block)
    if size != manifest.size or digest.hexdigest() != manifest.sha256:
        raise FileStreamError(f"file {manifest.name!r} does not match its manifest (size or SHA-256 differ)")
