"""The hub's hand-written JSON for `deliver` and `accepted` says exactly what the protocol models say."""

from __future__ import annotations

import secrets

from hypothesis import given
from hypothesis import strategies as st

from signalling.hub import accepted_json, deliver_json
from signalling.protocol import SERVER_FRAME, AcceptedFrame, DeliverFrame, b64encode

device_ids = st.from_regex(r"\A[A-Za-z0-9_-]{8,64}\Z")


@given(
    sender_user=st.integers(min_value=1, max_value=2**62),
    sender_device=device_ids,
    envelope=st.binary(max_size=300),
)
def test_deliver_json_is_the_deliver_frame(sender_user: int, sender_device: str, envelope: bytes) -> None:
    message_id = secrets.token_hex(16)
    text = deliver_json(message_id, sender_user, sender_device, b64encode(envelope))
    expected = DeliverFrame(
        message_id=message_id,
        sender_user=sender_user,
        sender_device=sender_device,
        envelope=b64encode(envelope),
        queued=False,
    )
    assert SERVER_FRAME.validate_json(text) == expected


@given(
    ref=st.text(max_size=64), live=st.lists(device_ids, max_size=4), queued=st.lists(device_ids, max_size=4)
)
def test_accepted_json_is_the_accepted_frame(ref: str, live: list[str], queued: list[str]) -> None:
    message_id = secrets.token_hex(16)
    text = accepted_json(ref, message_id, live, queued)
    expected = AcceptedFrame(ref=ref, message_id=message_id, live=live, queued=queued)
    assert SERVER_FRAME.validate_json(text) == expected
