"""Session keys for envelope version 2: one RSA operation per device pair and session, not per message.

RSA-4096 OAEP decryption costs the receiver ~1.4 ms, which in version 1 every message paid. In
version 2 the sender keeps, per (sender device, recipient device), a random 32-byte session key S
and its RSA-OAEP wrap; every envelope carries that same wrap (so any single envelope still opens on
its own, e.g. from the mailbox after a restart) plus the message's content key wrapped under a key
derived from S. A receiver that has seen the wrap before skips the RSA operation.

S is never used directly: both sides derive the key-encryption key

    KEK = HKDF-SHA256(S, salt = none, info = "peerpost/envelope-session/v2\\0"
                                              || lp(sender device id) || lp(recipient device id))

so a wrap copied into another sender's envelope, or opened by another device, yields a different
KEK. Both caches are in memory only and bounded (LRU); neither ever touches the disk.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ._codec import lp
from .keys import DeviceKeys
from .keywrap import unwrap_key, wrap_key

SESSION_KEY_BYTES = 32
KEK_DOMAIN = b"peerpost/envelope-session/v2\x00"
DEFAULT_MAX_MESSAGES = 1000  # a session key wraps at most this many content keys
DEFAULT_MAX_AGE_S = 24 * 3600.0  # and lives at most this long on the sender
DEFAULT_SENDER_CAPACITY = 1024  # (sender device, recipient device) pairs kept
DEFAULT_RECEIVER_CAPACITY = 4096  # (sender device, wrap) entries kept


def derive_kek(session_key: bytes, sender_device: str, recipient_device: str) -> bytes:
    """The key that wraps content keys for one direction of one device pair."""
    info = KEK_DOMAIN + lp(sender_device.encode("ascii")) + lp(recipient_device.encode("ascii"))
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(session_key)


@dataclass(frozen=True)
class SenderSession:
    """What sealing for one recipient device needs: the RSA wrap of S and the KEK (as an AEAD)."""

    wrapped: bytes  # RSA-OAEP-SHA256(S) under the recipient's encryption key, 512 bytes
    aead: AESGCM = field(repr=False)


def new_session(sender_device: str, recipient_device: str, encryption_key_der: bytes) -> SenderSession:
    """A fresh session key for one envelope or one cached session (one RSA public-key operation)."""
    session_key = os.urandom(SESSION_KEY_BYTES)
    wrapped = wrap_key(encryption_key_der, session_key)
    return SenderSession(wrapped, AESGCM(derive_kek(session_key, sender_device, recipient_device)))


@dataclass
class _Entry:
    session: SenderSession
    created: float
    uses: int


class SessionKeyCache:
    """Sender side: one session per (sender device, recipient device, recipient key), rotated.

    A session is replaced after `max_messages` envelopes or `max_age_s` seconds, and whenever the
    recipient's encryption key differs (the key is part of the cache key), so a re-pinned or new
    device never receives a wrap made for another key. One session per device pair, never per
    recipient set: removing a device from a conversation just stops wrapping for it, and no other
    device ever learns a session key it could keep using.
    """

    def __init__(
        self,
        capacity: int = DEFAULT_SENDER_CAPACITY,
        max_messages: int = DEFAULT_MAX_MESSAGES,
        max_age_s: float = DEFAULT_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1 or max_messages < 1 or max_age_s <= 0:
            raise ValueError("capacity, max_messages and max_age_s must be positive")
        self._entries: OrderedDict[tuple[str, str, bytes], _Entry] = OrderedDict()
        self._capacity = capacity
        self._max_messages = max_messages
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        self.created = 0  # sessions made (each one RSA encryption): for tests and benchmarks

    def session(self, sender_device: str, recipient_device: str, encryption_key_der: bytes) -> SenderSession:
        """The current session for this pair, counting one use; a new one when due."""
        key = (sender_device, recipient_device, encryption_key_der)
        now = self._clock()
        with self._lock:
            entry = self._entries.get(key)
            fresh = entry is not None and now - entry.created < self._max_age_s
            if entry is not None and fresh and entry.uses < self._max_messages:
                entry.uses += 1
                self._entries.move_to_end(key)
                return entry.session
        session = new_session(sender_device, recipient_device, encryption_key_der)  # outside the lock
        with self._lock:
            self._entries[key] = _Entry(session, now, 1)
            self._entries.move_to_end(key)
            self.created += 1
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
        return session

    def forget(self, recipient_device: str) -> None:
        """Drop every session to a device (revoked, or its key changed): the next seal makes a new one."""
        with self._lock:
            for key in [k for k in self._entries if k[1] == recipient_device]:
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:  # never the keys
        return f"SessionKeyCache({len(self._entries)} sessions)"


class UnwrapCache:
    """Receiver side: KEKs already recovered, keyed by (this device, sender device, SHA-256 of the wrap).

    Consulted only after the envelope's signature verified against the sender device's pinned key,
    and the sender device is part of the key: a wrap seen from one sender never opens another
    sender's envelope without its own RSA operation (which then derives a different KEK).
    """

    def __init__(self, capacity: int = DEFAULT_RECEIVER_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self._entries: OrderedDict[tuple[str, str, bytes], AESGCM] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def kek(self, me_device: str, sender_device: str, wrapped: bytes) -> AESGCM | None:
        key = (me_device, sender_device, hashlib.sha256(wrapped).digest())
        with self._lock:
            aead = self._entries.get(key)
            if aead is None:
                self.misses += 1
                return None
            self.hits += 1
            self._entries.move_to_end(key)
            return aead

    def remember(self, me_device: str, sender_device: str, wrapped: bytes, aead: AESGCM) -> None:
        key = (me_device, sender_device, hashlib.sha256(wrapped).digest())
        with self._lock:
            self._entries[key] = aead
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def forget_sender(self, sender_device: str) -> None:
        """Drop every session of a sender device (revoked): its next envelope costs an RSA operation."""
        with self._lock:
            for key in [k for k in self._entries if k[1] == sender_device]:
                del self._entries[key]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"UnwrapCache({len(self._entries)} sessions, {self.hits} hits, {self.misses} misses)"


def recover_kek(keys: DeviceKeys, wrapped: bytes, sender_device: str, me_device: str) -> AESGCM:
    """RSA-unwrap S (DecryptionFailed on any fault) and derive this direction's KEK."""
    return AESGCM(derive_kek(unwrap_key(keys, wrapped), sender_device, me_device))


__all__ = [
    "DEFAULT_MAX_AGE_S",
    "DEFAULT_MAX_MESSAGES",
    "SenderSession",
    "SessionKeyCache",
    "UnwrapCache",
    "derive_kek",
    "new_session",
    "recover_kek",
]
