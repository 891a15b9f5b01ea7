"""Warm-start refinement after a migration: continue training mapped prompts on the target.

Every user (``refine_share`` 1, the head trains jointly), or only the share of users whose
validation loss after mapping is worst (the head stays fixed: it serves everyone else's mapped
prompts too). Either way the result is an incremental version of the mapped set: users not refined
keep their mapped prompt; the version's rows are only the refined users'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

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
    set: PromptSet
    state: LoopState
    users: int
    head_trained: bool


def worst_users(candidates: Sequence[str], valid_loss: dict[int, float], share: float) -> list[str]:
    """The ``share`` of candidates with the highest validation loss (users without validation rows
    are never picked: nothing says they are badly served), in candidate order."""
    scored = sorted(valid_loss.items(), key=lambda kv: (-kv[1], kv[0]))
    take = max(1, int(round(share * len(candidates)))) if scored else 0
    rows = sorted(row for row, _ in scored[:take])
    return [candidates[row] for row in rows]


def refine(services: Services, mapped: PromptSet, head: TaskHead, encoder: PromptEncoder, dataset: Dataset, split: Split,
           users: list[str], config: MigrationConfig, *, head_id: int, target: str, task: str, run_id: int,
           progress: bool) -> Refinement:
    """Continue training ``users``' mapped prompts on the target, written as an incremental version."""
    device = encoder.backbone.device
    train_head = config.refine_share >= 1
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
                        config=LoopConfig(epochs=config.refine_epochs, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size,
                                          seed=config.seed, checkpoint_every=config.checkpoint_every, patience=config.patience,
                                          min_steps=config.refine_min_steps))
    try:
        loop.fit(progress)
    finally:
        head.requires_grad_(True)
    loop.use_best()
    if train_head:
        head_id = save_head(services, loop.best_head, head, encoder, task=task, model=target, run_id=run_id).id
    prompts = loop.best_provider["rows.weight"].reshape(len(users), mapped.prompt_len, -1).numpy()
    what = "every user" if train_head else f"the {len(users)} users worst on validation after mapping"
    refined = services.writes.import_prompts(target, task, prompts, users, base=mapped.id, run_id=run_id, head=head_id,
                                             note=f"warm-start refinement of set {mapped.id} ({what})")
    return Refinement(refined, loop.state, len(users), train_head)
