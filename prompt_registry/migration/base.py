"""What a migration method is, and the table of registered ones.

A migration method learns, from a few selected users, a map from source-model prompts to
target-model prompts, then maps everyone. The orchestration (``migrate.py``) does everything that
does not depend on the method: it resolves the source sets, selects the users, splits their data,
loads the target backbone, builds a fresh target task head, records the run, stores the head and
the adapter artifact, streams every user through the map into a new set, refines, reports and
gates. A method supplies only the map.

Writing a method (PUMA in ``puma/`` is the full example)::

    @dataclasses.dataclass(frozen=True)
    class MyConfig(MethodConfig):            # paper defaults, validated in __post_init__
        epochs: int = 4

    class MyMethod(MigrationMethod[MyConfig]):
        config_class = MyConfig

        @classmethod
        def create(cls, config, spec, backbone): ...   # a fresh, unfitted map for these widths
        def describe(self): ...                        # JSON that restore() rebuilds the map from
        def fit(self, ctx): ...                        # train the map and ctx.head; return the loop
        def map(self, *sources): ...                   # (b, L, w_i) per source -> (b, L, W), no grad
        def to(self, device): ...
        def tensors(self): ...                         # the state to store (CPU tensors)
        @classmethod
        def restore(cls, config, spec, tensors): ...   # the inverse of describe() + tensors()

    register_method("mine", MyMethod)      # one line, in the method folder's __init__.py

and import the folder in ``migration/__init__.py``. ``MigrationConfig(method="mine",
method_config=MyConfig(...))`` then runs it through ``Registry.migrate``, and
``Registry.apply_adapter`` rebuilds it from the stored adapter.

The contract, step by step:

1. ``create(config, spec, backbone)`` is called right after ``torch.manual_seed(seed)``, so any
   random initialisation is reproducible. ``spec`` gives the source widths (several sources are
   an aggregated migration: ``map`` receives one tensor per source), the target width and the
   prompt length; ``backbone`` is the frozen target (e.g. its ``token_norm``).
2. ``describe()`` is recorded in the run's config (``adapter``) before training starts and stored
   as the adapter artifact's ``config["adapter"]``.
3. ``fit(ctx)`` trains on the target model's task loss (or however the method likes) from the
   selected users' data only. ``ctx.sources`` holds every candidate's source prompts (one table
   per source); ``ctx.selected`` says which rows were selected; ``ctx.train`` holds the selected
   users' rows and ``ctx.valid`` every candidate's validation tail (``user_index`` of both indexes
   ``ctx.sources``). ``ctx.head`` is the target head (fresh, or the source head when both read
   the same features) and must come out trained too; ``ctx.training_loop(...)`` builds the shared
   training loop (seeded order, a budget of at least ``min_steps`` optimizer steps, warm-up and
   schedule, the best validation kept, token-pass ledger, checkpoints and ``resume``). ``fit``
   returns the loop whose best state it kept, loaded into the map and the head. The cost of the
   fit is the sum of the ledgers of every loop it built plus ``ctx.extra_forward_tokens`` (forward
   passes outside a loop, e.g. choosing a regulariser). After ``fit`` the orchestration refits the
   head on every candidate's training rows from cached features of the mapped prompts.
   ``ctx.token_tables()`` (when not None) gives the source models' and the target's vocabularies
   and input embeddings, loaded on first call (``alignment``: a start for a map, no forward pass);
   what the method did with them goes in ``ctx.init`` (recorded in the run's ledger).
4. ``map(*sources)`` must be deterministic (eval mode, no gradients): mapping is resumable and
   idempotent only if the same inputs give the same bytes.
5. ``tensors()`` and ``restore(config, spec, tensors)`` are symmetric: ``restore`` of what
   ``describe()`` and ``tensors()`` returned maps exactly like the fitted method.

An adapter artifact's config records ``method`` (the registered name) and ``method_config`` (the
method config as a dict) besides ``adapter`` (``describe()``); ``load_method`` reads them back. An
adapter stored before methods were plug-ins has no ``method``: it is PUMA (``LEGACY_METHOD``).
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

import numpy as np
import torch
from torch import nn

from ..errors import ConflictError, InvalidArgumentError
from ..training.loop import LoopConfig, TrainingLoop

if TYPE_CHECKING:
    from ..backbones.heads import TaskHead
    from ..backbones.loader import Backbone
    from ..backbones.prompting import PromptEncoder
    from ..training.examples import Examples
    from .alignment import TokenTable

LEGACY_METHOD = "puma"  # what an adapter artifact without a recorded method was trained with


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """Base of every method's config: a frozen dataclass, validated in ``__post_init__``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MethodConfig:
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidArgumentError(f"{cls.__name__} has no option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class MappingSpec:
    """The shape of a map: one width per source (concatenated at the input), the target width."""

    source_widths: tuple[int, ...]
    target_width: int
    prompt_len: int


@dataclasses.dataclass
class FitContext:
    """Everything a method's ``fit`` gets: the frozen target, the data and source prompts, a target
    head, and the loop settings shared by every method.

    ``sources`` hold the prompts of every *candidate* (each user with a source prompt and data),
    ``selected`` the rows of the users the method may train on. ``train`` holds the selected users'
    training rows; ``valid`` the validation tails of every candidate (forward only: model selection
    sees the users the map never trained on), ``valid_selected`` those of the selected users only.
    ``user_index`` of all three indexes the rows of ``sources``."""

    backbone: Backbone
    encoder: PromptEncoder
    task_kind: str
    head: TaskHead  # on the backbone's device, fresh or warm-started from the source head: train it with the map
    head_lr: float
    sources: list[torch.Tensor]  # per source: (n_candidates, prompt_len, width), on the backbone's device
    selected: np.ndarray  # int64 rows of ``sources`` whose users were selected
    train: Examples
    valid: Examples
    valid_selected: Examples
    batch_size: int
    eval_batch_size: int
    seed: int
    checkpoint_every: int
    patience: int | None
    checkpoint: Path | None
    resume: bool
    progress: bool
    min_steps: int = 0
    warmup_steps: int = 0
    final_lr: float = 0.1
    valid_every: int = 0
    steps_hint: str = "adapter"
    extra_forward_tokens: int = 0  # forward passes a method ran outside a training loop
    head_prefit: bool = True
    prefit: dict[str, Any] = dataclasses.field(default_factory=dict)  # what prefit_head did
    loops: list[TrainingLoop] = dataclasses.field(default_factory=list)  # built so far (their ledgers add up to the fit's cost)
    distributed: bool = False  # every loop trains data parallel over the torch.distributed process group
    # the source models' and the target's vocabularies and input embeddings (``alignment``), loaded
    # when a method first asks for them; None where the caller offers none
    token_tables: Callable[[], tuple[list[TokenTable], TokenTable]] | None = None
    init: dict[str, Any] = dataclasses.field(default_factory=dict)  # how the method started its map, for the ledger

    def loop_config(self, epochs: int, schedule: str = "constant") -> LoopConfig:
        return LoopConfig(epochs=epochs, batch_size=self.batch_size, eval_batch_size=self.eval_batch_size, seed=self.seed,
                          checkpoint_every=self.checkpoint_every, patience=self.patience, min_steps=self.min_steps,
                          warmup_steps=self.warmup_steps, schedule=schedule, final_lr=self.final_lr, valid_every=self.valid_every,
                          distributed=self.distributed)

    def prefit_head(self, provider: nn.Module) -> None:
        """Fit ``ctx.head`` on cached features of the selected users' training rows with the prompts
        ``provider`` gives now (the unfitted map), before the map trains: a fresh head otherwise
        spends the first ~200-300 steps learning item effects while the map learns nothing. One
        forward pass (counted in ``extra_forward_tokens``); a no-op when ``head_prefit`` is off."""
        if not self.head_prefit:
            return
        from ..training.headfit import HeadFitConfig, cached_features, fit_head

        with torch.no_grad():
            train = cached_features(self.encoder, provider, self.train, self.eval_batch_size)
            valid = cached_features(self.encoder, provider, self.valid_selected, self.eval_batch_size)
        fit = fit_head(self.head, train, valid, HeadFitConfig(lr=self.head_lr), seed=self.seed)
        self.extra_forward_tokens += train.forward_tokens + valid.forward_tokens
        self.prefit = {"token_passes": train.forward_tokens + valid.forward_tokens, "epochs": fit.epochs_run, "best_epoch": fit.best_epoch,
                       "valid_before": fit.before_metric, "valid_after": fit.best_metric}
        self.head.train()

    def training_loop(self, provider: nn.Module, optimizers: Mapping[str, torch.optim.Optimizer],
                      schedulers: Mapping[str, Any] | None = None, *, epochs: int, schedule: str = "constant",
                      valid: Examples | None = None, checkpoint: Path | None | bool = True) -> TrainingLoop:
        """The shared training loop over ``ctx.train`` (validated on ``valid``, default ``ctx.valid``)
        for ``provider`` (user index -> prompts) and ``ctx.head``, at least ``min_steps`` steps with
        warm-up and ``schedule``; restored from the run's checkpoint when resuming. A method that runs
        several loops passes ``checkpoint=False`` for all but one (one checkpoint file per run)."""
        path = self.checkpoint if checkpoint is True else (checkpoint or None)
        loop = TrainingLoop(encoder=self.encoder, head=self.head, provider=provider, optimizers=optimizers,
                            schedulers=schedulers or {}, train=self.train, valid=self.valid if valid is None else valid,
                            task_kind=self.task_kind, checkpoint=path, steps_hint=self.steps_hint,
                            config=self.loop_config(epochs, schedule))
        if self.resume and path is not None:
            loop.restore()
        self.loops.append(loop)
        return loop


ConfigT = TypeVar("ConfigT", bound=MethodConfig)


class MigrationMethod(abc.ABC, Generic[ConfigT]):
    """A way to map source-model prompts to target-model prompts (see the module docstring);
    ``ConfigT`` is the method's ``config_class``."""

    name: ClassVar[str] = ""  # set by register_method
    # ClassVar cannot hold ConfigT; register_method checks it is a MethodConfig dataclass and
    # method_config() that a given config is an instance of it
    config_class: ClassVar[type[MethodConfig]]

    def __init__(self, config: ConfigT) -> None:
        self.config = config

    @classmethod
    @abc.abstractmethod
    def create(cls, config: ConfigT, spec: MappingSpec, backbone: Backbone) -> MigrationMethod[ConfigT]:
        """A fresh, unfitted map from ``spec.source_widths`` to ``spec.target_width`` for ``backbone``."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """JSON-able description of the built map (widths, resolved sizes): ``restore``'s ``spec``."""

    @abc.abstractmethod
    def fit(self, ctx: FitContext) -> TrainingLoop:
        """Train the map and ``ctx.head`` on the selected users; return the loop whose best epoch is
        loaded (build it with ``ctx.training_loop``)."""

    @abc.abstractmethod
    def map(self, *sources: torch.Tensor) -> torch.Tensor:
        """One (batch, prompt_len, w_i) tensor per source -> (batch, prompt_len, target_width); no grad."""

    @abc.abstractmethod
    def to(self, device: str | torch.device) -> MigrationMethod[ConfigT]:
        """Move the map's tensors to ``device``; returns ``self``."""

    @abc.abstractmethod
    def tensors(self) -> dict[str, torch.Tensor]:
        """The fitted state to store in the adapter artifact (CPU tensors)."""

    @classmethod
    @abc.abstractmethod
    def restore(cls, config: ConfigT, spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> MigrationMethod[ConfigT]:
        """Rebuild a fitted method from ``describe()`` and ``tensors()`` of an earlier one."""

    def retained(self) -> dict[int, torch.Tensor]:
        """Prompts the fit produced directly for some users, by row of ``ctx.sources``, that the
        migrated set keeps instead of their mapped prompt (e.g. anchors retrained on the target).
        Only the migration run uses them; reusing the stored adapter maps everyone. Default: none."""
        return {}


_METHODS: dict[str, type[MigrationMethod[Any]]] = {}


def register_method(name: str, cls: type[MigrationMethod[Any]]) -> type[MigrationMethod[Any]]:
    """Make ``cls`` available as ``MigrationConfig(method=name)``; registering it again is a no-op.

    Raises ``ConflictError`` when ``name`` is taken by another class or ``cls`` is not a method."""
    if not (isinstance(cls, type) and issubclass(cls, MigrationMethod)):
        raise ConflictError(f"migration method {name!r} must subclass MigrationMethod, got {cls!r}")
    config_class = getattr(cls, "config_class", None)
    if not (isinstance(config_class, type) and issubclass(config_class, MethodConfig) and dataclasses.is_dataclass(config_class)):
        raise ConflictError(f"migration method {name!r} needs a config_class: a MethodConfig dataclass")
    known = _METHODS.get(name)
    if known is not None and known is not cls:
        raise ConflictError(f"migration method {name!r} is already registered ({known.__module__}.{known.__qualname__})")
    if cls.name and cls.name != name:
        raise ConflictError(f"{cls.__qualname__} is registered as {cls.name!r}, not {name!r}")
    cls.name = name
    _METHODS[name] = cls
    return cls


def available_methods() -> tuple[str, ...]:
    """The registered method names, sorted."""
    return tuple(sorted(_METHODS))


def get_method(name: str) -> type[MigrationMethod[Any]]:
    """The method class registered as ``name``; ``ConflictError`` naming the registered ones if none."""
    try:
        return _METHODS[name]
    except KeyError:
        raise InvalidArgumentError(f"unknown migration method {name!r}; registered: {', '.join(available_methods()) or 'none'}") from None


def method_config(name: str, value: MethodConfig | dict[str, Any] | None) -> MethodConfig:
    """``value`` as method ``name``'s config: its defaults for None, parsed from a dict, or checked."""
    config_class = get_method(name).config_class
    if value is None:
        return config_class()
    if isinstance(value, dict):
        return config_class.from_dict(value)
    if not isinstance(value, config_class):
        raise InvalidArgumentError(f"method {name!r} takes a {config_class.__name__}, got a {type(value).__name__}")
    return value


def artifact_config(method: MigrationMethod[Any]) -> dict[str, Any]:
    """What an adapter artifact's config records about its method (merged with the run's facts)."""
    return {"method": method.name, "method_config": method.config.to_dict(), "adapter": method.describe()}


def load_method(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> MigrationMethod[Any]:
    """Rebuild the fitted method from an adapter artifact's config and tensors (through the table)."""
    name = config.get("method", LEGACY_METHOD)
    cls = get_method(name)
    return cls.restore(method_config(name, config.get("method_config")), config["adapter"], tensors)

