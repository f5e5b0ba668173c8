"""Devices get a name and a last-seen time (issue 15, "devices": list, rename, revoke); users
get a display name (issue 15, "names"), shown beside the username and chosen by its owner.

`name` is a label the owner chooses ("work laptop"); it is not part of the signed bundle, so a
rename never changes a key anyone pinned. `last_seen_at` is written when the device's socket comes
and goes (signalling/presence.py), beside the account's `users.last_seen`.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 09:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("display_name", sa.String(length=64), nullable=True))
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_column("last_seen_at")
        batch_op.drop_column("name")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("display_name")
