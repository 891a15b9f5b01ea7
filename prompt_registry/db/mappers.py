"""Catalogue rows -> the frozen entities callers get (ORM rows never leave the services)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from .._util import aware, batched
from ..entities import Alias, Artifact, Evaluation, ModelInfo, PromptSet, Run, Task
from .schema import (
    AliasRow,
    ArtifactRow,
    ArtifactSourceRow,
    BaseModelRow,
    EvaluationRow,
    PromptSetParentRow,
    PromptSetRow,
    RunRow,
    TagRow,
    TaskRow,
    UserMetricRow,
    UserRow,
)


def model_entity(row: BaseModelRow) -> ModelInfo:
    return ModelInfo(
        id=row.id, name=row.name, source=row.source, revision=row.revision,
        architecture=row.architecture, model_type=row.model_type, hidden_size=row.hidden_size,
        vocab_size=row.vocab_size, fingerprint=row.fingerprint, files=dict(row.files),
        created_at=aware(row.created_at), created_by=row.created_by,
    )


def task_entity(row: TaskRow) -> Task:
    return Task(id=row.id, name=row.name, kind=row.kind, created_at=aware(row.created_at))


def set_entities(session: Session, rows: Sequence[PromptSetRow]) -> list[PromptSet]:
    if not rows:
        return []
    ids = [r.id for r in rows]
    names = {
        "model": dict(session.execute(select(BaseModelRow.id, BaseModelRow.name)).all()),
        "task": dict(session.execute(select(TaskRow.id, TaskRow.name)).all()),
    }
    parents: dict[int, list[int]] = {}
    aliases: dict[int, list[str]] = {}
    tags: dict[int, dict[str, str | None]] = {}
    for chunk in batched(ids):
        for set_id, parent_id in session.execute(
            select(PromptSetParentRow.set_id, PromptSetParentRow.parent_id)
            .where(PromptSetParentRow.set_id.in_(chunk))
            .order_by(PromptSetParentRow.set_id, PromptSetParentRow.position)
        ):
            parents.setdefault(set_id, []).append(parent_id)
        for set_id, name in session.execute(select(AliasRow.set_id, AliasRow.name).where(AliasRow.set_id.in_(chunk)).order_by(AliasRow.name)):
            aliases.setdefault(set_id, []).append(name)
        for set_id, name, value in session.execute(select(TagRow.set_id, TagRow.name, TagRow.value).where(TagRow.set_id.in_(chunk)).order_by(TagRow.name)):
            tags.setdefault(set_id, {})[name] = value
    return [
        PromptSet(
            id=r.id, model=names["model"][r.model_id], task=names["task"][r.task_id],
            version=r.version, base_id=r.base_id, parents=tuple(parents.get(r.id, ())),
            prompt_len=r.prompt_len, width=r.width, dtype=r.dtype, n_users=r.n_users,
            n_rows=r.n_rows, store_key=r.store_key, sha256=r.sha256, status=r.status,
            run_id=r.run_id, adapter_id=r.adapter_id, head_id=r.head_id, note=r.note,
            created_at=aware(r.created_at), created_by=r.created_by,
            aliases=tuple(aliases.get(r.id, ())), tags=tags.get(r.id, {}),
        )
        for r in rows
    ]


def alias_entity(session: Session, row: AliasRow) -> Alias:
    return Alias(
        name=row.name, model=session.get_one(BaseModelRow, row.model_id).name,
        task=session.get_one(TaskRow, row.task_id).name, set_id=row.set_id,
        updated_at=aware(row.updated_at), updated_by=row.updated_by,
    )


def artifact_entity(session: Session, row: ArtifactRow) -> Artifact:
    sources = session.scalars(
        select(BaseModelRow.name).join(ArtifactSourceRow, ArtifactSourceRow.model_id == BaseModelRow.id)
        .where(ArtifactSourceRow.artifact_id == row.id).order_by(ArtifactSourceRow.position)
    ).all()
    return Artifact(
        id=row.id, kind=row.kind, name=row.name, version=row.version,
        task=session.get_one(TaskRow, row.task_id).name,
        target_model=session.get_one(BaseModelRow, row.target_model_id).name,
        target_fingerprint=row.target_fingerprint, source_models=tuple(sources),
        source_fingerprints=tuple(row.source_fingerprints), config=dict(row.config),
        store_key=row.store_key, sha256=row.sha256, nbytes=row.nbytes, run_id=row.run_id,
        created_at=aware(row.created_at), created_by=row.created_by,
    )


def evaluation_entity(session: Session, row: EvaluationRow, *, with_users: bool) -> Evaluation:
    per_user: dict[str, dict[str, float]] | None = None
    if with_users:
        per_user = {}
        # the driver's cursor in the session's transaction: SQLAlchemy's rows cost more than the
        # query (100,000 users x 2 metrics; the web UI's migration page reads two such evaluations)
        dbapi = session.connection().connection.dbapi_connection
        assert dbapi is not None  # None only for a connection that was invalidated
        cursor = dbapi.cursor()
        try:
            cursor.execute(f"SELECT u.external_id, m.metric, m.value FROM {UserMetricRow.__tablename__} m "
                           f"JOIN {UserRow.__tablename__} u ON u.id = m.user_id "
                           f"WHERE m.evaluation_id = {int(row.id)}")  # an integer from the catalogue, inlined
            rows = cursor.fetchall()
        finally:
            cursor.close()
        for ext, metric, value in rows:
            entry = per_user.get(ext)
            if entry is None:
                per_user[ext] = entry = {}
            entry[metric] = value
    return Evaluation(row.id, row.set_id, row.run_id, row.dataset, row.split, dict(row.metrics),
                      aware(row.created_at), row.created_by, per_user)


def run_entity(session: Session, r: RunRow) -> Run:
    model = session.get_one(BaseModelRow, r.model_id).name if r.model_id else None
    task = session.get_one(TaskRow, r.task_id).name if r.task_id else None
    return Run(
        r.id, r.kind, r.status, model, task, dict(r.config), dict(r.seeds), aware(r.started_at),
        aware(r.finished_at), r.wall_seconds, r.device, r.examples_seen, r.forward_tokens,
        r.backward_tokens, dict(r.cost), r.actor, r.error,
    )
