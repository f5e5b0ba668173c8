"""Abuse limits: look-alike usernames, retired device ids, blocks and the decline cool-down.

- `users.name_key`: the confusable skeleton of the name (store.names), unique. Existing accounts
  get theirs computed here; where two old names already share one, the later account's key is
  suffixed with its id so both keep working (only new look-alikes are refused).
- `retired_devices`: ids of devices whose account was deleted, never published again.
- `blocks` and `contact_cooldowns` (store.blocks).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from store.names import name_key

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("users", sa.Column("name_key", sa.String(length=128), nullable=True))
    conn = op.get_bind()
    seen: set[str] = set()
    for user_id, username in conn.execute(sa.text("SELECT id, username FROM users ORDER BY id")).all():
        key = name_key(username)
        if key in seen:
            key = f"{key}#{user_id}"
        seen.add(key)
        conn.execute(sa.text("UPDATE users SET name_key = :k WHERE id = :i"), {"k": key, "i": user_id})
    op.create_index("uq_users_name_key", "users", ["name_key"], unique=True)

    op.create_table(
        "retired_devices",
        sa.Column("device_id", sa.String(length=64), nullable=False),
        sa.Column(
            "retired_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("device_id", name=op.f("pk_retired_devices")),
    )
    op.create_table(
        "blocks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("blocker_id", sa.Integer(), nullable=False),
        sa.Column("blocked_id", sa.Integer(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("(CURRENT_TIMESTAMP)"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["blocked_id"], ["users.id"], name=op.f("fk_blocks_blocked_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["blocker_id"], ["users.id"], name=op.f("fk_blocks_blocker_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_blocks")),
        sa.UniqueConstraint("blocker_id", "blocked_id", name="uq_blocks_pair"),
    )
    with op.batch_alter_table("blocks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_blocks_blocked_id"), ["blocked_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_blocks_blocker_id"), ["blocker_id"], unique=False)
    op.create_table(
        "contact_cooldowns",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("asker_id", sa.Integer(), nullable=False),
        sa.Column("target_id", sa.Integer(), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["asker_id"], ["users.id"], name=op.f("fk_contact_cooldowns_asker_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["target_id"], ["users.id"], name=op.f("fk_contact_cooldowns_target_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_contact_cooldowns")),
        sa.UniqueConstraint("asker_id", "target_id", name="uq_contact_cooldowns_pair"),
    )
    with op.batch_alter_table("contact_cooldowns", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_contact_cooldowns_asker_id"), ["asker_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_contact_cooldowns_target_id"), ["target_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("contact_cooldowns", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_contact_cooldowns_target_id"))
        batch_op.drop_index(batch_op.f("ix_contact_cooldowns_asker_id"))
    op.drop_table("contact_cooldowns")
    with op.batch_alter_table("blocks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_blocks_blocker_id"))
        batch_op.drop_index(batch_op.f("ix_blocks_blocked_id"))
    op.drop_table("blocks")
    op.drop_table("retired_devices")
    op.drop_index("uq_users_name_key", table_name="users")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("name_key")
