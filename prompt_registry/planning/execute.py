"""Running a stored plan step by step, resumably.

A ``plan`` run takes the plan's lease (a second process on the same plan is refused while the
first is alive; the lease of a dead one is taken over), then executes every step that is not
``done``, in order: ``reuse`` maps through the stored adapter (``apply_adapter``), ``fit`` runs the
step's method (``migrate``), ``retrain`` trains from scratch (``train_prompts``). Each step reads the
set the previous step made for its source model (the first reads the sets the plan saw), records
``running``, then ``done`` with its run and the set it made; a failure marks it ``failed``. Killed
or failed, a rerun resumes at the first unfinished step and never redoes a finished one. Every
intermediate set is a normal versioned set with lineage to its sources and adapter. A fit runs
with the plan's coverage policy and cold-start option (they replace those of the config given).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from .._util import echo
from ..core.services import Services
from ..data.dataset import Dataset
from ..entities import Plan, PlanStep
from ..errors import ConflictError, InvalidArgumentError
from ..migration.config import MigrationConfig
from ..migration.migrate import apply_adapter_run, migrate, resolve_sources
from ..migration.report import move_alias, quality_report
from ..training.config import TrainConfig
from ..training.trainer import train_prompts


def run_plan(services: Services, plan_id: int, data: str | os.PathLike[str] | Dataset, *, config: MigrationConfig | None = None,
             train_config: TrainConfig | None = None, device: str = "auto", alias: str | None = None, gate: float | None = None,
             resume: bool = False, progress: bool = False, precision: str | None = None) -> Plan:
    """Execute plan ``plan_id``'s unfinished steps (see the module docstring); returns the plan with
    every step's status and result. ``alias`` moves to the final set (through ``gate`` when the last
    step fits an adapter). ``ConflictError`` when another live process runs the plan, and when the
    plan was started before (killed, or a step failed) and ``resume`` is not given: ``resume``
    continues at the first unfinished step (a killed fit also continues from its adapter
    checkpoint); finished steps are never redone. Resuming a plan that is done returns it.
    ``precision`` (``TrainConfig.precision``), when given, is every step's: retrains and fits alike."""
    plan = services.plans.get_plan(plan_id)
    if resume and plan.status == "done":
        return plan  # resuming a finished plan (e.g. killed as it finished) has nothing left to do
    dataset = Dataset.coerce(data)
    run = services.runs.start_run("plan", model=plan.target, task=plan.task, config={"plan_id": plan.id, "steps": len(plan.steps),
                                                                                     "data": dataset.root, "alias": alias})
    current: dict[str, int | None] = dict(plan.inputs.get("graph", {}).get("sets", {}))
    step: PlanStep | None = None
    done_now: list[int] = []
    try:
        services.plans.acquire(plan_id, run.id)
        started = [s for s in plan.steps if s.status != "pending"]
        if started and not resume:
            services.plans.release(plan_id, run.id, plan.status)  # as it was: workers may be partway through it
            stop = next((s for s in plan.steps if s.status != "done"), started[-1])
            why = stop.result.get("error") if stop.status == "failed" and stop.result else None
            raise ConflictError(f"plan {plan_id} was started before and stopped at step {stop.position} ({stop.status}"
                                + (f": {why}" if why else "") + f"); rerun with --resume (resume=True) to continue at step "
                                f"{stop.position}: its {len([s for s in plan.steps if s.status == 'done'])} finished step(s) are never redone")
        for step in plan.steps:
            if step.status == "done":
                current[step.target] = int(step.result["set_id"])
                continue
            services.plans.mark_step(plan_id, step.position, "running", holder=run.id)
            last = step.position == plan.steps[-1].position
            result = execute_step(services, plan, step, current, dataset, config, train_config, device, progress,
                                  alias if last else None, gate if last else None, resume and step.status == "running", precision)
            current[step.target] = int(result["set_id"])
            services.plans.mark_step(plan_id, step.position, "done", holder=run.id, run_id=result["run_id"], result=result)
            done_now.append(step.position)
        step = None
        finished = services.plans.release(plan_id, run.id, "done")
        services.runs.finish_run(run.id, results={"plan_id": plan.id, "steps_run": done_now, "final_set": current.get(plan.target)})
        return finished
    except BaseException as exc:
        if step is not None:
            try:
                services.plans.mark_step(plan_id, step.position, "failed", holder=run.id, result={"error": f"{type(exc).__name__}: {exc}"})
            except ConflictError:
                pass  # the workers took the plan over: this run has nothing left to record
        if not isinstance(exc, ConflictError) or step is not None:
            services.plans.release(plan_id, run.id, "failed")
        services.runs.finish_run(run.id, status="failed", error=f"{type(exc).__name__}: {exc}", results={"steps_run": done_now})
        raise


def execute_step(services: Services, plan: Plan, step: PlanStep, current: dict[str, int | None], dataset: Dataset,
             config: MigrationConfig | None, train_config: TrainConfig | None, device: str, progress: bool,
             alias: str | None, gate: float | None, resume: bool, precision: str | None = None) -> dict[str, Any]:
    if precision is not None:  # the run's precision over the configs' own (the CLI's --precision, a worker's)
        train_config = dataclasses.replace(train_config or TrainConfig(), precision=precision)
        config = dataclasses.replace(config or MigrationConfig(method=step.method or "puma"), precision=precision)
    if step.kind == "retrain":
        trained = train_prompts(services, step.target, plan.task, dataset, config=train_config, device=device, progress=progress, alias=alias)
        return {"set_id": trained.set.id, "run_id": trained.run.id}
    missing = [m for m in step.sources if current.get(m) is None]
    if missing:
        raise ConflictError(f"step {step.position} of plan {plan.id} reads model(s) {', '.join(missing)}, which hold no prompt set")
    sources: list[str | int] = [int(current[m]) for m in step.sources]  # type: ignore[arg-type]  # None excluded just above
    if step.kind == "reuse":
        assert step.adapter_id is not None
        applied, apply_run = apply_adapter_run(services, step.adapter_id, sources=sources, device=device,
                                               alias=alias if gate is None else None, progress=progress)
        outcome = None
        if alias and gate is not None:  # the same gate a fit's alias goes through: the mapped set against its references
            source_sets = resolve_sources(services, sources, plan.task)
            report = quality_report(services, applied, source_sets, dataset, config or MigrationConfig(), device)
            outcome = move_alias(services, alias, applied, report, gate)
        return {"set_id": applied.id, "run_id": apply_run.id, "adapter_id": step.adapter_id,
                **({"mapped_before_by_run": applied.run_id} if applied.run_id != apply_run.id else {}),
                **({"alias": outcome} if outcome else {})}
    wanted = config or MigrationConfig(method=step.method or "puma")
    if step.method is not None and wanted.method != step.method:
        raise InvalidArgumentError(f"step {step.position} of plan {plan.id} fits with {echo(step.method)}; the config given is for {echo(wanted.method)}")
    request = plan.inputs.get("request", {})  # the plan's coverage policy rules (a plan stored before it had one: the config's)
    wanted = dataclasses.replace(wanted, coverage=request.get("coverage") or wanted.coverage,
                                 cold_start=request.get("cold_start") or wanted.cold_start)
    result = migrate(services, sources, step.target, plan.task, dataset, config=wanted, device=device, alias=alias,
                     gate=gate, evaluate=gate is not None, resume=resume, progress=progress)
    final = result.final
    return {"set_id": final.id, "run_id": result.run.id, "adapter_id": result.adapter.id,
            "alias": result.alias}
