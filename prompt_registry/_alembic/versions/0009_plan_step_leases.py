"""plan steps carry a worker lease (token, expiry, attempts)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 02:00:00

Workers (``prompt-registry worker``) share plans through the catalogue: each claims one runnable
step with ``SELECT ... FOR UPDATE SKIP LOCKED`` and holds it under a lease, ``lease_token``
naming the worker and ``lease_expires_at`` pushed forward by its heartbeat. A worker that dies
stops renewing; once the lease has expired another worker takes the step over. ``attempts``
counts the claims. Existing steps have no lease.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("migration_plan_steps") as batch:
        batch.add_column(sa.Column("lease_token", sa.String(200), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("migration_plan_steps") as batch:
        batch.drop_column("attempts")
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_token")
