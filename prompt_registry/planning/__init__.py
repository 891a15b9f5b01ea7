"""Migration planning: the graph of models and adapters of a task (``graph.py``), what each edge
costs (``cost.py``), the planner (``planner.py``), and ``Planner``, what ``Registry.planner``
returns: plan (and store), run, show, list, draw."""

from __future__ import annotations

import builtins
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..core.services import Services
from ..entities import Plan
from .graph import build_graph, describe, to_dot, to_png
from .planner import STRATEGIES, PlanRequest, make_plan

if TYPE_CHECKING:
    from ..data.dataset import Dataset
    from ..entities import WorkerReport
    from ..migration.config import MigrationConfig
    from ..training.config import TrainConfig
    from .worker import WorkerConfig

__all__ = ["STRATEGIES", "PlanRequest", "Planner"]


class Planner:
    """Plans over the migration graph, stored in the catalogue (``Registry.planner``)."""

    def __init__(self, services: Services) -> None:
        self._s = services

    def plan(self, target: str, task: str, *, sources: Sequence[str] | None = None, strategy: str = "auto", via: str | None = None,
             max_hops: int = 3, reuse_only: bool = False, exclude: Sequence[str] = (), method: str = "puma",
             max_token_passes: int | None = None, quality_floor: float | None = None, coverage: str | None = None,
             cold_start: str | None = None, save: bool = True) -> Plan:
        """The cheapest plan to bring ``task``'s prompts to ``target`` under the constraints (see
        ``planning.planner``), stored with its steps (``save``) so that ``get`` and a run find it.
        ``coverage`` / ``cold_start`` (default: ``MigrationConfig``'s) say how its fits treat users
        on only some sources and users on none (``migration.coverage``). Raises ``NoPlanError`` saying what is missing when no path meets them."""
        request = PlanRequest(target, task, tuple(sources) if sources is not None else None, strategy, via, max_hops, reuse_only,
                              tuple(exclude), method, max_token_passes, quality_floor, coverage, cold_start)
        plan = make_plan(self._s, request)
        return self._s.plans.save_plan(plan) if save else plan

    def get(self, plan_id: int) -> Plan:
        """A stored plan with its steps and their status (``UnknownPlanError`` if none)."""
        return self._s.plans.get_plan(plan_id)

    def list(self, *, task: str | None = None, target: str | None = None, limit: int = 100) -> list[Plan]:
        """Stored plans, newest first."""
        return self._s.plans.list_plans(task=task, target=target, limit=limit)

    def run(self, plan_id: int, data: str | os.PathLike[str] | Dataset, *, config: MigrationConfig | None = None,
            train_config: TrainConfig | None = None, device: str = "auto", alias: str | None = None, gate: float | None = None,
            resume: bool = False, progress: bool = False, precision: str | None = None) -> Plan:
        """Execute a stored plan's steps in order under the plan's lease (``planning.execute``).
        ``ConflictError`` while another live process runs it, or when it was started before and
        ``resume`` is not given; ``resume`` continues at the first unfinished step, never redoing
        a finished one. ``precision``, when given, is every step's (``TrainConfig.precision``)."""
        from .execute import run_plan

        return run_plan(self._s, plan_id, data, config=config, train_config=train_config, device=device, alias=alias, gate=gate,
                        resume=resume, progress=progress, precision=precision)

    def work(self, data: str | os.PathLike[str] | Dataset, *, plan_id: int | None = None, config: MigrationConfig | None = None,
             train_config: TrainConfig | None = None, worker: WorkerConfig | None = None, device: str = "auto",
             progress: bool = False, precision: str | None = None) -> WorkerReport:
        """Run as one of any number of workers sharing the stored plans (``plan_id``: only that
        one) through a Postgres catalogue: claim runnable steps under leases with a heartbeat,
        execute them, take over the steps of dead workers (``planning.worker``). Returns when
        nothing is left to run. ``ConflictError`` on SQLite (multi-worker mode needs Postgres)."""
        from .worker import work

        return work(self._s, data, plan_id=plan_id, config=config, train_config=train_config, worker=worker, device=device,
                    progress=progress, precision=precision)

    def graph(self, task: str) -> dict[str, Any]:
        """The migration graph of ``task`` as JSON (models with users and aliases, stored adapters)."""
        return describe(build_graph(self._s, task))

    def dot(self, task: str, *, plan_id: int | None = None) -> str:
        """The graph as Graphviz text, the path of plan ``plan_id`` highlighted."""
        return to_dot(build_graph(self._s, task), self._path(plan_id))

    def png(self, task: str, path: str | os.PathLike[str], *, plan_id: int | None = None) -> None:
        """Draw the graph to ``path`` (matplotlib), the path of plan ``plan_id`` highlighted."""
        to_png(build_graph(self._s, task), os.fspath(path), self._path(plan_id))

    def _path(self, plan_id: int | None) -> builtins.list[tuple[str, str]]:
        hops = self.get(plan_id).estimate.get("path", []) if plan_id is not None else []
        return list(zip(hops, hops[1:]))
