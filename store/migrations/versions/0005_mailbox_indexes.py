"""Mailbox: one index that answers "how much is queued for this device" without the table.

`pending_count` (the `ready` frame of every connect) filters on the device and on `expires_at`;
with only `ix_mailbox_device_seq` and `ix_mailbox_expires`, SQLite chose the expiry index and
counted every unexpired row of every device (measured in bench/mailbox.py: the cost grew with the
whole table, not with the device's backlog). `(recipient_device, expires_at, size)` makes both that
count and the quota's `usage` (SUM(size) per device) covering index range scans on SQLite and
PostgreSQL; docs/hub.md "Mailbox growth" shows the plans before and after.

On a large PostgreSQL mailbox this CREATE INDEX holds a write lock on the table while it builds;
an operator may build it beforehand with CREATE INDEX CONCURRENTLY under the same name.

Revision ID: 0005
Revises: 0001
Create Date: 2026-12-01 08:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("mailbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_mailbox_device_expires", ["recipient_device", "expires_at", "size"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("mailbox", schema=None) as batch_op:
        batch_op.drop_index("ix_mailbox_device_expires")
