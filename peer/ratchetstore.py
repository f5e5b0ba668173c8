"""The pairwise-session tables of the local store (sync functions, run on the store's thread).

Every function takes the open `sqlite3.Connection` of a `LocalStore.transaction`, so a caller
composes several of them (and its own message insert) into one all-or-nothing transaction. Every
secret (ratchet state, private prekeys, sent plaintexts kept for resending) is sealed at rest
under the keystore's storage key, with the row's identity as associated data so rows cannot be
swapped.
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass

from crypto.pairwise import PairwiseSession
from crypto.prekeys import PrekeyKind, PrekeyPair
from peer.localstore import LocalStore

MAX_SESSIONS_PER_DEVICE = 40  # older sessions stay readable for late mail (libsignal keeps 40)


def _session_aad(peer_device: str, session_id: bytes) -> bytes:
    return b"ratchet-session\x00" + peer_device.encode() + b"\x00" + session_id


def _prekey_aad(kind: int, key_id: int) -> bytes:
    return f"own-prekey\x00{kind}\x00{key_id}".encode()


def _sent_aad(peer_device: str, message_id: str) -> bytes:
    return f"ratchet-sent\x00{peer_device}\x00{message_id}".encode()


# --- sessions -------------------------------------------------------------------------------------


def load_session(
    store: LocalStore, db: sqlite3.Connection, peer_device: str, session_id: bytes
) -> PairwiseSession | None:
    row = db.execute(
        "SELECT state FROM ratchet_sessions WHERE peer_device = ? AND session_id = ?",
        (peer_device, session_id),
    ).fetchone()
    if row is None:
        return None
    return PairwiseSession.from_bytes(store.open_value(_session_aad(peer_device, session_id), row[0]))


def active_session_id(db: sqlite3.Connection, peer_device: str) -> bytes | None:
    row = db.execute("SELECT session_id FROM ratchet_active WHERE peer_device = ?", (peer_device,)).fetchone()
    return None if row is None else bytes(row[0])


def save_session(
    store: LocalStore, db: sqlite3.Connection, session: PairwiseSession, now_ms: int, *, make_active: bool
) -> None:
    sealed = store.seal_value(_session_aad(session.remote_device, session.session_id), session.to_bytes())
    db.execute(
        "INSERT INTO ratchet_sessions (peer_device, session_id, peer_user, state, created_ms, used_ms)"
        " VALUES (?,?,?,?,?,?) ON CONFLICT (peer_device, session_id) DO UPDATE SET state = excluded.state,"
        " used_ms = excluded.used_ms",
        (session.remote_device, session.session_id, session.remote_user, sealed, now_ms, now_ms),
    )
    if make_active:
        db.execute(
            "INSERT INTO ratchet_active (peer_device, session_id) VALUES (?, ?)"
            " ON CONFLICT (peer_device) DO UPDATE SET session_id = excluded.session_id",
            (session.remote_device, session.session_id),
        )
        # keep the newest few: late mail of an old session still opens, without growing forever
        db.execute(
            "DELETE FROM ratchet_sessions WHERE peer_device = ? AND session_id NOT IN ("
            " SELECT session_id FROM ratchet_sessions WHERE peer_device = ? ORDER BY used_ms DESC LIMIT ?)",
            (session.remote_device, session.remote_device, MAX_SESSIONS_PER_DEVICE),
        )


def drop_sessions(db: sqlite3.Connection, peer_device: str) -> None:
    db.execute("DELETE FROM ratchet_sessions WHERE peer_device = ?", (peer_device,))
    db.execute("DELETE FROM ratchet_active WHERE peer_device = ?", (peer_device,))


def prune_sessions(db: sqlite3.Connection, older_than_ms: int) -> int:
    """Forget sessions not used since `older_than_ms` that are not a device's active one."""
    return db.execute(
        "DELETE FROM ratchet_sessions WHERE used_ms < ? AND (peer_device, session_id) NOT IN"
        " (SELECT peer_device, session_id FROM ratchet_active)",
        (older_than_ms,),
    ).rowcount


# --- own prekeys ----------------------------------------------------------------------------------


def put_prekey(store: LocalStore, db: sqlite3.Connection, pair: PrekeyPair, now_ms: int) -> None:
    p = pair.public
    db.execute(
        "INSERT INTO own_prekeys (kind, key_id, record, created_ms) VALUES (?,?,?,?)",
        (int(p.kind), p.key_id, store.seal_value(_prekey_aad(p.kind, p.key_id), pair.to_bytes()), now_ms),
    )


def get_prekey(store: LocalStore, db: sqlite3.Connection, kind: PrekeyKind, key_id: int) -> PrekeyPair | None:
    row = db.execute(
        "SELECT record FROM own_prekeys WHERE kind = ? AND key_id = ?", (int(kind), key_id)
    ).fetchone()
    if row is None:
        return None
    return PrekeyPair.from_bytes(store.open_value(_prekey_aad(kind, key_id), row[0]))


def delete_prekey(db: sqlite3.Connection, kind: PrekeyKind, key_id: int) -> None:
    db.execute("DELETE FROM own_prekeys WHERE kind = ? AND key_id = ?", (int(kind), key_id))


@dataclass(frozen=True)
class PrekeyRow:
    kind: PrekeyKind
    key_id: int
    created_ms: int
    published: bool
    retired_ms: int | None


def prekey_rows(db: sqlite3.Connection) -> list[PrekeyRow]:
    return [
        PrekeyRow(PrekeyKind(k), i, c, bool(p), r)
        for k, i, c, p, r in db.execute(
            "SELECT kind, key_id, created_ms, published, retired_ms FROM own_prekeys ORDER BY kind, key_id"
        )
    ]


def mark_published(db: sqlite3.Connection, keys: list[tuple[PrekeyKind, int]]) -> None:
    db.executemany(
        "UPDATE own_prekeys SET published = 1 WHERE kind = ? AND key_id = ?", [(int(k), i) for k, i in keys]
    )


def retire_prekey(db: sqlite3.Connection, kind: PrekeyKind, key_id: int, now_ms: int) -> None:
    db.execute(
        "UPDATE own_prekeys SET retired_ms = ? WHERE kind = ? AND key_id = ? AND retired_ms IS NULL",
        (now_ms, int(kind), key_id),
    )


def new_prekey_id(db: sqlite3.Connection) -> int:
    """A random key id not used by any prekey of this device (random, so that the ids of two
    lineages of a store, such as a backup and the copy that ran on, do not overlap)."""
    while True:
        key_id = secrets.randbelow(2**32 - 1) + 1
        if db.execute("SELECT 1 FROM own_prekeys WHERE key_id = ?", (key_id,)).fetchone() is None:
            return key_id


# --- sent copies (for resending after a heal request) -------------------------------------------


def keep_sent(
    store: LocalStore,
    db: sqlite3.Connection,
    peer_user: int,
    peer_device: str,
    message_id: str,
    plaintext: bytes,
    now_ms: int,
) -> None:
    db.execute(
        "INSERT OR IGNORE INTO ratchet_sent (peer_device, message_id, peer_user, plaintext, created_ms)"
        " VALUES (?,?,?,?,?)",
        (
            peer_device,
            message_id,
            peer_user,
            store.seal_value(_sent_aad(peer_device, message_id), plaintext),
            now_ms,
        ),
    )


def to_resend(
    store: LocalStore, db: sqlite3.Connection, peer_device: str, have: tuple[str, ...] | list[str]
) -> list[tuple[str, bytes]]:
    """What a device that asked for healing may lack, in sending order: everything it did not
    acknowledge, and everything it does not list in `have` (the newest messages it still has
    from us) sent after the oldest of those it lists, which catches the gap a restore from an
    older copy leaves; with `have` empty (it has nothing from us: a lost store), everything kept."""
    rows = db.execute(
        "SELECT seq, message_id, plaintext, acked FROM ratchet_sent WHERE peer_device = ? ORDER BY seq",
        (peer_device,),
    ).fetchall()
    held = set(have)
    known = [seq for seq, mid, _, _ in rows if mid in held]
    after = min(known) if known else -1  # ids we no longer keep: resend all we keep that it lacks
    return [
        (mid, store.open_value(_sent_aad(peer_device, mid), blob))
        for seq, mid, blob, acked in rows
        if mid not in held and (not acked or seq > after)
    ]


def acknowledge(db: sqlite3.Connection, peer_device: str, message_ids: list[str]) -> int:
    return db.executemany(
        "UPDATE ratchet_sent SET acked = 1 WHERE peer_device = ? AND message_id = ?",
        [(peer_device, m) for m in message_ids],
    ).rowcount


def prune_sent(db: sqlite3.Connection, older_than_ms: int) -> int:
    return db.execute("DELETE FROM ratchet_sent WHERE created_ms < ?", (older_than_ms,)).rowcount


def newest_seen_from(db: sqlite3.Connection, peer_device: str, limit: int = 64) -> list[str]:
    """The ids of the newest messages received from a device, newest first (for a heal request)."""
    return [
        r[0]
        for r in db.execute(
            "SELECT message_id FROM seen WHERE sender_device = ? ORDER BY at_ms DESC, rowid DESC LIMIT ?",
            (peer_device, limit),
        )
    ]


# --- heal requests --------------------------------------------------------------------------------


def heal_requested(db: sqlite3.Connection, peer_device: str) -> tuple[bytes, int] | None:
    row = db.execute(
        "SELECT session_id, requested_ms FROM ratchet_heal WHERE peer_device = ?", (peer_device,)
    ).fetchone()
    return None if row is None else (bytes(row[0]), row[1])


def record_heal_request(db: sqlite3.Connection, peer_device: str, session_id: bytes, now_ms: int) -> None:
    db.execute(
        "INSERT INTO ratchet_heal (peer_device, session_id, requested_ms) VALUES (?,?,?)"
        " ON CONFLICT (peer_device) DO UPDATE SET session_id = excluded.session_id,"
        " requested_ms = excluded.requested_ms",
        (peer_device, session_id, now_ms),
    )


def clear_heal_request(db: sqlite3.Connection, peer_device: str) -> bool:
    return db.execute("DELETE FROM ratchet_heal WHERE peer_device = ?", (peer_device,)).rowcount == 1
