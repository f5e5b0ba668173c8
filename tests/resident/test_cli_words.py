"""How the CLI words things: transcripts with names, times and day separators; validation errors."""

from __future__ import annotations

import datetime as dt

from peer.cli import Transcript, describe, validation_sentence


def _message(text: str, when: dt.datetime, outgoing: bool = False, sender: int = 2) -> dict:
    return {
        "message_id": text,
        "conversation": "u:2",
        "sender_user": 1 if outgoing else sender,
        "outgoing": outgoing,
        "kind": "text",
        "text": text,
        "file": None,
        "sent_at_ms": int(when.timestamp() * 1000),
        "path": "direct",
        "state": "sent",
    }


def test_a_transcript_names_people_shows_times_and_separates_days():
    day1 = dt.datetime(2026, 11, 30, 23, 58).astimezone()
    day2 = day1 + dt.timedelta(minutes=5)
    transcript = Transcript({"1": "alice", "2": "bob"})
    lines = transcript.lines(_message("late", day1)) + transcript.lines(
        _message("early", day2, outgoing=True)
    )
    assert lines[0] == f"── {day1:%a %d %b %Y} ──"
    assert lines[1] == f"{day1:%H:%M} bob: late"
    assert lines[2] == f"── {day2:%a %d %b %Y} ──"
    assert lines[3] == f"{day2:%H:%M} me: early  (direct, sent)"
    assert transcript.lines(_message("same day", day2)) == [f"{day2:%H:%M} bob: same day"]


def test_chat_shows_each_incoming_message_once_and_no_echo_of_own_sends():
    transcript = Transcript({"2": "bob"})
    now = dt.datetime.now().astimezone()
    incoming = {"type": "message", "message": _message("hi", now)}
    own = {"type": "message", "message": _message("mine", now, outgoing=True)}
    state = {"type": "message_state", "message_id": "mine", "state": "sent", "path": "direct"}
    assert describe(incoming, transcript, "u:2")[-1].endswith("bob: hi")
    assert describe(own, transcript, "u:2") == [] and describe(state, transcript, "u:2") == []
    other = {"type": "message", "message": {**_message("elsewhere", now), "conversation": "u:3"}}
    assert describe(other, transcript, "u:2") == []


def test_validation_errors_become_one_sentence_per_field():
    errors = [
        {"loc": ("username",), "msg": "String should match pattern", "type": "string_pattern_mismatch"},
        {"loc": ("email",), "msg": "value is not a valid email address", "type": "value_error"},
        {"loc": ("password",), "msg": "Value error, password must be 8 to 72 bytes", "type": "value_error"},
    ]
    assert validation_sentence(errors) == (
        "username: 3 to 32 characters: letters, digits, '_', '.' or '-'; "
        "email: value is not a valid email address; password: password must be 8 to 72 bytes"
    )


def test_the_file_queue_survives_a_new_process_and_forgets_what_was_sent(tmp_path):
    import os
    import stat

    from peer.resident.filequeue import FILE_NAME, FileQueue

    queue = FileQueue(tmp_path)
    first = queue.add(7, "bob", "/data/a.bin", 1)
    second = queue.add(7, "bob", "/data/b.bin", 2)
    assert stat.S_IMODE(os.stat(tmp_path / FILE_NAME).st_mode) == 0o600
    again = FileQueue(tmp_path)  # as a restarted node reads it
    again.load()
    assert [i.path for i in again.items()] == ["/data/a.bin", "/data/b.bin"]
    again.remove(first.queue_id)
    reread = FileQueue(tmp_path)
    reread.load()
    assert [i.queue_id for i in reread.items()] == [second.queue_id]
    (tmp_path / FILE_NAME).write_text("{not json")
    damaged = FileQueue(tmp_path)
    damaged.load()  # a damaged queue never stops the node
    assert damaged.items() == []


def test_chat_says_once_that_the_secure_session_was_re_established_in_that_conversation_only():
    from peer.events import SessionReestablished

    transcript = Transcript({"2": "bob"})
    event = SessionReestablished(2, "bob-phone").to_dict()
    assert describe(event, transcript, "u:2") == ["  · secure session with bob re-established"]
    assert describe(event, transcript, "u:3") == []
