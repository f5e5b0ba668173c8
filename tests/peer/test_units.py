"""Small pieces on their own: profiles on disk, the event bus, conversation names."""

from __future__ import annotations

import json

import pytest

from peer.errors import ConfigError, LoginNeeded, NotLoggedIn, PeerError, advice
from peer.events import (
    Event,
    EventBus,
    EventHandlers,
    KeyWarning,
    MessageReceived,
    MessageStateChanged,
    PresenceChanged,
    PresenceSnapshot,
    ReadMarked,
    ReceiptReceived,
    TypingChanged,
    UnknownEvent,
    decode_event,
)
from peer.node import conversation_of
from peer.profile import Profile, ProfileMeta
from peer.records import MessageView
from peer.vocab import ConversationId, DeliveryPath, KeyChange, MessageState, ReceiptStatus


def test_profiles_live_under_peerpost_home_and_names_are_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("PEERPOST_HOME", str(tmp_path))
    profile = Profile.named("alice.work").ensure()
    assert profile.path == tmp_path / "profiles" / "alice.work"
    assert (profile.path.stat().st_mode & 0o777) == 0o700
    profile.save_meta(ProfileMeta("http://127.0.0.1:8000", "alice", 1, "device-1234"))
    assert profile.load_meta() == ProfileMeta("http://127.0.0.1:8000", "alice", 1, "device-1234")
    assert (profile.meta_path.stat().st_mode & 0o777) == 0o600
    for bad in ("../escape", "a/b", "", "x" * 65):
        with pytest.raises(ConfigError):
            Profile.named(bad)
    profile.meta_path.write_text("{not json")
    with pytest.raises(ConfigError, match="damaged"):
        profile.load_meta()


async def test_event_bus_fans_out_and_a_slow_subscriber_only_loses_its_oldest():
    bus = EventBus(capacity=3)
    fast, slow = bus.subscribe(), bus.subscribe()
    for i in range(5):
        bus.publish(PresenceChanged(i, None, True))
        assert (await fast.get()).user_id == i
    assert [slow.get_nowait().user_id for _ in range(3)] == [2, 3, 4]
    bus.close()
    assert await fast.get() is None


def test_conversation_names():
    group = "g:" + "ab" * 16
    assert conversation_of(7) == "u:7" and conversation_of("7") == "u:7" and conversation_of(group) == group
    assert ConversationId(group).group_id == "ab" * 16 and ConversationId(group).user_id is None
    for wrong in ("bob", "g:3", "g:" + "AB" * 16):  # a group id is 32 lowercase hex digits
        with pytest.raises(ConfigError):
            conversation_of(wrong)


def _message_view(**changes) -> MessageView:
    base = dict(
        message_id="ab" * 16,
        conversation=ConversationId.user(7),
        sender_user=7,
        sender_device="d7",
        outgoing=False,
        kind="text",
        text="hi",
        file=None,
        sent_at_ms=1,
        path=DeliveryPath.DIRECT,
        state=MessageState.RECEIVED,
        reason=None,
    )
    return MessageView(**{**base, **changes})


async def test_events_dispatch_by_class_and_one_failing_handler_does_not_stop_the_others():
    seen: list[str] = []

    async def on_message(e: MessageReceived) -> None:
        seen.append(f"message {e.message.text}")

    def broken(_e: Event) -> None:
        raise RuntimeError("a bug in one reader")

    handlers = (
        EventHandlers()
        .on(Event, broken)
        .on(MessageReceived, on_message)
        .on(PresenceChanged, lambda e: seen.append(f"presence {e.user_id}"))
    )
    bus = EventBus()
    async with handlers.follow(bus):
        bus.publish(MessageReceived(_message_view()))
        bus.publish(PresenceChanged(3, None, True))
        bus.publish(TypingChanged(3, "u:3", True))  # nobody's: ignored
    assert seen == ["message hi", "presence 3"]  # in order, everything published before the end


def test_events_round_trip_through_their_json_into_typed_records():
    events = [
        MessageReceived(_message_view()),
        MessageStateChanged("ab" * 16, MessageState.DELIVERED, DeliveryPath.QUEUED, None),
        KeyWarning(7, "d8", KeyChange.NEW_DEVICE, blocked=False),
        PresenceSnapshot((3, 7)),
        ReceiptReceived(7, ReceiptStatus.READ, ["ab" * 16]),
        ReadMarked("u:7", ("ab" * 16,), 0),
    ]
    for event in events:
        wire = json.loads(json.dumps(event.to_dict()))
        assert decode_event(wire) == event
    back = decode_event(json.loads(json.dumps(events[0].to_dict())))
    assert isinstance(back.message.conversation, ConversationId) and back.message.conversation.user_id == 7
    assert back.message.state is MessageState.RECEIVED
    unknown = decode_event({"type": "from_the_future", "x": 1})
    assert isinstance(unknown, UnknownEvent) and unknown.name == "from_the_future"


def test_vocabulary_types_compare_as_their_words_and_check_what_comes_in():
    assert MessageState.READ == "read" and DeliveryPath("relayed") is DeliveryPath.RELAYED
    assert MessageState.SENT.advanced_by("delivered") and not MessageState.READ.advanced_by("sent")
    assert ConversationId.of(7) == "u:7" and ConversationId("g:" + "0f" * 16).user_id is None
    for bad in ("x:1", "u:", "u:abc", "7:u"):
        with pytest.raises(ConfigError):
            ConversationId(bad)


def test_core_errors_carry_no_cli_advice_and_the_edge_words_it():
    expired = NotLoggedIn("the session expired", LoginNeeded.EXPIRED)
    assert "peerpost" not in str(expired)
    assert advice(expired) == "run `peerpost login` again"
    assert advice(NotLoggedIn("never", LoginNeeded.NEVER)) == "run `peerpost login` first"
    assert advice(NotLoggedIn("not yet")) is None and advice(PeerError("x")) is None
