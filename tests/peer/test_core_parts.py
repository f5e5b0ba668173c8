"""The peer's core parts on their own, through their seams: no server, no aiortc, no private
attributes. The outside world (the server's device directory and hub, a remote device's link) is
played by small fakes; the parts under test are real, over a real SQLite local store.

- keyring: trust on first sight, new device vs changed key, verified contacts block, warnings
  settle and survive a restart;
- router: an acked link goes direct, a silent one falls back to the server, an unreachable server
  keeps the envelope in the outbox until a flush, a failed link attempt backs the device off;
- outbox → inbox: what one peer seals, another opens into a typed `MessageReceived`, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from crypto.bundle import make_bundle
from crypto.envelope import LocalDevice, Recipient, peek_header, seal
from crypto.keys import DeviceKeys
from crypto.payload import Text, Typing
from crypto.sessionkeys import SessionKeyCache, UnwrapCache
from peer import frames
from peer.errors import KeyChanged, LinkFailed, ServerUnavailable
from peer.events import DuplicateDropped, Event, KeyWarning, MessageReceived, TypingChanged
from peer.history import History
from peer.inbox import Inbox
from peer.keyring import Keyring
from peer.localstore import SEEN_WINDOW_MS, LocalStore, StoredMessage, now_ms
from peer.outbox import Outbox
from peer.router import DeviceOutcome, RoutePolicy, Router
from peer.views import Me, MessageView
from peer.vocab import ConversationId, DeliveryPath, DeliveryState, KeyChange, MessageState
from signalling.protocol import AcceptedFrame, DeviceOut, RecipientDevice, b64decode, b64encode
from tests.support.keys import fixed_device_keys

# ------------------------------------------------------------------------------------------------
# the outside world, played small
# ------------------------------------------------------------------------------------------------


def published(keys: DeviceKeys, user_id: int, device_id: str) -> DeviceOut:
    bundle = make_bundle(keys, user_id, device_id)
    return DeviceOut(
        user_id=user_id,
        device_id=device_id,
        identity_key=b64encode(bundle.identity_key),
        encryption_key=b64encode(bundle.encryption_key),
        created_at=bundle.created_at,
        signature=b64encode(bundle.signature),
    )


@dataclass
class Directory:
    """The server's device directory (`GET /users/{id}/devices`)."""

    rows: dict[int, list[DeviceOut]] = field(default_factory=dict)
    reachable: bool = True

    def publish(self, keys: DeviceKeys, user_id: int, device_id: str) -> None:
        rows = [d for d in self.rows.get(user_id, []) if d.device_id != device_id]
        self.rows[user_id] = [*rows, published(keys, user_id, device_id)]

    async def devices(self, user_id: int) -> list[DeviceOut]:  # the DeviceDirectory seam
        if not self.reachable:
            raise ServerUnavailable("the server is down")
        return list(self.rows.get(user_id, []))


@dataclass
class Hub:
    """The server's side of `send_envelope`: commits, says which devices got it live."""

    live: set[str] = field(default_factory=set)
    up: bool = True
    sent: list[tuple[str, list[str]]] = field(default_factory=list)

    @property
    def connected(self) -> bool:
        return self.up

    async def send_envelope(
        self, message_id: str, envelope_b64: str, recipients: list[RecipientDevice], within: float
    ) -> AcceptedFrame:
        if not self.up:
            raise ServerUnavailable("not connected to the server")
        self.sent.append((message_id, [r.device_id for r in recipients]))
        return AcceptedFrame(
            ref="r", message_id=message_id, live=[r.device_id for r in recipients if r.device_id in self.live]
        )


class RemoteLink:
    """A remote device's open link: it acknowledges envelopes (or stays silent)."""

    def __init__(self, device_id: str, router: Router | None = None, acks: bool = True) -> None:
        self.remote_device = device_id
        self.router = router
        self.acks = acks
        self.frames: list[frames.Frame] = []

    def send(self, frame: frames.Frame) -> None:
        self.frames.append(frame)
        if self.acks and isinstance(frame, frames.Envelope) and self.router is not None:
            header_id = _message_id_of(frame.data)
            asyncio.get_running_loop().call_soon(self.router.on_ack, self.remote_device, header_id)


def _message_id_of(envelope: bytes) -> str:
    return peek_header(envelope).message_id


@dataclass
class Links:
    """The direct side: which devices have an open link, which can be connected."""

    open: dict[str, RemoteLink] = field(default_factory=dict)
    connectable: dict[str, RemoteLink] = field(default_factory=dict)
    attempts: list[str] = field(default_factory=list)

    def open_link(self, device_id: str) -> RemoteLink | None:
        return self.open.get(device_id)

    async def connect(self, user_id: int, device_id: str, within: float) -> RemoteLink:
        self.attempts.append(device_id)
        link = self.connectable.get(device_id)
        if link is None:
            raise LinkFailed(f"no direct link to device {device_id} within {within} s")
        self.open[device_id] = link
        return link


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[object]:
    opened: list[LocalStore] = []

    async def make(name: str) -> LocalStore:
        store = LocalStore(tmp_path / f"{name}.db", os.urandom(32))
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


# ------------------------------------------------------------------------------------------------
# keyring
# ------------------------------------------------------------------------------------------------

ALICE, BOB = 1, 2


async def test_keyring_pins_on_first_sight_and_tells_a_new_device_from_a_changed_key(stores):
    directory = Directory()
    directory.publish(fixed_device_keys(1), BOB, "bob-phone")
    warnings: list[Event] = []
    keyring = Keyring(await stores("alice"), directory, ALICE, "alice-laptop", warnings.append)
    await keyring.load()

    await keyring.refresh(BOB, force=True)
    assert [d.device_id for d in keyring.devices_of(BOB)] == ["bob-phone"]
    assert warnings == [] and keyring.warnings(BOB) == []  # first sight: pinned, no warning

    directory.publish(fixed_device_keys(2), BOB, "bob-laptop")
    await keyring.refresh(BOB, force=True)
    [new] = keyring.warnings(BOB)
    assert new.change is KeyChange.NEW_DEVICE and new.device_id == "bob-laptop" and not new.blocked
    assert warnings == [new]

    pinned_phone_key = keyring.identity_key(BOB, "bob-phone")
    directory.publish(fixed_device_keys(3), BOB, "bob-phone")  # the server offers another key
    await keyring.refresh(BOB, force=True)
    changed = [w for w in keyring.warnings(BOB) if w.device_id == "bob-phone"]
    assert [w.change for w in changed] == [KeyChange.KEY_CHANGED]
    assert keyring.identity_key(BOB, "bob-phone") == pinned_phone_key  # the pinned key stays in use


async def test_keyring_blocks_a_verified_contact_until_the_change_is_accepted_and_remembers_it(stores):
    directory = Directory()
    directory.publish(fixed_device_keys(1), BOB, "bob-phone")
    store = await stores("alice")
    keyring = Keyring(store, directory, ALICE, "alice-laptop", lambda _w: None, refresh_after=0)
    await keyring.load()
    await keyring.refresh(BOB, force=True)
    await keyring.set_verified(BOB, True)
    assert [r.device_id for r in await keyring.recipients(BOB)] == ["bob-phone"]

    directory.publish(fixed_device_keys(2), BOB, "bob-tablet")
    with pytest.raises(KeyChanged) as caught:
        await keyring.recipients(BOB)  # fetches the new device and refuses
    assert caught.value.device_id == "bob-tablet"
    assert "peerpost" not in str(caught.value)  # core errors give no CLI advice

    # A restart keeps the unsettled warning (it lives in the pinned rows, not in a UI's memory).
    again = Keyring(store, directory, ALICE, "alice-laptop", lambda _w: None)
    await again.load()
    assert [(w.device_id, w.blocked) for w in again.warnings(BOB)] == [("bob-tablet", True)]

    await again.accept_change(BOB)
    assert again.warnings(BOB) == [] and not again.blocked(BOB)
    assert sorted(r.device_id for r in await again.recipients(BOB)) == ["bob-phone", "bob-tablet"]


async def test_keyring_uses_its_pinned_keys_when_the_directory_is_unreachable(stores):
    directory = Directory()
    directory.publish(fixed_device_keys(1), BOB, "bob-phone")
    keyring = Keyring(await stores("alice"), directory, ALICE, "alice-laptop", lambda _w: None)
    await keyring.load()
    await keyring.refresh(BOB, force=True)
    directory.reachable = False
    assert [d.device_id for d in await keyring.refresh(BOB, force=True)] == ["bob-phone"]
    with pytest.raises(ServerUnavailable):
        await keyring.refresh(99, force=True)  # nobody pinned: nothing to fall back on


# ------------------------------------------------------------------------------------------------
# router
# ------------------------------------------------------------------------------------------------

M1, M2, M3, M4, M5 = (f"{n:032x}" for n in range(1, 6))
POLICY = RoutePolicy(link_deadline=0.5, ack_deadline=0.5, server_deadline=1.0, retry_after=60.0)


def envelope_for(message_id: str) -> bytes:
    """A real sealed envelope (the router only forwards bytes; the fake link reads its id)."""
    sender = LocalDevice(ALICE, "alice-laptop", fixed_device_keys(0))
    bob = published(fixed_device_keys(1), BOB, "bob-phone")
    return seal(
        Text("hi"), sender, [Recipient(BOB, "bob-phone", b64decode(bob.encryption_key))], "u:2", message_id
    )


async def make_router(stores, links: Links, hub: Hub, online: bool = True) -> tuple[Router, LocalStore]:
    store = await stores("router")
    return Router(links, hub, store, POLICY, lambda _u, _d: online), store


async def test_router_sends_over_an_acknowledging_link_and_never_to_the_server(stores):
    links, hub = Links(), Hub()
    router, store = await make_router(stores, links, hub)
    links.open["bob-phone"] = RemoteLink("bob-phone", router)
    [outcome] = await router.deliver(M1, envelope_for(M1), [(BOB, "bob-phone")])
    assert outcome == DeviceOutcome(BOB, "bob-phone", DeliveryPath.DIRECT, DeliveryState.SENT)
    assert hub.sent == [] and await store.outbox_pending() == []
    await router.close()


async def test_router_falls_back_to_the_server_when_the_link_does_not_acknowledge(stores):
    links, hub = Links(), Hub(live={"bob-phone"})
    router, _ = await make_router(stores, links, hub)
    links.open["bob-phone"] = RemoteLink("bob-phone", router, acks=False)
    [outcome] = await router.deliver(M2, envelope_for(M2), [(BOB, "bob-phone")])
    assert (outcome.path, outcome.state) == (DeliveryPath.RELAYED, DeliveryState.SENT)
    assert hub.sent == [(M2, ["bob-phone"])]
    await router.close()


async def test_router_keeps_the_envelope_in_the_outbox_while_the_server_is_down(stores):
    links, hub = Links(), Hub(up=False)
    router, store = await make_router(stores, links, hub, online=False)
    [outcome] = await router.deliver(M3, envelope_for(M3), [(BOB, "bob-phone")])
    assert (outcome.path, outcome.state) == (None, DeliveryState.PENDING)
    assert [m for m, _, _, _ in await store.outbox_pending()] == [M3]

    hub.up = True  # the server is back: the flush after a reconnect sends it, once
    [(message_id, [queued])] = await router.flush_outbox()
    assert message_id == M3 and (queued.path, queued.state) == (DeliveryPath.QUEUED, DeliveryState.SENT)
    assert await store.outbox_pending() == [] and await router.flush_outbox() == []
    assert hub.sent == [(M3, ["bob-phone"])]
    await router.close()


async def test_an_outbox_made_before_expiries_gains_the_column_and_keeps_a_timed_envelope(tmp_path: Path):
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as old:  # the outbox as older versions made it
        old.execute(
            "CREATE TABLE outbox "
            "(message_id TEXT PRIMARY KEY, envelope BLOB NOT NULL, created_ms INTEGER NOT NULL)"
        )
        old.execute("INSERT INTO outbox VALUES (?, x'00', 1)", (M4,))
        old.commit()
    store = LocalStore(path, os.urandom(32))
    await store.open()
    try:
        await store.set_timer("u:2", 60, BOB, 1_000)
        message = StoredMessage(
            M5,
            "u:2",
            ALICE,
            "alice-laptop",
            True,
            "text",
            {"type": "text", "body": "x"},
            5_000,
            5_000,
            None,
            "sending",
            None,
        )
        assert await store.save_message(message)
        await store.outbox_put(M5, b"sealed")
        pending = {m: expires for m, _, _, expires in await store.outbox_pending()}
        assert pending == {M4: None, M5: 5_000 + 60_000}
    finally:
        await store.close()


async def test_router_backs_a_device_off_after_a_failed_link_attempt(stores):
    links, hub = Links(), Hub()
    router, _ = await make_router(stores, links, hub)
    first = await router.deliver(M4, envelope_for(M4), [(BOB, "bob-phone")])
    second = await router.deliver(M5, envelope_for(M5), [(BOB, "bob-phone")])
    assert links.attempts == ["bob-phone"]  # one attempt, not one per message
    assert router.backed_off("bob-phone")
    assert [o.path for o in first + second] == [DeliveryPath.QUEUED, DeliveryPath.QUEUED]
    await router.close()


# ------------------------------------------------------------------------------------------------
# outbox -> inbox
# ------------------------------------------------------------------------------------------------


@dataclass
class CapturingRouter:
    """Stands where the router is: keeps what the outbox hands over, says it went direct."""

    handed: list[tuple[str, bytes]] = field(default_factory=list)

    async def deliver(self, message_id, envelope, targets, *, connect=True, persistent=True):
        self.handed.append((message_id, envelope))
        return [DeviceOutcome(u, d, DeliveryPath.DIRECT, DeliveryState.SENT) for u, d in targets]

    def on_ack(self, device_id: str, message_id: str) -> None:
        pass


@dataclass
class Acks:
    """The hub's side of `ack` (for envelopes that came through the server)."""

    acked: list[str] = field(default_factory=list)

    async def ack(self, message_id: str) -> None:
        self.acked.append(message_id)


async def two_sides(stores):
    directory = Directory()
    directory.publish(fixed_device_keys(0), ALICE, "alice-laptop")
    directory.publish(fixed_device_keys(1), BOB, "bob-phone")
    alice_store, bob_store = await stores("alice"), await stores("bob")
    alice_me, bob_me = Me(ALICE, "alice", "alice-laptop", "http://x"), Me(BOB, "bob", "bob-phone", "http://x")
    alice_keys = Keyring(alice_store, directory, ALICE, "alice-laptop", lambda _w: None)
    bob_keys = Keyring(bob_store, directory, BOB, "bob-phone", lambda _w: None)
    for k in (alice_keys, bob_keys):
        await k.load()
    router = CapturingRouter()
    outbox = Outbox(
        me=alice_me,
        local_device=LocalDevice(ALICE, "alice-laptop", fixed_device_keys(0)),
        store=alice_store,
        keyring=alice_keys,
        links=Links(),
        router=router,
        transfers=None,
        history=History(alice_store, "alice-laptop"),
        session_keys=SessionKeyCache(),
        publish=lambda _e: None,
        device_online=lambda _u, _d: True,
        direct=True,
        link_deadline=0.5,
    )
    bob_events: list[Event] = []
    acks = Acks()
    inbox = Inbox(
        me=bob_me,
        local_device=LocalDevice(BOB, "bob-phone", fixed_device_keys(1)),
        store=bob_store,
        keyring=bob_keys,
        router=router,
        session=acks,
        transfers=None,
        history=History(bob_store, "bob-phone"),
        outbox=None,
        unwrap_cache=UnwrapCache(),
        publish=bob_events.append,
        spawn=lambda coro, _name: coro.close(),
        receipts=False,
    )
    return outbox, router, inbox, bob_events, acks, bob_store


async def test_what_the_outbox_seals_the_inbox_opens_into_a_typed_message_once(stores):
    outbox, router, inbox, bob_events, acks, bob_store = await two_sides(stores)
    sent = await outbox.send_text(ConversationId.user(BOB), "hello bob")
    assert (
        isinstance(sent, MessageView) and sent.state is MessageState.SENT and sent.path is DeliveryPath.DIRECT
    )
    [(message_id, envelope)] = router.handed
    assert message_id == sent.message_id

    await inbox.receive(envelope, via=DeliveryPath.RELAYED, link=None, server_id=message_id)
    [received] = [e for e in bob_events if isinstance(e, MessageReceived)]
    message = received.message
    assert isinstance(message, MessageView)
    assert (message.text, message.conversation, message.conversation.user_id) == ("hello bob", "u:1", ALICE)
    assert message.state is MessageState.RECEIVED and message.unread and message.path is DeliveryPath.RELAYED
    assert acks.acked == [message_id]  # acknowledged after it was saved

    await inbox.receive(envelope, via=DeliveryPath.QUEUED, link=None, server_id=message_id)  # again
    assert [type(e) for e in bob_events].count(MessageReceived) == 1
    assert [e.via for e in bob_events if isinstance(e, DuplicateDropped)] == ["queued"]
    assert acks.acked == [message_id, message_id]  # the copy is acknowledged too, not shown

    assert await bob_store.unread_count("u:1") == 1
    assert await bob_store.mark_read("u:1", [message_id, message_id]) == [message_id]
    assert await bob_store.mark_read("u:1", [message_id]) == []  # read once, receipted once
    assert await bob_store.unread_count("u:1") == 0


async def test_the_inbox_drops_a_tampered_envelope_with_a_reason_and_acknowledges_it(stores):
    outbox, router, inbox, bob_events, acks, _ = await two_sides(stores)
    await outbox.send_text(ConversationId.user(BOB), "hello bob")
    [(message_id, envelope)] = router.handed
    tampered = bytearray(envelope)
    tampered[-40] ^= 0x01
    await inbox.receive(bytes(tampered), via=DeliveryPath.RELAYED, link=None, server_id=message_id)
    assert not [e for e in bob_events if isinstance(e, MessageReceived)]
    errors = [e.message for e in bob_events if type(e).__name__ == "ErrorEvent"]
    assert errors and ("could not be verified" in errors[0] or "not a valid envelope" in errors[0])
    assert acks.acked == [message_id]  # not redelivered forever
    assert not [e for e in bob_events if isinstance(e, KeyWarning)]


async def test_an_incoming_file_counts_as_read_only_once_it_has_arrived(stores):
    from peer.localstore import StoredMessage, TransferRecord, now_ms

    store = await stores("bob")
    file_id = f"{7:032x}"
    await store.save_message(
        StoredMessage(
            message_id=file_id,
            conversation="u:1",
            sender_user=ALICE,
            sender_device="alice-laptop",
            outgoing=False,
            content_type="file",
            payload={"type": "file", "name": "big.bin", "size": 10, "sha256": "0" * 64, "blob_id": None},
            sent_at_ms=now_ms(),
            stored_at_ms=now_ms(),
            path="direct",
            state="received",
            reason=None,
        )
    )
    arriving = TransferRecord(file_id, False, "u:1", {}, "/nowhere", 3, "receiving", None)
    await store.save_transfer(arriving)
    assert await store.mark_read("u:1", [file_id]) == []  # still on its way: no read tick
    assert await store.unread_count("u:1") == 1
    await store.save_transfer(TransferRecord(file_id, False, "u:1", {}, "/nowhere", 4, "done", None))
    assert await store.mark_read("u:1", [file_id]) == [file_id]
    [(conversation, last_id, _, unread)] = await store.conversation_summaries()
    assert (conversation, last_id, unread) == ("u:1", file_id, 0)


async def test_the_seen_table_is_pruned_to_its_window_and_still_drops_a_redelivered_duplicate(stores):
    outbox, router, inbox, bob_events, acks, bob_store = await two_sides(stores)
    await outbox.send(ConversationId.user(BOB), Typing(True), record=False)
    [(message_id, envelope)] = router.handed
    await inbox.receive(envelope, via=DeliveryPath.RELAYED, link=None, server_id=message_id)
    assert [type(e) for e in bob_events].count(TypingChanged) == 1

    # A long history: 5,000 ids seen long before the window, as a device in use for a year has.
    now = now_ms()
    old = [("alice-laptop", f"{n:032x}") for n in range(100, 5100)]
    await bob_store.transaction(
        lambda db: db.executemany(
            "INSERT INTO seen (sender_device, message_id, at_ms) VALUES (?,?,?)",
            [(d, m, now - SEEN_WINDOW_MS - 1000) for d, m in old],
        )
    )
    for d, m in old:
        bob_store.remember(d, m)
    assert await bob_store.prune_seen() == len(old)
    rows = await bob_store.transaction(lambda db: db.execute("SELECT message_id FROM seen").fetchall())
    assert [r[0] for r in rows] == [message_id]  # bounded by the window, not by the history
    assert not bob_store.seen_before(*old[0])

    # The server redelivers the typing envelope (its ack was lost): still dropped, shown once.
    await inbox.receive(envelope, via=DeliveryPath.QUEUED, link=None, server_id=message_id)
    assert [type(e) for e in bob_events].count(TypingChanged) == 1
    assert [e.via for e in bob_events if isinstance(e, DuplicateDropped)] == ["queued"]
    assert acks.acked == [message_id, message_id]  # the copy is acknowledged, so it stops coming
