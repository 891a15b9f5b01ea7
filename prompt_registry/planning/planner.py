"""The planner: the cheapest way to get a task's prompts onto a target model, under constraints.

Strategies: ``direct`` (A -> C: reuse a stored adapter, else fit one), ``chain`` (A -> B -> C,
two hops or more, each hop reusing a stored adapter where one exists), ``aggregate`` (A + B ->
C: one adapter over the concatenated source prompts, reused when one with exactly these sources
is stored), ``retrain`` (from scratch on the target), and ``auto``: the cheapest of all of them
in estimated token-passes (ties: fewer steps). Constraints: ``max_hops``, ``reuse_only`` (stored
adapters only), ``exclude`` (models no path may touch), ``method`` (the one fits use), ``via`` (a
model a chain must pass), ``max_token_passes`` (a budget), ``quality_floor`` (plans whose recorded
evaluations are worse are ruled out; a plan with none recorded is kept and says so). A plan records what it was asked and the
graph it saw (the prompt set of every model, the stored adapters), so planning again from the same
inputs on the same catalogue gives the same plan; each step explains where its figures came from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import networkx as nx

from .._util import echo
from ..core.services import Services
from ..entities import Plan, PlanStep
from ..errors import InvalidArgumentError, NoPlanError, UnknownModelError
from ..migration.base import get_method
from ..migration.config import MigrationConfig
from ..migration.coverage import SAMPLE
from ..migration.coverage import check as check_coverage
from .cost import CostModel
from .graph import SCRATCH, build_graph, combo_name

STRATEGIES = ("auto", "direct", "chain", "aggregate", "retrain")


@dataclasses.dataclass(frozen=True)
class PlanRequest:
    """What to plan (see the module docstring for the strategies and constraints)."""

    target: str
    task: str
    sources: tuple[str, ...] | None = None  # default: every other model holding prompts for the task
    strategy: str = "auto"
    via: str | None = None
    max_hops: int = 3
    reuse_only: bool = False
    exclude: tuple[str, ...] = ()
    method: str = "puma"
    max_token_passes: int | None = None
    quality_floor: float | None = None  # the task metric a plan's recorded evaluations must reach (RMSE at most, AUC at least)
    # how an aggregate treats users on only some sources, and whether the data set's users on no
    # source get the mapped centroid (``migration/coverage.py``); None: ``MigrationConfig``'s defaults
    coverage: str | None = None
    cold_start: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "sources", tuple(self.sources) if self.sources is not None else None)
        object.__setattr__(self, "exclude", tuple(self.exclude))
        if self.strategy not in STRATEGIES:
            raise InvalidArgumentError(f"unknown strategy {echo(self.strategy)}; use one of {', '.join(STRATEGIES)}")
        if self.max_hops < 1:
            raise InvalidArgumentError("max_hops must be >= 1")
        if self.max_token_passes is not None and self.max_token_passes < 0:
            raise InvalidArgumentError("max_token_passes must be >= 0")
        if self.via is not None and self.strategy not in ("auto", "chain"):
            raise InvalidArgumentError(f"via makes a chain; it does not go with strategy {echo(self.strategy)}")
        get_method(self.method)  # an unknown method names the registered ones
        defaults = MigrationConfig()
        coverage, cold_start = self.coverage or defaults.coverage, self.cold_start or defaults.cold_start
        check_coverage(coverage, cold_start)
        object.__setattr__(self, "coverage", coverage)
        object.__setattr__(self, "cold_start", cold_start)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "sources": list(self.sources) if self.sources is not None else None, "exclude": list(self.exclude)}


@dataclasses.dataclass
class _Candidate:
    kind: str
    steps: list[PlanStep]
    users: int
    coverage: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def token_passes(self) -> int:
        return sum(int(s.estimate["token_passes"]) for s in self.steps)

    @property
    def seconds(self) -> float:
        return round(sum(float(s.estimate["seconds"]) for s in self.steps), 1)

    def path(self) -> list[str]:
        if self.kind == "retrain":
            return [SCRATCH, self.steps[0].target]
        if self.kind == "aggregate":
            return [combo_name(list(self.steps[0].sources)), self.steps[0].target]
        return [self.steps[0].sources[0], *[s.target for s in self.steps]]


def make_plan(services: Services, request: PlanRequest) -> Plan:
    """The cheapest plan for ``request`` (not stored; ``Registry.plan_migration`` stores it).

    Raises ``NoPlanError`` naming what is missing when no path meets the constraints."""
    graph = build_graph(services, request.task, methods=(request.method,))
    if request.target not in graph:
        raise UnknownModelError(f"no model named {echo(request.target)}; register it first (`prompt-registry model add`)")
    if request.target in request.exclude:
        raise InvalidArgumentError(f"the target {echo(request.target)} cannot be excluded")
    for name in (*request.exclude, *(request.sources or ()), *([request.via] if request.via else [])):
        if name not in graph or graph.nodes[name]["kind"] != "model":
            raise UnknownModelError(f"no model named {echo(name)}")
    if request.via in request.exclude:
        raise InvalidArgumentError(f"{echo(request.via)} is both the via model and excluded")
    holders = [n for n, d in graph.nodes(data=True) if d["kind"] == "model" and d["users"] > 0]
    if request.sources is not None:
        sources = list(request.sources)
        empty = [s for s in sources if graph.nodes[s]["users"] == 0]
        if empty:
            raise NoPlanError(f"model(s) {', '.join(empty)} hold no prompts for task {echo(request.task)}: nothing to migrate from")
        if request.target in sources:
            raise InvalidArgumentError(f"the target {echo(request.target)} is also a source")
        blocked = [s for s in sources if s in request.exclude]
        if blocked:
            raise InvalidArgumentError(f"source(s) {', '.join(blocked)} are also excluded")
    else:
        sources = [n for n in holders if n != request.target and n not in request.exclude]
    costs = CostModel(services, request.task)
    reasons: list[str] = []
    candidates: list[_Candidate] = []
    want = request.strategy
    held = _Holders(services, graph)
    if want in ("auto", "direct") and request.via is None:
        for s in sources:
            step = _hop(graph, costs, s, request.target, graph.nodes[s]["users"], request, 0, reasons)
            if step is not None:
                candidates.append(_Candidate("direct", [step], graph.nodes[s]["users"], held.coverage([s], request)))
    if want in ("auto", "chain"):
        candidates += _chains(graph, costs, sources, request, reasons, held)
    if want in ("auto", "aggregate") and len(sources) >= 2 and request.via is None:
        aggregate = _aggregate(graph, costs, sources, request, reasons, held)
        if aggregate is not None:
            candidates.append(aggregate)
    elif want == "aggregate":
        reasons.append(f"an aggregate needs two or more source models with prompts; found {', '.join(sources) or 'none'}")
    if want in ("auto", "retrain") and request.via is None and not request.reuse_only:
        users = max((graph.nodes[s]["users"] for s in sources), default=0) or graph.nodes[request.target]["users"]
        estimate = costs.retrain(request.target, users)
        candidates.append(_Candidate("retrain", [PlanStep(0, "retrain", (), request.target, None, None, estimate)], users,
                                     {"note": "a retrain trains every user of the data set it is given"}))
    elif want == "retrain" and request.reuse_only:
        reasons.append("retrain trains from scratch: it is not allowed with reuse_only")
    if not sources and want != "retrain":
        reasons.append(f"no model other than {request.target!r} holds prompts for task {request.task!r}")
    within = [c for c in candidates if request.max_token_passes is None or c.token_passes <= request.max_token_passes]
    if request.quality_floor is not None:
        kind = next(t.kind for t in services.models.list_tasks() if t.name == request.task)
        failing = []
        for c in within:
            recorded = _quality(services, c, request)
            value = recorded.get("metrics", {}).get("rmse" if kind == "rating" else "auc")
            if value is not None and ((value > request.quality_floor) if kind == "rating" else (value < request.quality_floor)):
                failing.append(c)
                reasons.append(f"{c.kind} {' -> '.join(c.path())} recorded {value:.4f} (evaluation {recorded['evaluation_id']}), "
                               f"worse than the floor {request.quality_floor}")
        within = [c for c in within if c not in failing]
    if request.max_token_passes is not None:
        reasons += [f"{c.kind} {' -> '.join(c.path())} needs {c.token_passes:,} token-passes, over the budget {request.max_token_passes:,}"
                    for c in candidates if c not in within]
    if not within:
        raise NoPlanError(f"no {want} plan to {echo(request.target)} for task {echo(request.task)}: " + ("; ".join(dict.fromkeys(reasons)) or "no path"))
    within.sort(key=lambda c: (c.token_passes, len(c.steps), c.kind != "direct", c.path()))
    best = within[0]
    estimate = {
        "token_passes": best.token_passes, "seconds": best.seconds, "users": best.users,
        "uncovered_users": best.coverage.get("partial", 0) if request.coverage == "common" else 0, "coverage": best.coverage,
        "path": best.path(), "quality": _quality(services, best, request),
        "alternatives": [{"kind": c.kind, "path": c.path(), "token_passes": c.token_passes} for c in within[1:6]],
    }
    inputs = {"request": request.to_dict(), "graph": _graph_state(graph)}
    return Plan(None, request.task, request.target, request.strategy, best.kind, tuple(best.steps), estimate, inputs)


def _hop(graph: nx.MultiDiGraph, costs: CostModel, a: str, b: str, users: int, request: PlanRequest, position: int,
         reasons: list[str]) -> PlanStep | None:
    """The cheapest way across one hop: a stored adapter (the newest), else a fit (unless reuse_only)."""
    edges = graph.get_edge_data(a, b) or {}
    stored = sorted((d for d in edges.values() if d["kind"] == "reuse"), key=lambda d: -d["adapter_id"])
    if stored:
        return PlanStep(position, "reuse", (a,), b, stored[0]["method"], stored[0]["adapter_id"], costs.reuse(users))
    if request.reuse_only:
        reasons.append(f"no stored adapter {a} -> {b} (reuse_only)")
        return None
    return PlanStep(position, "fit", (a,), b, request.method, None, costs.fit([a], b, users, request.method))


def _chains(graph: nx.MultiDiGraph, costs: CostModel, sources: Sequence[str], request: PlanRequest, reasons: list[str],
            holders: _Holders) -> list[_Candidate]:
    models = [n for n, d in graph.nodes(data=True) if d["kind"] == "model" and n not in request.exclude]
    hops: nx.DiGraph = nx.DiGraph()
    hops.add_nodes_from(models)
    for a, b, d in graph.edges(data=True):
        if a in models and b in models and (d["kind"] == "reuse" or (d["kind"] == "fit" and not request.reuse_only)):
            hops.add_edge(a, b)
    out = []
    for s in sources:
        if s not in hops or request.target not in hops:
            continue
        for path in nx.all_simple_paths(hops, s, request.target, cutoff=request.max_hops):
            if len(path) < 3 or (request.via is not None and request.via not in path[1:-1]):
                continue
            users = graph.nodes[s]["users"]
            steps = [_hop(graph, costs, a, b, users, request, i, reasons) for i, (a, b) in enumerate(zip(path, path[1:]))]
            if all(step is not None for step in steps):
                out.append(_Candidate("chain", [s for s in steps if s is not None], users, holders.coverage([s], request)))
    if not out and request.strategy == "chain":
        reasons.append(f"no chain of 2..{request.max_hops} hops" + (f" via {request.via}" if request.via else "")
                       + (" over stored adapters" if request.reuse_only else "") + f" from {', '.join(sources) or 'no source'}")
    return out


def _aggregate(graph: nx.MultiDiGraph, costs: CostModel, sources: Sequence[str], request: PlanRequest,
               reasons: list[str], holders: _Holders) -> _Candidate | None:
    coverage = holders.coverage(list(sources), request)
    users = coverage["full"] + (coverage["partial"] if request.coverage == "impute" else 0)
    combo = combo_name(list(sources))
    stored = sorted((d for d in (graph.get_edge_data(combo, request.target) or {}).values() if d["kind"] == "reuse"),
                    key=lambda d: -d["adapter_id"]) if combo in graph else []
    if stored:
        step = PlanStep(0, "reuse", tuple(sources), request.target, stored[0]["method"], stored[0]["adapter_id"], costs.reuse(users))
    elif request.reuse_only:
        reasons.append(f"no stored aggregated adapter {combo} -> {request.target} (reuse_only)")
        return None
    else:
        step = PlanStep(0, "fit", tuple(sources), request.target, request.method, None, costs.fit(list(sources), request.target, users,
                                                                                                  request.method))
    policy = ("users on only some sources are mapped with each missing source's mean prompt (coverage='impute')"
              if request.coverage == "impute" else "users without a prompt in every source are not mapped by this step (coverage='common')")
    if stored:
        policy += "; a reused adapter imputes only if it was fitted with coverage='impute'"
    step.estimate["details"] = {**step.estimate.get("details", {}), "common_users": coverage["full"], "partial_users": coverage["partial"],
                                "uncovered_policy": policy}
    return _Candidate("aggregate", [step], users, coverage)


class _Holders:
    """Who holds a prompt on each model of the graph (read once per plan): the coverage of a plan."""

    def __init__(self, services: Services, graph: nx.MultiDiGraph) -> None:
        self.users = {n: set(services.reads.list_set_users(d["set_id"])) for n, d in graph.nodes(data=True)
                      if d["kind"] == "model" and d.get("set_id") is not None}
        self.everyone = set().union(*self.users.values()) if self.users else set()

    def coverage(self, sources: list[str], request: PlanRequest) -> dict[str, Any]:
        """Users on every source (``full``), on some (``partial``: mapped by ``impute``), and users
        holding prompts for the task elsewhere that no source holds (``none``: left to
        ``cold_start``, i.e. the mapped centroid or a retrain)."""
        held = [self.users.get(s, set()) for s in sources]
        union, common = set().union(*held), set.intersection(*held)
        none = sorted(self.everyone - union)
        return {"policy": request.coverage, "cold_start": request.cold_start, "full": len(common), "partial": len(union - common),
                "none": len(none), "none_sample": none[:SAMPLE],
                "none_note": ("these users hold prompts for the task only on models this plan does not read; "
                              + ("a migration gives the ones in its data set the mapped centroid (cold_start='centroid')"
                                 if request.cold_start == "centroid" else "a migration lists the ones in its data set (cold_start='skip'): retrain them"))}


def _quality(services: Services, candidate: _Candidate, request: PlanRequest) -> dict[str, Any]:
    """What recorded test evaluations say about the set the plan's last step would make: the sets
    a reused adapter made; for a fit, sets earlier fits on the same edge made; for a retrain,
    earlier retrains of the target. None recorded: quality unknown (the plan says so)."""
    last = candidate.steps[-1]
    produced = []
    for prompt_set in services.reads.list_sets(model=request.target, task=request.task):
        if last.kind == "reuse" and prompt_set.adapter_id == last.adapter_id:
            produced.append(prompt_set)
        elif last.kind == "fit" and prompt_set.adapter_id is not None:
            adapter = services.artifacts.get_artifact(prompt_set.adapter_id)
            if tuple(adapter.source_models) == last.sources and adapter.config.get("method", "puma") == last.method:
                produced.append(prompt_set)
        elif last.kind == "retrain" and prompt_set.run_id is not None and prompt_set.adapter_id is None:
            run = services.runs.get_run(prompt_set.run_id)
            if run.kind == "train" and not run.config.get("freeze_prompts"):
                produced.append(prompt_set)
    for prompt_set in produced:
        evaluations = services.runs.list_evaluations(prompt_set.id, split="test")
        if evaluations:
            metrics = {k: v for k, v in evaluations[0].metrics.items() if k in ("rmse", "mae", "auc", "uauc")}
            return {"recorded": True, "set_id": prompt_set.id, "evaluation_id": evaluations[0].id, "metrics": metrics,
                    "basis": "a set made the same way" if last.kind != "reuse" else "a set this adapter made"}
    return {"recorded": False, "note": "no recorded evaluation of a set made this way: quality unknown until it runs"}


def _graph_state(graph: nx.MultiDiGraph) -> dict[str, Any]:
    return {"sets": {n: d["set_id"] for n, d in graph.nodes(data=True) if d["kind"] == "model"},
            "adapters": sorted(d["adapter_id"] for _, _, d in graph.edges(data=True) if d["kind"] == "reuse")}
