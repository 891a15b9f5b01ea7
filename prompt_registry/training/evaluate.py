"""Evaluating a prompt set on a data split, stored as an evaluation run with per-user metrics."""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from ..backbones.heads import TaskHead
from ..backbones.loader import Backbone, load_backbone
from ..backbones.prompting import PromptEncoder, Template
from ..core.services import Services
from ..data.dataset import Dataset
from ..entities import CostLedger, Evaluation, PromptSet
from ..errors import ConflictError
from . import metrics
from .config import TrainConfig
from .examples import build_examples, item_priors, user_histories
from .loop import run_batches


def split_fractions(services: Services, set_run_id: int | None, config: TrainConfig | None) -> tuple[float, float]:
    """Use the split the prompts were trained with (recorded in their run), else the config's."""
    if config is not None:
        return config.test_fraction, config.valid_fraction
    if set_run_id is not None:
        recorded = services.runs.get_run(set_run_id).config
        if "test_fraction" in recorded:
            return float(recorded["test_fraction"]), float(recorded.get("valid_fraction", 0.0))
    defaults = TrainConfig()
    return defaults.test_fraction, defaults.valid_fraction


def require_head(prompt_set: PromptSet, purpose: str) -> int:
    """The set's head artifact id, or a ``ConflictError`` saying the set cannot be ``purpose`` without one."""
    if prompt_set.head_id is None:
        raise ConflictError(f"prompt set {prompt_set.id} has no task head, so it cannot be {purpose}; sets made by "
                            "`prompt train` or `migrate run` carry one")
    return prompt_set.head_id


def set_head(services: Services, prompt_set: PromptSet, backbone: Backbone, *, purpose: str = "used") -> tuple[TaskHead, Template, PromptEncoder]:
    """The task head a set was trained or migrated with (on ``backbone``'s device, in eval mode), its
    template, and the encoder that injects the set's prompts into ``backbone``."""
    info = services.models.get_model(prompt_set.model)
    if backbone.fingerprint != info.fingerprint:
        raise ConflictError(f"backbone {backbone.name} is not the model of set {prompt_set.id} ({info.name})")
    head_id = require_head(prompt_set, purpose)
    _, tensors = services.artifacts.load_artifact(head_id, fingerprint=info.fingerprint)
    meta = services.artifacts.get_artifact(head_id).config
    head = TaskHead.from_artifact(meta, tensors).to(backbone.device).eval()
    template = Template(meta["template"], meta["history_len"])
    encoder = PromptEncoder(backbone, template, prompt_set.prompt_len, head.task_kind, meta["max_length"], item_prior=head.prior,
                            scoring=head.scoring_width > 0)
    return head, template, encoder


def evaluate_set(services: Services, ref: int | str | PromptSet, data: str | os.PathLike[str] | Dataset, *, split: str = "test",
                 config: TrainConfig | None = None, device: str = "auto", backbone: Backbone | None = None,
                 batch_size: int = 128, precision: str = "fp32") -> Evaluation:
    """RMSE/MAE (rating) or AUC/uAUC (click) of a set on ``split``, overall and per user, next to
    the baselines (global and per-user mean, or popularity), recorded as an ``eval`` run. The
    backbone runs at ``precision`` (``TrainConfig.precision``) unless one is given (it keeps its
    own); ``config`` gives only the split."""
    started = time.perf_counter()
    prompt_set = services.reads.get_set(ref)
    require_head(prompt_set, "evaluated")
    dataset = Dataset.coerce(data)
    test_fraction, valid_fraction = split_fractions(services, prompt_set.run_id, config)
    parts = dataset.split(test_fraction=test_fraction, valid_fraction=valid_fraction)
    rows = parts.part(split)
    backbone = backbone or load_backbone(services.models.get_model(prompt_set.model), device=device, precision=precision)
    head, template, encoder = set_head(services, prompt_set, backbone, purpose="evaluated")
    backbone = encoder.backbone

    wanted = list(dict.fromkeys(dataset.users[rows].tolist()))
    have = set(services.reads.list_set_users(prompt_set.id))
    users = [u for u in wanted if u in have]
    rows = rows[np.isin(dataset.users[rows], users)]
    prompts = services.reads.get_prompts(users, set=prompt_set.id).to(backbone.device) if users else torch.empty(0)
    index = {u: i for i, u in enumerate(users)}
    priors = item_priors(dataset, parts.train, head.task_kind) if head.prior else None
    examples = build_examples(dataset, rows, index, encoder, template, user_histories(dataset, parts.train, template.history_len), priors)
    run = services.runs.start_run("eval", model=prompt_set.model, task=prompt_set.task,
                             config={"set_id": prompt_set.id, "data": dataset.root, "data_fingerprint": dataset.fingerprint,
                                     "split": split, "test_fraction": test_fraction, "valid_fraction": valid_fraction,
                                     "precision": backbone.precision})
    pred, tokens = run_batches(encoder, head, lambda idx: prompts[idx], examples, batch_size)
    overall: dict[str, Any] = dict(metrics.summarize(examples.users, pred, examples.labels, head.task_kind))  # plus baselines (nested), counts
    train = parts.train
    overall["baselines"] = metrics.baselines(dataset.users[train], dataset.items[train], dataset.labels[train],
                                             examples.users, examples.items, examples.labels, head.task_kind)
    overall["users"] = len(users)
    overall["users_without_prompt"] = len(wanted) - len(users)
    per_user = metrics.per_user(examples.users, pred, examples.labels, head.task_kind)
    ledger = CostLedger(wall_seconds=round(time.perf_counter() - started, 3), device=backbone.device,
                        examples_seen=len(examples), forward_tokens=tokens, backward_tokens=0)
    services.runs.finish_run(run.id, ledger=ledger, results={k: v for k, v in overall.items() if k != "baselines"})
    return services.runs.record_evaluation(prompt_set.id, dataset=f"{dataset.root}#{dataset.fingerprint[:12]}", split=split,
                                      metrics=overall, per_user=per_user, run_id=run.id)
