"""The node with the server down: local answers, a persistent outbox, delivery exactly once."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.resident.conftest import Cli, received
from tests.support.nodes import wait_released


def _edit_of(event: dict, message_id: str) -> bool:
    return event["type"] == "message_edited" and event["message"]["message_id"] == message_id


def _count(listener, text: str) -> int:
    return listener.texts().count(text)


def test_server_down_history_answers_send_is_queued_and_delivered_once_when_back(pair: Cli):
    bob_listens = pair.listen("b")
    try:
        pair.run("a", "send", "bob", "before the outage")
        bob_listens.wait_for(received("before the outage"))
        pair.server.stop()

        history = pair.run("a", "history", "bob")
        assert "before the outage" in history.stdout
        contacts = pair.json("a", "contacts", "list")
        assert [(c["username"], c["status"]) for c in contacts] == [("bob", "accepted")]
        number = pair.json("a", "safety-number", "bob")
        assert len(number["digits"]) == 60
        devices = pair.json("a", "devices", "bob")
        assert len(devices) == 1
        queued = pair.run("a", "send", "bob", "while down")
        assert queued.returncode == 0 and "queued" in queued.stdout
        assert pair.json("a", "history", "bob")[-1]["state"] == "sending"  # in the outbox, not lost
        notes = pair.home / "notes.txt"
        notes.write_text("written while the server was down\n")
        queued_file = pair.run("a", "send-file", "bob", str(notes))
        assert queued_file.returncode == 0 and "queued" in queued_file.stdout

        pair.server.restart()
        bob_listens.wait_for(received("while down"), within=60)
        got = bob_listens.wait_for(
            lambda e: e["type"] == "file_received" and e["name"] == "notes.txt", within=60
        )
        assert Path(got["path"]).read_text() == "written while the server was down\n"
        pair.run("a", "send", "bob", "after the outage")
        bob_listens.wait_for(received("after the outage"), within=30)
        assert _count(bob_listens, "while down") == 1
        assert pair.json("a", "history", "bob")[-2]["state"] in ("sent", "delivered", "read")
    finally:
        assert bob_listens.stop() == 0
        if pair.server.returncode is not None:
            pair.server.restart()


def test_queued_messages_survive_kill_9_of_the_node_and_each_goes_out_once(pair: Cli):
    bob_listens = pair.listen("b")
    try:
        pair.run("a", "whoami")
        pair.server.stop()
        for i in range(3):
            assert "queued" in pair.run("a", "send", "bob", f"kept-{i}").stdout
        pid = pair.node_pid("a")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert wait_released(pair.profile_dir("a"))

        pair.server.restart()
        assert pair.json("a", "whoami")["username"] == "alice"  # a fresh node, from the same store
        for i in range(3):
            bob_listens.wait_for(received(f"kept-{i}"), within=60)
        pair.run("a", "send", "bob", "after the restart")
        bob_listens.wait_for(received("after the restart"))
        assert [_count(bob_listens, f"kept-{i}") for i in range(3)] == [1, 1, 1]
    finally:
        assert bob_listens.stop() == 0
        if pair.server.returncode is not None:
            pair.server.restart()


def test_the_node_starts_with_the_server_down_and_catches_up_when_it_is_back(pair: Cli):
    bob_listens = pair.listen("b")
    try:
        pair.run("a", "stop")
        pair.server.stop()
        assert "queued" in pair.run("a", "send", "bob", "from a cold start").stdout
        assert pair.json("a", "status")["online"] is False
        pair.server.restart()
        bob_listens.wait_for(received("from a cold start"), within=60)
    finally:
        assert bob_listens.stop() == 0
        if pair.server.returncode is not None:
            pair.server.restart()


def test_an_edit_made_while_the_server_is_down_survives_kill_9_of_the_node_and_goes_out_once(pair: Cli):
    bob_listens = pair.listen("b")
    try:
        pair.run("a", "stop")  # started again without direct links: the server is the only way
        sent = pair.json("a", "--no-direct", "send", "bob", "climb at 5")
        bob_listens.wait_for(received("climb at 5"))
        pair.server.stop()
        edited = pair.json("a", "--no-direct", "edit", sent["message_id"], "climb at 6")
        assert edited["text"] == "climb at 6"  # here at once
        pid = pair.node_pid("a")
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert wait_released(pair.profile_dir("a"))

        pair.server.restart()
        assert pair.json("a", "--no-direct", "whoami")["username"] == "alice"  # a fresh node
        got = bob_listens.wait_for(lambda e: _edit_of(e, sent["message_id"]), within=60)
        assert got["message"]["text"] == "climb at 6"
        pair.run("a", "--no-direct", "send", "bob", "after the kill")
        bob_listens.wait_for(received("after the kill"))
        assert len([e for e in bob_listens.events if _edit_of(e, sent["message_id"])]) == 1
    finally:
        assert bob_listens.stop() == 0
        if pair.server.returncode is not None:
            pair.server.restart()
        pair.run("a", "stop", check=False)
