"""Statistics for comparing prompt sets on the same users: pooled metrics from per-user metrics,
and a paired bootstrap over users (what the quality benchmarks report against a baseline).

Per-user metrics are what ``evaluate`` stores: ``{"rmse", "mae", "n"}`` for ratings, ``{"auc",
"n"}`` for clicks (users with one class only have no AUC).
"""

from __future__ import annotations

import numpy as np


def pooled(per_user: dict[str, dict[str, float]], users: list[str], kind: str) -> float:
    if kind == "rating":
        sse = sum(per_user[u]["rmse"] ** 2 * per_user[u]["n"] for u in users)
        return float(np.sqrt(sse / sum(per_user[u]["n"] for u in users)))
    return float(np.mean([per_user[u]["auc"] for u in users]))


def paired_bootstrap(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]], kind: str, *, reps: int = 1000, seed: int = 0) -> dict[str, float]:
    """Bootstrap over users of metric(a) - metric(b) (same users in both): mean, sd (the paired
    standard error) and a 95% interval. The one-seed case of ``paired_bootstrap_seeds``."""
    out = paired_bootstrap_seeds([a], [b], kind, reps=reps, seed=seed)
    del out["seeds"]
    return out


def recovered(random_init: float, method: float, retrain: float) -> float | None:
    """The share of retrain's gain over random-init a method recovers: ``(random_init - method) / (random_init - retrain)``."""
    return (random_init - method) / (random_init - retrain) if random_init != retrain else None


def paired_bootstrap_seeds(a: list[dict[str, dict[str, float]]], b: list[dict[str, dict[str, float]]], kind: str, *, reps: int = 1000,
                           seed: int = 0) -> dict[str, float]:
    """``paired_bootstrap`` of the seed-mean difference: ``a[s]`` and ``b[s]`` are the per-user
    metrics of seed ``s``. Each replicate resamples the users once for every seed (the seeds share
    the users, so their errors are correlated; resampling them jointly keeps that)."""
    if len(a) != len(b) or not a:
        raise ValueError("a and b need the same number of seeds, at least one")
    key = "rmse" if kind == "rating" else "auc"
    users = sorted(set.intersection(*({u for u in x if key in x[u]} for x in [*a, *b])))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(users), size=(reps, len(users)))
    diffs = np.zeros(reps)
    point = 0.0
    for sa_, sb_ in zip(a, b, strict=True):
        point += pooled(sa_, users, kind) - pooled(sb_, users, kind)
        if kind == "rating":
            sa = np.array([sa_[u]["rmse"] ** 2 * sa_[u]["n"] for u in users])
            sb = np.array([sb_[u]["rmse"] ** 2 * sb_[u]["n"] for u in users])
            n = np.array([sa_[u]["n"] for u in users])
            diffs += np.sqrt(sa[idx].sum(1) / n[idx].sum(1)) - np.sqrt(sb[idx].sum(1) / n[idx].sum(1))
        else:
            va, vb = np.array([sa_[u]["auc"] for u in users]), np.array([sb_[u]["auc"] for u in users])
            diffs += va[idx].mean(1) - vb[idx].mean(1)
    diffs /= len(a)
    return {"diff": float(point / len(a)), "se": float(diffs.std(ddof=1)), "lo": float(np.quantile(diffs, 0.025)),
            "hi": float(np.quantile(diffs, 0.975)), "users": len(users), "seeds": len(a)}
