"""Runs with their configs, seeds and cost ledgers; evaluations; the audit log; stale runs."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from .. import liveness, validation
from .._context import Context
from .._util import aware, preview
from ..db import lookups, mappers
from ..db.engine import read_session, write_session
from ..db.schema import AuditEventRow, EvaluationRow, RunRow, UserMetricRow
from ..entities import AuditEvent, CostLedger, Evaluation, PromptSet, Run
from ..errors import ConflictError, InvalidArgumentError, NotFoundError, UnknownUserError


def stale_runs(runs: Sequence[RunRow], now: dt.datetime, me: liveness.ProcessIdentity, stale_after: float) -> list[tuple[RunRow, str]]:
    """The stale ones of ``runs`` (status ``running``), each with why (``liveness.stale_reason``)."""
    found = ((run, liveness.stale_reason(run, now, stale_after, me)) for run in runs)
    return [(run, why) for run, why in found if why is not None]


def close_stale_runs(ctx: Context, session: Session, runs: Sequence[RunRow], now: dt.datetime, me: liveness.ProcessIdentity,
                     stale_after: float, *, reason: str, dry_run: bool = False) -> list[int]:
    """Mark the stale ones of ``runs`` (status ``running``) failed; returns their ids."""
    stale = stale_runs(runs, now, me, stale_after)
    if not dry_run:
        for run, why in stale:
            run.status, run.finished_at = "failed", now
            run.error = f"stale: {why}; closed when {reason}"
            ctx.audit(session, "close_stale_run", "run", run.id, {"why": why, "closed_by": reason})
    return [run.id for run, _ in stale]


class RunService:
    """Runs (with their cost ledgers), evaluations and the audit log."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def start_run(self, kind: str, *, model: str | None = None, task: str | None = None,
                  config: Mapping[str, Any] | None = None, seeds: Mapping[str, Any] | None = None) -> Run:
        """Record the start of a run (training, migration, evaluation, ...) with its full config.

        The run records this process (host, pid) and beats while it is open, so that a run whose
        process dies is recognised as stale. Starting a run closes, as ``failed``, the stale runs
        of the same kind, model and task (a rerun after a crash).
        """
        validation.label(kind, "run kind")
        me = liveness.current()
        with write_session(self.ctx.engine) as session:
            model_id = lookups.model_row(session, model).id if model else None
            task_id = lookups.task_row(session, task).id if task else None
            now = self.ctx.now()
            earlier = session.scalars(select(RunRow).where(RunRow.status == "running", RunRow.kind == kind,
                                                           RunRow.model_id == model_id, RunRow.task_id == task_id)).all()
            close_stale_runs(self.ctx, session, earlier, now, me, liveness.STALE_AFTER_SECONDS, reason=f"a new {kind} run started")
            row = RunRow(
                kind=kind, status="running", model_id=model_id, task_id=task_id,
                config=json.loads(json.dumps(dict(config or {}), default=str)),
                seeds=dict(seeds or {}), started_at=now, actor=self.ctx.actor, cost={},
                host=me.host, pid=me.pid, process_token=me.token, heartbeat_at=now,
            )
            session.add(row)
            session.flush()
            self.ctx.audit(session, "start_run", "run", row.id, {"kind": kind, "host": me.host, "pid": me.pid})
            entity = mappers.run_entity(session, row)
        self.ctx.heartbeat.add(entity.id)
        return entity

    def finish_run(self, run_id: int, *, status: str = "succeeded", ledger: CostLedger | None = None,
                   error: str | None = None, results: Mapping[str, Any] | None = None) -> Run:
        """Close a run with its status, cost ledger, and results (stored in ``cost['results']``)."""
        if status not in ("succeeded", "failed"):
            raise InvalidArgumentError(f"a run finishes as 'succeeded' or 'failed', not {status!r}")
        run_id = validation.as_id(run_id, "a run id")
        self.ctx.heartbeat.discard(run_id)
        with write_session(self.ctx.engine) as session:
            row = lookups.run_row(session, run_id)
            if row.status != "running":
                raise ConflictError(f"run {run_id} already finished ({row.status})")
            row.status, row.finished_at, row.error = status, self.ctx.now(), error
            if ledger is not None:
                row.wall_seconds, row.device = ledger.wall_seconds, ledger.device
                row.examples_seen, row.forward_tokens, row.backward_tokens = ledger.examples_seen, ledger.forward_tokens, ledger.backward_tokens
            cost = dict(ledger.extra) if ledger is not None else {}
            if results is not None:
                cost["results"] = json.loads(json.dumps(dict(results), default=str))
            row.cost = cost
            self.ctx.audit(session, "finish_run", "run", row.id, {"status": status})
            session.flush()
            return mappers.run_entity(session, row)

    def get_run(self, run_id: int) -> Run:
        """A run (import, training, migration, ...) with its config and cost ledger."""
        with read_session(self.ctx.engine) as session:
            return mappers.run_entity(session, lookups.run_row(session, run_id))

    def list_runs(self, *, kind: str | None = None, limit: int = 100) -> list[Run]:
        """Runs, newest first, optionally of one kind."""
        with read_session(self.ctx.engine) as session:
            stmt = select(RunRow).order_by(RunRow.id.desc()).limit(validation.count(limit, "limit", allow_none=False))
            if kind is not None:
                stmt = stmt.where(RunRow.kind == validation.label(kind, "run kind"))
            return [mappers.run_entity(session, r) for r in session.scalars(stmt)]

    def record_evaluation(
        self, ref: int | str | PromptSet, *, dataset: str, split: str, metrics: Mapping[str, Any],
        per_user: Mapping[str, Mapping[str, float]] | None = None, run_id: int | None = None,
    ) -> Evaluation:
        """Store an evaluation of a set: overall ``metrics`` and optional per-user metric values."""
        per_user = per_user or {}
        with write_session(self.ctx.engine) as session:
            row = lookups.resolve_set(session, self.ctx.caches.pair_ids, ref)
            if run_id is not None:
                lookups.run_row(session, run_id)
            ids = lookups.user_ids(session, list(per_user), active_only=True)
            unknown = [u for u in per_user if u not in ids]
            if unknown:
                raise UnknownUserError(f"per-user metrics name unregistered user(s): {preview(unknown)}")
            evaluation = EvaluationRow(
                set_id=row.id, run_id=run_id, dataset=dataset, split=split,
                metrics=json.loads(json.dumps(dict(metrics), default=float)), created_at=self.ctx.now(), created_by=self.ctx.actor,
            )
            session.add(evaluation)
            session.flush()
            values = [
                {"evaluation_id": evaluation.id, "user_id": ids[user], "metric": metric, "value": float(value)}
                for user, user_metrics in per_user.items() for metric, value in user_metrics.items()
            ]
            if values:
                table = UserMetricRow.__table__
                assert isinstance(table, Table)  # typed FromClause by declarative; a mapped class's is a Table
                session.execute(table.insert(), values)
            self.ctx.audit(session, "record_evaluation", "evaluation", evaluation.id, {"set_id": row.id, "split": split, "metrics": evaluation.metrics})
            return mappers.evaluation_entity(session, evaluation, with_users=False)

    def get_evaluation(self, evaluation_id: int, *, per_user: bool = True) -> Evaluation:
        """An evaluation with (by default) its per-user metrics."""
        with read_session(self.ctx.engine) as session:
            row = session.get(EvaluationRow, validation.as_id(evaluation_id, "an evaluation id"))
            if row is None:
                raise NotFoundError(f"no evaluation with id {evaluation_id}")
            return mappers.evaluation_entity(session, row, with_users=per_user)

    def list_evaluations(self, ref: int | str | PromptSet | None = None, *, split: str | None = None) -> list[Evaluation]:
        """Evaluations (newest first), optionally of one set and/or split; without per-user values."""
        with read_session(self.ctx.engine) as session:
            stmt = select(EvaluationRow).order_by(EvaluationRow.id.desc())
            if ref is not None:
                stmt = stmt.where(EvaluationRow.set_id == lookups.resolve_set(session, self.ctx.caches.pair_ids, ref).id)
            if split is not None:
                stmt = stmt.where(EvaluationRow.split == split)
            return [mappers.evaluation_entity(session, r, with_users=False) for r in session.scalars(stmt)]

    def audit_events(self, *, object_kind: str | None = None, object_id: str | None = None, limit: int = 100) -> list[AuditEvent]:
        """The append-only audit log, newest first."""
        with read_session(self.ctx.engine) as session:
            stmt = select(AuditEventRow).order_by(AuditEventRow.id.desc()).limit(validation.count(limit, "limit", allow_none=False))
            if object_kind is not None:
                stmt = stmt.where(AuditEventRow.object_kind == object_kind)
            if object_id is not None:
                stmt = stmt.where(AuditEventRow.object_id == str(object_id))
            return [AuditEvent(r.id, aware(r.at), r.actor, r.action, r.object_kind, r.object_id, r.reason, dict(r.details)) for r in session.scalars(stmt)]
