"""kill -9 of a process that is sealing or opening pairwise messages: after restarting, nothing is
lost, nothing opens twice, and the next message decrypts (the ratchet state and the message it
produced or consumed are committed together)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from peer.sessions import Outcome, new_message_id
from tests.peer.sessionworld import Directory, SessionDevice, store_text
from tests.support.keys import fixed_device_keys
from tests.support.server import REPO_ROOT


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[tuple[SessionDevice, SessionDevice]]:
    directory, pins = Directory(), {}
    alice = SessionDevice(tmp_path, 1, "alice-laptop-0", fixed_device_keys(0), directory, pins)
    bob = SessionDevice(tmp_path, 2, "bob-phone-00001", fixed_device_keys(1), directory, pins)
    for d in (alice, bob):
        pins[(d.user_id, d.device_id)] = d.keys.identity_public_bytes()
        await d.open()
        await directory.refresh(d)
    r = await bob.sessions.open(
        (await alice.sessions.seal(2, bob.device_id, b"hello", new_message_id())).data
    )
    await alice.sessions.open((await bob.sessions.seal(1, alice.device_id, b"hi", new_message_id())).data)
    assert r.outcome is Outcome.DELIVERED
    try:
        yield alice, bob
    finally:
        await alice.close()
        await bob.close()


def child(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.peer.ratchet_child", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def read_lines(proc: subprocess.Popen[str], n: int, within: float = 60.0) -> list[str]:
    """n lines of the child's output (each printed after a commit), read off the event loop."""
    assert proc.stdout is not None

    def _read() -> list[str]:
        lines = []
        while len(lines) < n:
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"child ended early: {proc.stderr.read() if proc.stderr else ''}")
            lines.append(line.strip())
        return lines

    return await asyncio.wait_for(asyncio.to_thread(_read), within)


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def rows(path: Path, query: str) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute(query).fetchall()
    finally:
        db.close()


async def test_sender_killed_mid_stream_loses_nothing_and_keeps_a_usable_state(pair) -> None:
    alice, bob = pair
    for _ in range(2):  # two kills at whatever point the child happens to be
        await alice.store.close()
        proc = child("send", str(alice.path), "2", bob.device_id)
        try:
            await read_lines(proc, 25)
        finally:
            kill(proc)
        await alice.open()  # reopen the very files the killed process left
    outbox = rows(alice.path, "SELECT message_id, envelope FROM outbox ORDER BY created_ms, rowid")
    assert len(outbox) >= 50
    opened = []
    for _, data in outbox:  # every committed message opens, once, at the receiver
        r = await bob.sessions.open(bytes(data), store_with=store_text(bob.store))
        assert r.outcome is Outcome.DELIVERED, r.reason
        opened.append(r.message_id)
    assert opened == [m for m, _ in outbox]
    after = await alice.sessions.seal(2, bob.device_id, b"after the kills", new_message_id())
    assert (await bob.sessions.open(after.data)).plaintext == b"after the kills"


async def test_receiver_killed_mid_stream_stores_each_message_once_and_reads_the_next(pair, tmp_path) -> None:
    alice, bob = pair
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    sent = []
    for i in range(60):
        out = await alice.sessions.seal(2, bob.device_id, f"n{i}".encode(), new_message_id())
        await asyncio.to_thread((inbox / f"{i:04d}").write_bytes, out.data)
        sent.append(out.message_id)
    await bob.store.close()
    for cut in (17,):  # killed after some commits, then handed everything again
        proc = child("receive", str(bob.path), str(inbox))
        try:
            await read_lines(proc, cut)
        finally:
            kill(proc)
    proc = child("receive", str(bob.path), str(inbox))
    lines = await read_lines(proc, 61)
    proc.wait(timeout=30)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    assert lines[-1] == "done"
    stored = [m for (m,) in rows(bob.path, "SELECT message_id FROM messages ORDER BY rowid")]
    assert sorted(stored) == sorted(sent) and len(stored) == len(set(stored))
    await bob.open()
    nxt = await alice.sessions.seal(2, bob.device_id, b"next", new_message_id())
    assert (await bob.sessions.open(nxt.data)).plaintext == b"next"
