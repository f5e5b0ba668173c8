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
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
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
        self.connects = 0
        # Recent message ids that crossed the server, both ways (introspection for tests and bench).
        self.sent_ids: deque[str] = deque(maxlen=10_000)
        self.delivered_ids: deque[str] = deque(maxlen=10_000)
        self.ended_reason: str | None = None

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
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self._ws.close()
            self._ws = None
        self._fail_pending(ServerUnavailable("the peer is shutting down"))

    async def drop(self) -> None:
        """Close the current socket as if the network broke (the session reconnects). For tests."""
        if self._ws is not None:
            await self._ws.close()

    # ---------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                await self._connect_once()
                attempt = 0  # it was up: start the back-off again from the bottom
            except SessionEnded as e:
                self.ended_reason = str(e)
                await self._on_status(False, str(e))
                return
            except (OSError, TimeoutError, websockets.exceptions.WebSocketException, ServerError) as e:
                log.info("hub session: %s", e)
            self._connected.clear()
            self._fail_pending(ServerUnavailable("the connection to the server dropped"))
            delay = self._backoff.delay(attempt)
            attempt += 1
            await asyncio.sleep(delay)  # the back-off period itself, not a synchronisation

    async def _connect_once(self) -> None:
        if self._client.tokens is None:
            raise SessionEnded("not logged in")
        url = (
            ws_url(self._client.server_url)
            + "?"
            + urlencode({"device_id": self._device_id, "protocol": PROTOCOL_VERSION})
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
                    self._connected.set()
                    await self._on_status(True, None)
                if frame.type == "deliver":
                    self.delivered_ids.append(frame.message_id)
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
            was_up = self._connected.is_set()
            self._connected.clear()
            if was_up:
                await self._on_status(False, "connection to the server lost")

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

    async def send_envelope(
        self, message_id: str, envelope_b64: str, recipients: list[RecipientDevice], within: float
    ) -> AcceptedFrame:
        """Hand an envelope to the hub and wait for `accepted` (committed) or an error."""
        ref = f"m{next(self._refs)}"
        future: asyncio.Future[AcceptedFrame] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        frame = SendFrame(ref=ref, message_id=message_id, envelope=envelope_b64, recipients=recipients)
        try:
            await self._send_raw(frame.model_dump_json())
            self.sent_ids.append(message_id)
            async with asyncio.timeout(within):
                return await future
        except TimeoutError as e:
            raise DeliveryTimeout(f"the server did not accept message {message_id} in {within} s") from e
        finally:
            self._pending.pop(ref, None)
