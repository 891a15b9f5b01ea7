"""migration plans and their steps

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01 13:45:00

* ``migration_plans``: a plan made by the planner (``prompt_registry/planning``): the target
  model and task, the strategy asked for and the kind chosen, its inputs (enough to plan it again),
  its estimate, its status and the lease of a process running it.
* ``migration_plan_steps``: its steps in order (reuse a stored adapter, fit one, or retrain), each
  with a status and the run that executed it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "migration_plans",
        sa.Column("id", BigId, nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=False),
        sa.Column("target_model_id", sa.Integer(), nullable=False),
        sa.Column("strategy", sa.String(length=20), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("inputs", sa.JSON(), nullable=False),
        sa.Column("estimate", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("lease_token", sa.String(length=100), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('planned', 'running', 'done', 'failed')", name=op.f("ck_migration_plans_status")),
        sa.ForeignKeyConstraint(["target_model_id"], ["base_models.id"], name=op.f("fk_migration_plans_target_model_id_base_models")),
        sa.ForeignKeyConstraint(["task_id"], ["tasks.id"], name=op.f("fk_migration_plans_task_id_tasks")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_migration_plans")),
    )
    op.create_table(
        "migration_plan_steps",
        sa.Column("plan_id", BigId, nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("run_id", BigId, nullable=True),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.CheckConstraint("status IN ('pending', 'running', 'done', 'failed')", name=op.f("ck_migration_plan_steps_status")),
        sa.ForeignKeyConstraint(["plan_id"], ["migration_plans.id"], name=op.f("fk_migration_plan_steps_plan_id_migration_plans")),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], name=op.f("fk_migration_plan_steps_run_id_runs")),
        sa.PrimaryKeyConstraint("plan_id", "position", name=op.f("pk_migration_plan_steps")),
    )


def downgrade() -> None:
    op.drop_table("migration_plan_steps")
    op.drop_table("migration_plans")
