"""Fitting a task head on cached backbone features: one forward pass, then the head alone.

Prompts fixed, the backbone's answer features of every example do not change, so a head can be
refitted on *every* user's training rows for the price of one forward pass (no backward pass
through the backbone): that is how a migrated set gets a head that has seen everyone (the head
trained with the map saw only the selected users' rows), and how the random-init baseline gets a
well-converged head cheaply. The best epoch on the validation features is kept.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ..backbones.heads import TaskHead
from ..backbones.prompting import PromptEncoder
from ..errors import InvalidArgumentError
from . import metrics
from .examples import Examples
from .loop import answer_features, cpu_state


@dataclasses.dataclass(frozen=True)
class HeadFitConfig:
    """Head refit on cached features: AdamW at ``lr``, ``batch_size`` rows a step, at most
    ``max_epochs`` epochs over the training features with ``patience`` epochs without validation
    improvement (validation is cheap here: the features are cached)."""

    lr: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 200
    patience: int = 10
    weight_decay: float = 0.01

    def __post_init__(self) -> None:
        if not (self.lr > 0 and self.batch_size >= 1 and self.max_epochs >= 1 and self.patience >= 1 and self.weight_decay >= 0):
            raise InvalidArgumentError("invalid head refit config: lr > 0, batch_size/max_epochs/patience >= 1, weight_decay >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class Features:
    """Backbone answer features of some examples (fixed prompts), with their labels and users."""

    values: torch.Tensor  # (n, feature_size), CPU float32
    labels: torch.Tensor  # (n,)
    users: np.ndarray
    forward_tokens: int


@dataclasses.dataclass
class HeadFit:
    state: dict[str, torch.Tensor]  # the best epoch's head weights (CPU)
    best_epoch: int
    epochs_run: int
    steps: int
    best_metric: float
    before_metric: float  # validation metric of the head it started from
    history: list[dict[str, float]]


def cached_features(encoder: PromptEncoder, prompts: Callable[[torch.Tensor], torch.Tensor], examples: Examples,
                    batch_size: int = 128) -> Features:
    """One forward pass over ``examples``; ``prompts`` maps a batch's user index to its prompt rows."""
    out, tokens = [], 0
    for features, cost in answer_features(encoder, prompts, examples, batch_size):
        out.append(features.float().cpu())
        tokens += cost
    values = torch.cat(out) if out else torch.empty(0, encoder.feature_size)
    return Features(values, torch.as_tensor(examples.labels, dtype=torch.float32), examples.users, tokens)


def _metric(head: TaskHead, features: Features, task_kind: str) -> float:
    if not len(features.labels):
        return float("nan")
    with torch.no_grad():
        pred = head.predict(features.values.to(_device(head))).cpu().numpy()
    summary = metrics.summarize(features.users, pred, features.labels.numpy(), task_kind)
    return summary["rmse"] if task_kind == "rating" else summary["auc"]


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _better(task_kind: str, new: float, old: float) -> bool:
    if np.isnan(old):
        return not np.isnan(new)
    return new < old if task_kind == "rating" else new > old


def fit_head(head: TaskHead, train: Features, valid: Features, config: HeadFitConfig | None = None, *, seed: int = 0) -> HeadFit:
    """Train ``head`` (in place, from its current weights) on ``train``; load and return the best
    epoch on ``valid`` (the starting weights count as epoch 0, so the refit never ends worse on
    validation than where it began)."""
    config = config or HeadFitConfig()
    device = _device(head)
    task_kind = head.task_kind
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    head.eval()
    before = _metric(head, valid, task_kind)
    best_state = cpu_state(head)
    best, best_epoch, steps, history = before, 0, 0, []
    x, y = train.values.to(device), train.labels.to(device)
    epoch = 0
    for epoch in range(1, config.max_epochs + 1):
        head.train()
        order = torch.randperm(len(y), generator=generator).to(device)
        total = 0.0
        for start in range(0, len(y), config.batch_size):
            rows = order[start : start + config.batch_size]
            loss, _ = head.loss(x[rows], y[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(rows)
            steps += 1
        head.eval()
        metric = _metric(head, valid, task_kind)
        history.append({"epoch": epoch, "train_loss": total / max(len(y), 1), "valid": metric})
        if _better(task_kind, metric, best) or (np.isnan(best) and not len(valid.labels)):
            best, best_epoch = metric, epoch
            best_state = cpu_state(head)
        elif epoch - best_epoch >= config.patience:
            break
    head.load_state_dict(best_state)
    head.eval()
    return HeadFit(best_state, best_epoch, epoch, steps, best, before, history)
