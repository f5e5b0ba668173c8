"""GET /metrics: the server's counters in the Prometheus text format (off unless
`PEERPOST_METRICS_ENABLED=true`; keep it behind the proxy, docs/server.md).

What an operator (and the abuse tests and bench) needs to see that one account is not eating the
server: bytes queued for live sockets and the most one socket held, sockets closed for not reading,
refused connections, slow headers and bodies, batches retried, the hashing queue, free disk. Only
counts: no user, device or address is ever named here.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse

from signalling.errors import NotFound
from signalling.http_protocol import GuardedH11Protocol

router = APIRouter(tags=["health"])


def _guard(request: Request) -> object | None:
    app = request.app
    stack = getattr(app, "middleware_stack", None)
    while stack is not None:
        if type(stack).__name__ == "HttpGuard":
            return stack
        stack = getattr(stack, "app", None)
    return None


@router.get("/metrics", response_class=PlainTextResponse, include_in_schema=False)
async def metrics(request: Request) -> PlainTextResponse:
    state = request.app.state
    if not state.settings.metrics_enabled:
        raise NotFound("Metrics are turned off (PEERPOST_METRICS_ENABLED).")
    values: dict[str, float] = {}
    hub = state.hub
    outbox = getattr(hub, "outbox", None)
    if outbox is not None:
        values["peerpost_outbox_queued_bytes"] = outbox.queued
        values["peerpost_outbox_peak_socket_bytes"] = outbox.peak_socket
        values["peerpost_outbox_closed_too_slow_total"] = outbox.closed_too_slow
        values["peerpost_outbox_dropped_bytes_total"] = outbox.dropped
        values["peerpost_connected_devices"] = hub.connected_devices()
        values["peerpost_mailbox_batches_total"] = hub.writer.batches
        values["peerpost_mailbox_batches_retried_total"] = hub.writer.batches_retried
    values["peerpost_http_refused_connections_total"] = GuardedH11Protocol.refused
    values["peerpost_http_header_timeouts_total"] = GuardedH11Protocol.timed_out
    guard = _guard(request)
    if guard is not None:
        values["peerpost_http_bodies_refused_total"] = guard.refused_bodies  # type: ignore[attr-defined]
    passwords = state.passwords
    values["peerpost_password_hashes_waiting"] = passwords.waiting
    values["peerpost_password_hashes_refused_total"] = passwords.refused
    values["peerpost_registrations_refused_total"] = state.registration_limits.refused
    values["peerpost_prekey_claims_limited_total"] = state.claim_limits.limited
    values["peerpost_disk_free_bytes"] = state.disk.free_bytes()
    text = "".join(f"{name} {value:g}\n" for name, value in values.items())
    return PlainTextResponse(text)
