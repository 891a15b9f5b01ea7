"""idempotency key on prompt sets (migrations and streaming writes rerun as no-ops)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 14:05:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("prompt_sets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(batch_op.f("uq_prompt_sets_idempotency_key"), ["idempotency_key"])


def downgrade() -> None:
    with op.batch_alter_table("prompt_sets", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_prompt_sets_idempotency_key"), type_="unique")
        batch_op.drop_column("idempotency_key")
