"""Base models and tasks: registration by fingerprint, lookups, listings."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import select

from .. import validation
from .._context import Context
from ..db import lookups, mappers
from ..db.engine import read_session, write_session
from ..db.schema import BaseModelRow, TaskRow
from ..entities import ModelInfo, Task
from ..errors import ConflictError, InvalidArgumentError, ModelConflictError
from ..modelinfo import describe_model
from ..names import ALIAS_RE, NAME_RE, TASK_KINDS


class ModelService:
    """Base models (registered by fingerprint) and tasks."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def register_model(self, name: str, path: str | os.PathLike[str], *, revision: str | None = None, reason: str | None = None) -> ModelInfo:
        """Register a local model folder under ``name``, fingerprinting its config and weights.

        Idempotent for the same fingerprint; ``ModelConflictError`` if ``name`` is registered with
        other weights (register the new weights under a new name).
        """
        validation.text(revision, "revision")
        validation.text(reason, "reason")
        if not NAME_RE.match(name):
            raise InvalidArgumentError(f"invalid model name {name!r}: use letters, digits and . _ - / : (max 200)")
        desc = describe_model(path)
        with write_session(self.ctx.engine) as session:
            existing = session.scalars(select(BaseModelRow).where(BaseModelRow.name == name)).one_or_none()
            if existing is not None:
                if existing.fingerprint != desc.fingerprint:
                    raise ModelConflictError(
                        f"model {name!r} is registered with fingerprint {existing.fingerprint[:12]} "
                        f"(from {existing.source}), but {path} has {desc.fingerprint[:12]}: these are "
                        f"different weights. Register them under a new name, e.g. {name + '-v2'!r}"
                    )
                return mappers.model_entity(existing)
            row = BaseModelRow(
                name=name, source=str(Path(path).absolute()), revision=revision,
                architecture=desc.architecture, model_type=desc.model_type, hidden_size=desc.hidden_size,
                vocab_size=desc.vocab_size, fingerprint=desc.fingerprint, files=desc.files,
                created_at=self.ctx.now(), created_by=self.ctx.actor,
            )
            session.add(row)
            session.flush()
            self.ctx.audit(session, "register_model", "model", name, {"fingerprint": desc.fingerprint, "source": row.source}, reason)
            return mappers.model_entity(row)

    def get_model(self, name: str) -> ModelInfo:
        """A registered model by name (``UnknownModelError`` if none)."""
        with read_session(self.ctx.engine) as session:
            return mappers.model_entity(lookups.model_row(session, name))

    def list_models(self) -> list[ModelInfo]:
        """All registered models, by name."""
        with read_session(self.ctx.engine) as session:
            return [mappers.model_entity(r) for r in session.scalars(select(BaseModelRow).order_by(BaseModelRow.name))]

    def add_task(self, name: str, kind: str) -> Task:
        """Create a task (``rating`` or ``click``); idempotent when it exists with the same kind."""
        if kind not in TASK_KINDS:
            raise InvalidArgumentError(f"unknown task kind {kind!r}; use one of {', '.join(TASK_KINDS)}")
        if not ALIAS_RE.match(name):
            raise InvalidArgumentError(f"invalid task name {name!r}: start with a letter; letters, digits, . _ - (no '/')")
        with write_session(self.ctx.engine) as session:
            row = session.scalars(select(TaskRow).where(TaskRow.name == name)).one_or_none()
            if row is not None:
                if row.kind != kind:
                    raise ConflictError(f"task {name!r} exists with kind {row.kind!r}, not {kind!r}")
                return mappers.task_entity(row)
            row = TaskRow(name=name, kind=kind, created_at=self.ctx.now())
            session.add(row)
            session.flush()
            self.ctx.audit(session, "add_task", "task", name, {"kind": kind})
            return mappers.task_entity(row)

    def list_tasks(self) -> list[Task]:
        """All tasks, by name."""
        with read_session(self.ctx.engine) as session:
            return [mappers.task_entity(r) for r in session.scalars(select(TaskRow).order_by(TaskRow.name))]
