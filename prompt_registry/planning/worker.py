"""Workers that share stored plans through the catalogue (``prompt-registry worker``).

Any number of worker processes, on any machines that reach the same Postgres catalogue and tensor
store, execute the steps of stored plans. A worker loops:

1. **claim** the first runnable step (``PlanService.claim_step``: ``SELECT ... FOR UPDATE SKIP
   LOCKED``, so claimers never block each other nor get the same step). A step is runnable when
   every earlier step of its plan is done and it is pending, or running under an *expired* lease
   (its worker died). The claim sets a lease: the worker's token and an expiry ``lease_seconds``
   ahead;
2. **heartbeat**: a thread renews the lease every ``lease_seconds / 3``. A worker killed with
   SIGKILL stops renewing; when its lease has expired, another worker claims the step and
   executes it again (a killed fit resumes from its checkpoint when that worker sees it);
3. **execute** the step exactly as ``plan run`` does (``planning.execute``);
4. **finish**: compare-and-set on the lease. Only the holder of the lease records the step
   ``done``, so a step completes once however many workers ran it. A worker whose lease was
   taken over (it stalled longer than its lease) records nothing: the set it made stays a
   normal version outside the plan, and the report says so.

A worker exits when none of the plans it serves has a step left to run or to wait for, after
``max_steps`` steps, or after ``idle_exit_seconds`` without a claim. Steps of other workers that
are still running are waited for (they may die and need taking over), polling every
``poll_seconds``.

SQLite cannot share a catalogue between machines and has no ``SKIP LOCKED``: worker mode needs
Postgres (``ConflictError`` says so; ``plan run`` executes a plan in one process on SQLite).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any

from ..core.services import Services
from ..data.dataset import Dataset
from ..entities import WorkerReport
from ..errors import BusyError, ConflictError, InvalidArgumentError
from ..migration.config import MigrationConfig
from ..training.config import TrainConfig
from .execute import execute_step

_log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorkerConfig:
    """How a worker claims and holds steps."""

    lease_seconds: float = 60.0  # a dead worker's step is taken over this long after its last heartbeat
    poll_seconds: float = 5.0  # how often to look again when nothing is runnable yet
    max_steps: int | None = None  # exit after this many steps (None: until the work is done)
    idle_exit_seconds: float | None = None  # exit after this long without a claim (None: wait while work remains)
    # a step whose worker vanished this many times (killed by the host's OOM killer, a segfault)
    # is failed instead of handed to the next worker: a poison step would take down every worker
    max_attempts: int = 3

    def __post_init__(self) -> None:
        if not self.lease_seconds > 0 or not self.poll_seconds > 0:
            raise InvalidArgumentError(f"lease_seconds and poll_seconds must be positive (got {self.lease_seconds}, {self.poll_seconds})")
        if self.max_steps is not None and self.max_steps < 1:
            raise InvalidArgumentError(f"max_steps must be at least 1 (got {self.max_steps})")
        if self.max_attempts < 1:
            raise InvalidArgumentError(f"max_attempts must be at least 1 (got {self.max_attempts})")


def worker_token() -> str:
    """Names this worker in leases and audit events: host, pid and a random part."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


class _Heartbeat:
    """Renews one step's lease until stopped; remembers whether the lease was lost."""

    def __init__(self, services: Services, plan_id: int, position: int, worker: str, lease_seconds: float) -> None:
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(services, plan_id, position, worker, lease_seconds),
                                        name="prompt-registry-lease", daemon=True)
        self._thread.start()

    def _run(self, services: Services, plan_id: int, position: int, worker: str, lease_seconds: float) -> None:
        while not self._stop.wait(lease_seconds / 3):
            try:
                if not services.plans.renew_step(plan_id, position, worker, lease_seconds):
                    self.lost = True
                    _log.warning("worker %s lost its lease on step %d of plan %d", worker, position, plan_id)
                    return
            except Exception:  # noqa: BLE001 - a failed renewal is retried at the next beat; the lease outlives one miss
                _log.exception("lease renewal failed (retried)")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


FINISH_TRIES = 3


def _finish(services: Services, plan_id: int, position: int, worker: str, status: str, **kwargs: Any) -> bool:
    """``finish_step``, tried again when the catalogue reports itself busy (a lock timeout, a
    deadlock Postgres resolved by aborting us): the step's work is done, and a worker that died
    here would leave it unrecorded until its lease ran out and another worker redid it."""
    for attempt in range(1, FINISH_TRIES):
        try:
            return services.plans.finish_step(plan_id, position, worker, status, **kwargs)
        except BusyError:
            _log.warning("recording step %d of plan %d was refused as busy (attempt %d); trying again", position, plan_id, attempt)
            time.sleep(0.2 * attempt)
    return services.plans.finish_step(plan_id, position, worker, status, **kwargs)  # the last try: its BusyError is the caller's


def work(services: Services, data: str | os.PathLike[str] | Dataset, *, plan_id: int | None = None, config: MigrationConfig | None = None,
         train_config: TrainConfig | None = None, worker: WorkerConfig | None = None, device: str = "auto", precision: str | None = None,
         progress: bool = False) -> WorkerReport:
    """Run as one worker until the plans served (``plan_id``, or every stored plan) have nothing
    left to run (see the module docstring). Returns what this worker did."""
    if services.ctx.engine.dialect.name == "sqlite":
        raise ConflictError("worker mode needs a Postgres catalogue: SQLite has no SELECT ... FOR UPDATE SKIP LOCKED and cannot be "
                            "shared between machines; run a plan in one process with `prompt-registry migrate run --plan ID`, "
                            "or point --registry at a postgresql+psycopg:// URL")
    settings = worker or WorkerConfig()
    if plan_id is not None:
        services.plans.get_plan(plan_id)  # UnknownPlanError before any waiting
    dataset = Dataset.coerce(data)
    me = worker_token()
    started = time.monotonic()
    last_claim = started
    steps: list[dict[str, Any]] = []
    while settings.max_steps is None or len(steps) < settings.max_steps:
        claimed = services.plans.claim_step(me, settings.lease_seconds, plan_id=plan_id, max_attempts=settings.max_attempts)
        if claimed is None:
            if not services.plans.steps_left(plan_id=plan_id):
                break
            if settings.idle_exit_seconds is not None and time.monotonic() - last_claim >= settings.idle_exit_seconds:
                break
            time.sleep(settings.poll_seconds)
            continue
        last_claim = time.monotonic()
        plan, position, taken_over = claimed
        step = next(s for s in plan.steps if s.position == position)
        current: dict[str, int | None] = dict(plan.inputs.get("graph", {}).get("sets", {}))
        for s in plan.steps:
            if s.position < position:
                current[s.target] = int(s.result["set_id"])
        beat = _Heartbeat(services, plan.id, position, me, settings.lease_seconds)  # type: ignore[arg-type]  # stored plans have ids
        record: dict[str, Any] = {"plan_id": plan.id, "position": position, "kind": step.kind, "target": step.target, "taken_over": taken_over}
        try:
            try:
                result = execute_step(services, plan, step, current, dataset, config, train_config, device, progress, None, None, taken_over,
                                      precision)
            finally:  # whatever ends the step (a KeyboardInterrupt too, in a process that goes on): no more renewals
                beat.stop()
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            recorded = _finish(services, plan.id, position, me, "failed", result={"error": error})  # type: ignore[arg-type]
            steps.append({**record, "status": "failed", "error": error, "recorded": recorded})
            _log.error("step %d of plan %s failed: %s", position, plan.id, error)
            continue
        recorded = _finish(services, plan.id, position, me, "done", run_id=result["run_id"], result=result)  # type: ignore[arg-type]
        steps.append({**record, "status": "done" if recorded else "lost", "set_id": result["set_id"], "run_id": result["run_id"],
                      "recorded": recorded})
    return WorkerReport(me, tuple(steps), round(time.monotonic() - started, 3))
