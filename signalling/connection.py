"""One client socket from its first frame to its close: the auth handshake, then the reader (size,
rate limit, validation, then `Delivery.dispatch`) in the socket's own task and the writer (the drain,
then the socket's queue; the only task that writes to the socket) in one more; a close asked from
outside (replace, logout, revocation, flood) cancels both.

Bad input never closes the socket: it is answered with an `error` frame. Only a spent frame budget
(4429), a client that stops reading (1013) or a close asked from outside does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.websockets import WebSocketDisconnect, WebSocketState

from signalling.delivery import Delivery
from signalling.device_socket import DeviceSocket, Outgoing
from signalling.errors import FrameRefused, HubAuthError
from signalling.limits import HubLimits
from signalling.protocol import (
    CLIENT_FRAME,
    DEVICE_ID_PATTERN,
    SUPPORTED_PROTOCOLS,
    AckFrame,
    AuthFrame,
    CloseCode,
    ErrorCode,
)
from signalling.ratelimit import TokenBucket
from signalling.wire import Wire
from store import reach

# Resolves a bearer access token to its user id; raises HubAuthError (or any Exception) when bad.
# A token's owner: the user, and the device its login was made for (None: an account-wide login,
# e.g. a client that named no device at `/token`).
Authenticator = Callable[[str], Awaitable[tuple[int, str | None]]]

_DEVICE_ID = re.compile(DEVICE_ID_PATTERN.removeprefix("^").removesuffix("$"))


async def authenticate_socket(
    ws: Wire, authenticate: Authenticator, engine: AsyncEngine, auth_timeout: float
) -> tuple[int, str]:
    """The user and device of a socket just accepted, from its `Authorization` header and
    `?device_id=`, or from a first `auth` frame within `auth_timeout`; HubAuthError says why not."""
    header = ws.headers.get("authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise HubAuthError("the Authorization header must be 'Bearer <access token>'")
        device_id = ws.query_params.get("device_id")
        if not device_id:
            raise HubAuthError("the device_id query parameter is missing")
        _check_protocol(ws.query_params.get("protocol", "1"))
    else:
        try:
            async with asyncio.timeout(auth_timeout):
                text = await ws.receive_text()
        except TimeoutError as exc:
            raise HubAuthError("no auth frame within the deadline") from exc
        except (KeyError, RuntimeError) as exc:
            raise HubAuthError("the first frame must be a text auth frame") from exc
        try:
            frame = AuthFrame.model_validate_json(text)
        except ValidationError as exc:
            raise HubAuthError("the first frame must be an auth frame with token and device_id") from exc
        token, device_id = frame.token, frame.device_id
        _check_protocol(ws.query_params.get("protocol", str(frame.protocol)))
    if not _DEVICE_ID.fullmatch(device_id):
        raise HubAuthError("device_id must be 8 to 64 characters of A-Z, a-z, 0-9, '_' or '-'")
    try:
        user_id, token_device = await authenticate(token)
    except Exception as exc:
        raise HubAuthError("the access token is invalid, expired or revoked") from exc
    if token_device is not None and token_device != device_id:
        # A login made for one device must not speak as another device of the account: revoking
        # that other device would otherwise not end what this token can do.
        raise HubAuthError(f"this token was issued to device {token_device}, not to device {device_id}")
    async with engine.connect() as conn:
        owner = await reach.device_owner(conn, device_id)
    if owner is None or owner.user_id != user_id:
        raise HubAuthError(f"device {device_id} is not a published device of this account")
    if not owner.active:
        raise HubAuthError(f"device {device_id} has been revoked")
    return user_id, device_id


def _check_protocol(named: str) -> None:
    """The socket names the frame protocol it speaks; one this server does not speak closes it."""
    if not named.isdigit() or int(named) not in SUPPORTED_PROTOCOLS:
        spoken = ", ".join(str(v) for v in sorted(SUPPORTED_PROTOCOLS))
        raise HubAuthError(
            f"protocol {named[:16]!r} is not spoken here; this server speaks {spoken}",
            close_code=CloseCode.UNSUPPORTED_PROTOCOL,
        )


class Connection:
    """The work of one authenticated socket. `run()` returns when the socket is done with.

    Two coroutines: the reader runs in the task that called `run()` (the ASGI task uvicorn made for
    the socket), the writer in one task of its own. A close asked from outside (`sock.close()`:
    replace, logout, revocation, flood, too slow) cancels both; the writer's end (the socket gone)
    cancels the reader. Why not a TaskGroup of reader, writer and watcher: an idle socket is
    mostly its waiting tasks, and each task with its coroutine frame, and the group, cost memory
    for the socket's whole life (bench/scale.py, docs/hub.md "10,000 devices").
    """

    def __init__(self, sock: DeviceSocket, limits: HubLimits, delivery: Delivery) -> None:
        self.sock = sock
        self.limits = limits
        self._delivery = delivery

    async def run(self) -> None:
        sock = self.sock
        me = asyncio.current_task()
        assert me is not None
        writer = asyncio.create_task(self._write(sock))
        reading = True
        cancelled_reader = False

        def stop_reader() -> None:
            nonlocal cancelled_reader
            if reading and not cancelled_reader and asyncio.current_task() is not me:
                cancelled_reader = True
                me.cancel()

        def stop() -> None:
            writer.cancel()
            stop_reader()

        sock.on_close = stop
        writer.add_done_callback(lambda _t: stop_reader())
        try:
            if sock.closing is None:
                await self._read(sock)
        except asyncio.CancelledError:
            if not cancelled_reader or me.uncancel() > 0:
                raise  # not (only) ours: the server is stopping this task
        except WebSocketDisconnect:
            pass
        finally:
            reading = False
            sock.on_close = None
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect):
                await writer
            # Sends already handed to the writer still commit; their `accepted` has nobody to go
            # to, and the sender's client resends what it did not see accepted (idempotent).
            sock.gone = True

    # The reader: validate, check the budget, hand on. It never writes to the socket itself.

    async def _read(self, sock: DeviceSocket) -> None:
        bucket = TokenBucket(self.limits.rate_per_second, self.limits.rate_burst)
        limit = self.limits.max_frame_bytes
        dispatch = self._delivery.dispatch
        while sock.closing is None:
            message = await sock.ws.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message.get("code", 1000))
            text = message.get("text")
            if text is None:
                raw = message.get("bytes") or b""
                size = len(raw)
            else:
                size = len(text) if text.isascii() else len(text.encode("utf-8"))
            if size > limit:
                if not self._charge(sock, bucket):
                    return
                sock.refuse(ErrorCode.TOO_LARGE, f"frame of {size} bytes is over the {limit}-byte limit")
                continue
            if text is None:
                if not self._charge(sock, bucket):
                    return
                sock.refuse(ErrorCode.MALFORMED, "frames must be JSON text, not binary")
                continue
            try:
                frame = CLIENT_FRAME.validate_json(text)
            except ValidationError as exc:
                if not self._charge(sock, bucket):
                    return
                sock.refuse(ErrorCode.MALFORMED, _describe(exc), _ref_of(text))
                continue
            # An ack answers a frame the server sent: a device coming back to a full mailbox acks
            # thousands at once, and that is not a flood. Acks beyond what was delivered are charged
            # one token per id, not per frame: each id costs a delete, and one frame names up to
            # a thousand.
            if isinstance(frame, AckFrame):
                count = _ack_count(frame)
                free = min(sock.ack_credit, count)
                sock.ack_credit -= free
                if count > free and not self._charge(sock, bucket, count - free):
                    return
            elif not self._charge(sock, bucket):
                return
            try:
                await dispatch(sock, frame)
            except FrameRefused as exc:
                sock.refuse(exc.code, exc.message, getattr(frame, "ref", None), exc.device_id)

    def _charge(self, sock: DeviceSocket, bucket: TokenBucket, cost: int = 1) -> bool:
        """Take `cost` from the socket's budget; close it (False) when the budget is spent."""
        if bucket.take(cost):
            return True
        sock.close(
            CloseCode.RATE_LIMITED,
            f"too many frames: more than {self.limits.rate_per_second:g} per second "
            f"(burst {self.limits.rate_burst})",
        )
        return False

    # The writer: ready, drain, drained, then whatever is queued. The only task that sends.

    async def _write(self, sock: DeviceSocket) -> None:
        ws = sock.ws
        written = self._delivery.written
        drained_ids = await self._delivery.drain(sock)
        # Live copies queued while draining may repeat rows the drain already sent: skip those.
        carry: Outgoing | None = None
        while True:
            if drained_ids and sock.outbox.empty():
                drained_ids = set()
            if carry is not None:
                item, carry = carry, None
            else:
                item = await sock.outbox.get()
                sock.taken(item)
            if item.message_id is not None and item.message_id in drained_ids:
                written(sock.device_id, item.message_id)  # the drain wrote it
                continue
            if item.message_id is not None:
                sock.ack_credit += 1
            if item.accepted and sock.accepted_batch and not sock.outbox.empty():
                # Answers queued back to back go out as one frame: one write instead of many.
                answers = [item.text]
                while not sock.outbox.empty():
                    carry = sock.outbox.get_nowait()
                    sock.taken(carry)
                    if not carry.accepted:
                        break
                    answers.append(carry.text)
                    carry = None
                if len(answers) > 1:
                    await ws.send_text('{"type":"accepted_batch","items":[' + ",".join(answers) + "]}")
                    continue
            await ws.send_text(item.text)
            if item.message_id is not None:
                written(sock.device_id, item.message_id)  # a held send's live_hold starts now


async def close_quietly(ws: Wire, code: int, reason: str) -> None:
    if ws.application_state == WebSocketState.DISCONNECTED or ws.client_state == WebSocketState.DISCONNECTED:
        return
    with contextlib.suppress(Exception):
        await ws.close(code=code, reason=reason[:120])


def _ack_count(frame: AckFrame) -> int:
    return (frame.message_id is not None) + len(frame.message_ids or ())


def _describe(exc: ValidationError) -> str:
    """Name the field, what is wrong, and (for a short string) the value: in a batched ack,
    `ack.message_ids.3: ... (got 'xyz')` says which id of the batch was refused."""
    problems = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ())) or "frame"
        problem = f"{where}: {err.get('msg', 'invalid')}"
        value = err.get("input")
        if isinstance(value, str) and len(value) <= 64:
            problem += f" (got {value!r})"
        problems.append(problem)
    return "frame rejected: " + "; ".join(problems)


def _ref_of(text: str) -> str | None:
    """Best effort: echo a `ref` back so the client can pair the error, if the JSON had one."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than the parser goes
        return None
    ref = value.get("ref") if isinstance(value, dict) else None
    return ref if isinstance(ref, str) and len(ref) <= 64 else None
