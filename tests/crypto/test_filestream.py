"""Chunked file streams: known answers, resume, and every fault named by its chunk."""

from __future__ import annotations

import dataclasses
import hashlib
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto._codec import b64d
from crypto.errors import ChunkOutOfOrder, ChunkTampered, FileStreamError, StreamTruncated
from crypto.filestream import (
    FileManifest,
    decrypt_chunk,
    decrypt_chunks,
    encrypt_chunks,
    prepare_file,
    verify_file,
)
from tests.crypto.conftest import few, some, vector


@pytest.fixture(scope="module")
def kat(tmp_path_factory: pytest.TempPathFactory):
    """The committed stream; its file is shared, so tests that change a file copy it first."""
    v = vector("filestream.json")
    path = tmp_path_factory.mktemp("kat") / "vector.bin"
    path.write_bytes(b64d(v["plaintext"]))
    return FileManifest.from_dict(v["manifest"]), path, [b64d(c) for c in v["chunks"]], b64d(v["plaintext"])


def test_committed_stream_is_reproduced_and_decrypts(kat):
    manifest, path, chunks, plaintext = kat
    assert list(encrypt_chunks(manifest, path)) == chunks
    assert b"".join(decrypt_chunks(manifest, chunks)) == plaintext
    assert manifest.encrypted_size == sum(map(len, chunks))


def test_committed_empty_file_is_one_authenticated_chunk():
    v = vector("filestream.json")
    m = FileManifest.from_dict(v["empty_manifest"])
    chunks = [b64d(c) for c in v["empty_chunks"]]
    assert list(decrypt_chunks(m, chunks)) == [b""]
    with pytest.raises(StreamTruncated):
        list(decrypt_chunks(m, []))


@few
@given(data=st.binary(max_size=6000), chunk_size=st.sampled_from([1024, 1500, 4096]))
def test_any_file_round_trips(tmp_path_factory, data, chunk_size):
    path = tmp_path_factory.mktemp("rt") / "f.bin"
    path.write_bytes(data)
    m = prepare_file(path, chunk_size=chunk_size)
    assert m.size == len(data) and m.sha256 == hashlib.sha256(data).hexdigest()
    assert FileManifest.from_dict(m.to_dict()) == m
    assert b"".join(decrypt_chunks(m, encrypt_chunks(m, path))) == data


def test_resume_from_chunk_k_gives_the_rest(kat):
    manifest, path, chunks, plaintext = kat
    resumed = list(encrypt_chunks(manifest, path, start=1))
    assert resumed == chunks[1:]
    assert b"".join(decrypt_chunks(manifest, resumed, start=1)) == plaintext[1024:]


@some
@given(data=st.data())
def test_flipping_any_byte_of_the_stream_names_a_chunk(kat, data):
    manifest, _, chunks, _ = kat
    index = data.draw(st.integers(0, len(chunks) - 1))
    position = data.draw(st.integers(0, len(chunks[index]) - 1))
    bad = bytearray(chunks[index])
    bad[position] ^= data.draw(st.integers(1, 255))
    stream = [*chunks[:index], bytes(bad), *chunks[index + 1 :]]
    with pytest.raises((ChunkTampered, ChunkOutOfOrder)) as caught:
        list(decrypt_chunks(manifest, stream))
    assert caught.value.index == index


def test_swapped_chunks_are_out_of_order(kat):
    manifest, _, chunks, _ = kat
    with pytest.raises(ChunkOutOfOrder, match="chunk 0 expected, got chunk 1") as caught:
        list(decrypt_chunks(manifest, [chunks[1], chunks[0], chunks[2]]))
    assert (caught.value.index, caught.value.got) == (0, 1)


def test_dropped_chunk_is_out_of_order(kat):
    manifest, _, chunks, _ = kat
    with pytest.raises(ChunkOutOfOrder) as caught:
        list(decrypt_chunks(manifest, [chunks[0], chunks[2]]))
    assert (caught.value.index, caught.value.got) == (1, 2)


def test_duplicated_chunk_is_out_of_order(kat):
    manifest, _, chunks, _ = kat
    with pytest.raises(ChunkOutOfOrder) as caught:
        list(decrypt_chunks(manifest, [chunks[0], chunks[0], chunks[1], chunks[2]]))
    assert (caught.value.index, caught.value.got) == (1, 0)


def test_missing_last_chunk_is_truncation(kat):
    manifest, _, chunks, _ = kat
    with pytest.raises(StreamTruncated, match=r"chunks 2\.\.2 missing"):
        list(decrypt_chunks(manifest, chunks[:2]))


def test_extra_chunk_after_the_last_is_refused(kat):
    manifest, _, chunks, _ = kat
    with pytest.raises(ChunkOutOfOrder, match="after the last"):
        list(decrypt_chunks(manifest, [*chunks, chunks[2]]))


def test_cut_last_chunk_is_tampered(kat):
    manifest, _, chunks, _ = kat
    with pytest.raises(ChunkTampered, match="chunk 2") as caught:
        decrypt_chunk(manifest, 2, chunks[2][:-5])
    assert caught.value.index == 2


def test_chunk_of_another_file_does_not_decrypt(kat):
    manifest, _, chunks, _ = kat
    other = dataclasses.replace(manifest, key=bytes(32))
    with pytest.raises(ChunkTampered) as caught:
        decrypt_chunk(other, 0, chunks[0])
    assert caught.value.index == 0


def test_a_manifest_that_shortens_the_file_cannot_hide_the_last_flag(kat):
    """Claiming 2 chunks for a 3-chunk stream: chunk 1 was not sealed as last, so it fails."""
    manifest, _, chunks, plaintext = kat
    short = dataclasses.replace(
        manifest, size=2048, chunk_count=2, sha256=hashlib.sha256(plaintext[:2048]).hexdigest()
    )
    with pytest.raises(ChunkTampered) as caught:
        list(decrypt_chunks(short, chunks[:2]))
    assert caught.value.index == 1


def test_file_changed_after_prepare_is_refused(kat, tmp_path):
    manifest, _, _, plaintext = kat
    path = tmp_path / "changed.bin"
    path.write_bytes(plaintext[:-10])
    with pytest.raises(FileStreamError, match="changed since it was prepared"):
        list(encrypt_chunks(manifest, path))


def test_verify_file_catches_a_different_assembly(kat, tmp_path):
    manifest, path, _, plaintext = kat
    verify_file(manifest, path)
    bad = tmp_path / "bad.bin"
    bad.write_bytes(plaintext[:-1] + b"\x00")
    with pytest.raises(FileStreamError, match="does not match"):
        verify_file(manifest, bad)


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "c:\\x", "..", ""])
def test_manifest_names_must_be_plain_file_names(kat, name):
    v = dict(vector("filestream.json")["manifest"], name=name)
    with pytest.raises(FileStreamError, match="file name"):
        FileManifest.from_dict(v)


def test_manifest_with_inconsistent_count_is_refused():
    v = dict(vector("filestream.json")["manifest"], chunk_count=4)
    with pytest.raises(FileStreamError, match="chunk count"):
        FileManifest.from_dict(v)


def test_streams_run_in_constant_memory(tmp_path):
    path = tmp_path / "big.bin"
    with path.open("wb") as f:
        for i in range(16):
            f.write(bytes([i]) * (1 << 20))
    m = prepare_file(path)
    tracemalloc.start()
    try:
        total = sum(len(p) for p in decrypt_chunks(m, encrypt_chunks(m, path)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 16 << 20
    assert peak < 1 << 20, f"peak {peak} bytes for a 16 MiB file"
