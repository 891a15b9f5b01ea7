"""catalogue id (store binding) and run liveness

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 10:40:00

* ``registry_info``: key/value facts about the catalogue. ``catalog_id`` (32 random hex digits,
  made here) is written into the tensor store the catalogue is bound to, and into every store key
  it writes, so that two registries can never share a store unnoticed and ``gc`` deletes only
  its own orphans.
* ``runs.host``, ``pid``, ``process_token``, ``heartbeat_at``: who runs a run, so that a run whose
  process was killed can be told from a live one (``doctor`` reports it, ``gc`` or a rerun closes
  it as failed).
"""

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    info = op.create_table(
        "registry_info",
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_registry_info")),
    )
    op.bulk_insert(info, [{"key": "catalog_id", "value": uuid.uuid4().hex}])
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("host", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("pid", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("process_token", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_at")
        batch_op.drop_column("process_token")
        batch_op.drop_column("pid")
        batch_op.drop_column("host")
    op.drop_table("registry_info")
