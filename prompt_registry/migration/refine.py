"""Warm-start refinement after a migration: continue training mapped prompts on the target.

Every user (``refine_share`` 1, the head trains jointly), or only the share of users whose
validation loss after mapping is worst (the head stays fixed: it serves everyone else's mapped
prompts too). Either way the result is an incremental version of the mapped set: users not refined
keep their mapped prompt; the version's rows are only the refined users'. The mapped state is
validated first and stays a candidate: when no epoch beats it, nothing is written.

Who and how long comes from the config (``refine_epochs``, ``refine_share``) or, with a
``cost_budget``, from what the fit left of it (``plan``): token-passes are counted exactly as the
training loop counts them (each row's real tokens, forward, and backward again when prompts train).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..backbones.heads import TaskHead
from ..backbones.prompting import PromptEncoder
from ..core.services import Services
from ..data.dataset import Dataset, Split
from ..entities import PromptSet
from ..training.loop import LoopConfig, LoopState, PromptTable, TrainingLoop
from ..training.trainer import prepare_examples, save_head
from .config import MigrationConfig


@dataclasses.dataclass(frozen=True)
class Refinement:
    set: PromptSet | None  # None: no epoch beat the mapped prompts on validation (nothing written)
    state: LoopState
    users: int
    head_trained: bool


@dataclasses.dataclass(frozen=True)
class RefinePlan:
    """Who refinement trains, for how many epochs, whether the head trains too; ``budget``: the
    cost budget's figures when a budget decided (recorded in the run's ledger as ``refine_plan``)."""

    users: list[str]
    epochs: int
    train_head: bool
    budget: dict[str, Any] | None = None


def plan(config: MigrationConfig, candidates: Sequence[str], valid_loss: dict[int, float], *, selected: int, spent: int,
         train_tokens: np.ndarray, valid_tokens: np.ndarray) -> RefinePlan | None:
    """Who is refined and for how many epochs (None: no refinement).

    ``refine_epochs`` > 0 decides by itself (``refine_share`` of the worst users, or everyone).
    Otherwise a ``cost_budget`` does: ``spent`` (the fit's token-passes) is taken from the budget,
    and the rest buys whole epochs over everyone, else ``share_refine_epochs`` over as many of the
    worst users as fit. ``train_tokens`` / ``valid_tokens``: one pass's real tokens per candidate.
    """
    if config.refine_epochs > 0:
        chosen = list(candidates) if config.refine_share >= 1 else worst_users(candidates, valid_loss, config.refine_share)
        return RefinePlan(chosen, config.refine_epochs, config.refine_share >= 1)
    share = config.cost_share(selected, len(candidates))
    if share is None:
        return None
    train_all, valid_all = int(train_tokens.sum()), int(valid_tokens.sum())
    reference = int(config.reference_token_passes(train_all, valid_all))
    left = int(share * reference) - spent
    figures: dict[str, Any] = {"share": round(share, 6), "reference_epochs": config.reference_epochs, "reference_token_passes": reference,
                               "spent_before": spent, "left": left}
    epochs = (left - valid_all) // (2 * train_all + valid_all) if train_all else 0  # the mapped state's validation comes first
    if epochs >= 1:
        return RefinePlan(list(candidates), int(epochs), True, {**figures, "mode": "everyone", "epochs": int(epochs), "planned_token_passes":
                                                                 int(epochs * (2 * train_all + valid_all) + valid_all)})
    per_user = config.share_refine_epochs * (2 * train_tokens + valid_tokens) + valid_tokens
    order = sorted(valid_loss.items(), key=lambda kv: (-kv[1], kv[0]))  # worst first, as ``worst_users``
    rows, total = [], 0
    for row, _ in order:
        if total + int(per_user[row]) > left:
            break
        rows.append(row)
        total += int(per_user[row])
    rows_trained = int(sum(train_tokens[r] > 0 for r in rows))
    if rows_trained == 0:
        return RefinePlan([], 0, False, {**figures, "mode": "none", "planned_token_passes": 0})
    users = [candidates[r] for r in sorted(rows)]
    return RefinePlan(users, config.share_refine_epochs, False, {**figures, "mode": "worst users", "epochs": config.share_refine_epochs,
                                                                "planned_token_passes": total})


def worst_users(candidates: Sequence[str], valid_loss: dict[int, float], share: float) -> list[str]:
    """The ``share`` of candidates with the highest validation loss (users without validation rows
    are never picked: nothing says they are badly served), in candidate order."""
    scored = sorted(valid_loss.items(), key=lambda kv: (-kv[1], kv[0]))
    take = max(1, int(round(share * len(candidates)))) if scored else 0
    rows = sorted(row for row, _ in scored[:take])
    return [candidates[row] for row in rows]


def refine(services: Services, mapped: PromptSet, head: TaskHead, encoder: PromptEncoder, dataset: Dataset, split: Split,
           how: RefinePlan, config: MigrationConfig, *, head_id: int, target: str, task: str, run_id: int,
           progress: bool) -> Refinement:
    """Continue training ``how.users``' mapped prompts on the target, written as an incremental
    version (none when no epoch beats the mapped prompts on validation)."""
    device = encoder.backbone.device
    users, train_head = how.users, how.train_head
    keep = np.isin(dataset.users, np.array(users))
    sub = dataclasses.replace(split, train=split.train[keep[split.train]], valid=split.valid[keep[split.valid]])
    train, valid = prepare_examples(dataset, sub, users, encoder, encoder.template)
    table = PromptTable(services.reads.get_prompts(users, set=mapped.id).float()).to(device)
    optimizers: dict[str, torch.optim.Optimizer] = {"prompts": torch.optim.SparseAdam(table.parameters(), lr=config.refine_lr)}
    if train_head:
        optimizers["head"] = torch.optim.AdamW(head.parameters(), lr=config.head_lr)
    else:
        head.requires_grad_(False)
    loop = TrainingLoop(encoder=encoder, head=head, provider=table, schedulers={}, train=train, valid=valid, task_kind=head.task_kind,
                        optimizers=optimizers, checkpoint=None, steps_hint=f"refine {target}",
                        config=LoopConfig(epochs=how.epochs, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size,
                                          seed=config.seed, checkpoint_every=config.checkpoint_every,
                                          patience=config.patience if how.budget is None else config.budget_refine_patience,
                                          min_steps=config.refine_min_steps if how.budget is None else 0, validate_start=True))
    try:
        loop.fit(progress)
    finally:
        head.requires_grad_(True)
    loop.use_best()
    if loop.state.best_epoch == 0:  # the mapped prompts (and head) stay: no epoch beat them on validation
        return Refinement(None, loop.state, len(users), train_head)
    if train_head:
        head_id = save_head(services, loop.best_head, head, encoder, task=task, model=target, run_id=run_id).id
    prompts = loop.best_provider["rows.weight"].reshape(len(users), mapped.prompt_len, -1).numpy()
    what = "every user" if train_head else f"the {len(users)} users worst on validation after mapping"
    refined = services.writes.import_prompts(target, task, prompts, users, base=mapped.id, run_id=run_id, head=head_id,
                                             note=f"warm-start refinement of set {mapped.id} ({what})")
    return Refinement(refined, loop.state, len(users), train_head)
