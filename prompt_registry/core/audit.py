"""Audit queries: lineage, a user's history, alias timelines, run costs, blast radius, evaluation diffs.

The SQL lives in ``audit.queries``; each method here is one read-only unit of work.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.exc import DBAPIError

from .. import validation
from .._context import Context
from ..audit import queries, user_index
from ..audit.entities import AliasMove, BlastRadius, EvaluationDiff, Lineage, RunCost, UserHistory
from ..db import lookups
from ..db.engine import read_session, write_session
from ..db.schema import ArtifactRow
from ..entities import PromptSet
from ..errors import BusyError, UnknownAliasError, UnknownArtifactError


class AuditService:
    """Read-only questions about history: who made what from what, who it reached, what it cost."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # ------------------------------------------------------------------ queries
    def lineage(self, ref: int | str | PromptSet, *, down: bool = False, max_depth: int | None = None) -> Lineage:
        """Every ancestor (or, with ``down``, descendant) of a set through incremental bases and
        migration sources, with the run and adapter on each edge. A numeric id may name a deleted
        set. ``UnknownSetError`` if there is no such set."""
        with read_session(self.ctx.engine) as session:
            row = lookups.audited_set(session, self.ctx.caches.pair_ids, ref)
            return queries.lineage(session, row.id, down=down, max_depth=validation.count(max_depth, "max_depth"))

    def user_history(self, user: str) -> UserHistory:
        """All of a user's prompt versions across models and tasks (written or inherited through an
        incremental base), the run and adapter that made each, and every alias window that pointed
        at it. Works for deleted users (their history is then empty). ``UnknownUserError``."""
        with read_session(self.ctx.engine) as session:
            return queries.user_history(session, lookups.user_row(session, user))

    def alias_timeline(self, name: str, *, model: str | None = None, task: str | None = None) -> list[AliasMove]:
        """Every move of alias ``name`` with old and new versions, who, why, and until when it
        stood; oldest first. ``UnknownAliasError`` if it was never set."""
        with read_session(self.ctx.engine) as session:
            model_id = lookups.model_row(session, model).id if model is not None else None
            task_id = lookups.task_row(session, task).id if task is not None else None
            moves = queries.alias_timeline(session, name, model_id=model_id, task_id=task_id)
        if not moves:
            raise UnknownAliasError(f"alias {name!r} has never been set; see `prompt-registry alias list`")
        return moves

    def cost_summary(self, *, since: dt.datetime | dt.date | None = None, kind: str | None = None, group_by: str | None = None) -> list[RunCost]:
        """The runs' cost ledger summed (runs, wall time, examples, token passes), overall or per
        ``group_by`` = ``model``, ``task``, ``kind`` or ``month``; only runs started at or after
        ``since`` (a date means its UTC midnight) and of ``kind``. ``ConflictError`` for another
        ``group_by``."""
        if kind is not None:
            validation.label(kind, "run kind")
        if isinstance(since, dt.date) and not isinstance(since, dt.datetime):
            since = dt.datetime(since.year, since.month, since.day, tzinfo=dt.timezone.utc)
        elif since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=dt.timezone.utc)
        with read_session(self.ctx.engine) as session:
            return queries.cost_summary(session, since=since, kind=kind, group_by=group_by)

    def blast_radius(self, adapter: int | None = None, *, set: int | str | PromptSet | None = None, user_limit: int | None = 1000) -> BlastRadius:
        """Every set derived directly or transitively from an adapter (or from a set), and the
        users with a prompt written by one of them: their count, and the first ``user_limit`` of
        them in registration order (``None``: all). ``UnknownArtifactError``/``UnknownSetError``."""
        with read_session(self.ctx.engine) as session:
            set_id = None
            if set is not None:
                set_id = lookups.audited_set(session, self.ctx.caches.pair_ids, set).id
            elif adapter is not None:
                art = session.get(ArtifactRow, validation.as_id(adapter, "an adapter id"))
                if art is None or art.kind != "adapter":
                    raise UnknownArtifactError(f"no adapter with id {adapter}; see `prompt-registry adapter list`")
            limit = validation.count(user_limit, "user_limit")
            radius, built = queries.blast_radius(session, adapter_id=adapter if set is None else None, set_id=set_id, user_limit=limit)
        if built:  # the index entries just built: kept for the next query (a derived cache, see audit.user_index)
            try:
                with write_session(self.ctx.engine) as session:
                    user_index.save(session, built)
            except (DBAPIError, BusyError, OSError):
                pass  # a catalogue that may not (or cannot now) be written only loses the cache: the next query builds again
        return radius

    def diff_evaluations(self, set_a: int | str | PromptSet, set_b: int | str | PromptSet, *, split: str = "test",
                         dataset: str | None = None, metric: str | None = None, limit: int | None = 100) -> EvaluationDiff:
        """Per-user metric differences (B - A) between the newest evaluation of ``set_a`` on
        ``split`` (and ``dataset``) and ``set_b``'s newest on the same data set: per-metric
        summary and the ``limit`` largest per-user changes. ``NotFoundError`` if either set has
        no such evaluation."""
        with read_session(self.ctx.engine) as session:
            a, b = lookups.audited_set(session, self.ctx.caches.pair_ids, set_a), lookups.audited_set(session, self.ctx.caches.pair_ids, set_b)
            return queries.evaluation_diff(session, a.id, b.id, split=split, dataset=dataset, metric=metric, limit=validation.count(limit, "limit"))

