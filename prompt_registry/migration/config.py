"""Migration configuration: which method, its options, and what every method shares; validated,
recorded in full with every run (``to_dict`` names the method)."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..backbones.loader import PRECISIONS
from ..backbones.prompting import DEFAULT_TEMPLATE, Template
from ..errors import InvalidArgumentError
from ..training.config import TrainConfig, on_for_clicks
from .base import MethodConfig, method_config
from .coverage import check as check_coverage
from .puma.selection import SelectionConfig


@dataclasses.dataclass(frozen=True)
class MigrationConfig:
    """A migration: ``method`` (a registered name, default ``"puma"``) with ``method_config`` (that
    method's config dataclass, a dict of its fields, or None for its defaults), and what every
    method shares.

    Shared: the target head's learning rate (``head_lr`` 1e-3: one shared 1e-3 stalled PUMA's
    Phi in a reference run), the batch size, the budget and schedule (at least ``min_steps``
    optimizer steps with ``warmup_steps`` of warm-up: small subsets make few steps per epoch, and a
    map trained for 125-330 steps was measured still improving when its schedule hit zero), model
    selection on the validation tails of every candidate (``validate_on="all"``, forward only) or
    of the selected users only, user selection, the prompt template, the data split, and what
    follows the map: ``head_refit`` (the head refitted on every candidate's training rows from
    cached backbone features: one forward pass; the head trained with the map saw only the
    selected users), applying the map to everyone, and ``refine_epochs`` > 0, which continues
    training the mapped prompts on the target (warm start) of every user or, with
    ``refine_share`` < 1, only of the share whose validation loss after mapping is worst, written as
    an incremental version of the mapped set.

    ``cost_budget`` (when ``refine_epochs`` is 0) spends what the fit leaves of a token-pass budget
    on that refinement: the budget is a share of a reference retrain (``reference_epochs`` epochs
    over every candidate's training rows, with a validation each epoch), by default the same share
    as the selected users (``"selection"``: selecting 30% of the users means spending at most 30% of
    a retrain; selecting everyone, the default selection, sets no budget). What the fit and head
    refit leave buys whole epochs over every user (head trained
    too) or, when not one such epoch fits, ``share_refine_epochs`` epochs over the users worst on
    validation after mapping, as many as fit. None: no refinement unless ``refine_epochs`` asks.
    Refinement keeps its best epoch on validation, the mapped state included: when no epoch beats
    the mapped prompts, no refined version is written. The budget's refinement also stops early
    (``budget_refine_patience``): two epochs that do not beat the best so far end it.

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
    history_len: int = 0  # the user's recent training items in the text ({history}), as ``TrainConfig.history_len``
    item_prior: bool | None = None  # the target head adds the item's prior score: as ``TrainConfig.item_prior``
    candidate_scoring: bool | None = None  # the target head scores user-candidate matches: as ``TrainConfig.candidate_scoring``
    max_length: int = 96
    test_fraction: float = 0.2
    valid_fraction: float = 0.1
    patience: int | None = None
    refine_epochs: int = 0
    refine_lr: float = 5e-4
    refine_min_steps: int = 0  # refinement's step budget floor (refine_epochs or this many steps, whichever is more)
    refine_share: float = 1.0  # refine only this share of users: those worst on validation after mapping
    cost_budget: float | str | None = "selection"  # token-passes at most, as a share of a reference retrain (see above)
    reference_epochs: int = TrainConfig.epochs  # the reference retrain's epochs: a default retrain's
    share_refine_epochs: int = 2  # with a cost budget too small for an epoch over everyone: epochs over the worst users
    # the budget's refinement stops after this many epochs without improvement on validation: 2,
    # as a warm start's first epoch can fall short of the map and the second pass it (seeds 9 and
    # 10 at refine lr 5e-3, validation rows only); a refinement that does not help then costs two
    # epochs, not the whole budget
    budget_refine_patience: int | None = 2
    min_steps: int = 1000  # optimizer steps at least, however few epochs the selected users' rows make
    # ... but no more steps than this many epochs over every candidate's training rows (a default
    # retrain runs 15): on a small user base 1,000 steps would cost more than retraining everyone
    max_fit_epochs: float | None = 1.5
    warmup_steps: int = 100
    final_lr: float = 0.1  # the cosine schedule ends at this share of the peak, never at zero
    valid_every: int = 100  # steps between validations (at epoch ends)
    validate_on: str = "all"  # whose validation tails pick the best state: every candidate's, or the selected users'
    head_prefit: bool = False  # fit the head on cached features of the unfitted map's prompts before the map trains
    head_refit: bool = True  # refit the head on every candidate's training rows from cached features
    warm_start_head: bool = True  # start the target head from the source head when both read the same features
    # who is mapped when the sources hold different users (see ``coverage.py``): ``impute`` maps
    # everyone with at least one source prompt (a missing source reads that source's mean prompt);
    # ``common`` only the users in every source. ``cold_start="centroid"`` also gives the data
    # set's users without any source prompt the mapped centroid; ``"skip"`` lists them only.
    coverage: str = "impute"
    cold_start: str = "skip"
    # users mapped per forward pass when a set is applied: a whole write batch (``write_batch_rows``:
    # up to 64 chunks, capped in bytes), so the outputs are not concatenated again; 200,000 users x 576 -> 384 on 2
    # cores: 1 process 3.0-3.1 -> 2.75-2.9 s, 2 shards 1.9-2.0 -> 1.7-1.8 s against 4,096
    apply_batch_users: int = 16384
    distributed: bool = False  # data parallel fit under torchrun: every rank fits, rank 0 stores (``migration.migrate``)
    checkpoint_every: int = 200
    eval_batch_size: int = 128
    # the target backbone's passes (fit, head refit, refinement, the report's evaluations): "fp32",
    # "bf16" (autocast) or "auto", as ``TrainConfig.precision``
    precision: str = "fp32"
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
            (0 < self.refine_share <= 1, "refine_share must be in (0, 1]"),
            (self.refine_min_steps >= 0, "refine_min_steps must be >= 0"),
            (self.cost_budget is None or self.cost_budget == "selection"
             or (isinstance(self.cost_budget, (int, float)) and not isinstance(self.cost_budget, bool) and self.cost_budget > 0),
             f"cost_budget must be 'selection', a share of a retrain's token-passes > 0, or None; got {self.cost_budget!r}"),
            (self.reference_epochs >= 1 and self.share_refine_epochs >= 1, "reference_epochs and share_refine_epochs must be >= 1"),
            (self.budget_refine_patience is None or self.budget_refine_patience >= 1, "budget_refine_patience must be >= 1 (or None)"),
            (self.min_steps >= 0 and self.warmup_steps >= 0 and self.valid_every >= 0, "min_steps, warmup_steps, valid_every must be >= 0"),
            (0 <= self.final_lr <= 1, "final_lr must be in [0, 1]"),
            (self.max_fit_epochs is None or self.max_fit_epochs > 0, "max_fit_epochs must be > 0 (or None: no cap)"),
            (self.validate_on in ("all", "selected"), "validate_on must be 'all' or 'selected'"),
            (self.apply_batch_users >= 1, "apply_batch_users must be >= 1"),
            (0 < self.test_fraction < 1 and 0 <= self.valid_fraction < 1, "split fractions out of range"),
            (self.history_len >= 0, "history_len must be >= 0"),
            (self.precision in PRECISIONS, f"precision must be one of {', '.join(PRECISIONS)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidArgumentError(f"invalid migration config: {message}")
        check_coverage(self.coverage, self.cold_start)
        self.template_obj()  # validates the template

    def cost_share(self, selected: int, candidates: int) -> float | None:
        """The cost budget as a share of the reference retrain (None: no budget). ``"selection"``
        with every candidate selected (the default selection) is no budget: the map alone, as a
        share of 1 would let the refinement cost a whole retrain."""
        if self.cost_budget is None or (self.cost_budget == "selection" and selected >= candidates):
            return None
        return selected / max(candidates, 1) if self.cost_budget == "selection" else float(self.cost_budget)

    def reference_token_passes(self, train_tokens: float, valid_tokens: float) -> float:
        """The reference retrain the cost budget is a share of: ``reference_epochs`` epochs of a
        forward and backward pass over ``train_tokens`` and a validation pass over ``valid_tokens``."""
        return self.reference_epochs * (2 * train_tokens + valid_tokens)

    def uses_item_prior(self, task_kind: str) -> bool:
        return on_for_clicks(self.item_prior, task_kind)

    def uses_scoring(self, task_kind: str) -> bool:
        return on_for_clicks(self.candidate_scoring, task_kind)

    def template_obj(self) -> Template:
        return Template.configured(self.template, self.history_len)

    def to_dict(self) -> dict[str, Any]:
        assert isinstance(self.method_config, MethodConfig)
        return {**dataclasses.asdict(self), "method_config": self.method_config.to_dict()}
