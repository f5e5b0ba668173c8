"""One resident node per profile: any number of commands at once, none cuts another off."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading

from peer.resident import client, rpc
from tests.resident.conftest import PASSWORD, Cli, received
from tests.support.server import REPO_ROOT


def test_a_listener_and_three_concurrent_sends_on_one_profile_all_arrive_and_it_keeps_receiving(pair: Cli):
    bob_listens = pair.listen("b")
    alice_listens = pair.listen("a")
    try:
        results = []
        sends = [
            threading.Thread(target=lambda i=i: results.append(pair.run("a", "send", "bob", f"together-{i}")))
            for i in range(3)
        ]
        for t in sends:
            t.start()
        for t in sends:
            t.join(90)
        assert [r.returncode for r in results] == [0, 0, 0]
        for i in range(3):
            bob_listens.wait_for(received(f"together-{i}"))
        pair.run("b", "send", "alice", "back-1")
        got = alice_listens.wait_for(received("back-1"))
        assert got["message"]["outgoing"] is False
        for listener in (alice_listens, bob_listens):
            assert not [e for e in listener.events if "took over" in str(e)]
            assert listener.proc.poll() is None
        assert sorted(bob_listens.texts()) == ["together-0", "together-1", "together-2"]
    finally:
        assert alice_listens.stop() == 0 and bob_listens.stop() == 0


def test_a_send_after_chat_opened_a_link_goes_direct(pair: Cli):
    pair.run("b", "whoami")  # bob's node is up (it has been since `contacts accept`)
    chat = pair.run("a", "chat", "bob", stdin="hello from chat\n")
    assert "sent to bob" in chat.stdout
    status = pair.json("a", "status")
    assert [link["open"] for link in status["links"]] == [True]
    sent = pair.json("a", "send", "bob", "right after")
    assert (sent["path"], sent["state"]) == ("direct", "sent")
    history = pair.run("a", "history", "bob").stdout
    lines = [line for line in history.splitlines() if "me:" in line]
    assert lines[-2].endswith("me: hello from chat  (direct, sent)") or "hello from chat" in lines[-2]
    assert "right after" in lines[-1] and history.startswith("── ")  # a date separator opens it


def test_history_and_chat_show_names_not_user_ids(pair: Cli):
    pair.run("b", "send", "alice", "named")
    history = pair.run("a", "history", "bob").stdout
    assert "bob: named" in history and "user " not in history


def test_sending_to_a_pending_contact_or_an_empty_text_fails_with_the_reason(pair: Cli):
    pair.register("c", "carol")
    pair.run("a", "contacts", "add", "carol")
    pending = pair.run("a", "send", "carol", "hi", check=False)
    assert pending.returncode != 0
    assert pending.stderr.strip() == "error: carol has not accepted your contact request yet"
    empty = pair.run("a", "send", "bob", "   ", check=False)
    assert empty.returncode != 0 and "empty" in empty.stderr and len(empty.stderr.splitlines()) == 1
    stranger = pair.run("c", "send", "bob", "hello?", check=False)
    assert stranger.returncode != 0 and "not one of your contacts" in stranger.stderr


def test_the_socket_is_private_and_bad_requests_get_json_rpc_errors(pair: Cli):
    profile = pair.profile_dir("a")
    pair.run("a", "whoami")
    path = client.socket_path(profile)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with socket.socket(socket.AF_UNIX) as raw:
        raw.connect(str(path))
        stream = raw.makefile("rwb")

        def ask(line: bytes) -> dict:
            stream.write(line + b"\n")
            stream.flush()
            import json

            return json.loads(stream.readline())

        assert ask(b"not json")["error"]["code"] == rpc.ErrorCode.PARSE_ERROR
        deep = ask(b"[" * 100_000 + b"]" * 100_000)
        assert deep["error"]["code"] == rpc.ErrorCode.PARSE_ERROR and "deeply" in deep["error"]["message"]
        assert (
            ask(b'{"jsonrpc":"2.0","id":1,"method":"nope"}')["error"]["code"]
            == rpc.ErrorCode.METHOD_NOT_FOUND
        )
        assert ask(b'{"jsonrpc":"2.0","id":2,"method":"send","params":[]}')["error"]["code"] == (
            rpc.ErrorCode.INVALID_PARAMS
        )
        bad = ask(b'{"jsonrpc":"2.0","id":3,"method":"history","params":{"limit":10000000000000000000}}')
        assert bad["error"]["code"] == rpc.ErrorCode.BAD_INPUT and "limit" in bad["error"]["message"]
        ok = ask(b'{"jsonrpc":"2.0","id":4,"method":"status"}')
        assert ok["id"] == 4 and ok["result"]["state"] == "ready"
    with socket.socket(socket.AF_UNIX) as raw:  # one line past the limit: refused, the socket closed
        raw.connect(str(path))
        raw.sendall(b'{"x":"' + b"a" * (rpc.MAX_LINE_BYTES + 10))
        answer = raw.makefile("rb").readline()
        assert b"too long" in answer
    with client.connect(profile) as node:
        assert node.call("status")["user"]["username"] == "alice"  # the node is unharmed


def test_a_second_node_on_one_profile_is_refused(pair: Cli):
    pair.run("a", "whoami")
    second = pair.run("a", "daemon", check=False, timeout=60)
    assert second.returncode == 1
    assert "already runs for profile 'a'" in second.stderr


def test_sigterm_stops_the_node_and_everything_it_started(pair: Cli):
    out = pair.run("a", "ui").stdout
    port = int(out.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])
    pid = pair.node_pid("a")
    assert pid is not None
    os.kill(pid, signal.SIGTERM)
    from tests.support.nodes import wait_released

    assert wait_released(pair.profile_dir("a"))
    assert not client.socket_path(pair.profile_dir("a")).exists()
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, "the UI server outlived its node"
    again = pair.json("a", "whoami")  # the next command starts a fresh node
    assert again["username"] == "alice" and pair.node_pid("a") != pid


def test_lock_drops_the_keys_and_the_next_command_unlocks_with_the_password(pair: Cli):
    pair.run("a", "whoami")
    assert pair.json("a", "lock")["state"] == "locked"
    assert pair.json("a", "status")["state"] == "locked"
    without = subprocess.run(
        [sys.executable, "-m", "peer", "--profile", "a", "whoami"],
        cwd=REPO_ROOT,
        env={**pair.env(), "PEERPOST_PASSWORD": ""},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert without.returncode == 1 and "no password" in without.stderr
    password_file = pair.home / "password.txt"
    password_file.write_text(PASSWORD + "\n")
    by_file = subprocess.run(
        [sys.executable, "-m", "peer", "--profile", "a", "--password-file", str(password_file), "whoami"],
        cwd=REPO_ROOT,
        env={**pair.env(), "PEERPOST_PASSWORD": ""},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert by_file.returncode == 0 and "alice" in by_file.stdout  # --password-file unlocks it
    assert pair.json("a", "lock")["state"] == "locked"
    assert pair.json("a", "whoami")["username"] == "alice"  # PEERPOST_PASSWORD unlocks it again
    assert pair.json("a", "status")["state"] == "ready"
    assert PASSWORD not in (pair.profile_dir("a") / rpc.LOG_NAME).read_text()


def test_a_wrong_profile_login_or_register_sends_nothing_to_the_server(pair: Cli):
    with socket.socket() as trap:  # stands where the server would be; any connection is a failure
        trap.bind(("127.0.0.1", 0))
        trap.listen(8)
        trap.setblocking(False)
        url = f"http://127.0.0.1:{trap.getsockname()[1]}"
        login = pair.run("b", "--server", url, "login", "alice", check=False)
        assert login.returncode == 1
        assert login.stderr.strip() == (
            "error: profile 'b' belongs to bob, not alice; pick another with --profile"
        )
        register = pair.run("b", "--server", url, "register", "bob2", "bob2@example.org", check=False)
        assert register.returncode == 1 and "already belongs to bob" in register.stderr
        try:
            trap.accept()
        except BlockingIOError:
            pass
        else:
            raise AssertionError("a command on the wrong profile reached the server")
    assert pair.json("b", "whoami")["username"] == "bob"  # bob is still logged in


def test_registration_errors_are_one_line_and_show_no_key_bar(cli: Cli):
    bad = cli.run("fresh", "--server", cli.server.url, "register", "x", "not-an-email", check=False)
    assert bad.returncode == 1
    assert len(bad.stderr.strip().splitlines()) == 1 and "email" in bad.stderr.lower()
    assert "generating" not in bad.stderr.lower() and "pydantic" not in bad.stderr.lower()
    wrong = cli.run("fresh2", "--server", cli.server.url, "login", "nobody-at-all", check=False)
    assert wrong.returncode == 1 and len(wrong.stderr.strip().splitlines()) == 1
    assert "generating" not in wrong.stderr.lower()


def test_a_node_started_on_a_new_profile_takes_the_session_of_a_register(cli: Cli):
    out = cli.run("new", "--server", cli.server.url, "up").stdout
    assert "PeerPost UI: open http://127.0.0.1:" in out
    before = cli.json("new", "status")
    assert before["state"] == "logged_out" and before["user"] is None
    cli.register("new", "dora")
    after = cli.json("new", "status")
    assert after["state"] == "ready" and after["user"]["username"] == "dora"
    assert after["pid"] == before["pid"]  # the same node, not a second one on the device session
    assert cli.json("new", "whoami")["username"] == "dora"
