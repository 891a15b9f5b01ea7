"""Metrics and the baselines every trained set is compared with."""

from __future__ import annotations

import numpy as np


def rmse(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(pred, np.float64) - y) ** 2))) if len(y) else float("nan")


def mae(pred: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(pred, np.float64) - y))) if len(y) else float("nan")


def auc(score: np.ndarray, y: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann-Whitney) statistic, ties counted as half."""
    y = np.asarray(y) > 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ranks = np.empty(len(score), dtype=np.float64)
    sorted_scores = np.asarray(score)[order]
    # average ranks over ties
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [len(score)]))
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def per_user(users: np.ndarray, pred: np.ndarray, y: np.ndarray, kind: str) -> dict[str, dict[str, float]]:
    """Metrics of each user (rating: rmse, mae, n; click: auc where defined, n)."""
    out: dict[str, dict[str, float]] = {}
    order = np.argsort(users, kind="stable")
    bounds = np.flatnonzero(users[order][1:] != users[order][:-1]) + 1
    for rows in np.split(order, bounds):
        if not len(rows):
            continue
        user = str(users[rows[0]])
        if kind == "rating":
            out[user] = {"rmse": rmse(pred[rows], y[rows]), "mae": mae(pred[rows], y[rows]), "n": float(len(rows))}
        else:
            value = auc(pred[rows], y[rows])
            out[user] = {"n": float(len(rows))} | ({} if np.isnan(value) else {"auc": value})
    return out


def summarize(users: np.ndarray, pred: np.ndarray, y: np.ndarray, kind: str) -> dict[str, float]:
    """Overall metrics: rating -> rmse, mae; click -> auc and uauc (mean per-user AUC)."""
    if kind == "rating":
        return {"rmse": rmse(pred, y), "mae": mae(pred, y), "n": float(len(y))}
    users_auc = [m["auc"] for m in per_user(users, pred, y, kind).values() if "auc" in m]
    return {"auc": auc(pred, y), "uauc": float(np.mean(users_auc)) if users_auc else float("nan"), "n": float(len(y))}


def smoothed_item_means(items: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Each item's mean label with one pseudo-row at the global mean: the popularity baseline's
    score for clicks (and ``examples.item_priors``, so that the head's prior is exactly it)."""
    overall = float(labels.mean())
    sums: dict[str, list[float]] = {}
    for item, label in zip(items.tolist(), labels.tolist()):
        acc = sums.setdefault(str(item), [0.0, 0.0])
        acc[0] += label
        acc[1] += 1
    return {i: (total + overall) / (n + 1) for i, (total, n) in sums.items()}


def baselines(train_users: np.ndarray, train_items: np.ndarray, train_y: np.ndarray,
              users: np.ndarray, items: np.ndarray, y: np.ndarray, kind: str) -> dict[str, dict[str, float]]:
    """What a set must beat: global mean and per-user mean (rating), popularity (click)."""
    global_mean = float(train_y.mean())
    if kind == "rating":
        sums: dict[str, list[float]] = {}
        for u, v in zip(train_users.tolist(), train_y.tolist()):
            sums.setdefault(u, []).append(v)
        user_mean = {u: float(np.mean(v)) for u, v in sums.items()}
        per_user_pred = np.array([user_mean.get(u, global_mean) for u in users.tolist()])
        return {
            "global_mean": summarize(users, np.full(len(y), global_mean), y, kind),
            "user_mean": summarize(users, per_user_pred, y, kind),
        }
    popularity = smoothed_item_means(train_items, train_y)  # smoothed item click-through rate
    pred = np.array([popularity.get(i, global_mean) for i in items.tolist()])
    return {"popularity": summarize(users, pred, y, kind)}


def share_worse(a: dict[str, dict[str, float]], b: dict[str, dict[str, float]], metric: str, lower_is_better: bool) -> float:
    """Share of users (present in both) whose ``metric`` is worse in ``a`` than in ``b``."""
    common = [u for u in a if u in b and metric in a[u] and metric in b[u]]
    if not common:
        return float("nan")
    worse = sum((a[u][metric] > b[u][metric]) if lower_is_better else (a[u][metric] < b[u][metric]) for u in common)
    return worse / len(common)
