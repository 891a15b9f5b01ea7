"""The catalogue: SQLAlchemy 2 typed ORM models.

Rows never leave the ``db``/``registry`` layers: callers get frozen entities (``entities.py``).
Every change to these classes needs an Alembic revision in ``prompt_registry/_alembic/versions``;
``tests/test_schema.py`` fails when the ORM and the head revision disagree.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, DateTime, Float, ForeignKey, Index, Integer, LargeBinary, MetaData, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Explicit constraint names keep Alembic diffs stable across SQLite and Postgres.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY, so big ids map to INTEGER there.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Digest = LargeBinary(32)  # raw sha256


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class RegistryInfoRow(Base):
    """Facts about the catalogue itself; ``catalog_id`` names it in the store it is bound to."""

    __tablename__ = "registry_info"

    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class BaseModelRow(Base):
    __tablename__ = "base_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    source: Mapped[str] = mapped_column(Text)  # local path (or hub id) it was registered from
    revision: Mapped[str | None] = mapped_column(String(200))
    architecture: Mapped[str] = mapped_column(String(200))
    model_type: Mapped[str | None] = mapped_column(String(100))
    hidden_size: Mapped[int] = mapped_column(Integer)
    vocab_size: Mapped[int | None] = mapped_column(Integer)
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    files: Mapped[dict[str, Any]] = mapped_column(JSON)  # file name -> sha256 hex
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))


class TaskRow(Base):
    __tablename__ = "tasks"
    __table_args__ = (CheckConstraint("kind IN ('rating', 'click')", name="kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    kind: Mapped[str] = mapped_column(String(20))
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    external_id: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    deleted_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class RunRow(Base):
    __tablename__ = "runs"
    __table_args__ = (
        Index("ix_runs_kind_started_at", "kind", "started_at"),
        Index("ix_runs_started_at", "started_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(50))  # import | train | migrate | apply | eval | ...
    status: Mapped[str] = mapped_column(String(20))  # running | succeeded | failed
    model_id: Mapped[int | None] = mapped_column(ForeignKey("base_models.id"))
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id"))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    seeds: Mapped[dict[str, Any]] = mapped_column(JSON)
    started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    # Cost ledger: typed columns so audits can SUM them in SQL; the rest stays in `cost`.
    wall_seconds: Mapped[float | None] = mapped_column(Float)
    device: Mapped[str | None] = mapped_column(String(50))
    examples_seen: Mapped[int | None] = mapped_column(BigInteger)
    forward_tokens: Mapped[int | None] = mapped_column(BigInteger)
    backward_tokens: Mapped[int | None] = mapped_column(BigInteger)
    cost: Mapped[dict[str, Any]] = mapped_column(JSON)
    actor: Mapped[str] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)
    # Who runs it, to tell a live run from one whose process died (``runs.liveness``): the host,
    # the pid, a token naming that very process (boot id + start time: pids are reused), and the
    # last heartbeat of a live run.
    host: Mapped[str | None] = mapped_column(String(255))
    pid: Mapped[int | None] = mapped_column(Integer)
    process_token: Mapped[str | None] = mapped_column(String(100))
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class PromptSetRow(Base):
    """One immutable version of a model+task's prompts.

    A set physically holds only the rows it wrote (``store_key``); an incremental set names its
    ``base_id`` and resolves every other user through that chain (Iceberg-style snapshots).
    """

    __tablename__ = "prompt_sets"
    __table_args__ = (
        UniqueConstraint("model_id", "task_id", "version"),
        CheckConstraint("status IN ('pending', 'committed', 'deleted')", name="status"),
        Index("ix_prompt_sets_model_id_task_id_created_at", "model_id", "task_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"), index=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    # NULL only while ``pending`` (a sharded write whose shards are not all in: no reader sees
    # it); every committed or deleted set has its version, so the attribute is typed as one
    version: Mapped[int] = mapped_column(Integer, nullable=True)
    base_id: Mapped[int | None] = mapped_column(ForeignKey("prompt_sets.id"), index=True)
    prompt_len: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(20))
    n_users: Mapped[int] = mapped_column(BigInteger)  # users visible through this version
    n_rows: Mapped[int] = mapped_column(BigInteger)  # rows this version wrote itself
    store_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    # hash of the inputs that determine the rows (e.g. adapter + source sets): reruns are no-ops
    idempotency_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(20), default="committed")  # pending | committed | deleted
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True)
    adapter_id: Mapped[int | None] = mapped_column(ForeignKey("artifacts.id"), index=True)
    head_id: Mapped[int | None] = mapped_column(ForeignKey("artifacts.id"))
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))


class PromptSetParentRow(Base):
    """Lineage edges: ``role`` is ``base`` (incremental parent) or ``source`` (migration input)."""

    __tablename__ = "prompt_set_parents"
    __table_args__ = (
        CheckConstraint("role IN ('base', 'source')", name="role"),
        Index("ix_prompt_set_parents_parent_id", "parent_id"),
    )

    set_id: Mapped[int] = mapped_column(ForeignKey("prompt_sets.id"), primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("prompt_sets.id"), primary_key=True)
    role: Mapped[str] = mapped_column(String(20))
    position: Mapped[int] = mapped_column(Integer, default=0)


class PromptRowRow(Base):
    """One user's prompt as physically written by one set (row ``row_index`` of its array).

    On Postgres the two references are checked once per statement by triggers, not by per-row
    foreign keys (revision 0005: 100,000 per-row key-share locks cost ~1 s per import).
    """

    __tablename__ = "prompt_rows"
    __table_args__ = (Index("ix_prompt_rows_user_id_set_id", "user_id", "set_id"),)

    set_id: Mapped[int] = mapped_column(ForeignKey("prompt_sets.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    row_index: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[bytes] = mapped_column(Digest)


class PurgedRowRow(Base):
    """A row of a set's array whose user was purged: no ``prompt_rows`` entry, zeroed in the store.

    Arrays keep their shape after a purge, so ``prompt_sets.n_rows`` still counts every physical
    row; ``doctor`` expects each row to be either a catalogue row with a matching sha256 or a
    purged row of zeros.
    """

    __tablename__ = "purged_rows"

    set_id: Mapped[int] = mapped_column(ForeignKey("prompt_sets.id"), primary_key=True)
    row_index: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    purged_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # set once the row's bytes are zeroed and verified (after the purge's commit); NULL: pending
    erased_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class SetUserIndexRow(Base):
    """The users a set wrote catalogue rows for, as runs of consecutive user ids: a derived index
    (``audit.user_index``) that the blast radius unions instead of probing every user. Built on
    first use; stale (and rebuilt) once its count no longer equals the set's rows minus its purged
    rows. Dropping every row loses nothing but time."""

    __tablename__ = "set_user_index"

    set_id: Mapped[int] = mapped_column(ForeignKey("prompt_sets.id"), primary_key=True)
    n_users: Mapped[int] = mapped_column(BigInteger)
    runs: Mapped[bytes] = mapped_column(LargeBinary)  # little-endian int64 pairs [first id, last id + 1), sorted
    built_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AliasRow(Base):
    __tablename__ = "aliases"
    __table_args__ = (UniqueConstraint("name", "model_id", "task_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    set_id: Mapped[int] = mapped_column(ForeignKey("prompt_sets.id"), index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(200))


class AliasEventRow(Base):
    """Append-only history of alias moves (``new_set_id`` is NULL when the alias was deleted)."""

    __tablename__ = "alias_events"
    __table_args__ = (
        Index("ix_alias_events_name_model_id_task_id", "name", "model_id", "task_id"),
        Index("ix_alias_events_new_set_id", "new_set_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    old_set_id: Mapped[int | None] = mapped_column(ForeignKey("prompt_sets.id"))
    new_set_id: Mapped[int | None] = mapped_column(ForeignKey("prompt_sets.id"))
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)


class TagRow(Base):
    __tablename__ = "tags"
    __table_args__ = (Index("ix_tags_name", "name"),)

    set_id: Mapped[int] = mapped_column(ForeignKey("prompt_sets.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    value: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))


class ArtifactRow(Base):
    """Adapters (PUMA Phi) and task heads: versioned safetensors blobs bound to model fingerprints."""

    __tablename__ = "artifacts"
    __table_args__ = (
        UniqueConstraint("kind", "name", "version"),
        CheckConstraint("kind IN ('adapter', 'head')", name="kind"),
        Index("ix_artifacts_target_model_id_task_id", "target_model_id", "task_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    target_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    target_fingerprint: Mapped[str] = mapped_column(String(64))
    source_fingerprints: Mapped[list[Any]] = mapped_column(JSON)  # ordered, [] for heads
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    store_key: Mapped[str] = mapped_column(String(200), unique=True)
    sha256: Mapped[str] = mapped_column(String(64))
    nbytes: Mapped[int] = mapped_column(BigInteger)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))


class ArtifactSourceRow(Base):
    """Source models of an adapter, in input order (several for aggregated migrations)."""

    __tablename__ = "artifact_sources"

    artifact_id: Mapped[int] = mapped_column(ForeignKey("artifacts.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"), index=True)


class AuditEventRow(Base):
    """Append-only log of every write: who did what to which object, and why."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_object_kind_object_id", "object_kind", "object_id"),
        Index("ix_audit_events_at", "at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(50))
    object_kind: Mapped[str] = mapped_column(String(50))
    object_id: Mapped[str] = mapped_column(String(200))
    reason: Mapped[str | None] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)


class EvaluationRow(Base):
    """One evaluation of a prompt set on a data split (overall metrics; per-user in ``user_metrics``)."""

    __tablename__ = "evaluations"
    __table_args__ = (Index("ix_evaluations_set_id_split", "set_id", "split"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    set_id: Mapped[int] = mapped_column(ForeignKey("prompt_sets.id"))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"), index=True)
    dataset: Mapped[str] = mapped_column(Text)  # what was evaluated on (path or name + hash)
    split: Mapped[str] = mapped_column(String(50))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)  # overall: {"rmse": .., "mae": .., "n": ..}
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))


class UserMetricRow(Base):
    """Per-user metric values of an evaluation (long format: one row per user and metric)."""

    __tablename__ = "user_metrics"
    __table_args__ = (Index("ix_user_metrics_user_id", "user_id"),)

    evaluation_id: Mapped[int] = mapped_column(ForeignKey("evaluations.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    metric: Mapped[str] = mapped_column(String(50), primary_key=True)
    value: Mapped[float] = mapped_column(Float)


class PlanRow(Base):
    """A migration plan: its inputs (enough to plan it again), the steps' estimate, its status, and
    the lease of the process running it."""

    __tablename__ = "migration_plans"
    __table_args__ = (CheckConstraint("status IN ('planned', 'running', 'done', 'failed')", name="status"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    target_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    strategy: Mapped[str] = mapped_column(String(20))  # what was asked: auto | direct | chain | aggregate | retrain
    kind: Mapped[str] = mapped_column(String(20))  # what was chosen: direct | chain | aggregate | retrain
    status: Mapped[str] = mapped_column(String(20), default="planned")
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON)
    estimate: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
    lease_token: Mapped[str | None] = mapped_column(String(100))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class PlanStepRow(Base):
    """One step of a plan (fit or reuse an adapter and map, or retrain), in order, with its status
    and the run that executed it."""

    __tablename__ = "migration_plan_steps"
    __table_args__ = (CheckConstraint("status IN ('pending', 'running', 'done', 'failed')", name="status"),)

    plan_id: Mapped[int] = mapped_column(ForeignKey("migration_plans.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))  # reuse | fit | retrain
    config: Mapped[dict[str, Any]] = mapped_column(JSON)  # sources, target, method, adapter, estimate, why
    status: Mapped[str] = mapped_column(String(20), default="pending")
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    result: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # the set (and adapter) it made
    # the lease of the worker executing it (``prompt-registry worker``; revision 0009): who, until when (renewed by its heartbeat)
    lease_token: Mapped[str | None] = mapped_column(String(200))
    lease_expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
