"""pending prompt sets: a sharded write's catalogue rows go in with each shard

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 08:30:00

A sharded write (``write_prompt_shard``: ``migrate apply --shard``, torchrun ranks, workers) used to
insert every user's ``prompt_rows`` entry in the one commit after the last shard: 200,000 rows
were 0.4-0.9 s of serial work, and 10M rows a single transaction of minutes. Now the first shard
makes the set's row with status ``pending`` (no version yet), each shard inserts its own users'
rows once its bytes are durable, and the last one only checks the count and turns the row
``committed`` with the next version. Every reader already asks for ``committed`` sets, so a pending
set is invisible; ``gc`` removes one no shard has touched for the grace period.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("prompt_sets", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_prompt_sets_status"), type_="check")
        batch_op.create_check_constraint(batch_op.f("ck_prompt_sets_status"), "status IN ('pending', 'committed', 'deleted')")
        batch_op.alter_column("version", existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM prompt_rows WHERE set_id IN (SELECT id FROM prompt_sets WHERE status = 'pending')")
    op.execute("DELETE FROM purged_rows WHERE set_id IN (SELECT id FROM prompt_sets WHERE status = 'pending')")
    op.execute("DELETE FROM prompt_sets WHERE status = 'pending'")
    with op.batch_alter_table("prompt_sets", schema=None) as batch_op:
        batch_op.alter_column("version", existing_type=sa.Integer(), nullable=False)
        batch_op.drop_constraint(batch_op.f("ck_prompt_sets_status"), type_="check")
        batch_op.create_check_constraint(batch_op.f("ck_prompt_sets_status"), "status IN ('committed', 'deleted')")
