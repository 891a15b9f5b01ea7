"""purged rows record when their bytes were erased

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 17:10:00

A purge now commits the catalogue change first (the user's rows leave every set) and erases the
bytes after it; ``purged_rows.erased_at`` is set once the zeros are verified. A purge killed in
between leaves rows with ``erased_at`` NULL: invisible, reported by ``doctor`` as pending, and
erased by the next purge or ``gc``. Rows purged before this revision were erased before their
commit: their ``erased_at`` is their ``purged_at``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("purged_rows") as batch:
        batch.add_column(sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE purged_rows SET erased_at = purged_at")


def downgrade() -> None:
    with op.batch_alter_table("purged_rows") as batch:
        batch.drop_column("erased_at")
