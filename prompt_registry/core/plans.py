"""Migration plans in the catalogue: stored with their steps, read back as entities."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from sqlalchemy import bindparam, func, or_, select, text, update
from sqlalchemy.orm import Session, aliased

from .. import liveness, validation
from .._context import Context
from .._util import aware
from ..db import lookups
from ..db.engine import read_session, write_session
from ..db.schema import BaseModelRow, PlanRow, PlanStepRow, RunRow, TaskRow
from ..entities import Plan, PlanStep
from ..errors import ConflictError, UnknownPlanError


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _entity(session: Session, row: PlanRow) -> Plan:
    task = session.get(TaskRow, row.task_id)
    target = session.get(BaseModelRow, row.target_model_id)
    assert task is not None and target is not None  # foreign keys
    steps = session.scalars(select(PlanStepRow).where(PlanStepRow.plan_id == row.id).order_by(PlanStepRow.position)).all()
    return Plan(row.id, task.name, target.name, row.strategy, row.kind, tuple(_step(s) for s in steps), dict(row.estimate),
                dict(row.inputs), row.status, aware(row.created_at))


def _step(row: PlanStepRow) -> PlanStep:
    c = row.config
    return PlanStep(row.position, row.kind, tuple(c.get("sources", ())), c["target"], c.get("method"), c.get("adapter_id"),
                    dict(c.get("estimate", {})), row.status, row.run_id, dict(row.result or {}))


class PlanService:
    """Stores plans the planner made (``planning/``) and reads them back."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def save_plan(self, plan: Plan) -> Plan:
        """Store ``plan`` (its ``id`` is ignored) with its steps, pending; returns it with its id."""
        with write_session(self.ctx.engine) as session:
            task = lookups.task_row(session, plan.task)
            target = lookups.model_row(session, plan.target)
            row = PlanRow(task_id=task.id, target_model_id=target.id, strategy=plan.strategy, kind=plan.kind, status="planned",
                          inputs=_plain(plan.inputs), estimate=_plain(plan.estimate), created_at=self.ctx.now(), created_by=self.ctx.actor)
            session.add(row)
            session.flush()
            for step in plan.steps:
                config = {"sources": list(step.sources), "target": step.target, "method": step.method, "adapter_id": step.adapter_id,
                          "estimate": _plain(step.estimate)}
                session.add(PlanStepRow(plan_id=row.id, position=step.position, kind=step.kind, config=config, status="pending", result={}))
            session.flush()
            self.ctx.audit(session, "save_plan", "plan", row.id, {"task": plan.task, "target": plan.target, "kind": plan.kind,
                                                                  "steps": len(plan.steps)})
            return _entity(session, row)

    def get_plan(self, plan_id: int) -> Plan:
        """A stored plan with its steps and their status."""
        with read_session(self.ctx.engine) as session:
            row = session.get(PlanRow, validation.as_id(plan_id, "a plan id"))
            if row is None:
                raise UnknownPlanError(f"no migration plan with id {plan_id}; see `prompt-registry migrate plan list`")
            return _entity(session, row)

    def list_plans(self, *, task: str | None = None, target: str | None = None, limit: int = 100) -> list[Plan]:
        """Stored plans, newest first, optionally for one task and/or target model."""
        with read_session(self.ctx.engine) as session:
            stmt = select(PlanRow).order_by(PlanRow.id.desc()).limit(validation.count(limit, "limit", allow_none=False))
            if task is not None:
                stmt = stmt.where(PlanRow.task_id == lookups.task_row(session, task).id)
            if target is not None:
                stmt = stmt.where(PlanRow.target_model_id == lookups.model_row(session, target).id)
            return [_entity(session, r) for r in session.scalars(stmt)]

    # -- execution bookkeeping: the lease and the steps' status ---------------------------------
    def _lease_now(self, session: Session) -> dt.datetime:
        """The clock every lease is reckoned by: the database's on Postgres, so that workers on
        machines whose clocks disagree see the same expiries (a worker 40 s ahead took live
        60 s leases; one 40 s behind wrote renewals that looked expired already), this
        process's on SQLite (one machine)."""
        if session.get_bind().dialect.name == "postgresql":
            now = session.scalar(text("SELECT clock_timestamp()"))
            assert isinstance(now, dt.datetime)
            return now
        return self.ctx.now()

    def acquire(self, plan_id: int, run_id: int) -> Plan:
        """Take the plan's lease for run ``run_id`` (status ``running``). Refused with
        ``ConflictError`` while another live run holds it; a lease whose run finished or whose
        process is gone (``liveness``) is taken over."""
        me = liveness.current()
        with write_session(self.ctx.engine) as session:
            row = session.scalars(select(PlanRow).where(PlanRow.id == validation.as_id(plan_id, "a plan id")).with_for_update()).one_or_none()
            if row is None:
                raise UnknownPlanError(f"no migration plan with id {plan_id}; see `prompt-registry migrate plan list`")
            if row.status == "done":
                raise ConflictError(f"plan {plan_id} is done; its sets are in `migrate plan show {plan_id}`")
            now = self._lease_now(session)
            # the steps locked too: a worker claiming one now (it locks the step) is waited for, not missed
            steps = session.scalars(select(PlanStepRow).where(PlanStepRow.plan_id == row.id).order_by(PlanStepRow.position)
                                    .with_for_update()).all()
            leased = next((st for st in steps if st.status == "running" and st.lease_expires_at is not None
                           and aware(st.lease_expires_at) > now), None)
            if leased is not None:
                raise ConflictError(f"step {leased.position} of plan {plan_id} is being run by worker {leased.lease_token} (lease until "
                                    f"{aware(leased.lease_expires_at)}); the workers finish the plan, or rerun once that lease has expired")
            if row.lease_token is not None and row.lease_token != str(run_id):
                holder = session.get(RunRow, int(row.lease_token))
                live = holder is not None and holder.status == "running" and liveness.stale_reason(holder, self.ctx.now(), me=me) is None
                if live:
                    assert holder is not None
                    raise ConflictError(f"plan {plan_id} is being run by run {holder.id} (process {holder.pid} on {holder.host}); "
                                        "wait for it to finish, or rerun once it is gone: finished steps are never redone")
            for st in steps:  # a worker whose lease expired (stalled, not dead) can no longer renew or record its step
                if st.status == "running" and st.lease_token is not None:
                    st.lease_token, st.lease_expires_at = None, None
            row.lease_token, row.status = str(run_id), "running"
            row.lease_expires_at = now + dt.timedelta(seconds=liveness.STALE_AFTER_SECONDS)
            self.ctx.audit(session, "acquire_plan", "plan", row.id, {"run": run_id})
            return _entity(session, row)

    def release(self, plan_id: int, run_id: int, status: str) -> Plan:
        """Give the lease back, the plan ``done`` or ``failed`` (or the status it had, for a run
        that refused to go on)."""
        with write_session(self.ctx.engine) as session:
            row = session.get(PlanRow, plan_id)
            assert row is not None
            if row.lease_token == str(run_id):
                row.lease_token, row.lease_expires_at, row.status = None, None, status
            self.ctx.audit(session, "release_plan", "plan", row.id, {"run": run_id, "status": status})
            return _entity(session, row)

    def mark_step(self, plan_id: int, position: int, status: str, *, holder: int, run_id: int | None = None,
                  result: dict[str, Any] | None = None) -> None:
        """Record a step's status (``running``, ``done``, ``failed``), the run that executed it, what
        it made, for the plan run ``holder``, which must still hold the plan's lease: a plan run
        judged gone whose plan a worker took over gets ``ConflictError`` and records nothing."""
        with write_session(self.ctx.engine) as session:
            plan = session.scalars(select(PlanRow).where(PlanRow.id == plan_id).with_for_update()).one()
            if plan.lease_token != str(holder):
                raise ConflictError(f"plan {plan_id} is no longer held by run {holder} (taken over by "
                                    + (f"run {plan.lease_token}" if plan.lease_token else "the workers")
                                    + f"); step {position} was not recorded as {status}")
            step = session.get(PlanStepRow, (plan_id, position))
            assert step is not None
            step.status = status
            if run_id is not None:
                step.run_id = run_id
            if result is not None:
                step.result = _plain(result)
            self.ctx.audit(session, "plan_step", "plan", plan_id, {"position": position, "status": status, "run": run_id})

    # -- workers: step leases (``planning.worker``) ----------------------------------------------
    def _plan_lease_live(self, session: Session, plan: PlanRow) -> bool:
        """Whether a ``plan run`` process (the plan-level lease) is alive on ``plan``."""
        holder = session.get(RunRow, int(plan.lease_token)) if plan.lease_token and plan.lease_token.isdigit() else None
        return holder is not None and holder.status == "running" and liveness.stale_reason(holder, self.ctx.now(), me=liveness.current()) is None

    def claim_step(self, worker: str, lease_seconds: float, *, plan_id: int | None = None,
                   max_attempts: int | None = None) -> tuple[Plan, int, bool] | None:
        """Claim the first runnable step for ``worker``: pending, or running under a lease that
        has expired (its worker died), every earlier step of its plan done, the plan neither
        finished nor failed nor held by a live ``plan run`` process. ``SELECT ... FOR UPDATE SKIP
        LOCKED``: concurrent claimers never wait on each other and never get the same step. The
        step becomes ``running`` under a lease of ``lease_seconds``. Returns (plan, position,
        taken over from a dead worker) or ``None`` when nothing is runnable now. A step to be taken
        over that has had ``max_attempts`` claims already is failed instead (with its plan): its
        workers keep dying on it."""
        prior = aliased(PlanStepRow)
        blocked = select(prior.position).where(prior.plan_id == PlanStepRow.plan_id, prior.position < PlanStepRow.position,
                                               prior.status != "done").exists()
        stmt = (select(PlanStepRow, PlanRow).join(PlanRow, PlanRow.id == PlanStepRow.plan_id)
                .where(PlanRow.status.in_(("planned", "running")), PlanStepRow.status.in_(("pending", "running")),
                       or_(PlanStepRow.lease_expires_at.is_(None), PlanStepRow.lease_expires_at < bindparam("now")), ~blocked)
                .order_by(PlanStepRow.plan_id, PlanStepRow.position).limit(20)
                # the plan row locked too: a plan run acquiring the plan (it locks the plan, then its
                # steps) and a claim never both win; a plan row locked by either is skipped
                .with_for_update(of=(PlanStepRow, PlanRow), skip_locked=True))
        if plan_id is not None:
            stmt = stmt.where(PlanStepRow.plan_id == validation.as_id(plan_id, "a plan id"))
        with write_session(self.ctx.engine) as session:
            now = self._lease_now(session)
            for step, plan in session.execute(stmt, {"now": now}).all():
                if plan.lease_token is not None and self._plan_lease_live(session, plan):
                    continue
                if plan.lease_token is not None:  # a plan run that is gone: the workers take the plan over
                    plan.lease_token, plan.lease_expires_at = None, None
                taken_over = step.status == "running"
                if taken_over and max_attempts is not None and (step.attempts or 0) >= max_attempts:
                    error = (f"its worker stopped without finishing it {step.attempts} times (killed, out of memory, or lost its "
                             "lease); look at the workers' logs, then rerun it with `prompt-registry migrate run --plan "
                             f"{plan.id} --resume`")
                    step.status, step.lease_token, step.lease_expires_at, step.result = "failed", None, None, {"error": error}
                    plan.status = "failed"
                    self.ctx.audit(session, "plan_step", "plan", plan.id, {"position": step.position, "status": "failed",
                                                                            "worker": worker, "attempts": step.attempts})
                    continue
                step.status, step.lease_token = "running", worker
                step.lease_expires_at = now + dt.timedelta(seconds=lease_seconds)
                step.attempts = (step.attempts or 0) + 1
                if plan.status == "planned":
                    plan.status = "running"
                self.ctx.audit(session, "claim_step", "plan", plan.id, {"position": step.position, "worker": worker,
                                                                         "attempt": step.attempts, "taken_over": taken_over})
                session.flush()
                return _entity(session, plan), step.position, taken_over
        return None

    def steps_left(self, *, plan_id: int | None = None) -> int:
        """Steps not yet done in plans that are neither done nor failed (``plan_id``: of that plan)."""
        with read_session(self.ctx.engine) as session:
            stmt = (select(func.count()).select_from(PlanStepRow).join(PlanRow, PlanRow.id == PlanStepRow.plan_id)
                    .where(PlanRow.status.in_(("planned", "running")), PlanStepRow.status.in_(("pending", "running"))))
            if plan_id is not None:
                stmt = stmt.where(PlanStepRow.plan_id == plan_id)
            return int(session.scalar(stmt) or 0)

    def renew_step(self, plan_id: int, position: int, worker: str, lease_seconds: float) -> bool:
        """Push ``worker``'s lease on a step forward (its heartbeat); ``False`` if the lease is no
        longer ``worker``'s (it expired and another worker took the step over)."""
        with write_session(self.ctx.engine) as session:
            now = self._lease_now(session)
            done = session.execute(update(PlanStepRow).where(PlanStepRow.plan_id == plan_id, PlanStepRow.position == position,
                                                             PlanStepRow.lease_token == worker, PlanStepRow.status == "running")
                                   .values(lease_expires_at=now + dt.timedelta(seconds=lease_seconds)))
            return bool(done.rowcount)  # type: ignore[attr-defined]  # a CursorResult for an UPDATE

    def finish_step(self, plan_id: int, position: int, worker: str, status: str, *, run_id: int | None = None,
                    result: dict[str, Any] | None = None) -> bool:
        """Record the end of ``worker``'s step (``done`` or ``failed``) and free its lease; the plan
        is ``done`` after its last step, ``failed`` with a failed step. Compare-and-set on the
        lease: ``False`` (nothing recorded) when the step is no longer ``worker``'s, so a step
        completes once however many workers ran it."""
        with write_session(self.ctx.engine) as session:
            # the plan row first, then the step: the order acquire and mark_step lock them in (a
            # step locked first deadlocked with a plan run acquiring the plan)
            plan = session.scalars(select(PlanRow).where(PlanRow.id == plan_id).with_for_update()).one()
            step = session.scalars(select(PlanStepRow).where(PlanStepRow.plan_id == plan_id, PlanStepRow.position == position)
                                   .with_for_update()).one()
            if step.lease_token != worker or step.status != "running":
                return False
            step.status, step.lease_token, step.lease_expires_at = status, None, None
            if run_id is not None:
                step.run_id = run_id
            if result is not None:
                step.result = _plain(result)
            last = session.scalar(select(PlanStepRow.position).where(PlanStepRow.plan_id == plan_id).order_by(PlanStepRow.position.desc()).limit(1))
            if status == "failed" or (status == "done" and position == last):
                plan.status = status
            self.ctx.audit(session, "plan_step", "plan", plan_id, {"position": position, "status": status, "run": run_id, "worker": worker})
            return True
