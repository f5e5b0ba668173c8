"""The HTTP/1.1 protocol the server runs under uvicorn: uvicorn's h11 protocol plus what it lacks
against slow and greedy clients.

uvicorn already bounds an idle keep-alive connection (`timeout_keep_alive`), the size of an
incomplete request line + headers (`h11_max_incomplete_event_size`, answered 400) and the open
connections (`limit_concurrency`, answered 503). It has no deadline for the headers of a request
that trickles in byte by byte (slowloris), and no cap per client address, so one address could fill
the whole connection cap. This protocol adds both:

- a request's headers must be complete within `header_timeout` seconds of its first byte (or of the
  connection's opening): otherwise `408 Request Timeout` and the connection is closed;
- at most `per_address` HTTP connections from one client address: the next one is answered
  `503` and closed at once. (A socket that upgraded to a WebSocket leaves this count; it is
  bounded by the global cap and must authenticate within the hub's auth timeout.)

It never reads a body and never logs a header value. `configure()` is called once by
`signalling.__main__` before uvicorn starts.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("peerpost.http")


def _answer(status: str, code: str, detail: str, extra: str = "") -> bytes:
    body = ('{"detail":"' + detail + '","code":"' + code + '"}').encode()
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n{extra}"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


_TIMEOUT_ANSWER = _answer(
    "408 Request Timeout", "timeout", "The request headers did not arrive in time; send them at once."
)
_BUSY_ANSWER = _answer(
    "503 Service Unavailable",
    "too_many_connections",
    "Too many open connections from your address; close some and try again.",
    "retry-after: 5\r\n",
)


class GuardedH11Protocol(H11Protocol):
    header_timeout: ClassVar[float] = 10.0
    per_address: ClassVar[int] = 256
    open_by_address: ClassVar[collections.Counter[str]] = collections.Counter()
    refused: ClassVar[int] = 0  # connections answered 503 for their address (for /metrics)
    timed_out: ClassVar[int] = 0  # requests answered 408

    @classmethod
    def configure(cls, *, header_timeout: float, per_address: int) -> None:
        cls.header_timeout = header_timeout
        cls.per_address = per_address

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._address: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        address = self.client[0] if self.client else "unknown"
        if self.open_by_address[address] >= self.per_address:
            type(self).refused += 1
            transport.write(_BUSY_ANSWER)
            transport.close()
            return
        self._address = address
        self.open_by_address[address] += 1
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        self._leave_address()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm_header_timer()  # bytes of a request whose headers are not complete yet
        else:
            self._disarm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # arms uvicorn's keep-alive timer for the idle wait

    def handle_websocket_upgrade(self, event: h11.Request) -> None:
        self._disarm_header_timer()
        self._leave_address()
        super().handle_websocket_upgrade(event)

    def _leave_address(self) -> None:
        if self._address is not None:
            self.open_by_address[self._address] -= 1
            if self.open_by_address[self._address] <= 0:
                del self.open_by_address[self._address]
            self._address = None

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        type(self).timed_out += 1
        self.transport.write(_TIMEOUT_ANSWER)
        self.transport.close()
