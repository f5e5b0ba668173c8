"""What happens to a device's frames once they are read: send, hold, ack, signal, ping, and the
drain of a device's mailbox before its live traffic.

Send semantics (docs/hub.md): a send is checked before anything is stored. When every recipient
device has a socket here, the envelope is pushed to all of them and held in memory for `live_hold`
from the moment its last copy is written to a socket (not from when it was queued: time spent in our
own outgoing queues is not the receiver's delay; a copy still unwritten after `UNWRITTEN_HOLD_LIMIT`
is stored anyway); if they all ack it in time the sender hears `accepted` and no row is written,
otherwise the silent devices' rows are handed to the mailbox writer and `accepted` waits for their
commit. Any other send gets a row for every recipient device, is pushed live at once, and is
answered after the commit. A row is deleted only when its device acks it. So a live push lost with a
dropping socket comes back from the mailbox on the next connect, and a server killed at any moment
has lost nothing it accepted.

This is the hot path: no task, no extra await per frame; answers are pushed by callbacks on the
writer's futures (the writer commits in submission order, so answers keep the order of the frames).
It never decodes an envelope beyond base64url, and never logs one.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from signalling.backplane import Backplane
from signalling.device_socket import DeviceSocket, Outgoing
from signalling.errors import FrameRefused
from signalling.limits import HubLimits
from signalling.protocol import (
    AcceptedFrame,
    AckFrame,
    AuthFrame,
    DeliverFrame,
    DrainedFrame,
    ErrorCode,
    GroupSendFrame,
    GroupsFrame,
    GroupSummary,
    PingFrame,
    PongFrame,
    ReadyFrame,
    RecipientDevice,
    SendFrame,
    SignalFrame,
    b64encode,
)
from signalling.reach import Reach
from store import groups as group_store
from store import mailbox
from store.errors import QuotaExceeded
from store.mailbox import DuplicateMessageId, MailboxClosed, MailboxError, MailboxWriter, NewMessage

log = logging.getLogger(__name__)

# A held send whose copies are not all written to their sockets by then is stored anyway (a receiver
# that has stopped reading is closed by its outbox budget long before this, and then hurried).
UNWRITTEN_HOLD_LIMIT = 10.0


@dataclass(slots=True, eq=False)
class Held:
    """A send pushed live to every recipient device and not stored yet.

    It is answered `accepted` when every device has acked it (they saved it: no row is needed),
    or, when `deadline` passes first, its rows for the devices still silent are handed to the
    mailbox writer and it is answered after their commit, as any other send.
    """

    sock: DeviceSocket
    frame: SendFrame
    targets: list[RecipientDevice]  # checked and de-duplicated
    waiting: set[str]  # recipient devices that have not acked yet
    deadline: float  # until armed: UNWRITTEN_HOLD_LIMIT after the push; then live_hold after the write
    unwritten: set[str]  # recipient devices whose socket has not written its copy yet
    armed: bool = False  # every copy written: the live_hold clock runs
    settled: bool = False  # out of the hold: acked by all, or handed to the writer
    commit: asyncio.Future[None] | None = None  # the writer's future, once handed to it
    acked: asyncio.Future[None] | None = None  # made only when a ping waits for this send

    def barrier(self) -> asyncio.Future[None] | None:
        """What a `ping` behind this send waits for (None: it is answered already)."""
        if self.commit is not None:
            return self.commit
        if self.settled:
            return None
        if self.acked is None:
            self.acked = asyncio.get_running_loop().create_future()
        return self.acked


class Delivery:
    """Moves envelopes and signals between the devices of this instance (and, through the
    backplane, of others), and owns the live holds and the task that expires them."""

    def __init__(
        self,
        engine: AsyncEngine,
        limits: HubLimits,
        writer: MailboxWriter,
        backplane: Backplane,
        reach: Reach,
        sockets: dict[str, DeviceSocket],
    ) -> None:
        self.limits = limits
        self.writer = writer
        self._engine = engine
        self._backplane = backplane
        self._reach = reach
        self._sockets = sockets  # the hub's registry, shared: device id -> its live socket here
        self._held: dict[tuple[str, str], Held] = {}  # (recipient device, message id) -> hold
        self._hold_order: collections.deque[Held] = collections.deque()  # armed holds, by deadline
        self._unarmed: collections.deque[Held] = collections.deque()  # copies not all written, by push
        self._hurried: list[Held] = []  # holds whose device's socket went away: store them now
        self._hold_wakeup = asyncio.Event()
        self._hold_keeper: asyncio.Task[None] | None = None

    # -- lifecycle (the hub's start/close) ----------------------------------------------------------

    def start(self) -> None:
        self._hold_keeper = asyncio.create_task(self._expire_holds(), name="live-holds")

    async def close(self) -> None:
        if self._hold_keeper is not None:
            self._hold_keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._hold_keeper
            self._hold_keeper = None
        # Held sends are not lost on a clean shutdown: their rows join the writer's last batches.
        for order in (self._hold_order, self._unarmed):
            while order:
                await self._store_held(order.popleft())

    # -- one client frame ---------------------------------------------------------------------------

    async def dispatch(self, sock: DeviceSocket, frame: Any) -> None:
        """Act on one validated client frame; FrameRefused when it may not be acted on."""
        if isinstance(frame, PingFrame):
            # A pong comes after every earlier send and ack of this socket has been committed (the
            # writer commits in order, so waiting for the last one is waiting for all of them).
            pong = Outgoing(PongFrame(nonce=frame.nonce).model_dump_json())
            last = sock.commit_barrier()
            if last is None or last.done():
                sock.push(pong)
            else:
                last.add_done_callback(lambda _f: sock.push(pong))
        elif isinstance(frame, SendFrame):
            await self._on_send(sock, frame)
        elif isinstance(frame, AckFrame):
            ids = [m for m in frame.ids() if not self._release_hold(sock.device_id, m)]
            if ids:  # the rest have (or may have) rows: delete them, after their insert
                future = await self.writer.submit_ack(sock.device_id, ids)
                sock.last_commit = future
                future.add_done_callback(lambda f: _after_ack(sock, f, ids))
        elif isinstance(frame, GroupSendFrame):
            await self._on_group_send(sock, frame)
        elif isinstance(frame, SignalFrame):
            await self._on_signal(sock, frame)
        elif isinstance(frame, AuthFrame):
            raise FrameRefused(ErrorCode.MALFORMED, "this socket is already authenticated")

    async def _on_send(self, sock: DeviceSocket, frame: SendFrame) -> None:
        # The alphabet was checked by the frame's validator; only the length can be wrong.
        if len(frame.envelope) % 4 == 1:
            raise FrameRefused(ErrorCode.MALFORMED, "envelope is not unpadded base64url (bad length)")
        seen: set[str] = set()
        targets: list[RecipientDevice] = []
        for r in frame.recipients:
            if r.device_id in seen:
                continue
            seen.add(r.device_id)
            await self._reach.check(sock.user_id, r.user_id, r.device_id)
            targets.append(r)
        for t in targets:
            held = self._held.get((t.device_id, frame.message_id))
            if held is not None and held.sock.device_id != sock.device_id:
                raise FrameRefused(
                    ErrorCode.DUPLICATE,
                    f"message id {frame.message_id} is already used by another sender for device "
                    f"{t.device_id}; send it again with a new message id",
                )
        # Refuse what the quotas refuse before anything is pushed live, so a full mailbox does not
        # turn into frames queued on a socket that never reads (the commit checks again).
        size = len(frame.envelope) * 3 // 4
        refusal = self.writer.precheck(sock.user_id, [(t.user_id, t.device_id) for t in targets], size)
        if refusal is not None:
            raise FrameRefused(ErrorCode.QUOTA, str(refusal))
        deliver = deliver_json(frame.message_id, sock.user_id, sock.device_id, frame.envelope)
        if self.limits.live_hold > 0 and all(t.device_id in self._sockets for t in targets):
            # Every recipient has a socket here: push now, store only if they do not all ack
            # within the hold (most live traffic then never touches the disk).
            mid = frame.message_id
            live = [t.device_id for t in targets if self._push_here(t.device_id, deliver, mid)]
            if len(live) == len(targets):
                self._hold(sock, frame, targets)
                return
            rows = _rows(sock, frame, targets)
            future = await self.writer.submit_store(rows)
        else:
            rows = _rows(sock, frame, targets)
            future = await self.writer.submit_store(rows)
            # Pushed live now, before the commit: the recipient may even ack before it, which is
            # safe because the writer applies this insert before any later ack. `accepted` still
            # waits for the commit (a callback on it, below), so what the sender hears stays true
            # after a crash.
            live = [
                row.recipient_device
                for row in rows
                if await self._push_live(row.recipient_device, deliver, frame)
            ]

        sock.last_commit = future
        future.add_done_callback(lambda f: _after_store(sock, f, frame, live, rows))

    async def _on_group_send(self, sock: DeviceSocket, frame: GroupSendFrame) -> None:
        """One group message: stored once, a row per recipient device, pushed live to each.

        Each device's row is its own job for the writer (they still commit in one transaction),
        so one member's full mailbox costs only that member the message: it is named in the
        answer's `full` list instead of failing the send for everyone.
        """
        if len(frame.envelope) % 4 == 1:
            raise FrameRefused(ErrorCode.MALFORMED, "envelope is not unpadded base64url (bad length)")
        async with self._engine.connect() as conn:
            # Members who blocked the sender are not in the list (store.groups.member_devices).
            found = await group_store.member_devices(conn, frame.group_id, sock.user_id)
        if found is None:
            raise FrameRefused(ErrorCode.NOT_A_MEMBER, f"you are not a member of group {frame.group_id}")
        group_pk, devices = found
        targets = [(u, d) for u, d in devices if d != sock.device_id]
        if frame.devices is not None:
            wanted = set(frame.devices)
            unknown = sorted(wanted - {d for _, d in targets})
            if unknown:  # rare: ask once whether some are a blocker's, skipped without a word
                async with self._engine.connect() as conn:
                    hidden = await group_store.hidden_devices(conn, group_pk, sock.user_id, unknown)
                unknown = [d for d in unknown if d not in hidden]
            if unknown:
                named = ", ".join(unknown[:5]) + (" ..." if len(unknown) > 5 else "")
                raise FrameRefused(
                    ErrorCode.UNKNOWN_DEVICE,
                    f"not active devices of other members of group {frame.group_id}: {named}",
                )
            targets = [t for t in targets if t[1] in wanted]
        if not targets:
            sock.push(Outgoing(accepted_json(frame.ref, frame.message_id, [], []), accepted=True))
            return
        envelope = base64.urlsafe_b64decode(frame.envelope + "=" * (-len(frame.envelope) % 4))
        expires = datetime.now(UTC) + self.limits.mailbox_retention
        try:
            async with self._engine.begin() as conn:
                body_id = await mailbox.store_body(conn, group_pk, envelope, expires)
        except Exception as exc:
            log.error("storing a group message failed: %s", exc)
            raise FrameRefused(ErrorCode.INTERNAL, "the server could not store this; send it again") from exc
        futures: list[asyncio.Future[None]] = []
        for user_id, device_id in targets:
            row = NewMessage(
                user_id,
                device_id,
                sock.user_id,
                sock.device_id,
                frame.message_id,
                b"",
                body_id,
                len(envelope),
            )
            futures.append(await self.writer.submit_store([row]))
        deliver = group_deliver_json(
            frame.message_id, sock.user_id, sock.device_id, frame.envelope, frame.group_id
        )
        # A device whose mailbox would refuse the row gets no live copy either (as for `send`).
        refused = {
            d for u, d in targets if self.writer.precheck(sock.user_id, [(u, d)], len(envelope)) is not None
        }
        live = [
            d
            for _, d in targets
            if d not in refused and await self._push_live_text(d, deliver, frame.message_id)
        ]
        done = asyncio.gather(*futures, return_exceptions=True)
        sock.last_commit = done
        devices_in_order = [d for _, d in targets]
        done.add_done_callback(lambda f: _after_group_store(sock, f, frame, live, devices_in_order))

    async def _push_live_text(self, device_id: str, text: str, message_id: str) -> bool:
        try:
            return await self._backplane.send_to_device(device_id, text, message_id)
        except Exception as exc:
            log.warning("live push to %s failed, it stays queued: %s", device_id, exc)
            return False

    def _push_here(self, device_id: str, text: str, message_id: str | None) -> bool:
        """Push to a socket of this instance (what `Hub.deliver_to_device` does for the backplane)."""
        sock = self._sockets.get(device_id)
        return sock is not None and sock.push(Outgoing(text, message_id))

    async def _push_live(self, device_id: str, deliver: str, frame: SendFrame) -> bool:
        """Best effort: the row is stored either way, so a backplane outage only costs latency."""
        try:
            return await self._backplane.send_to_device(device_id, deliver, frame.message_id)
        except Exception as exc:
            log.warning("live push to %s failed, it stays queued: %s", device_id, exc)
            return False

    async def _on_signal(self, sock: DeviceSocket, frame: SignalFrame) -> None:
        await self._reach.check(sock.user_id, frame.to_user, frame.to_device)
        relayed = frame.model_copy(update={"from_user": sock.user_id, "from_device": sock.device_id})
        if not await self._backplane.send_to_device(frame.to_device, relayed.model_dump_json()):
            device = frame.to_device
            raise FrameRefused(
                ErrorCode.UNKNOWN_DEVICE, f"device {device} is not connected", device_id=device
            )

    # -- live holds: an envelope every recipient got live waits up to `live_hold` for their acks -----

    def _hold(self, sock: DeviceSocket, frame: SendFrame, targets: list[RecipientDevice]) -> None:
        devices = {t.device_id for t in targets}
        held = Held(sock, frame, targets, devices, time.monotonic() + UNWRITTEN_HOLD_LIMIT, set(devices))
        for t in targets:
            self._held[(t.device_id, frame.message_id)] = held
        self._unarmed.append(held)
        if len(self._unarmed) == 1:
            self._hold_wakeup.set()  # the keeper sleeps without a deadline while there is none
        sock.last_commit = held

    def written(self, device_id: str, message_id: str) -> None:
        """A socket's writer wrote (or skipped as drained) the live copy `message_id`: once every
        copy of a held send is written, its `live_hold` starts."""
        held = self._held.get((device_id, message_id))
        if held is not None:
            held.unwritten.discard(device_id)
            if not held.unwritten:
                self._arm(held)

    def _arm(self, held: Held) -> None:
        if held.armed or held.settled:
            return
        held.armed = True
        held.deadline = time.monotonic() + self.limits.live_hold
        self._hold_order.append(held)  # armed in time order: the deque stays sorted by deadline
        if len(self._hold_order) == 1:
            self._hold_wakeup.set()

    def _release_hold(self, device_id: str, message_id: str) -> bool:
        """An ack of a held envelope: True when it was held (then it has no row to delete)."""
        held = self._held.pop((device_id, message_id), None)
        if held is None:
            return False
        held.waiting.discard(device_id)
        held.unwritten.discard(device_id)  # (an ack can be read before its writer resumes)
        if held.waiting and not held.unwritten:
            self._arm(held)
        if not held.waiting:
            held.settled = True
            if held.acked is not None:
                held.acked.set_result(None)
            if not held.sock.gone:
                devices = [t.device_id for t in held.targets]
                held.sock.push(
                    Outgoing(accepted_json(held.frame.ref, held.frame.message_id, devices, []), accepted=True)
                )
        return True

    def _holds_of(self, device_id: str) -> set[Held]:
        return {held for (device, _), held in self._held.items() if device == device_id}

    def hurry_holds(self, device_id: str) -> None:
        """The device's socket went away: what it had not acked is stored now, not at the deadline."""
        hurried = self._holds_of(device_id)
        if hurried:
            self._hurried.extend(hurried)
            self._hold_wakeup.set()

    async def _settle_holds_of(self, device_id: str) -> None:
        """Before a socket drains: store what earlier sockets of the device were pushed and did not
        ack, and wait until everything already handed to the writer is committed, so the drain sees
        every row (a live push to a dying socket comes back from the mailbox at once, not on the
        next connect)."""
        for held in self._holds_of(device_id):
            await self._store_held(held)
        try:
            async with asyncio.timeout(self.limits.auth_timeout):
                await (await self.writer.submit_ack(device_id, []))  # a barrier: an empty job
        except (TimeoutError, MailboxError) as exc:
            log.warning("draining %s without waiting for queued commits: %s", device_id, exc)

    async def _expire_holds(self) -> None:
        """The keeper task: hands expired (or hurried) holds to the writer, in deadline order."""
        while True:
            now = time.monotonic()
            due, self._hurried = self._hurried, []
            while self._hold_order and (self._hold_order[0].settled or self._hold_order[0].deadline <= now):
                held = self._hold_order.popleft()
                if not held.settled:
                    due.append(held)
            while self._unarmed and (
                self._unarmed[0].armed or self._unarmed[0].settled or self._unarmed[0].deadline <= now
            ):
                held = self._unarmed.popleft()
                if not held.armed and not held.settled:
                    due.append(held)  # a copy unwritten for UNWRITTEN_HOLD_LIMIT: store it
            for held in due:
                await self._store_held(held)
            self._hold_wakeup.clear()
            if self._hurried:
                continue
            heads = [order[0].deadline for order in (self._hold_order, self._unarmed) if order]
            if not heads:
                await self._hold_wakeup.wait()  # until the next hold; cancelled by close()
                continue
            wait = max(min(heads) - time.monotonic(), 0.005)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._hold_wakeup.wait()

    async def _store_held(self, held: Held) -> None:
        """The hold ran out: store the rows of the devices that did not ack, answer after the commit."""
        if held.settled:
            return
        held.settled = True
        silent = [t for t in held.targets if t.device_id in held.waiting]
        for t in silent:
            self._held.pop((t.device_id, held.frame.message_id), None)
        live = [t.device_id for t in held.targets]
        rows = _rows(held.sock, held.frame, silent)
        acked = held.acked
        try:
            held.commit = future = await self.writer.submit_store(rows)
        except MailboxClosed:
            if acked is not None:  # never answered: the sender resends what it did not see accepted
                acked.set_result(None)
            return
        if acked is not None:
            future.add_done_callback(lambda _f: _settle(acked))
        future.add_done_callback(lambda f: _after_store(held.sock, f, held.frame, live, rows))

    # -- the drain: what a socket writes before its live traffic ------------------------------------

    async def drain(self, sock: DeviceSocket) -> set[str]:
        """Write `ready`, the device's mailbox oldest first, and `drained`; return the drained ids
        (live copies queued meanwhile that repeat one of them are skipped by the socket's writer)."""
        ws = sock.ws
        await self._settle_holds_of(sock.device_id)
        async with self._engine.connect() as conn:
            pending = await mailbox.pending_count(conn, sock.device_id)
        ready = ReadyFrame(user_id=sock.user_id, device_id=sock.device_id, pending=pending)
        await ws.send_text(ready.model_dump_json())
        drained_ids: set[str] = set()
        after = 0
        while True:
            async with self._engine.connect() as conn:
                page = await mailbox.fetch_after(conn, sock.device_id, after, self.limits.drain_page)
            if not page:
                break
            for row in page:
                frame = DeliverFrame(
                    message_id=row.message_id,
                    sender_user=row.sender_user,
                    sender_device=row.sender_device,
                    envelope=b64encode(row.envelope),
                    queued=True,
                    queued_at=row.queued_at,
                    group_id=row.group_id,
                )
                await ws.send_text(frame.model_dump_json())
                sock.ack_credit += 1
                drained_ids.add(row.message_id)
                after = row.seq
        if ws.query_params.get("groups") == "1":  # the client asked for it (it speaks groups)
            # Membership the device may have missed while away: every group with its version.
            async with self._engine.connect() as conn:
                summaries = await group_store.summaries(conn, sock.user_id)
            groups = [
                GroupSummary(group_id=g.public_id, name=g.name, version=g.version, role=g.role)
                for g in summaries
            ]
            await ws.send_text(GroupsFrame(groups=groups).model_dump_json())
        await ws.send_text(DrainedFrame().model_dump_json())
        return drained_ids


def _after_store(
    sock: DeviceSocket,
    future: asyncio.Future[None],
    frame: SendFrame,
    live: list[str],
    rows: list[NewMessage],
) -> None:
    """Runs when the send's batch has committed (or failed): now, and only now, answer it."""
    if sock.gone:
        return
    if future.cancelled():
        return
    exc = future.exception()
    if isinstance(exc, QuotaExceeded):
        sock.refuse(ErrorCode.QUOTA, str(exc), frame.ref)
    elif isinstance(exc, DuplicateMessageId):
        sock.refuse(ErrorCode.DUPLICATE, str(exc), frame.ref)
    elif exc is not None:
        # The message names the failure, never the statement's parameters (the engine hides them).
        log.error("mailbox write failed: %s", exc)
        sock.refuse(ErrorCode.INTERNAL, "the server could not store this; send it again", frame.ref)
    else:
        sock.push(
            Outgoing(
                accepted_json(frame.ref, frame.message_id, live, [r.recipient_device for r in rows]),
                accepted=True,
            )
        )


def _after_group_store(
    sock: DeviceSocket,
    future: asyncio.Future[list[BaseException | None]],
    frame: GroupSendFrame,
    live: list[str],
    devices: list[str],
) -> None:
    """Every device's row of a group send has committed or been refused: answer the sender."""
    if sock.gone or future.cancelled():
        return
    queued: list[str] = []
    full: list[str] = []
    failed = False
    for device_id, outcome in zip(devices, future.result(), strict=True):
        if outcome is None:
            queued.append(device_id)
        elif isinstance(outcome, QuotaExceeded):
            full.append(device_id)
        elif isinstance(outcome, DuplicateMessageId):
            sock.refuse(ErrorCode.DUPLICATE, str(outcome), frame.ref)
            return
        else:
            failed = True
            log.error("mailbox write of a group message failed: %s", outcome)
    if failed:
        sock.refuse(ErrorCode.INTERNAL, "the server could not store this; send it again", frame.ref)
        return
    answer = AcceptedFrame(ref=frame.ref, message_id=frame.message_id, live=live, queued=queued, full=full)
    sock.push(Outgoing(answer.model_dump_json(), accepted=True))


def _after_ack(sock: DeviceSocket, future: asyncio.Future[None], ids: list[str]) -> None:
    if future.cancelled() or future.exception() is None:
        return
    log.error("deleting acked messages failed: %s", future.exception())
    if not sock.gone:
        named = ids[0] if len(ids) == 1 else f"{len(ids)} messages ({ids[0]}, ...)"
        sock.refuse(ErrorCode.INTERNAL, f"the ack of {named} was not saved; ack it again")


# The two frames of every envelope, written by hand: pydantic's construct-and-dump was ~8 % of the
# hub's event loop at load. Every field is pattern-checked before it gets here (hex message id,
# device ids of [A-Za-z0-9_-], base64url envelope), so none needs escaping except `ref`.
# tests/hub/test_frames.py holds them equal to the protocol models.


def deliver_json(message_id: str, sender_user: int, sender_device: str, envelope: str) -> str:
    return (
        '{"type":"deliver","message_id":"'
        + message_id
        + '","sender_user":'
        + str(int(sender_user))
        + ',"sender_device":"'
        + sender_device
        + '","envelope":"'
        + envelope
        + '","queued":false,"queued_at":null}'
    )


def group_deliver_json(
    message_id: str, sender_user: int, sender_device: str, envelope: str, group_id: str
) -> str:
    """`deliver_json` of a group message: the same frame with `group_id` (32 hex, checked)."""
    return (
        deliver_json(message_id, sender_user, sender_device, envelope)[:-1]
        + ',"group_id":"'
        + group_id
        + '"}'
    )


def accepted_json(ref: str, message_id: str, live: list[str], queued: list[str]) -> str:
    return (
        '{"type":"accepted","ref":'
        + json.dumps(ref)
        + ',"message_id":"'
        + message_id
        + '","live":'
        + _id_list(live)
        + ',"queued":'
        + _id_list(queued)
        + "}"
    )


def _id_list(ids: list[str]) -> str:
    return '["' + '","'.join(ids) + '"]' if ids else "[]"


def _rows(sock: DeviceSocket, frame: SendFrame, targets: list[RecipientDevice]) -> list[NewMessage]:
    """The mailbox rows of a send (decoding the envelope only now: held sends never need it)."""
    envelope = base64.urlsafe_b64decode(frame.envelope + "=" * (-len(frame.envelope) % 4))
    return [
        NewMessage(
            t.user_id,
            t.device_id,
            sock.user_id,
            sock.device_id,
            frame.message_id,
            envelope,
            ttl_s=frame.expires_in,
        )
        for t in targets
    ]


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
