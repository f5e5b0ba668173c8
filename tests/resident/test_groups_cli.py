"""Groups through `peerpost` against a real server (issue 13): the `group` commands, `#NAME`
wherever a contact goes, `listen` events naming the group, an ambiguous name refused with the ids."""

from __future__ import annotations

import threading

import pytest

from tests.resident.conftest import Cli, received


@pytest.fixture(scope="module")
def crew(cli: Cli) -> Cli:
    """gina ('g'), hank ('h') and ivy ('i'); hank and ivy are gina's contacts (not each other's)."""
    made = [
        threading.Thread(target=cli.register, args=args)
        for args in (("g", "gina"), ("h", "hank"), ("i", "ivy"))
    ]
    for t in made:
        t.start()
    for t in made:
        t.join(180)
    for profile, name in (("h", "hank"), ("i", "ivy")):
        cli.run("g", "contacts", "add", name)
        cli.run(profile, "contacts", "accept", "gina")
    return cli


def test_group_commands_create_message_list_rename_promote_remove_and_leave(crew: Cli):
    created = crew.run("g", "group", "create", "climbing", "hank", "ivy").stdout
    assert "created #climbing" in created and "3 members" in created
    hank = crew.listen("h")
    try:
        assert "sent to #climbing" in crew.run("g", "send", "#climbing", "on the wall").stdout
        event = hank.wait_for(received("on the wall"))
        assert event["conversation"].startswith("g:") and event["group"] == "climbing"
        group_id = event["conversation"][2:]

        listed = crew.json("h", "group", "list")
        assert [(g["name"], g["role"], g["members"]) for g in listed] == [("climbing", "member", 3)]
        members = crew.run("h", "group", "members", "climbing").stdout
        assert "gina" in members and "admin" in members and "ivy" in members
        history = crew.run("h", "history", "#climbing").stdout
        assert "gina: on the wall" in history and "gina created the group climbing" in history

        crew.run("g", "group", "rename", "climbing", "bouldering")
        hank.wait_for(lambda e: e["type"] == "group" and e["change"] == "renamed")
        crew.run("g", "group", "promote", "bouldering", "hank")
        roles = {m["username"]: m["role"] for m in crew.json("h", "group", "members", f"#{group_id}")}
        assert roles == {"gina": "admin", "hank": "admin", "ivy": "member"}
        # hank, now an admin, removes ivy; then leaves; gina's group goes on without both
        assert "removed ivy" in crew.run("h", "group", "remove", "bouldering", "ivy").stdout
        crew.run("h", "send", "#bouldering", "ivy is out")
        assert "you left" in crew.run("h", "group", "leave", "bouldering").stdout
        assert [g["active"] for g in crew.json("h", "group", "list")] == [False]
        refused = crew.run("h", "send", "#bouldering", "from outside", check=False)
        assert refused.returncode == 1 and "no longer in" in refused.stderr
        assert "ivy is out" not in crew.run("i", "history", f"#{group_id}").stdout
    finally:
        hank.stop()


def test_an_ambiguous_group_name_is_refused_with_the_ids_and_an_id_picks_one(crew: Cli):
    first = crew.json("g", "group", "create", "twins", "hank")
    second = crew.json("g", "group", "create", "twins", "ivy")
    refused = crew.run("g", "send", "#twins", "which one", check=False)
    assert refused.returncode == 1
    assert first["group_id"] in refused.stderr and second["group_id"] in refused.stderr
    sent = crew.json("g", "send", f"#{second['group_id']}", "this one")
    assert sent["conversation"] == f"g:{second['group_id']}"
    ivy = crew.listen("i")
    try:
        chat = crew.run("g", "chat", f"#{second['group_id']}", stdin="typed in chat\n")
        assert "sent to" in chat.stdout and "this one" in chat.stdout  # the group's history first
        event = ivy.wait_for(received("typed in chat"))
        assert event["conversation"] == f"g:{second['group_id']}" and event["group"] == "twins"
    finally:
        ivy.stop()
    unknown = crew.run("g", "group", "members", "nosuchgroup", check=False)
    assert unknown.returncode == 1 and "nosuchgroup" in unknown.stderr


def test_the_sender_edits_and_deletes_a_group_message_for_every_member_and_only_the_sender_may(crew: Cli):
    group = crew.json("g", "group", "create", "editors", "hank", "ivy")
    ref = f"#{group['group_id']}"
    hank = crew.listen("h")
    try:
        sent = crew.json("g", "send", ref, "rope at 6")
        hank.wait_for(received("rope at 6"))
        edited = crew.json("g", "edit", sent["message_id"], "rope at 7")
        assert edited["text"] == "rope at 7" and edited["edited_at_ms"]
        got = hank.wait_for(lambda e: e["type"] == "message_edited")
        assert got["message"]["message_id"] == sent["message_id"] and got["message"]["text"] == "rope at 7"
        assert "gina: rope at 7 (edited)" in crew.run("h", "history", ref).stdout
        for args in (("edit", sent["message_id"], "hijack"), ("delete", sent["message_id"], "--everyone")):
            refused = crew.run("h", *args, check=False)
            assert refused.returncode == 1 and "only its sender" in refused.stderr
        crew.run("g", "delete", sent["message_id"], "--everyone")
        gone = hank.wait_for(lambda e: e["type"] == "message_deleted")
        assert gone["message_id"] == sent["message_id"] and gone["for_everyone"] is True
        transcript = crew.run("h", "history", ref).stdout
        assert "[message deleted]" in transcript and "rope at 7" not in transcript
    finally:
        hank.stop()
