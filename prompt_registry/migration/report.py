"""The quality report of a migration and the gate on moving an alias.

The migrated set is evaluated on the held-back split next to the source set(s) on their model and,
when they exist, the newest from-scratch set ("retrain") and the newest random-init set (head only)
of the target. The report gives, per row, the metric over all users and over the users the map was
trained on ("seen") and the rest ("unseen"); and, with both references, the share of retrain's gain
over random-init that the migration recovered: ``(random_init - migrated) / (random_init - retrain)``
(for a lower-is-better metric; mirrored for AUC).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..backbones.loader import resolve_device, resolve_precision
from ..core.services import Services
from ..data.dataset import Dataset
from ..entities import Evaluation, MigrationReport, PromptSet
from ..training import metrics
from ..training.config import TrainConfig
from ..training.evaluate import evaluate_set
from .config import MigrationConfig


def _evaluate(services: Services, prompt_set: PromptSet, dataset: Dataset, config: MigrationConfig, device: str) -> Evaluation | None:
    if prompt_set.head_id is None:
        return None
    # a set's evaluation on the same data and split is deterministic: reuse a stored one
    dataset_label = f"{dataset.root}#{dataset.fingerprint[:12]}"
    precision = resolve_precision(config.precision, resolve_device(device))
    for earlier in services.runs.list_evaluations(prompt_set.id, split="test"):
        recorded = services.runs.get_run(earlier.run_id).config if earlier.run_id is not None else {}
        if earlier.dataset == dataset_label and recorded.get("test_fraction") == config.test_fraction \
                and recorded.get("valid_fraction") == config.valid_fraction \
                and recorded.get("precision", "fp32") == precision:
            return services.runs.get_evaluation(earlier.id)
    split_config = TrainConfig(test_fraction=config.test_fraction, valid_fraction=config.valid_fraction)
    evaluation = evaluate_set(services, prompt_set.id, dataset, split="test", config=split_config, device=device, precision=config.precision)
    return services.runs.get_evaluation(evaluation.id)


def _trained_reference(services: Services, target_set: PromptSet, *, frozen: bool) -> PromptSet | None:
    """The newest set of the target model and task trained from scratch (``frozen=False``: the
    retrain) or with its prompts frozen at their random init (``frozen=True``: random-init)."""
    for candidate in services.reads.list_sets(model=target_set.model, task=target_set.task):
        if candidate.run_id is None:
            continue
        run = services.runs.get_run(candidate.run_id)
        if run.kind == "train" and bool(run.config.get("freeze_prompts", False)) == frozen:
            return candidate
    return None


def group_metric(per_user: dict[str, dict[str, float]], users: set[str], kind: str) -> float | None:
    """The metric over a group of users from per-user metrics: RMSE pooled by rows (rating), mean
    per-user AUC (click)."""
    if kind == "rating":
        rows = [(m["rmse"], m["n"]) for u, m in per_user.items() if u in users and "rmse" in m]
        n = sum(k for _, k in rows)
        return float(np.sqrt(sum(r * r * k for r, k in rows) / n)) if n else None
    values = [m["auc"] for u, m in per_user.items() if u in users and "auc" in m]
    return float(np.mean(values)) if values else None


def recovered_share(migrated: float, random_init: float, retrain: float, lower_is_better: bool) -> float | None:
    """Share of retrain's gain over random-init that ``migrated`` recovers (1 = as good as retrain)."""
    gain = (random_init - retrain) if lower_is_better else (retrain - random_init)
    if not np.isfinite(gain) or abs(gain) < 1e-12:
        return None
    return float(((random_init - migrated) if lower_is_better else (migrated - random_init)) / gain)


def quality_report(services: Services, new_set: PromptSet, source_sets: Sequence[PromptSet], dataset: Dataset,
                   config: MigrationConfig, device: str, seen: Sequence[str] = (),
                   groups: Mapping[str, Sequence[str]] | None = None) -> MigrationReport:
    """Evaluate ``new_set`` (and its references) on the test split; ``seen``: the selected users;
    ``groups`` (name -> users, e.g. the partially covered ones): ``{name}_{metric}`` per row too."""
    kind = next(t.kind for t in services.models.list_tasks() if t.name == new_set.task)
    metric, lower = ("rmse", True) if kind == "rating" else ("auc", False)
    group_key = "rmse" if kind == "rating" else "uauc"
    seen_users = set(seen)
    rows: list[dict[str, Any]] = []
    new_eval = _evaluate(services, new_set, dataset, config, device)
    assert new_eval is not None
    rows.append({"name": "migrated", "set_id": new_set.id, "model": new_set.model, **_plain(new_eval.metrics), "_eval": new_eval})
    for s in source_sets:
        ev = _evaluate(services, s, dataset, config, device)
        if ev is not None:
            rows.append({"name": f"source ({s.model})", "set_id": s.id, "model": s.model, **_plain(ev.metrics), "_eval": ev})
    for name, frozen in (("retrain", False), ("random-init", True)):
        reference = _trained_reference(services, new_set, frozen=frozen)
        if reference is not None:
            ev = _evaluate(services, reference, dataset, config, device)
            if ev is not None:  # None for a set stored without a head, as for the sources
                rows.append({"name": name, "set_id": reference.id, "model": reference.model, **_plain(ev.metrics), "_eval": ev})
    everyone = set(new_eval.per_user or {})
    for r in rows:
        per_user = r["_eval"].per_user or {}
        if seen_users and r["model"] == new_set.model:
            r[f"seen_{group_key}"] = group_metric(per_user, seen_users & everyone, kind)
            r[f"unseen_{group_key}"] = group_metric(per_user, everyone - seen_users, kind)
        for name, users in (groups or {}).items():
            if users and r["model"] == new_set.model:
                r[f"{name}_{group_key}"] = group_metric(per_user, set(users) & everyone, kind)
    reference_row = next((r for r in rows if r["name"] == "retrain"), None) or next((r for r in rows[1:] if r["name"].startswith("source")), None)
    share, worst = None, []
    if reference_row is not None and new_eval.per_user:
        ref_users = reference_row["_eval"].per_user
        share = metrics.share_worse(new_eval.per_user, ref_users, metric if kind == "rating" else "auc", lower)
        deltas = [(u, new_eval.per_user[u][metric] - ref_users[u][metric]) for u in new_eval.per_user
                  if u in ref_users and metric in new_eval.per_user[u] and metric in ref_users[u]]
        deltas.sort(key=lambda d: -d[1] if lower else d[1])
        worst = [{"user": u, "delta": round(d, 4)} for u, d in deltas[:5]]
    by_name = {r["name"]: r for r in rows}
    recovered = None
    if "retrain" in by_name and "random-init" in by_name:
        recovered = recovered_share(rows[0][metric], by_name["random-init"][metric], by_name["retrain"][metric], lower)
    for r in rows:
        r.pop("_eval", None)
    return MigrationReport(metric, lower, rows, None if reference_row is None else reference_row["name"], share, worst, recovered)


def _plain(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k in ("rmse", "mae", "auc", "uauc", "n", "baselines")}


def move_alias(services: Services, alias: str, final: PromptSet, report: MigrationReport | None, gate: float | None) -> dict[str, Any]:
    if gate is not None:
        if report is None or report.reference is None:
            return {"alias": alias, "moved": False, "why": "gate asked but there is no reference set to compare with"}
        new = report.rows[0][report.metric]
        ref_row = next(r for r in report.rows[1:] if r["name"] == report.reference)
        ref = ref_row[report.metric]
        worse_by = (new - ref) if report.lower_is_better else (ref - new)
        if worse_by > gate:
            return {"alias": alias, "moved": False, "why": f"{report.metric} {new:.4f} is worse than {ref_row['name']} "
                    f"{ref:.4f} by {worse_by:.4f} > gate {gate}", "set_id": final.id}
    services.aliases.set_alias(alias, final.id, reason="migration" + (f" (gate {gate} passed)" if gate is not None else ""))
    return {"alias": alias, "moved": True, "set_id": final.id}
