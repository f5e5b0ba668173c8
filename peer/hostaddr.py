"""Which local addresses a peer offers as ICE host candidates.

aioice gathers host candidates from every interface except 127.0.0.1, so two peers on one machine
would talk over the LAN address, and a peer always reveals every address it has. This module is
the one place that knows how aioice picks them: it wraps `aioice.ice.get_host_addresses` once, and
the wrapper answers from a context variable that `restricted_host_addresses` sets around the ICE
gathering of one RTCPeerConnection. Outside that context aioice behaves as shipped.
"""

from __future__ import annotations

import contextlib
import contextvars
import ipaddress
from collections.abc import Iterator, Sequence

import aioice.ice

_restriction: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "peerpost_host_addresses", default=None
)
_original = aioice.ice.get_host_addresses


def _restricted(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    allowed = _restriction.get()
    if allowed is None:
        return _original(use_ipv4=use_ipv4, use_ipv6=use_ipv6)
    chosen = []
    for address in allowed:
        version = ipaddress.ip_address(address).version
        if (version == 4 and use_ipv4) or (version == 6 and use_ipv6):
            chosen.append(address)
    return chosen


def install() -> None:
    """Put the wrapper in place (idempotent); aioice looks the name up at every gathering."""
    if aioice.ice.get_host_addresses is not _restricted:
        aioice.ice.get_host_addresses = _restricted


def check_addresses(addresses: Sequence[str]) -> tuple[str, ...]:
    """Validate a host-address setting early, so a typo is a clear error and not a silent no-link."""
    checked = []
    for address in addresses:
        try:
            checked.append(str(ipaddress.ip_address(address)))
        except ValueError as e:
            raise ValueError(f"host address {address!r} is not an IP address") from e
    return tuple(checked)


@contextlib.contextmanager
def restricted_host_addresses(addresses: Sequence[str] | None) -> Iterator[None]:
    """Within this context (and tasks started in it) gather host candidates only on `addresses`.

    `None` means no restriction. Tasks copy the context when created, so the ICE gathering that
    aiortc starts inside `setLocalDescription` sees the value set here.
    """
    install()
    token = _restriction.set(None if addresses is None else check_addresses(addresses))
    try:
        yield
    finally:
        _restriction.reset(token)
