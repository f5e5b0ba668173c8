"""What people do every day, through `peerpost` against a real server (issue 15): block, my
devices (list, rename, revoke), edit and delete, password, account deletion."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from tests.resident.conftest import PASSWORD, Cli, received


@pytest.fixture(scope="module")
def people(cli: Cli) -> Cli:
    """dora ('d') and eve ('e'), contacts of each other."""
    both = [threading.Thread(target=cli.register, args=args) for args in (("d", "dora"), ("e", "eve"))]
    for t in both:
        t.start()
    for t in both:
        t.join(120)
    cli.run("d", "contacts", "add", "eve")
    cli.run("e", "contacts", "accept", "dora")
    return cli


def _find(rows: list[dict], text: str) -> dict:
    return next(m for m in rows if m.get("text") and text in m["text"])


def test_block_lists_the_person_refuses_their_messages_and_unblock_clears_it(people: Cli):
    people.register("m", "mallory")
    people.run("m", "contacts", "add", "dora")
    people.run("d", "contacts", "accept", "mallory")
    assert "blocked mallory" in people.run("d", "block", "mallory").stdout
    assert [b["username"] for b in people.json("d", "blocked")] == ["mallory"]
    assert "mallory" in people.run("d", "block").stdout  # no WHO: the list
    refused = people.run("m", "send", "dora", "let me in", check=False)
    assert refused.returncode == 1 and "dora" in refused.stderr
    assert "let me in" not in people.run("d", "history").stdout
    assert "unblocked mallory" in people.run("d", "unblock", "mallory").stdout
    assert people.json("d", "blocked") == []
    assert "blocked nobody" in people.run("d", "blocked").stdout


def test_my_devices_are_listed_named_and_a_revoked_one_gets_nothing_more(people: Cli):
    login = people.run("d2", "--server", people.server.url, "login", "dora")  # dora's second device
    assert "starts with an empty history" in login.stdout
    listener = people.listen("e")
    try:
        mine = people.json("d", "devices")
        assert len(mine) == 2 and [d["this_device"] for d in mine] == [True, False]
        assert all(d["added_at"] for d in mine)
        other = mine[1]["device_id"]
        people.run("d", "devices", "rename", other, "old", "laptop")
        renamed = {d["device_id"]: d["name"] for d in people.json("d", "devices")}
        assert renamed[other] == "old laptop"
        assert "old laptop" in people.run("d", "devices").stdout
        assert people.json("d2", "whoami")["device_id"] == other
        refused = people.run("d", "devices", "revoke", mine[0]["device_id"], "--yes", check=False)
        assert refused.returncode == 1 and "the device you are using" in refused.stderr
        people.run("d", "devices", "revoke", other, "--yes")
        assert [d["device_id"] for d in people.json("d", "devices")] == [mine[0]["device_id"]]
        people.run("e", "send", "dora", "after the revoke")
        assert "after the revoke" in people.run("d", "history").stdout
        assert "after the revoke" not in people.run("d2", "history", check=False).stdout
        removed = listener.wait_for(lambda e: e["type"] == "device_removed" and e["device_id"] == other)
        assert removed["user_id"] == people.json("d", "whoami")["user_id"]
        assert "removed" in people.run("e", "devices", "dora").stdout
    finally:
        listener.stop()


def test_an_edit_and_a_delete_for_everyone_reach_the_other_side_and_only_the_sender_may(people: Cli):
    eve = people.listen("e")
    try:
        sent = people.json("d", "send", "eve", "see you at 5")
        eve.wait_for(received("see you at 5"))
        edited = people.json("d", "edit", sent["message_id"], "see you at 6")
        assert edited["text"] == "see you at 6" and edited["edited_at_ms"]
        got = eve.wait_for(lambda e: e["type"] == "message_edited")
        assert got["message"]["message_id"] == sent["message_id"]
        assert got["message"]["text"] == "see you at 6"
        assert "see you at 6 (edited)" in people.run("e", "history", "dora").stdout
        assert "see you at 5" not in people.run("e", "history", "dora").stdout
        refused = people.run("e", "edit", sent["message_id"], "hijack", check=False)
        assert refused.returncode == 1 and "only its sender" in refused.stderr
        refused = people.run("e", "delete", sent["message_id"], "--everyone", check=False)
        assert refused.returncode == 1 and "only its sender" in refused.stderr
        people.run("d", "delete", sent["message_id"], "--everyone")
        gone = eve.wait_for(lambda e: e["type"] == "message_deleted")
        assert gone["message_id"] == sent["message_id"] and gone["for_everyone"] is True
        for who, other in (("e", "dora"), ("d", "eve")):
            transcript = people.run(who, "history", other).stdout
            assert "[message deleted]" in transcript and "see you at 6" not in transcript
        mine = people.json("e", "send", "dora", "only for me to forget")
        people.run("e", "delete", mine["message_id"])
        assert "only for me to forget" not in people.run("e", "history", "dora").stdout
        assert "only for me to forget" in people.run("d", "history", "eve").stdout
    finally:
        eve.stop()


def test_a_password_change_keeps_this_device_connected_and_the_old_password_stops_working(
    people: Cli, tmp_path
):
    people.register("f", "fay")
    new = tmp_path / "new-password"
    new.write_text("a brand new passphrase\n")
    wrong = people.run("f", "password", "--new-password-file", str(new), check=False, timeout=60)
    assert wrong.returncode == 0, wrong.stderr
    assert "password changed" in wrong.stdout
    people.run("f", "contacts", "add", "dora")  # this device's session still works (new tokens)
    people.run("f", "stop")
    old = people.run("f", "whoami", check=False)
    assert old.returncode == 1 and "password" in old.stderr.lower()
    assert people.json("f", "--password-file", str(new), "whoami")["username"] == "fay"


def test_deleting_the_account_needs_the_typed_username_and_then_login_fails(people: Cli):
    people.register("z", "zed")
    wrong = people.run("z", "account", "delete", "--confirm", "zedd", check=False)
    assert wrong.returncode == 1 and "type your username" in wrong.stderr
    assert "account zed deleted" in people.run("z", "account", "delete", "--confirm", "zed").stdout
    login = people.run("z2", "--server", people.server.url, "login", "zed", check=False)
    assert login.returncode == 1


def test_an_email_change_needs_the_right_password(people: Cli, tmp_path):
    bad = tmp_path / "bad"
    bad.write_text("not my password")
    assert people.json("d", "account", "email", "dora@new.example.org")["email"] == "dora@new.example.org"
    refused = people.run("d", "--password-file", str(bad), "account", "email", "x@example.org", check=False)
    assert refused.returncode == 1 and "not the current password" in refused.stderr
    assert PASSWORD


def test_a_display_name_is_shown_to_contacts_beside_the_username(people: Cli):
    assert people.json("d", "account", "name", "Dora", "Dee")["display_name"] == "Dora Dee"
    rows = people.json("e", "contacts", "list")
    assert [(r["username"], r["display_name"]) for r in rows if r["username"] == "dora"] == [
        ("dora", "Dora Dee")
    ]
    assert "Dora Dee" in people.run("e", "contacts", "list").stdout
    assert people.json("d", "account", "show")["display_name"] == "Dora Dee"
    assert people.json("d", "account", "name")["display_name"] is None  # cleared


def test_search_finds_my_history_across_conversations_and_in_one(people: Cli):
    people.run("d", "send", "eve", "the quarterly figures are in")
    people.register("g", "gus")
    people.run("g", "contacts", "add", "dora")
    people.run("d", "contacts", "accept", "gus")
    people.run("d", "send", "gus", "quarterly party on friday")
    found = people.json("d", "search", "quarter")
    assert [m["text"] for m in found] == ["quarterly party on friday", "the quarterly figures are in"]
    only_eve = people.json("d", "search", "quarter", "--with", "eve")
    assert [m["text"] for m in only_eve] == ["the quarterly figures are in"]
    assert "quarterly party" in people.run("d", "search", "party", "fri").stdout
    assert "nothing found" in people.run("d", "search", "xylophone").stdout


def test_a_disappearing_timer_is_shown_to_both_and_messages_vanish_from_both_stores(people: Cli):
    dora, eve = people.listen("d"), people.listen("e")
    try:
        set_it = people.json("d", "timer", "eve", "5s")
        assert set_it["seconds"] == 5
        notice = eve.wait_for(lambda e: e["type"] == "message" and e["message"]["kind"] == "timer")
        assert notice["message"]["text"] == "Disappearing messages set to 5 seconds"
        assert people.json("e", "timer", "dora")["seconds"] == 5
        assert "set to 5 seconds" in people.run("e", "history", "dora").stdout
        sent = people.json("d", "send", "eve", "this will vanish")
        eve.wait_for(received("this will vanish"))
        for listener in (dora, eve):
            listener.wait_for(
                lambda e: e["type"] == "message_deleted" and e["message_id"] == sent["message_id"]
            )
        for who, other in (("d", "eve"), ("e", "dora")):
            assert "this will vanish" not in people.run(who, "history", other).stdout
        people.run("e", "timer", "dora", "off")
        dora.wait_for(
            lambda e: e["type"] == "message" and e["message"]["text"] == "Disappearing messages turned off"
        )
        assert people.json("d", "timer", "eve")["seconds"] == 0
        kept = people.json("d", "send", "eve", "this one stays")
        eve.wait_for(received("this one stays"))
        assert kept["message_id"] in [m["message_id"] for m in people.json("e", "history", "dora")]
        refused = people.run("d", "timer", "eve", "1s", check=False)
        assert refused.returncode == 1 and "5 s" in refused.stderr
    finally:
        dora.stop()
        eve.stop()


def test_a_new_device_gets_my_history_over_a_direct_link_after_i_confirm_on_the_old_one(people: Cli):
    people.run("d", "send", "eve", "from before the new laptop")
    people.run("d3", "--server", people.server.url, "login", "dora")
    assert "from before the new laptop" not in people.run("d3", "history", "eve").stdout  # starts empty
    new = people.json("d3", "whoami")["device_id"]
    listener = people.listen("d3")
    try:
        refused = people.run("d", "devices", "send-history", new, check=False, stdin="n\n")
        assert refused.returncode == 1 and "not sent" in refused.stderr  # asked on the old device
        result = people.json("d", "devices", "send-history", new, "--yes")
        assert result["sent"] >= 1
        got = listener.wait_for(lambda e: e["type"] == "history_received")
        assert got["stored"] >= 1 and got["from_device"] == people.json("d", "whoami")["device_id"]
        assert "from before the new laptop" in people.run("d3", "history", "eve").stdout
        assert [link["open"] for link in people.json("d", "status")["links"] if link["device_id"] == new] == [
            True
        ]
    finally:
        listener.stop()


def _restore(backup: Path, db: Path) -> None:
    """The older copy replaces the (stopped) node's store, as a restore from a backup does."""
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    shutil.copyfile(backup, db)


def test_a_store_restored_from_an_older_copy_heals_and_listen_says_the_session_was_re_established(
    people: Cli, tmp_path: Path
):
    db = people.profile_dir("e") / "local.db"
    eve = people.listen("e")
    try:
        people.run("d", "send", "eve", "before the backup")
        eve.wait_for(received("before the backup"))
    finally:
        eve.stop()
    people.run("e", "stop")
    backup = tmp_path / "eve-backup.db"
    shutil.copyfile(db, backup)

    eve = people.listen("e")  # the node starts again and moves the ratchet on
    try:
        people.run("d", "send", "eve", "after the backup")
        eve.wait_for(received("after the backup"))
        people.run("e", "send", "dora", "seen it")
    finally:
        eve.stop()
    people.run("e", "stop")
    _restore(backup, db)

    eve = people.listen("e")
    try:
        people.run("d", "send", "eve", "after the restore")
        eve.wait_for(received("after the restore"), within=60)
        healed = eve.wait_for(lambda e: e["type"] == "session_reestablished", within=60)
        assert healed["user_id"] == people.json("d", "whoami")["user_id"]
        assert healed["message"] == "secure session re-established"
        eve.wait_for(received("after the backup"), within=60)  # resent after the heal: nothing lost
    finally:
        eve.stop()
    assert [e["type"] for e in eve.events].count("session_reestablished") == 1
