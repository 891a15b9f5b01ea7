"""What the UI shows, as JSON-ready dicts, built only from the public ``Registry`` API.

Each function is one view: the JSON API returns it as is and the HTML pages render it. Items are
the entities' ``to_dict()``, the same records the CLI prints with ``--json``; long lists (users,
sets, runs) come as pages: ``{"items": [...], "total": N, "limit": L, "offset": O}``.
"""

from __future__ import annotations

from typing import Any

from ..entities import Evaluation, PromptSet, Run
from ..errors import InvalidArgumentError
from ..migration.report import group_metric, recovered_share
from ..registry import Registry
from ..training.metrics import share_worse

MAX_PAGE = 500


def check_page(limit: int, offset: int) -> None:
    if limit < 1 or limit > MAX_PAGE or offset < 0:
        raise InvalidArgumentError(f"limit must be 1..{MAX_PAGE} and offset >= 0 (got limit={limit}, offset={offset})")


def page(items: list[Any], limit: int, offset: int, total: int | None = None) -> dict[str, Any]:
    """One page of ``items`` (already cut when ``total`` is given)."""
    check_page(limit, offset)
    cut = items if total is not None else items[offset : offset + limit]
    return {"items": [i.to_dict() if hasattr(i, "to_dict") else i for i in cut], "total": len(items) if total is None else total,
            "limit": limit, "offset": offset}


def overview(reg: Registry) -> dict[str, Any]:
    sets = reg.list_sets()
    per_pair: dict[str, int] = {}
    for s in sets:
        per_pair[f"{s.model}/{s.task}"] = per_pair.get(f"{s.model}/{s.task}", 0) + 1
    return {"models": [m.to_dict() for m in reg.list_models()], "tasks": [t.to_dict() for t in reg.list_tasks()],
            "aliases": [a.to_dict() for a in reg.list_aliases()], "plans": [p.to_dict() for p in reg.planner.list(limit=20)],
            "counts": {"users": reg.count_users(), "sets": len(sets), "runs": run_count(reg), "sets_by_model_task": per_pair}}


def run_count(reg: Registry, kind: str | None = None) -> int:
    """How many runs (of ``kind``) there are: the cost summary's total, one aggregate query."""
    total = reg.cost_summary(kind=kind)
    return total[0].runs if total else 0


def sets(reg: Registry, *, model: str | None = None, task: str | None = None, alias: str | None = None, tag: str | None = None,
         limit: int = 100, offset: int = 0) -> dict[str, Any]:
    return page(reg.list_sets(model=model, task=task, alias=alias, tag=tag), limit, offset)


def set_detail(reg: Registry, ref: str) -> dict[str, Any]:
    """One set with its lineage up (what it came from) and down (what came from it), its
    evaluations (without per-user rows) and the run that made it."""
    s = reg.get_set(ref)
    run = reg.get_run(s.run_id) if s.run_id is not None else None
    return {"set": s.to_dict(), "ref": f"{s.model}/{s.task}@v{s.version}", "run": None if run is None else run.to_dict(),
            "lineage_up": reg.lineage(s.id).to_dict(), "lineage_down": reg.lineage(s.id, down=True).to_dict(),
            "evaluations": [_evaluation(e) for e in reg.list_evaluations(s.id)]}


def _evaluation(e: Evaluation) -> dict[str, Any]:
    return {k: v for k, v in e.to_dict().items() if k != "per_user"}


def alias_history(reg: Registry, name: str, *, model: str | None = None, task: str | None = None) -> dict[str, Any]:
    """Every move of an alias, oldest first, with how long each target stood."""
    return {"name": name, "model": model, "task": task, "moves": [m.to_dict() for m in reg.alias_timeline(name, model=model, task=task)]}


def user_audit(reg: Registry, user: str) -> dict[str, Any]:
    """Every version holding the user's prompt, which alias served it when, and purge status."""
    history = reg.user_history(user)
    events = reg.audit_events(object_kind="user", object_id=user, limit=500)
    return {"history": history.to_dict(), "purged": history.deleted_at is not None, "events": [e.to_dict() for e in events]}


def users(reg: Registry, *, limit: int = 100, offset: int = 0) -> dict[str, Any]:
    return page(reg.list_users(limit=limit, offset=offset, include_deleted=True), limit, offset, total=reg.count_users())


def runs(reg: Registry, *, kind: str | None = None, limit: int = 100, offset: int = 0) -> dict[str, Any]:
    """Runs newest first, each with its cost ledger (wall time, device, examples, token passes)."""
    check_page(limit, offset)  # before the query its bounds size
    newest = reg.list_runs(kind=kind, limit=offset + limit)  # newest first: the page is the tail of these
    return page(newest[offset:], limit, offset, total=run_count(reg, kind))


def run(reg: Registry, run_id: int) -> dict[str, Any]:
    return reg.get_run(run_id).to_dict()


def evaluations(reg: Registry, *, ref: str | None = None, split: str | None = None) -> list[dict[str, Any]]:
    return [_evaluation(e) for e in reg.list_evaluations(ref, split=split)]


def plans(reg: Registry, *, task: str | None = None, target: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
    return [p.to_dict() for p in reg.planner.list(task=task, target=target, limit=limit)]


def plan(reg: Registry, plan_id: int) -> dict[str, Any]:
    return reg.planner.get(plan_id).to_dict()


def method_of(s: PromptSet, made_by: Run | None) -> str:
    """How a set was made, as the quality-vs-cost chart names it."""
    if made_by is None:
        return "imported"
    if made_by.kind == "train":
        return "random-init" if made_by.config.get("freeze_prompts") else "retrain"
    if made_by.kind == "migrate":
        method = made_by.config.get("method") or (made_by.config.get("adapter") or {}).get("method") or "puma"
        return f"{method} (refined)" if made_by.cost.get("results", {}).get("refined_set") == s.id else str(method)
    return made_by.kind


def migration(reg: Registry, run_id: int) -> dict[str, Any]:
    """A migration run: its configuration, ledger and sets, and every set of the target model and
    task with a test evaluation as a point (quality against the cost of the run that made it)."""
    r = reg.get_run(run_id)
    if r.kind != "migrate" or r.model is None or r.task is None:
        raise InvalidArgumentError(f"run {run_id} is a {r.kind!r} run, not a migration; list migrations with /api/runs?kind=migrate")
    results = r.cost.get("results", {})
    made = [i for i in (results.get("mapped_set"), results.get("refined_set")) if i is not None]
    points = []
    for s in reg.list_sets(model=r.model, task=r.task):
        evals = reg.list_evaluations(s.id, split="test")
        if not evals:
            continue
        e = evals[0]
        made_by = reg.get_run(s.run_id) if s.run_id is not None else None
        metric = "rmse" if "rmse" in e.metrics else "auc"
        cost = 0 if made_by is None else (made_by.forward_tokens or 0) + (made_by.backward_tokens or 0)
        points.append({"set_id": s.id, "ref": f"{s.model}/{s.task}@v{s.version}", "method": method_of(s, made_by), "metric": metric,
                       "value": e.metrics.get(metric), "token_passes": cost, "wall_seconds": None if made_by is None else made_by.wall_seconds,
                       "this_migration": s.id in made, "evaluation_id": e.id, "dataset": e.dataset})
    config = {k: v for k, v in r.config.items() if k != "selected_users"}
    return {"run": {**r.to_dict(), "config": config}, "selected_users": len(r.config.get("selected_users") or ()), "sets": made,
            "sources": r.config.get("sources", []), "points": points, "report": report(reg, points, set(r.config.get("selected_users") or ()))}


def report(reg: Registry, points: list[dict[str, Any]], selected: set[str]) -> dict[str, Any] | None:
    """The migration's quality report, rebuilt from the stored evaluations (what ``migrate``
    printed): the migrated set against the newest retrain and random-init of the target, over all
    users and over the users the map was fitted on ("seen") and the rest; the share of retrain's
    gain over random-init recovered; the share of users worse than under the retrain."""
    ours = [p for p in points if p["this_migration"] and p["value"] is not None]
    if not ours:
        return None
    final = ours[0]  # newest first: the refined set when there is one
    metric = final["metric"]
    lower, kind, key = metric == "rmse", "rating" if metric == "rmse" else "click", "rmse" if metric == "rmse" else "auc"
    newest = {name: next((p for p in points if p["method"] == name and p["value"] is not None), None) for name in ("retrain", "random-init")}
    per_user = reg.get_evaluation(final["evaluation_id"]).per_user or {}
    everyone = set(per_user)
    out: dict[str, Any] = {"set_id": final["set_id"], "metric": metric, "lower_is_better": lower, "value": final["value"],
                           "seen": group_metric(per_user, everyone & selected, kind) if selected else None,
                           "unseen": group_metric(per_user, everyone - selected, kind) if selected else None,
                           "retrain": None, "random_init": None, "recovered": None, "share_worse_than_retrain": None}
    retrain, random_init = newest["retrain"], newest["random-init"]
    if retrain is not None:
        out["retrain"] = retrain["value"]
        theirs = reg.get_evaluation(retrain["evaluation_id"]).per_user or {}
        worse = share_worse(per_user, theirs, key, lower)
        out["share_worse_than_retrain"] = None if worse != worse else worse  # NaN: no user in both
    if random_init is not None:
        out["random_init"] = random_init["value"]
    if retrain is not None and random_init is not None:
        out["recovered"] = recovered_share(final["value"], random_init["value"], retrain["value"], lower)
    return out
