"""Prekeys: signed, last-resort and one-time prekeys per device (issue 14, PQXDH).

Revision ID: 0004
Revises: 0001
Create Date: 2026-12-01 08:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "prekeys",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.Integer(), nullable=False),
        sa.Column("key_id", sa.BigInteger(), nullable=False),
        sa.Column("public_key", sa.LargeBinary(length=1184), nullable=False),
        sa.Column("signature", sa.LargeBinary(length=64), nullable=False),
        sa.Column("signed_at", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_prekeys_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_prekeys")),
        sa.UniqueConstraint("device_id", "kind", "key_id", name="uq_prekeys_device_kind_key"),
    )
    with op.batch_alter_table("prekeys", schema=None) as batch_op:
        batch_op.create_index("ix_prekeys_device_kind_seq", ["device_id", "kind", "id"], unique=False)
        batch_op.create_index(batch_op.f("ix_prekeys_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("prekeys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_prekeys_user_id"))
        batch_op.drop_index("ix_prekeys_device_kind_seq")
    op.drop_table("prekeys")
