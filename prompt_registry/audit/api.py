"""The audit part of the ``Registry`` facade: lineage, user history, alias timelines, run costs,
blast radius, evaluation diffs and per-user purge.

``Registry`` inherits ``AuditMixin``; each public method here is one unit of work on the
registry's engine, like every other ``Registry`` method. The SQL lives in ``queries``, the purge
in ``deletion`` and the retention rules (used by ``Registry.gc``) in ``retention``.
"""

from __future__ import annotations

import datetime as dt
import threading
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ..db.engine import read_session, write_session
from ..db.schema import ArtifactRow, PromptSetRow, UserRow
from ..errors import UnknownAliasError, UnknownArtifactError, UnknownSetError, UnknownUserError
from ..store.base import TensorStore
from . import deletion, queries
from .entities import AliasMove, BlastRadius, EvaluationDiff, Lineage, PurgeReport, RunCost, UserHistory

if TYPE_CHECKING:
    import collections

    from ..db.schema import BaseModelRow, TaskRow
    from ..entities import PromptSet
    from ..manifest import Manifest


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class AuditMixin:
    """Audit queries and per-user purge; mixed into ``Registry`` (which provides the attributes
    and helpers declared below)."""

    if TYPE_CHECKING:
        _engine: Engine
        _store: TensorStore
        _lock: threading.Lock
        _chains: dict[int, tuple[tuple[int, str | None], ...]]
        _manifests: collections.OrderedDict[int, Manifest]
        actor: str

        def _audit(self, session: Session, action: str, kind: str, obj: Any, details: dict[str, Any], reason: str | None = None) -> None: ...
        def _resolve_set(self, session: Session, ref: int | str | PromptSet, *, model: str | None = None, task: str | None = None) -> PromptSetRow: ...
        def _model_row(self, session: Session, name: str, *, lock: bool = False) -> BaseModelRow: ...
        def _task_row(self, session: Session, name: str) -> TaskRow: ...

    # ------------------------------------------------------------------ helpers
    def _audited_set(self, session: Session, ref: int | str | PromptSet) -> PromptSetRow:
        """Like ``_resolve_set``, but a numeric id may name a deleted set: audits cover history."""
        set_id = getattr(ref, "id", ref)
        if isinstance(set_id, int) or str(set_id).strip().isdigit():
            row = session.get(PromptSetRow, int(set_id))
            if row is None:
                raise UnknownSetError(f"no prompt set with id {set_id}; list them with `prompt-registry prompt list`")
            return row
        return self._resolve_set(session, ref)

    @staticmethod
    def _user_row(session: Session, user: str) -> UserRow:
        row = session.scalars(select(UserRow).where(UserRow.external_id == str(user))).one_or_none()
        if row is None:
            raise UnknownUserError(f"no user {user!r}; see `prompt-registry user list --include-deleted`")
        return row

    def _forget_cached_reads(self) -> None:
        """Drop cached manifests and chains: a purge (or retention) changes what versions resolve to."""
        with self._lock:
            self._manifests.clear()
            self._chains.clear()

    # ------------------------------------------------------------------ queries
    def lineage(self, ref: int | str | PromptSet, *, down: bool = False, max_depth: int | None = None) -> Lineage:
        """Every ancestor (or, with ``down``, descendant) of a set through incremental bases and
        migration sources, with the run and adapter on each edge. A numeric id may name a deleted
        set. ``UnknownSetError`` if there is no such set."""
        with read_session(self._engine) as session:
            row = self._audited_set(session, ref)
            return queries.lineage(session, row.id, down=down, max_depth=max_depth)

    def user_history(self, user: str) -> UserHistory:
        """All of a user's prompt versions across models and tasks (written or inherited through an
        incremental base), the run and adapter that made each, and every alias window that pointed
        at it. Works for deleted users (their history is then empty). ``UnknownUserError``."""
        with read_session(self._engine) as session:
            return queries.user_history(session, self._user_row(session, user))

    def alias_timeline(self, name: str, *, model: str | None = None, task: str | None = None) -> list[AliasMove]:
        """Every move of alias ``name`` with old and new versions, who, why, and until when it
        stood; oldest first. ``UnknownAliasError`` if it was never set."""
        with read_session(self._engine) as session:
            model_id = self._model_row(session, model).id if model is not None else None
            task_id = self._task_row(session, task).id if task is not None else None
            moves = queries.alias_timeline(session, name, model_id=model_id, task_id=task_id)
        if not moves:
            raise UnknownAliasError(f"alias {name!r} has never been set; see `prompt-registry alias list`")
        return moves

    def cost_summary(self, *, since: dt.datetime | dt.date | None = None, kind: str | None = None, group_by: str | None = None) -> list[RunCost]:
        """The runs' cost ledger summed (runs, wall time, examples, token passes), overall or per
        ``group_by`` = ``model``, ``task``, ``kind`` or ``month``; only runs started at or after
        ``since`` (a date means its UTC midnight) and of ``kind``. ``ConflictError`` for another
        ``group_by``."""
        if isinstance(since, dt.date) and not isinstance(since, dt.datetime):
            since = dt.datetime(since.year, since.month, since.day, tzinfo=dt.timezone.utc)
        elif since is not None and since.tzinfo is None:
            since = since.replace(tzinfo=dt.timezone.utc)
        with read_session(self._engine) as session:
            return queries.cost_summary(session, since=since, kind=kind, group_by=group_by)

    def blast_radius(self, adapter: int | None = None, *, set: int | str | PromptSet | None = None, user_limit: int | None = 1000) -> BlastRadius:
        """Every set derived directly or transitively from an adapter (or from a set), and the
        users with a prompt written by one of them: their count, and the first ``user_limit`` of
        them in registration order (``None``: all). ``UnknownArtifactError``/``UnknownSetError``."""
        with read_session(self._engine) as session:
            set_id = None
            if set is not None:
                set_id = self._audited_set(session, set).id
            elif adapter is not None:
                art = session.get(ArtifactRow, int(adapter))
                if art is None or art.kind != "adapter":
                    raise UnknownArtifactError(f"no adapter with id {adapter}; see `prompt-registry adapter list`")
            return queries.blast_radius(session, adapter_id=adapter if set is None else None, set_id=set_id, user_limit=user_limit)

    def diff_evaluations(self, set_a: int | str | PromptSet, set_b: int | str | PromptSet, *, split: str = "test",
                         dataset: str | None = None, metric: str | None = None, limit: int | None = 100) -> EvaluationDiff:
        """Per-user metric differences (B - A) between the newest evaluation of ``set_a`` on
        ``split`` (and ``dataset``) and ``set_b``'s newest on the same data set: per-metric
        summary and the ``limit`` largest per-user changes. ``NotFoundError`` if either set has
        no such evaluation."""
        with read_session(self._engine) as session:
            a, b = self._audited_set(session, set_a), self._audited_set(session, set_b)
            return queries.evaluation_diff(session, a.id, b.id, split=split, dataset=dataset, metric=metric, limit=limit)

    # ------------------------------------------------------------------ deletion
    def purge_user(self, user: str, *, reason: str | None = None, dry_run: bool = False) -> PurgeReport:
        """Delete a user everywhere: remove their prompt rows from every set (derived ones
        included), overwrite their rows in the store with zeros and verify the old bytes are gone,
        delete their per-user metrics, and mark them deleted. Every other user's data stays
        readable and checksum-valid. The audit log records the deletion (sets, row count, who,
        why), never the data. ``dry_run`` reports what would go and changes nothing.
        ``UnknownUserError`` if no such user; ``IntegrityError`` if the store kept the bytes."""
        now = utcnow()
        session_scope = read_session if dry_run else write_session
        with session_scope(self._engine) as session:
            row = self._user_row(session, user)
            report = deletion.purge_user(session, self._store, row, dry_run=dry_run, now=now)
            if not dry_run:
                self._audit(session, "purge_user", "user", row.external_id, {
                    "user_id": row.id, "sets": list(report.sets), "rows_zeroed": report.rows_zeroed,
                    "visible_in": list(report.visible_in), "metrics_removed": report.metrics_removed,
                }, reason)
        if not dry_run:
            self._forget_cached_reads()
        return report
