"""Migration configuration: paper defaults, validated, recorded in full with every run."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..backbones.prompting import DEFAULT_TEMPLATE
from ..errors import ConflictError
from .selection import SelectionConfig


@dataclasses.dataclass(frozen=True)
class MigrationConfig:
    """PUMA adapter training and apply.

    Paper defaults: 4 epochs, lr 1e-4, batch 32, cosine schedule. A freshly initialised target head
    learns at its own rate (``head_lr`` 1e-3: one shared 1e-3 stalled Phi in a reference run). The
    best epoch on a validation tail of the selected users' training rows is kept.

    Beyond the paper: ``norm_match`` rescales mapped prompts to the target's token-embedding norm,
    and ``refine_epochs`` > 0 continues training every user's mapped prompt on the target
    (warm start), written as a second set whose source is the mapped one.
    """

    epochs: int = 4
    lr: float = 1e-4
    head_lr: float = 1e-3
    batch_size: int = 32
    cosine: bool = True
    seed: int = 0
    hidden: int | None = None
    dropout: float = 0.1
    norm_match: bool = False
    selection: SelectionConfig = dataclasses.field(default_factory=SelectionConfig)
    template: str = DEFAULT_TEMPLATE
    max_length: int = 96
    test_fraction: float = 0.2
    valid_fraction: float = 0.1
    patience: int | None = None
    refine_epochs: int = 0
    refine_lr: float = 5e-4
    apply_batch_users: int = 4096
    checkpoint_every: int = 200
    eval_batch_size: int = 128

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.lr > 0 and self.head_lr > 0 and self.refine_lr > 0, "learning rates must be > 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.refine_epochs >= 0, "refine_epochs must be >= 0"),
            (self.apply_batch_users >= 1, "apply_batch_users must be >= 1"),
            (0 < self.test_fraction < 1 and 0 <= self.valid_fraction < 1, "split fractions out of range"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConflictError(f"invalid migration config: {message}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
