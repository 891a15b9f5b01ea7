"""Migration configuration: which method, its options, and what every method shares; validated,
recorded in full with every run (``to_dict`` names the method)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..backbones.prompting import DEFAULT_TEMPLATE
from ..errors import InvalidArgumentError
from .base import MethodConfig, method_config
from .puma.selection import SelectionConfig


@dataclasses.dataclass(frozen=True)
class MigrationConfig:
    """A migration: ``method`` (a registered name, default ``"puma"``) with ``method_config`` (that
    method's config dataclass, a dict of its fields, or None for its defaults), and what every
    method shares.

    Shared: the target head's learning rate (``head_lr`` 1e-3: every method trains a fresh head,
    and one shared 1e-3 stalled PUMA's Phi in a reference run), the batch size, the loop settings
    (the best epoch on a validation tail of the selected users' training rows is kept), user
    selection, the prompt template, the data split, and two steps after the map: applying it to
    everyone, and ``refine_epochs`` > 0, which continues training every user's mapped prompt on
    the target (warm start), written as a second set whose source is the mapped one.

    ``epochs``, ``lr``, ``cosine``, ``hidden``, ``dropout``, ``norm_match`` are write-only
    shorthands: given (not None), they replace the field of the same name in ``method_config``
    (an error for a method whose config has no such field). Read them from ``method_config``.
    """

    method: str = "puma"
    method_config: MethodConfig | dict[str, Any] | None = None
    head_lr: float = 1e-3
    batch_size: int = 32
    seed: int = 0
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
    # shorthands for fields of the method's config, so that flat PUMA configs
    # (``MigrationConfig(epochs=8, lr=1e-3, norm_match=True)``: the CLI, scripts) keep working
    epochs: dataclasses.InitVar[int | None] = None
    lr: dataclasses.InitVar[float | None] = None
    cosine: dataclasses.InitVar[bool | None] = None
    hidden: dataclasses.InitVar[int | None] = None
    dropout: dataclasses.InitVar[float | None] = None
    norm_match: dataclasses.InitVar[bool | None] = None

    def __post_init__(self, epochs: int | None, lr: float | None, cosine: bool | None, hidden: int | None,
                      dropout: float | None, norm_match: bool | None) -> None:
        options = method_config(self.method, self.method_config)  # ConflictError naming the methods for an unknown one
        shorthands = {"epochs": epochs, "lr": lr, "cosine": cosine, "hidden": hidden, "dropout": dropout, "norm_match": norm_match}
        given = {name: value for name, value in shorthands.items() if value is not None}
        if given:
            fields = {f.name for f in dataclasses.fields(options)}
            foreign = [name for name in given if name not in fields]
            if foreign:
                raise InvalidArgumentError(f"invalid migration config: method {self.method!r} has no option(s) {', '.join(foreign)}")
            options = dataclasses.replace(options, **given)
        object.__setattr__(self, "method_config", options)
        checks = [
            (self.head_lr > 0 and self.refine_lr > 0, "learning rates must be > 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.refine_epochs >= 0, "refine_epochs must be >= 0"),
            (self.apply_batch_users >= 1, "apply_batch_users must be >= 1"),
            (0 < self.test_fraction < 1 and 0 <= self.valid_fraction < 1, "split fractions out of range"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidArgumentError(f"invalid migration config: {message}")

    def to_dict(self) -> dict[str, Any]:
        assert isinstance(self.method_config, MethodConfig)
        return {**dataclasses.asdict(self), "method_config": self.method_config.to_dict()}
