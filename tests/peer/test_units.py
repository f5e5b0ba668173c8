"""Small pieces on their own: profiles on disk, the event bus, conversation names."""

from __future__ import annotations

import pytest

from peer.errors import ConfigError
from peer.events import EventBus, PresenceChanged
from peer.node import conversation_of
from peer.profile import Profile, ProfileMeta


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
    assert conversation_of(7) == "u:7" and conversation_of("7") == "u:7" and conversation_of("g:3") == "g:3"
    with pytest.raises(ConfigError):
        conversation_of("bob")
