"""`peerpost` as a user runs it: subprocesses against a real server, unattended (env password)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.peer.conftest import PASSWORD
from tests.support.nodes import stop_nodes
from tests.support.server import REPO_ROOT


@pytest.fixture(autouse=True)
def _no_node_outlives_the_test(tmp_path):
    yield
    stop_nodes(tmp_path)


def peerpost(
    server, profile: Path, *args: str, password: str = PASSWORD, check: bool = True, stdin: str = ""
):
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "PEERPOST_PASSWORD": password,
        "PEERPOST_SERVER": server.url,
        "PEERPOST_PROFILE_DIR": str(profile),
        "PEERPOST_HOST_ADDRESSES": "127.0.0.1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "peer", "--json", *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


async def test_cli_register_contacts_send_and_history_unattended(peer_server, tmp_path):
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    run = lambda *a, **k: asyncio.to_thread(peerpost, peer_server, *a, **k)  # noqa: E731
    a, b = await asyncio.gather(
        run(alice, "register", "alice", "alice@example.org"), run(bob, "register", "bob", "bob@example.org")
    )
    alice_id, bob_id = json.loads(a.stdout)["user_id"], json.loads(b.stdout)["user_id"]
    await run(alice, "contacts", "add", "bob")
    await run(bob, "contacts", "accept", "alice")
    listed = json.loads((await run(alice, "contacts", "list")).stdout)
    assert [(c["username"], c["status"]) for c in listed] == [("bob", "accepted")]

    sent = json.loads((await run(alice, "send", "bob", "hello", "from", "the", "shell")).stdout)
    # bob's node has run since `contacts accept`: the message goes over a direct link.
    assert sent["state"] == "sent" and sent["path"] == "direct"

    whoami = json.loads((await run(bob, "whoami")).stdout)
    assert whoami["user_id"] == bob_id
    await run(bob, "send", "alice", "hi back")
    history = json.loads((await run(bob, "history", "alice")).stdout)
    texts = [m["text"] for m in history]
    assert "hello from the shell" in texts and "hi back" in texts
    assert all(m["conversation"] == f"u:{alice_id}" for m in history)

    # `chat` reads lines from stdin and sends each; end of input ends it.
    chat = await run(alice, "chat", "bob", stdin="typed in chat\n")
    assert "sent" in chat.stdout
    texts = [m["text"] for m in json.loads((await run(alice, "history", "bob")).stdout)]
    assert texts[-1] == "typed in chat"

    safety_a = json.loads((await run(alice, "safety-number", "bob")).stdout)
    safety_b = json.loads((await run(bob, "safety-number", "alice")).stdout)
    assert safety_a["digits"] == safety_b["digits"] and len(safety_a["digits"]) == 60
    assert not safety_a["verified"]
    assert json.loads((await run(alice, "verify", "bob", "--yes")).stdout)["verified"] is True
    assert json.loads((await run(alice, "safety-number", "bob")).stdout)["verified"] is True

    grouped = json.loads((await run(alice, "contacts", "group", "bob", "work")).stdout)
    remarked = json.loads((await run(alice, "contacts", "remark", "bob", "met at the conference")).stdout)
    assert grouped["group"] == "work" and remarked["remark"] == "met at the conference"
    devices = json.loads((await run(alice, "devices", "bob")).stdout)
    assert len(devices) == 1 and devices[0]["confirmed"] and not devices[0]["key_changed"]
    mine = json.loads((await run(alice, "devices")).stdout)
    assert [d["this_device"] for d in mine] == [True]


async def test_cli_errors_are_one_line_without_traceback(peer_server, tmp_path):
    profile = tmp_path / "carol"
    await asyncio.to_thread(peerpost, peer_server, profile, "register", "carol", "carol@example.org")
    wrong = await asyncio.to_thread(
        peerpost, peer_server, profile, "whoami", password="not it at all", check=False
    )
    assert wrong.returncode == 1
    assert wrong.stderr.strip() == "error: wrong password for this profile's keystore"
    unknown = await asyncio.to_thread(
        peerpost, peer_server, profile, "send", "nobody-here", "hi", check=False
    )
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1 and "nobody-here" in unknown.stderr
    await asyncio.to_thread(peerpost, peer_server, profile, "logout")
    after = await asyncio.to_thread(peerpost, peer_server, profile, "whoami", check=False)
    assert after.returncode == 1 and after.stderr.strip() == "error: logged out: run `peerpost login` again"
    await asyncio.to_thread(peerpost, peer_server, profile, "login", "carol")
    again = await asyncio.to_thread(peerpost, peer_server, profile, "whoami")
    assert json.loads(again.stdout)["username"] == "carol"
    nowhere = await asyncio.to_thread(
        peerpost,
        peer_server,
        tmp_path / "dave",
        "--server",
        "http://127.0.0.1:9",
        "login",
        "dave",
        check=False,
    )
    assert nowhere.returncode == 1 and nowhere.stderr.startswith("error: cannot reach the server")


async def test_cli_listen_prints_each_event_as_a_json_line(peer_server, tmp_path):
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    run = lambda *a, **k: asyncio.to_thread(peerpost, peer_server, *a, **k)  # noqa: E731
    await asyncio.gather(
        run(alice, "register", "alice", "alice@example.org"), run(bob, "register", "bob", "bob@example.org")
    )
    await run(alice, "contacts", "add", "bob")
    await run(bob, "contacts", "accept", "alice")
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "PEERPOST_PASSWORD": PASSWORD,
        "PEERPOST_SERVER": peer_server.url,
        "PEERPOST_PROFILE_DIR": str(bob),
        "PEERPOST_HOST_ADDRESSES": "127.0.0.1",
    }
    listener = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "peer", "listen", cwd=REPO_ROOT, env=env, stdout=asyncio.subprocess.PIPE
    )
    try:
        async with asyncio.timeout(30):
            first = json.loads(await listener.stdout.readline())
            assert first["type"] == "listening"
            await run(alice, "send", "bob", "for the script")
            while True:
                event = json.loads(await listener.stdout.readline())
                if event["type"] == "message":
                    break
        assert event["message"]["text"] == "for the script"
    finally:
        listener.terminate()
        code = await asyncio.wait_for(listener.wait(), 15)
    assert code == 0


def test_cli_serve_and_db_run_the_server_module_as_a_child_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for args in (["serve", "--help"], ["db", "upgrade", "--help"]):
        result = subprocess.run(
            [sys.executable, "-m", "peer", *args],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert "usage" in result.stdout.lower()
    # the peer package itself never imports the server
    probe = "import sys, peer.cli; print(any(m.startswith(('signalling.app', 'store')) for m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert result.stdout.strip() == "False", result.stderr
