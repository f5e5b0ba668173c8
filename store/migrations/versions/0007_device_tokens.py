"""Tokens per device (issue 15, "devices": a revoked device's tokens die at once).

`refresh_tokens.device_id` names the device a login was made for. Revoking that device revokes
its refresh tokens, and the access tokens issued from them are refused at once (they carry their
login's family; signalling.deps checks it on every call). Logins that named no device keep NULL:
their tokens stay the account's, as before.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 11:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("device_id", sa.String(length=64), nullable=True))
        batch_op.create_index(batch_op.f("ix_refresh_tokens_device_id"), ["device_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_refresh_tokens_device_id"))
        batch_op.drop_column("device_id")
