"""Training configuration: a validated dataclass, recorded in full with every run."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..backbones.loader import PRECISIONS
from ..backbones.prompting import DEFAULT_TEMPLATE, Template
from ..errors import InvalidArgumentError
from .loop import SCHEDULES


def on_for_clicks(flag: bool | None, task_kind: str) -> bool:
    """A head option given as None means: on for click tasks (popularity is the baseline to beat),
    off for ratings (``item_prior``, ``candidate_scoring`` of both configs)."""
    return flag if flag is not None else task_kind == "click"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Prompt training from scratch (the "full retrain" baseline every migration is judged against).

    Defaults follow the PUMA paper where it gives them (prompt length 1, 15 epochs, lr 5e-4); a
    freshly initialised head learns at its own, higher rate (``head_lr``). The best epoch on a
    validation tail of each user's training rows is kept (real data overfits within a few epochs).
    """

    epochs: int = 15
    lr: float = 5e-4
    head_lr: float = 1e-3
    batch_size: int = 32
    prompt_len: int = 1
    seed: int = 0
    template: str = DEFAULT_TEMPLATE
    history_len: int = 0
    max_length: int = 96
    test_fraction: float = 0.2
    valid_fraction: float = 0.1
    patience: int | None = None  # stop after this many epochs without validation improvement
    init: str = "token-norm"  # random direction scaled to the mean token-embedding norm
    checkpoint_every: int = 200  # steps
    eval_batch_size: int = 128
    freeze_prompts: bool = False  # train the head only (on cached features): the "random-init prompts" baseline
    min_steps: int = 0  # at least this many optimizer steps, however few the epochs hold
    warmup_steps: int = 0
    schedule: str = "constant"  # or "cosine" (decays to final_lr x the peak, never to zero)
    final_lr: float = 0.1
    valid_every: int = 0  # steps between validations (at epoch ends); 0: every epoch
    # the head adds the item's prior score (its training click-through rate, or mean rating) with
    # a learned weight: it starts as the popularity baseline and the prompt adds the personal part.
    # None: on for click tasks, where popularity is the baseline to beat, off for ratings
    item_prior: bool | None = None
    # candidate scoring: the head also scores the match of the user (the hidden state at the prompt
    # slot) and the candidate (the text after it) in a learned low-rank space. None: as item_prior
    candidate_scoring: bool | None = None
    # data parallel under torchrun (``train_prompts``): every rank trains on its share of each
    # global batch, rank 0 stores the set and the run
    distributed: bool = False
    # the backbone's forward and backward passes: "fp32", "bf16" (autocast; prompts, head and
    # optimizer state stay fp32) or "auto" (bf16 where the device has it natively). MPNet-base on
    # one core of an AVX512-BF16 CPU: 3.1 -> 1.5 s a step (batch 32 x 24 tokens)
    precision: str = "fp32"

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.lr > 0 and self.head_lr > 0, "learning rates must be > 0"),
            (self.batch_size >= 1 and self.eval_batch_size >= 1, "batch sizes must be >= 1"),
            (self.prompt_len >= 1, "prompt_len must be >= 1"),
            (0 < self.test_fraction < 1, "test_fraction must be in (0, 1)"),
            (0 <= self.valid_fraction < 1, "valid_fraction must be in [0, 1)"),
            (self.history_len >= 0, "history_len must be >= 0"),
            (self.init in ("token-norm", "token"), "init must be 'token-norm' or 'token'"),
            (self.patience is None or self.patience >= 1, "patience must be >= 1"),
            (self.checkpoint_every >= 1, "checkpoint_every must be >= 1"),
            (self.max_length >= 8, "max_length must be >= 8"),
            (self.min_steps >= 0 and self.warmup_steps >= 0 and self.valid_every >= 0, "min_steps, warmup_steps, valid_every must be >= 0"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}"),
            (0 <= self.final_lr <= 1, "final_lr must be in [0, 1]"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidArgumentError(f"invalid training config: {message}")
        self.template_obj()  # validates the template

    def uses_item_prior(self, task_kind: str) -> bool:
        return on_for_clicks(self.item_prior, task_kind)

    def uses_scoring(self, task_kind: str) -> bool:
        return on_for_clicks(self.candidate_scoring, task_kind)

    def template_obj(self) -> Template:
        return Template.configured(self.template, self.history_len)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
