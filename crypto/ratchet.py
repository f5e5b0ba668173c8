"""The Double Ratchet (Signal's specification) over X25519, HKDF-SHA256 and HMAC-SHA256.

`RatchetState` is the state of one side of one session: root key, the DH ratchet key pairs,
sending and receiving chain keys and counters, and the skipped message keys (bounded by count and
by age, so a device that is offline for the mailbox's retention still reads what was queued).
It hands out message keys; encrypting with them is `crypto.pairwise`'s job. It is serialisable to
bytes (`to_bytes`/`from_bytes`) so the peer can store it in the same transaction as the message it
produced or consumed.

    KDF_RK(rk, dh) = HKDF-SHA256(salt = rk, ikm = dh, info = "PeerPost_Ratchet", 64) → (rk, ck)
    KDF_CK(ck)     = (HMAC-SHA256(ck, 0x02) → next ck, HMAC-SHA256(ck, 0x01) → message key)

One departure from the spec's pseudocode, not from its state machine: on receiving a new ratchet
key only the receiving half of the DH step runs; the sending half (a fresh key pair and the new
sending chain) runs at the next send. The same keys result, each side pays one DH per direction
change instead of two on receive, and a side that never answers never generates a key.

`receive_key` mutates the state even when the caller's decryption then fails; callers work on a
`copy()` and keep it only after the message authenticated (that is what `crypto.pairwise` does).
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import x25519

from ._codec import Reader
from ._kdf import hkdf_sha256, hmac_sha256
from .errors import MalformedSessionMessage, SessionError, StaleMessage, TooManySkipped

RATCHET_INFO = b"PeerPost_Ratchet"
MAX_SKIP = 1000  # message keys one incoming message may make us derive (DoS bound)
MAX_SKIPPED_KEYS = 2000  # kept per session; the oldest go first
MAX_SKIPPED_AGE_S = 30 * 24 * 3600  # the mailbox's default retention: older keys are useless
STATE_VERSION = 1
KEY_BYTES = 32


@dataclass(frozen=True)
class RatchetHeader:
    ratchet_key: bytes  # the sender's current ratchet public key
    previous_count: int  # PN: messages in the sender's previous sending chain
    number: int  # N: this message's index in its sending chain


def _kdf_rk(root_key: bytes, dh_out: bytes) -> tuple[bytes, bytes]:
    out = hkdf_sha256(dh_out, root_key, RATCHET_INFO, 64)
    return out[:32], out[32:]


def _kdf_ck(chain_key: bytes) -> tuple[bytes, bytes]:
    return hmac_sha256(chain_key, b"\x02"), hmac_sha256(chain_key, b"\x01")


def _dh(private: bytes, public: bytes) -> bytes:
    try:
        return x25519.X25519PrivateKey.from_private_bytes(private).exchange(
            x25519.X25519PublicKey.from_public_bytes(public)
        )
    except ValueError as e:
        raise SessionError("the peer's ratchet key is not a usable X25519 key") from e


def _new_pair() -> tuple[bytes, bytes]:
    k = x25519.X25519PrivateKey.generate()
    return k.private_bytes_raw(), k.public_key().public_bytes_raw()


class RatchetState:
    __slots__ = (
        "previous_count",
        "recv_chain",
        "recv_count",
        "remote",
        "root_key",
        "self_private",
        "self_public",
        "send_chain",
        "send_count",
        "send_step_due",
        "skipped",
    )  # fmt: skip

    def __init__(self) -> None:
        self.root_key = b""
        self.self_private = b""
        self.self_public = b""
        self.remote: bytes | None = None
        self.send_chain: bytes | None = None
        self.recv_chain: bytes | None = None
        self.send_count = 0
        self.recv_count = 0
        self.previous_count = 0
        self.send_step_due = False
        # (ratchet key, n) -> (message key, stored at unix s), oldest first
        self.skipped: OrderedDict[tuple[bytes, int], tuple[bytes, int]] = OrderedDict()

    def __repr__(self) -> str:  # never print key material
        return (
            f"RatchetState(sent={self.send_count}, received={self.recv_count}, skipped={len(self.skipped)})"
        )

    # --- set-up ---------------------------------------------------------------------------------

    @classmethod
    def initiator(
        cls, shared_secret: bytes, remote_ratchet_key: bytes, *, own_pair: tuple[bytes, bytes] | None = None
    ) -> RatchetState:
        """Alice: the responder's signed prekey is its first ratchet key. `own_pair` for vectors."""
        s = cls()
        s.self_private, s.self_public = own_pair or _new_pair()
        s.remote = remote_ratchet_key
        s.root_key, s.send_chain = _kdf_rk(shared_secret, _dh(s.self_private, remote_ratchet_key))
        return s

    @classmethod
    def responder(cls, shared_secret: bytes, own_private: bytes, own_public: bytes) -> RatchetState:
        """Bob: his signed prekey pair is his first ratchet key pair."""
        s = cls()
        s.root_key = shared_secret
        s.self_private, s.self_public = own_private, own_public
        return s

    def copy(self) -> RatchetState:
        c = RatchetState.__new__(RatchetState)
        for name in RatchetState.__slots__:
            setattr(c, name, getattr(self, name))
        c.skipped = OrderedDict(self.skipped)
        return c

    # --- sending --------------------------------------------------------------------------------

    def send_key(self) -> tuple[RatchetHeader, bytes]:
        """The header and message key of the next outgoing message (advances the sending chain)."""
        if self.send_step_due:
            assert self.remote is not None
            self.self_private, self.self_public = _new_pair()
            self.root_key, self.send_chain = _kdf_rk(self.root_key, _dh(self.self_private, self.remote))
            self.previous_count, self.send_count = self.send_count, 0
            self.send_step_due = False
        if self.send_chain is None:
            raise SessionError(
                "this session cannot send before it has received (responder without a message)"
            )
        header = RatchetHeader(self.self_public, self.previous_count, self.send_count)
        self.send_chain, message_key = _kdf_ck(self.send_chain)
        self.send_count += 1
        return header, message_key

    # --- receiving ------------------------------------------------------------------------------

    def receive_key(self, header: RatchetHeader, now_s: int) -> bytes:
        """The message key for `header` (mutates: call on a `copy()` until the message opened)."""
        self.prune(now_s)
        found = self.skipped.pop((header.ratchet_key, header.number), None)
        if found is not None:
            return found[0]
        if header.ratchet_key == self.remote:
            if header.number < self.recv_count:
                raise StaleMessage(
                    f"message {header.number} of this chain was already opened or its key expired"
                )
        else:
            self._skip(header.previous_count, now_s)
            self.remote = header.ratchet_key
            self.root_key, self.recv_chain = _kdf_rk(
                self.root_key, _dh(self.self_private, header.ratchet_key)
            )
            self.recv_count = 0
            self.send_step_due = True
        self._skip(header.number, now_s)
        assert self.recv_chain is not None
        self.recv_chain, message_key = _kdf_ck(self.recv_chain)
        self.recv_count += 1
        return message_key

    def _skip(self, until: int, now_s: int) -> None:
        if self.recv_chain is None:
            return
        if until - self.recv_count > MAX_SKIP:
            raise TooManySkipped(
                f"message is {until - self.recv_count} ahead of its chain; "
                f"at most {MAX_SKIP} keys are skipped"
            )
        assert self.remote is not None
        while self.recv_count < until:
            self.recv_chain, mk = _kdf_ck(self.recv_chain)
            self.skipped[(self.remote, self.recv_count)] = (mk, now_s)
            self.recv_count += 1
        while len(self.skipped) > MAX_SKIPPED_KEYS:
            self.skipped.popitem(last=False)

    def prune(self, now_s: int) -> None:
        """Forget skipped keys older than the bound (they are in insertion order)."""
        while self.skipped:
            (_, (_, at)) = next(iter(self.skipped.items()))
            if now_s - at <= MAX_SKIPPED_AGE_S:
                break
            self.skipped.popitem(last=False)

    # --- serialisation --------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        flags = (
            (self.remote is not None)
            | (self.send_chain is not None) << 1
            | (self.recv_chain is not None) << 2
            | self.send_step_due << 3
        )
        parts = [
            struct.pack(">BB", STATE_VERSION, flags),
            self.root_key,
            self.self_private,
            self.self_public,
            self.remote or b"",
            self.send_chain or b"",
            self.recv_chain or b"",
            struct.pack(">IIII", self.send_count, self.recv_count, self.previous_count, len(self.skipped)),
        ]
        for (key, n), (mk, at) in self.skipped.items():
            parts.append(key + struct.pack(">I", n) + mk + struct.pack(">Q", at))
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, data: bytes) -> RatchetState:
        try:
            r = Reader(data)
            if r.u8() != STATE_VERSION:
                raise ValueError("unknown ratchet state version")
            flags = r.u8()
            s = cls()
            s.root_key, s.self_private, s.self_public = r.take(32), r.take(32), r.take(32)
            s.remote = r.take(32) if flags & 1 else None
            s.send_chain = r.take(32) if flags & 2 else None
            s.recv_chain = r.take(32) if flags & 4 else None
            s.send_step_due = bool(flags & 8)
            s.send_count, s.recv_count, s.previous_count, skipped = (r.u32(), r.u32(), r.u32(), r.u32())
            if skipped > MAX_SKIPPED_KEYS:
                raise ValueError("too many skipped keys")
            for _ in range(skipped):
                key, n, mk, at = r.take(32), r.u32(), r.take(32), struct.unpack(">Q", r.take(8))[0]
                s.skipped[(key, n)] = (mk, at)
            if r.remaining():
                raise ValueError("trailing bytes")
        except ValueError as e:
            raise MalformedSessionMessage(f"stored ratchet state is damaged: {e}") from e
        return s
