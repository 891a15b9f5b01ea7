"""evaluations and per-user metrics

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 13:42:17.583653
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('evaluations',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('set_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('run_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('dataset', sa.Text(), nullable=False),
    sa.Column('split', sa.String(length=50), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_evaluations_run_id_runs')),
    sa.ForeignKeyConstraint(['set_id'], ['prompt_sets.id'], name=op.f('fk_evaluations_set_id_prompt_sets')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_evaluations'))
    )
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_evaluations_run_id'), ['run_id'], unique=False)
        batch_op.create_index('ix_evaluations_set_id_split', ['set_id', 'split'], unique=False)

    op.create_table('user_metrics',
    sa.Column('evaluation_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('user_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('metric', sa.String(length=50), nullable=False),
    sa.Column('value', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['evaluation_id'], ['evaluations.id'], name=op.f('fk_user_metrics_evaluation_id_evaluations')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_user_metrics_user_id_users')),
    sa.PrimaryKeyConstraint('evaluation_id', 'user_id', 'metric', name=op.f('pk_user_metrics'))
    )
    with op.batch_alter_table('user_metrics', schema=None) as batch_op:
        batch_op.create_index('ix_user_metrics_user_id', ['user_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('user_metrics', schema=None) as batch_op:
        batch_op.drop_index('ix_user_metrics_user_id')

    op.drop_table('user_metrics')
    with op.batch_alter_table('evaluations', schema=None) as batch_op:
        batch_op.drop_index('ix_evaluations_set_id_split')
        batch_op.drop_index(batch_op.f('ix_evaluations_run_id'))

    op.drop_table('evaluations')
