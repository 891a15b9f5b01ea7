"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28 13:22:58.350206
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('audit_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('action', sa.String(length=50), nullable=False),
    sa.Column('object_kind', sa.String(length=50), nullable=False),
    sa.Column('object_id', sa.String(length=200), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('details', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_events'))
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index('ix_audit_events_at', ['at'], unique=False)
        batch_op.create_index('ix_audit_events_object_kind_object_id', ['object_kind', 'object_id'], unique=False)

    op.create_table('base_models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('source', sa.Text(), nullable=False),
    sa.Column('revision', sa.String(length=200), nullable=True),
    sa.Column('architecture', sa.String(length=200), nullable=False),
    sa.Column('model_type', sa.String(length=100), nullable=True),
    sa.Column('hidden_size', sa.Integer(), nullable=False),
    sa.Column('vocab_size', sa.Integer(), nullable=True),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('files', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_base_models')),
    sa.UniqueConstraint('name', name=op.f('uq_base_models_name'))
    )
    with op.batch_alter_table('base_models', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_base_models_fingerprint'), ['fingerprint'], unique=False)

    op.create_table('tasks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('rating', 'click')", name=op.f('ck_tasks_kind')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tasks')),
    sa.UniqueConstraint('name', name=op.f('uq_tasks_name'))
    )
    op.create_table('users',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('external_id', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('external_id', name=op.f('uq_users_external_id'))
    )
    op.create_table('runs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=50), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=True),
    sa.Column('task_id', sa.Integer(), nullable=True),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('seeds', sa.JSON(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('wall_seconds', sa.Float(), nullable=True),
    sa.Column('device', sa.String(length=50), nullable=True),
    sa.Column('examples_seen', sa.BigInteger(), nullable=True),
    sa.Column('forward_tokens', sa.BigInteger(), nullable=True),
    sa.Column('backward_tokens', sa.BigInteger(), nullable=True),
    sa.Column('cost', sa.JSON(), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['model_id'], ['base_models.id'], name=op.f('fk_runs_model_id_base_models')),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_runs_task_id_tasks')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_runs'))
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index('ix_runs_kind_started_at', ['kind', 'started_at'], unique=False)
        batch_op.create_index('ix_runs_started_at', ['started_at'], unique=False)

    op.create_table('artifacts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('target_model_id', sa.Integer(), nullable=False),
    sa.Column('target_fingerprint', sa.String(length=64), nullable=False),
    sa.Column('source_fingerprints', sa.JSON(), nullable=False),
    sa.Column('config', sa.JSON(), nullable=False),
    sa.Column('store_key', sa.String(length=200), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('nbytes', sa.BigInteger(), nullable=False),
    sa.Column('run_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.CheckConstraint("kind IN ('adapter', 'head')", name=op.f('ck_artifacts_kind')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_artifacts_run_id_runs')),
    sa.ForeignKeyConstraint(['target_model_id'], ['base_models.id'], name=op.f('fk_artifacts_target_model_id_base_models')),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_artifacts_task_id_tasks')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_artifacts')),
    sa.UniqueConstraint('kind', 'name', 'version', name=op.f('uq_artifacts_kind_name_version')),
    sa.UniqueConstraint('store_key', name=op.f('uq_artifacts_store_key'))
    )
    with op.batch_alter_table('artifacts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_artifacts_run_id'), ['run_id'], unique=False)
        batch_op.create_index('ix_artifacts_target_model_id_task_id', ['target_model_id', 'task_id'], unique=False)

    op.create_table('artifact_sources',
    sa.Column('artifact_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['artifact_id'], ['artifacts.id'], name=op.f('fk_artifact_sources_artifact_id_artifacts')),
    sa.ForeignKeyConstraint(['model_id'], ['base_models.id'], name=op.f('fk_artifact_sources_model_id_base_models')),
    sa.PrimaryKeyConstraint('artifact_id', 'position', name=op.f('pk_artifact_sources'))
    )
    with op.batch_alter_table('artifact_sources', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_artifact_sources_model_id'), ['model_id'], unique=False)

    op.create_table('prompt_sets',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('base_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('prompt_len', sa.Integer(), nullable=False),
    sa.Column('width', sa.Integer(), nullable=False),
    sa.Column('dtype', sa.String(length=20), nullable=False),
    sa.Column('n_users', sa.BigInteger(), nullable=False),
    sa.Column('n_rows', sa.BigInteger(), nullable=False),
    sa.Column('store_key', sa.String(length=200), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('run_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('adapter_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('head_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('note', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.CheckConstraint("status IN ('committed', 'deleted')", name=op.f('ck_prompt_sets_status')),
    sa.ForeignKeyConstraint(['adapter_id'], ['artifacts.id'], name=op.f('fk_prompt_sets_adapter_id_artifacts')),
    sa.ForeignKeyConstraint(['base_id'], ['prompt_sets.id'], name=op.f('fk_prompt_sets_base_id_prompt_sets')),
    sa.ForeignKeyConstraint(['head_id'], ['artifacts.id'], name=op.f('fk_prompt_sets_head_id_artifacts')),
    sa.ForeignKeyConstraint(['model_id'], ['base_models.id'], name=op.f('fk_prompt_sets_model_id_base_models')),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], name=op.f('fk_prompt_sets_run_id_runs')),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_prompt_sets_task_id_tasks')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_prompt_sets')),
    sa.UniqueConstraint('model_id', 'task_id', 'version', name=op.f('uq_prompt_sets_model_id_task_id_version')),
    sa.UniqueConstraint('store_key', name=op.f('uq_prompt_sets_store_key'))
    )
    with op.batch_alter_table('prompt_sets', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_prompt_sets_adapter_id'), ['adapter_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_prompt_sets_base_id'), ['base_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_prompt_sets_model_id'), ['model_id'], unique=False)
        batch_op.create_index('ix_prompt_sets_model_id_task_id_created_at', ['model_id', 'task_id', 'created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_prompt_sets_run_id'), ['run_id'], unique=False)

    op.create_table('alias_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('old_set_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('new_set_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['model_id'], ['base_models.id'], name=op.f('fk_alias_events_model_id_base_models')),
    sa.ForeignKeyConstraint(['new_set_id'], ['prompt_sets.id'], name=op.f('fk_alias_events_new_set_id_prompt_sets')),
    sa.ForeignKeyConstraint(['old_set_id'], ['prompt_sets.id'], name=op.f('fk_alias_events_old_set_id_prompt_sets')),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_alias_events_task_id_tasks')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alias_events'))
    )
    with op.batch_alter_table('alias_events', schema=None) as batch_op:
        batch_op.create_index('ix_alias_events_name_model_id_task_id', ['name', 'model_id', 'task_id'], unique=False)
        batch_op.create_index('ix_alias_events_new_set_id', ['new_set_id'], unique=False)

    op.create_table('aliases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('model_id', sa.Integer(), nullable=False),
    sa.Column('task_id', sa.Integer(), nullable=False),
    sa.Column('set_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_by', sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(['model_id'], ['base_models.id'], name=op.f('fk_aliases_model_id_base_models')),
    sa.ForeignKeyConstraint(['set_id'], ['prompt_sets.id'], name=op.f('fk_aliases_set_id_prompt_sets')),
    sa.ForeignKeyConstraint(['task_id'], ['tasks.id'], name=op.f('fk_aliases_task_id_tasks')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_aliases')),
    sa.UniqueConstraint('name', 'model_id', 'task_id', name=op.f('uq_aliases_name_model_id_task_id'))
    )
    with op.batch_alter_table('aliases', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_aliases_set_id'), ['set_id'], unique=False)

    op.create_table('prompt_rows',
    sa.Column('set_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('user_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('row_index', sa.BigInteger(), nullable=False),
    sa.Column('sha256', sa.LargeBinary(length=32), nullable=False),
    sa.ForeignKeyConstraint(['set_id'], ['prompt_sets.id'], name=op.f('fk_prompt_rows_set_id_prompt_sets')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_prompt_rows_user_id_users')),
    sa.PrimaryKeyConstraint('set_id', 'user_id', name=op.f('pk_prompt_rows'))
    )
    with op.batch_alter_table('prompt_rows', schema=None) as batch_op:
        batch_op.create_index('ix_prompt_rows_user_id_set_id', ['user_id', 'set_id'], unique=False)

    op.create_table('prompt_set_parents',
    sa.Column('set_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('parent_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.CheckConstraint("role IN ('base', 'source')", name=op.f('ck_prompt_set_parents_role')),
    sa.ForeignKeyConstraint(['parent_id'], ['prompt_sets.id'], name=op.f('fk_prompt_set_parents_parent_id_prompt_sets')),
    sa.ForeignKeyConstraint(['set_id'], ['prompt_sets.id'], name=op.f('fk_prompt_set_parents_set_id_prompt_sets')),
    sa.PrimaryKeyConstraint('set_id', 'parent_id', name=op.f('pk_prompt_set_parents'))
    )
    with op.batch_alter_table('prompt_set_parents', schema=None) as batch_op:
        batch_op.create_index('ix_prompt_set_parents_parent_id', ['parent_id'], unique=False)

    op.create_table('tags',
    sa.Column('set_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('value', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(['set_id'], ['prompt_sets.id'], name=op.f('fk_tags_set_id_prompt_sets')),
    sa.PrimaryKeyConstraint('set_id', 'name', name=op.f('pk_tags'))
    )
    with op.batch_alter_table('tags', schema=None) as batch_op:
        batch_op.create_index('ix_tags_name', ['name'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('tags', schema=None) as batch_op:
        batch_op.drop_index('ix_tags_name')

    op.drop_table('tags')
    with op.batch_alter_table('prompt_set_parents', schema=None) as batch_op:
        batch_op.drop_index('ix_prompt_set_parents_parent_id')

    op.drop_table('prompt_set_parents')
    with op.batch_alter_table('prompt_rows', schema=None) as batch_op:
        batch_op.drop_index('ix_prompt_rows_user_id_set_id')

    op.drop_table('prompt_rows')
    with op.batch_alter_table('aliases', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_aliases_set_id'))

    op.drop_table('aliases')
    with op.batch_alter_table('alias_events', schema=None) as batch_op:
        batch_op.drop_index('ix_alias_events_new_set_id')
        batch_op.drop_index('ix_alias_events_name_model_id_task_id')

    op.drop_table('alias_events')
    with op.batch_alter_table('prompt_sets', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_prompt_sets_run_id'))
        batch_op.drop_index('ix_prompt_sets_model_id_task_id_created_at')
        batch_op.drop_index(batch_op.f('ix_prompt_sets_model_id'))
        batch_op.drop_index(batch_op.f('ix_prompt_sets_base_id'))
        batch_op.drop_index(batch_op.f('ix_prompt_sets_adapter_id'))

    op.drop_table('prompt_sets')
    with op.batch_alter_table('artifact_sources', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_artifact_sources_model_id'))

    op.drop_table('artifact_sources')
    with op.batch_alter_table('artifacts', schema=None) as batch_op:
        batch_op.drop_index('ix_artifacts_target_model_id_task_id')
        batch_op.drop_index(batch_op.f('ix_artifacts_run_id'))

    op.drop_table('artifacts')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index('ix_runs_started_at')
        batch_op.drop_index('ix_runs_kind_started_at')

    op.drop_table('runs')
    op.drop_table('users')
    op.drop_table('tasks')
    with op.batch_alter_table('base_models', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_base_models_fingerprint'))

    op.drop_table('base_models')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_events_object_kind_object_id')
        batch_op.drop_index('ix_audit_events_at')

    op.drop_table('audit_events')
