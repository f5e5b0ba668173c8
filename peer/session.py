"""The peer's live WebSocket session with the hub: one socket, kept up for as long as the peer runs.

It reconnects with exponential back-off and full jitter after any drop, refreshes the access token
when the hub refuses it, and after every (re)connect the hub drains the mailbox again (`ready`,
queued `deliver` frames, `drained`). Frames go to one async handler, in order, so a mailbox backlog
is stored in the order the server sent it. `send_envelope` waits for the hub's `accepted`, which the
hub sends only after committing: from then on the server owns delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol
from urllib.parse import urlencode

import websockets
from pydantic import ValidationError
from websockets.asyncio.client import ClientConnection

from peer.client import ServerClient, ws_url
from peer.errors import AuthFailed, DeliveryTimeout, ServerError, ServerUnavailable
from signalling.protocol import (
    PROTOCOL_VERSION,
    SERVER_FRAME,
    AcceptedFrame,
    AckFrame,
    CloseCode,
    ErrorFrame,
    GroupSendFrame,
    RecipientDevice,
    SendFrame,
    ServerFrame,
    SignalFrame,
)

log = logging.getLogger(__name__)

FrameSink = Callable[[ServerFrame], Awaitable[None]]
StatusSink = Callable[[bool, str | None], Awaitable[None]]


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off with full jitter: wait uniform(0, min(cap, base * 2**attempt))."""

    base: float = 0.5
    cap: float = 30.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.cap, self.base * (2 ** min(attempt, 16)))
        return (rng or random).uniform(ceiling / 4, ceiling)


class SessionTap(Protocol):
    """Sees the id of every envelope that crosses the server (tests and benchmarks pass one to
    prove which path a message took; production passes none)."""

    def sent(self, message_id: str) -> None: ...

    def delivered(self, message_id: str) -> None: ...


class SessionState(StrEnum):
    """NEW → CONNECTING → READY (the hub's `ready` came) → WAITING (back-off after a drop or a
    failed attempt) → CONNECTING … ; ENDED when the hub ended it for good; CLOSED by `close()`."""

    NEW = "new"
    CONNECTING = "connecting"
    READY = "ready"
    WAITING = "waiting"
    ENDED = "ended"
    CLOSED = "closed"


class SessionEnded(ServerError):
    """The hub ended the session for good (logged out, account deleted, replaced by another socket)."""


class HubSession:
    """Owns the WebSocket and its reader task. `start()` once, `close()` once."""

    def __init__(
        self,
        client: ServerClient,
        device_id: str,
        on_frame: FrameSink,
        on_status: StatusSink,
        backoff: Backoff | None = None,
        open_timeout: float = 10.0,
        tap: SessionTap | None = None,
    ) -> None:
        self._client = client
        self._device_id = device_id
        self._on_frame = on_frame
        self._on_status = on_status
        self._backoff = backoff or Backoff()
        self._open_timeout = open_timeout
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._pending: dict[str, asyncio.Future[AcceptedFrame]] = {}
        self._refs = itertools.count(1)
        self._tap = tap
        self._retry = asyncio.Event()  # set by retry_now(): skip the rest of the back-off
        self.state = SessionState.NEW
        self.connects = 0
        self.ended_reason: str | None = None
        # Why the session is down, in words for the person ("cannot reach the server at …").
        self.status_reason: str | None = "connecting to the server"

    async def _set_state(self, state: SessionState, reason: str | None = None) -> None:
        """Every change in one place: the connected flag, the reason, and telling the peer — when
        it goes up or down, or when the reason it is down changes (not on each silent retry)."""
        was_up = self.state is SessionState.READY
        previous = self.status_reason
        self.state = state
        up = state is SessionState.READY
        if up:
            self.status_reason = None
            self._connected.set()
        else:
            self._connected.clear()
            if reason is not None:
                self.status_reason = reason
        if state is SessionState.CLOSED:
            return
        if up != was_up or (not up and reason is not None and reason != previous):
            await self._on_status(up, self.status_reason)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self, within: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._connected.wait()
        return self._connected.is_set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="hub-session")

    async def close(self) -> None:
        await self._set_state(SessionState.CLOSED)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
            self._ws = None
        self._fail_pending(ServerUnavailable("the peer is shutting down"))

    async def resume(self) -> None:
        """Connect again after the session ended (new tokens after a password change): the same
        session object, so the peer's parts keep their reference to it."""
        if self.state is SessionState.CLOSED:
            return
        task = self._task
        if task is not None and not task.done() and self.state is SessionState.ENDED:
            await asyncio.gather(task, return_exceptions=True)  # it is returning
        if task is not None and task.done():
            self._task = None
            self.ended_reason = None
        self.start()
        self.retry_now()

    def retry_now(self) -> None:
        """Cut the current back-off short: the next connection attempt starts at once."""
        self._retry.set()

    async def drop(self) -> None:
        """Close the current socket as if the network broke (the session reconnects). For tests."""
        if self._ws is not None:
            await self._ws.close()

    # ---------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                await self._set_state(SessionState.CONNECTING)
                await self._connect_once()
                attempt = 0  # it was up: start the back-off again from the bottom
            except SessionEnded as e:
                self.ended_reason = str(e)
                await self._set_state(SessionState.ENDED, str(e))
                return
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException, ServerError) as e:
                log.info("hub session: %s", e)
                await self._set_state(SessionState.WAITING, self._reason(e))
            if self.state is not SessionState.WAITING:
                await self._set_state(SessionState.WAITING)
            self._fail_pending(ServerUnavailable("the connection to the server dropped"))
            delay = self._backoff.delay(attempt)
            attempt += 1
            self._retry.clear()
            # The back-off period itself (not a synchronisation); retry_now() ends it early.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._retry.wait()

    def _reason(self, error: Exception) -> str:
        """What went wrong with the server, in words (the UI's banner shows it)."""
        where = self._client.server_url
        if isinstance(error, ConnectionRefusedError):
            return f"the server at {where} refused the connection (is it running?)"
        if isinstance(error, TimeoutError):
            return f"the server at {where} did not answer in time"
        if isinstance(error, OSError):
            return f"cannot reach the server at {where}: {error.strerror or error}"
        if isinstance(error, websockets.exceptions.InvalidStatus):
            return f"the server at {where} refused the live connection (HTTP {error.response.status_code})"
        if isinstance(error, ServerError):
            return f"the server at {where}: {error}"
        return f"the connection to the server at {where} failed: {error}"

    async def _connect_once(self) -> None:
        if self._client.tokens is None:
            raise SessionEnded("not logged in")
        url = (
            ws_url(self._client.server_url)
            + "?"
            + urlencode({"device_id": self._device_id, "protocol": PROTOCOL_VERSION, "groups": 1})
        )
        headers = {"Authorization": f"Bearer {self._client.tokens.access_token}"}
        try:
            ws = await websockets.connect(
                url, additional_headers=headers, open_timeout=self._open_timeout, max_size=None
            )
        except websockets.exceptions.InvalidStatus as e:
            if e.response.status_code in (401, 403):
                await self._refresh_or_end()
            raise
        self._ws = ws
        with contextlib.suppress(websockets.exceptions.ConnectionClosed):
            await self._read(ws)  # the close code below says what to do next
        code = ws.close_code
        if code in (CloseCode.ACCOUNT_GONE, CloseCode.REPLACED):
            raise SessionEnded(
                "logged out or account deleted"
                if code == CloseCode.ACCOUNT_GONE
                else "another session for this device took over"
            )
        if code == CloseCode.UNSUPPORTED_PROTOCOL:
            raise SessionEnded(
                f"the server does not speak frame protocol {PROTOCOL_VERSION}: {ws.close_reason}"
            )
        if code == CloseCode.UNAUTHORIZED:
            await self._refresh_or_end()

    async def _read(self, ws: ClientConnection) -> None:
        try:
            async for raw in ws:
                try:
                    frame = SERVER_FRAME.validate_json(raw)
                except ValidationError as e:
                    log.warning("hub sent a frame this peer does not understand: %s", e)
                    continue
                if frame.type == "ready":
                    self.connects += 1
                    await self._set_state(SessionState.READY)
                if frame.type == "deliver" and self._tap is not None:
                    self._tap.delivered(frame.message_id)
                if isinstance(frame, AcceptedFrame | ErrorFrame) and frame.ref in self._pending:
                    self._settle(frame)
                    if isinstance(frame, AcceptedFrame):
                        await self._on_frame(frame)
                    continue
                await self._on_frame(frame)
        finally:
            self._ws = None
            # Closed here, whatever ended the loop (a drop, or close() cancelling this task).
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await ws.close()
            if self.state is SessionState.READY:
                await self._set_state(
                    SessionState.WAITING, "the connection to the server was lost; reconnecting"
                )

    async def _refresh_or_end(self) -> None:
        try:
            await self._client.refresh()
        except AuthFailed as e:
            raise SessionEnded(str(e)) from e

    def _settle(self, frame: AcceptedFrame | ErrorFrame) -> None:
        future = self._pending.pop(frame.ref or "", None)
        if future is None or future.done():
            return
        if isinstance(frame, AcceptedFrame):
            future.set_result(frame)
        else:
            future.set_exception(ServerError(frame.message, code=frame.code))

    def _fail_pending(self, error: Exception) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    # ---------------------------------------------------------------------------------------------

    async def _send_raw(self, text: str) -> None:
        ws = self._ws
        if ws is None or not self._connected.is_set():
            raise ServerUnavailable("not connected to the server")
        try:
            await ws.send(text)
        except websockets.exceptions.ConnectionClosed as e:
            raise ServerUnavailable("the connection to the server dropped") from e

    async def send_signal(self, frame: SignalFrame) -> None:
        await self._send_raw(frame.model_dump_json(exclude_none=True))

    async def ack(self, message_id: str) -> None:
        await self._send_raw(AckFrame(message_id=message_id).model_dump_json())

    async def send_group(
        self, group_id: str, message_id: str, data_b64: str, devices: list[str] | None, within: float
    ) -> AcceptedFrame:
        """One group message (crypto.senderkeys bytes) to the hub's fan-out: every member device
        but this one, or only `devices` (those the sender could not reach directly)."""
        frame = GroupSendFrame(
            ref=f"g{next(self._refs)}",
            group_id=group_id,
            message_id=message_id,
            envelope=data_b64,
            devices=devices,
        )
        return await self._await_accepted(
            frame.ref, frame.model_dump_json(exclude_none=True), message_id, within
        )

    async def _await_accepted(self, ref: str, text: str, message_id: str, within: float) -> AcceptedFrame:
        future: asyncio.Future[AcceptedFrame] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        try:
            await self._send_raw(text)
            if self._tap is not None:
                self._tap.sent(message_id)
            async with asyncio.timeout(within):
                return await future
        except TimeoutError as e:
            raise DeliveryTimeout(f"the server did not accept message {message_id} in {within} s") from e
        finally:
            self._pending.pop(ref, None)

    async def send_envelope(
        self,
        message_id: str,
        envelope_b64: str,
        recipients: list[RecipientDevice],
        within: float,
        expires_in: int | None = None,
    ) -> AcceptedFrame:
        """Hand an envelope to the hub and wait for `accepted` (committed) or an error;
        `expires_in` (seconds): the mailbox drops it then (a disappearing message)."""
        ref = f"m{next(self._refs)}"
        frame = SendFrame(
            ref=ref,
            message_id=message_id,
            envelope=envelope_b64,
            recipients=recipients,
            expires_in=expires_in,
        )
        return await self._await_accepted(ref, frame.model_dump_json(exclude_none=True), message_id, within)
