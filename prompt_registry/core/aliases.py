"""Aliases (mutable pointers with an append-only, gap-free history) and tags."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .. import validation
from .._context import Context
from .._util import aware, echo
from ..db import lookups, mappers
from ..db.engine import read_session, write_session
from ..db.schema import AliasEventRow, AliasRow, BaseModelRow, PromptSetRow, TagRow, TaskRow
from ..entities import Alias, AliasEvent, PromptSet
from ..errors import ConflictError, InvalidArgumentError, UnknownAliasError
from ..names import ALIAS_RE, LATEST, VERSION_RE


def lock_or_create_alias(ctx: Context, session: Session, name: str, row: PromptSetRow) -> tuple[AliasRow, int | None]:
    """The alias row of ``name`` for the set's model and task, locked for this transaction,
    and the set it pointed at before (``None``: created now, pointing at ``row``).

    Creation is an ``INSERT ... ON CONFLICT DO NOTHING``: of two transactions creating the
    same new alias, the second waits for the first and then moves the alias it created,
    instead of failing on the unique key (Postgres; SQLite serialises writers anyway).
    """
    values = {"name": name, "model_id": row.model_id, "task_id": row.task_id, "set_id": row.id,
              "updated_at": ctx.now(), "updated_by": ctx.actor}
    locked = select(AliasRow).where(AliasRow.name == name, AliasRow.model_id == row.model_id,
                                    AliasRow.task_id == row.task_id).with_for_update()
    for _ in range(3):  # the conflicting row can vanish again (a concurrent delete_alias)
        created = lookups.insert_alias_if_absent(session, values)
        if created is not None:
            return session.get_one(AliasRow, created), None
        alias = session.scalars(locked).one_or_none()
        if alias is not None:
            return alias, alias.set_id
    raise ConflictError(f"alias {echo(name)} is being created and deleted concurrently; retry")


def move_alias(ctx: Context, session: Session, name: str, row: PromptSetRow, reason: str | None) -> AliasRow:
    if not ALIAS_RE.match(name) or name == LATEST or VERSION_RE.match(name):
        raise InvalidArgumentError(
            f"invalid alias name {echo(name)}: start with a letter, use letters, digits, . _ -; "
            "`latest` and `vN` are reserved"
        )
    alias, old = lock_or_create_alias(ctx, session, name, row)
    if old == row.id:
        return alias  # already there: no event
    if old is not None:
        alias.set_id, alias.updated_at, alias.updated_by = row.id, ctx.now(), ctx.actor
    session.add(AliasEventRow(name=name, model_id=row.model_id, task_id=row.task_id, old_set_id=old, new_set_id=row.id, at=ctx.now(),
                              actor=ctx.actor, reason=reason))
    ctx.audit(session, "set_alias", "alias", name, {"model_id": row.model_id, "task_id": row.task_id, "old_set_id": old, "new_set_id": row.id}, reason)
    session.flush()
    return alias


class AliasService:
    """Aliases (mutable pointers with an append-only history) and tags."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def set_alias(self, name: str, ref: int | str | PromptSet, *, reason: str | None = None) -> Alias:
        """Point alias ``name`` of the set's model and task at that set (history is kept)."""
        with write_session(self.ctx.engine) as session:
            row = lookups.resolve_set(session, self.ctx.caches.pair_ids, ref)
            return mappers.alias_entity(session, move_alias(self.ctx, session, name, row, reason))

    def get_alias(self, name: str, model: str, task: str) -> Alias:
        """Where alias ``name`` of ``model``/``task`` points (``UnknownAliasError`` if unset)."""
        with read_session(self.ctx.engine) as session:
            row = lookups.alias_row(session, name, model, task)
            return mappers.alias_entity(session, row)

    def delete_alias(self, name: str, model: str, task: str, *, reason: str | None = None) -> None:
        """Remove an alias (its history stays, ending with a deletion event)."""
        with write_session(self.ctx.engine) as session:
            row = lookups.alias_row(session, name, model, task, lock=True)
            session.add(AliasEventRow(name=name, model_id=row.model_id, task_id=row.task_id, old_set_id=row.set_id, new_set_id=None,
                                      at=self.ctx.now(), actor=self.ctx.actor, reason=reason))
            self.ctx.audit(session, "delete_alias", "alias", name, {"model": model, "task": task, "old_set_id": row.set_id}, reason)
            session.delete(row)

    def list_aliases(self, *, model: str | None = None, task: str | None = None) -> list[Alias]:
        """Current aliases, optionally of one model and/or task."""
        with read_session(self.ctx.engine) as session:
            stmt = select(AliasRow).order_by(AliasRow.name, AliasRow.model_id, AliasRow.task_id)
            if model is not None:
                stmt = stmt.where(AliasRow.model_id == lookups.model_row(session, model).id)
            if task is not None:
                stmt = stmt.where(AliasRow.task_id == lookups.task_row(session, task).id)
            return [mappers.alias_entity(session, r) for r in session.scalars(stmt)]

    def alias_history(self, name: str, *, model: str | None = None, task: str | None = None) -> list[AliasEvent]:
        """Every move of alias ``name`` (optionally of one model/task), oldest first."""
        with read_session(self.ctx.engine) as session:
            stmt = select(AliasEventRow).where(AliasEventRow.name == name).order_by(AliasEventRow.id)
            if model is not None:
                stmt = stmt.where(AliasEventRow.model_id == lookups.model_row(session, model).id)
            if task is not None:
                stmt = stmt.where(AliasEventRow.task_id == lookups.task_row(session, task).id)
            rows = session.scalars(stmt).all()
            if not rows:
                raise UnknownAliasError(f"alias {echo(name)} has never been set; see `prompt-registry alias list`")
            models = dict(session.execute(select(BaseModelRow.id, BaseModelRow.name)).all())
            tasks = dict(session.execute(select(TaskRow.id, TaskRow.name)).all())
            return [
                AliasEvent(r.id, r.name, models[r.model_id], tasks[r.task_id], r.old_set_id, r.new_set_id, aware(r.at), r.actor, r.reason)
                for r in rows
            ]

    def tag(self, ref: int | str | PromptSet, name: str, value: str | None = None) -> PromptSet:
        """Attach (or update) tag ``name`` on a set. Tags are mutable labels; versions are not."""
        validation.label(name, "tag name")
        validation.text(value, "tag value")
        with write_session(self.ctx.engine) as session:
            row = lookups.resolve_set(session, self.ctx.caches.pair_ids, ref)
            existing = session.get(TagRow, (row.id, name))
            if existing is None:
                session.add(TagRow(set_id=row.id, name=name, value=value, created_at=self.ctx.now(), created_by=self.ctx.actor))
            else:
                existing.value = value
            self.ctx.audit(session, "tag", "prompt_set", row.id, {"tag": name, "value": value})
            session.flush()
            return mappers.set_entities(session, [row])[0]

    def untag(self, ref: int | str | PromptSet, name: str) -> PromptSet:
        """Remove tag ``name`` from a set (a no-op if absent)."""
        with write_session(self.ctx.engine) as session:
            row = lookups.resolve_set(session, self.ctx.caches.pair_ids, ref)
            session.execute(delete(TagRow).where(TagRow.set_id == row.id, TagRow.name == name))
            self.ctx.audit(session, "untag", "prompt_set", row.id, {"tag": name})
            return mappers.set_entities(session, [row])[0]
