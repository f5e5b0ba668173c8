"""Usernames as people see them: the key under which two names count as the same.

"Alice" and "alice" are one name to a person, and so are "paypal" and "paypaI" (capital I for a
small L) or "rnicrosoft" and "microsoft". The key is the Unicode TR39 (UTS #39) confusable
skeleton, case-folded, computed by the `disarm` library with TR39's digit classes (1/I/l, 0/O),
plus TR39's m → rn, which disarm's key leaves out on purpose (it is only wrong for ordinary text,
not for names). Two accounts may not share a key (a unique index on `users.name_key`).

The display name is kept exactly as registered; only the key is compared.
"""

from __future__ import annotations

import disarm


def name_key(username: str) -> str:
    return disarm.skeleton_key(username, digit_policy="tr39").replace("m", "rn")
