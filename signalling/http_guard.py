"""The ASGI layer in front of every route: body size limits enforced while reading, and the
security headers of every answer.

Bodies: a route's limit is checked against `Content-Length` before a byte is read, and counted
again while the body streams in (chunked uploads declare nothing), so a 200 MB `POST /users/` is
refused with 413 after at most the limit has been read, never held whole; a body that stops
arriving for `body_idle_timeout` seconds is answered 408 (a slowloris that sends its headers
quickly and then trickles the body). The routes anyone may call
without a token (register, login, refresh) get the small limit; blob uploads are streamed to disk
and limited by the blob store itself; every other route gets `body_max_bytes`.

Headers: `X-Content-Type-Options: nosniff`, `Content-Security-Policy: frame-ancestors 'none'` (and
the older `X-Frame-Options: DENY`), `Referrer-Policy: no-referrer`, and `Cache-Control: no-store`
on every answer that does not set its own cache policy (tokens and account data must never sit in
a shared cache). It never reads or logs a body's content.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNAUTHENTICATED_BODIES = {
    ("POST", "/users/"),
    ("POST", "/users"),
    ("POST", "/token"),
    ("POST", "/token/refresh"),
}
STREAMED_BODIES = {("POST", "/blobs")}  # limited by the blob store as it writes

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"content-security-policy", b"frame-ancestors 'none'"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
NO_STORE = (b"cache-control", b"no-store")


def _sentence(limit: int) -> str:
    return f"The request body is larger than the {limit}-byte limit of this route."


def _refusal(limit: int) -> bytes:
    return json.dumps({"detail": _sentence(limit), "code": "too_large"}, separators=(",", ":")).encode()


class HttpGuard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        body_max_bytes: int,
        unauthenticated_max_bytes: int,
        body_idle_timeout: float = 30.0,
    ) -> None:
        self.app = app
        self.body_idle_timeout = body_idle_timeout
        self.body_max_bytes = body_max_bytes
        self.unauthenticated_max_bytes = unauthenticated_max_bytes
        self.refused_bodies = 0

    def limit_for(self, method: str, path: str) -> int | None:
        key = (method, path)
        if key in STREAMED_BODIES:
            return None
        if key in UNAUTHENTICATED_BODIES:
            return self.unauthenticated_max_bytes
        return self.body_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                names = {name.lower() for name, _ in headers}
                headers += [h for h in SECURITY_HEADERS if h[0] not in names]
                if b"cache-control" not in names:
                    headers.append(NO_STORE)
                message = {**message, "headers": headers}
            await send(message)

        limit = self.limit_for(scope["method"], scope["path"])
        declared = _content_length(scope)
        if limit is not None and declared is not None and declared > limit:
            self.refused_bodies += 1
            await _send_413(send_with_headers, limit)
            return
        seen = 0
        body_done = False

        async def guarded_receive() -> Message:
            nonlocal seen, body_done
            if body_done:  # after the body, receive() only waits for a disconnect: no deadline
                return await receive()
            try:
                async with asyncio.timeout(self.body_idle_timeout):
                    message = await receive()
            except TimeoutError:  # a body trickled in byte by byte holds a request open
                raise HTTPException(
                    408,
                    detail="The request body stopped arriving; send it at once.",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] != "http.request":
                return message
            body_done = not message.get("more_body", False)
            seen += len(message.get("body", b""))
            if limit is not None and seen > limit:
                # FastAPI re-raises an HTTPException from the body read; the app's error handler
                # turns it into the one error shape (signalling.errors). `Connection: close`: the
                # rest of the body is not read at all (h11 would read and discard it otherwise).
                self.refused_bodies += 1
                raise HTTPException(413, detail=_sentence(limit), headers={"Connection": "close"})
            return message

        await self.app(scope, guarded_receive, send_with_headers)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_413(send: Any, limit: int) -> None:
    body = _refusal(limit)
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
