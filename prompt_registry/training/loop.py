"""The one training loop behind prompt training, adapter training and warm-start refinement.

What is trained differs (a per-user prompt table, or an adapter mapping frozen source prompts);
everything else is shared: seeded data order, the task head, validation every epoch with the best
epoch kept, the cost ledger (token-passes), and crash-safe checkpoints that make ``resume`` give
the same result as an uninterrupted run.

**Data parallel** (``LoopConfig.distributed``, under ``torchrun``: a ``torch.distributed`` process
group, gloo on CPU, NCCL on GPU): the trainable modules (provider and head) are wrapped in one
``DistributedDataParallel`` objective, which broadcasts rank 0's weights at the start; every rank
walks the same seeded epoch order, takes its share ``positions[rank::world]`` of each global batch
of ``batch_size`` rows, and DDP averages the gradients, so every rank steps the same weights as a
single process on the same global batch would (up to float summation order; the loss logged is
the global batch's). Validation runs on every rank over all validation rows (the same numbers, so
every rank keeps the same best epoch and stops together); only rank 0 writes checkpoints. The
state sums the ranks' training tokens when the fit ends; validation tokens are counted once.

A per-user prompt table (sparse embedding rows, ``PromptTable``) stays out of DDP: a dense
all-reduce would move the whole table every step. Every rank holds the table (rank 0's, broadcast
once) and knows the global batch, so after the backward pass the loop all-reduces only the rows of
the global batch's users (at most ``batch_size`` rows) and averages them as DDP averages the head's
gradients: every rank's table takes the same sparse step a single process would take.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._util import echo
from ..backbones.heads import TaskHead
from ..backbones.prompting import PromptEncoder
from ..entities import CostLedger
from ..errors import InvalidArgumentError
from . import metrics
from .checkpoint import flatten_optimizer, load_checkpoint, save_checkpoint, unflatten_optimizer
from .examples import Examples

SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """How long and how a loop trains. The budget is ``epochs`` or ``min_steps`` optimizer steps,
    whichever is more: on small data a few epochs are a few dozen steps, too few for anything to
    learn (every method here shows a flat start of ~200-300 steps). ``warmup_steps`` ramp every
    learning rate up linearly; ``schedule="cosine"`` then decays it to ``final_lr`` x its peak (not to
    zero: a curve still falling when the rate reaches zero is wasted). Validation runs at the end of
    an epoch once ``valid_every`` steps have passed since the last one (and after the last epoch);
    ``patience`` counts validations without improvement. ``validate_start`` validates the starting
    state too, as "epoch 0": a warm start (refinement) then never ends worse on validation than it
    began; ``best_epoch`` 0 says no epoch beat it."""

    epochs: int
    batch_size: int
    eval_batch_size: int
    seed: int
    checkpoint_every: int
    patience: int | None
    min_steps: int = 0
    warmup_steps: int = 0
    schedule: str = "constant"
    final_lr: float = 0.1
    valid_every: int = 0
    distributed: bool = False  # data parallel over the initialised torch.distributed process group (module docstring)
    validate_start: bool = False  # the starting state is a candidate for the best, as epoch 0

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise InvalidArgumentError(f"unknown schedule {echo(self.schedule)}; use one of {', '.join(SCHEDULES)}")
        if self.min_steps < 0 or self.warmup_steps < 0 or self.valid_every < 0:
            raise InvalidArgumentError("min_steps, warmup_steps and valid_every must be >= 0")
        if not 0 <= self.final_lr <= 1:
            raise InvalidArgumentError("final_lr must be in [0, 1] (a share of the peak learning rate)")

    def total_epochs(self, steps_per_epoch: int) -> int:
        """Epochs to run: ``epochs``, or more when they hold fewer than ``min_steps`` steps."""
        return max(self.epochs, -(-self.min_steps // max(steps_per_epoch, 1)))

    def lr_factor(self, total_steps: int) -> Callable[[int], float]:
        """The schedule as a multiplier of each optimizer's learning rate, by step."""
        warmup, floor, cosine = self.warmup_steps, self.final_lr, self.schedule == "cosine"

        def factor(step: int) -> float:
            if warmup and step < warmup:
                return (step + 1) / warmup
            if not cosine:
                return 1.0
            progress = min(step - warmup, total_steps - warmup) / max(total_steps - warmup, 1)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return factor


@dataclasses.dataclass
class LoopState:
    """Everything a checkpoint holds besides module and optimizer states."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_metric: float = float("nan")
    best_epoch: int = -1
    best_step: int = 0
    validations: int = 0
    best_validation: int = 0  # which validation was the best (1-based; patience counts from it)
    last_valid_step: int = 0
    examples_seen: int = 0
    forward_tokens: int = 0
    backward_tokens: int = 0
    wall_seconds: float = 0.0
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)


class PromptTable(nn.Module):
    """Per-user prompt rows as a sparse embedding: an optimizer step touches only the batch's users."""

    def __init__(self, prompts: torch.Tensor) -> None:
        super().__init__()
        self.prompt_len, self.width = prompts.shape[1], prompts.shape[2]
        self.rows = nn.Embedding(prompts.shape[0], self.prompt_len * self.width, sparse=True)
        with torch.no_grad():
            self.rows.weight.copy_(prompts.reshape(prompts.shape[0], -1))

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.rows(index).reshape(-1, self.prompt_len, self.width)


def answer_features(encoder: PromptEncoder, prompt_source: Callable[[torch.Tensor], torch.Tensor], examples: Examples,
                    batch_size: int) -> Iterator[tuple[torch.Tensor, int]]:
    """The backbone's answer features of ``examples`` batch by batch (no gradients), each with the
    forward tokens it cost; ``prompt_source`` maps a batch's user index to its prompt rows."""
    device = encoder.backbone.device
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            pos = list(range(start, min(start + batch_size, len(examples))))
            batch = encoder.collate([examples.suffix_ids[p] for p in pos], examples.prior_of(pos))
            index = torch.as_tensor(examples.user_index[pos], device=device)
            yield encoder.features(prompt_source(index), batch), int(batch["attention_mask"].sum())


def run_batches(encoder: PromptEncoder, head: TaskHead, prompt_source: Callable[[torch.Tensor], torch.Tensor],
                examples: Examples, batch_size: int) -> tuple[np.ndarray, int]:
    """Predictions for every example (no gradients) and the forward tokens it cost."""
    preds, tokens = [], 0
    for features, cost in answer_features(encoder, prompt_source, examples, batch_size):
        with torch.no_grad():
            preds.append(head.predict(features).cpu().numpy())
        tokens += cost
    return (np.concatenate(preds) if preds else np.empty(0, np.float32)), tokens


def _better(kind: str, new: float, old: float) -> bool:
    if np.isnan(old):
        return True
    return new < old if kind == "rating" else new > old


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module``'s state dict (a best epoch kept, an artifact to store)."""
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class _Objective(nn.Module):
    """Provider and head as one module, for ``DistributedDataParallel``; the frozen backbone is held
    outside the module tree (it is not synchronised or broadcast)."""

    def __init__(self, encoder: PromptEncoder, provider: nn.Module, head: TaskHead, *, provider_outside: bool = False) -> None:
        super().__init__()
        self.head = head
        self.__dict__["encoder"] = encoder  # not a submodule
        if provider_outside:  # sparse prompt rows: the loop synchronises their gradients itself
            self.__dict__["provider"] = provider
        else:
            self.provider = provider

    def forward(self, index: torch.Tensor, batch: dict[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        loss, _ = self.head.loss(self.__dict__["encoder"].features(self.provider(index), batch), labels)
        return loss


def sparse_rows(module: nn.Module) -> list[nn.Parameter]:
    """The trainable weights of ``module``'s sparse embeddings (per-user prompt rows)."""
    return [m.weight for m in module.modules() if isinstance(m, nn.Embedding) and m.sparse and m.weight.requires_grad]  # type: ignore[misc]


def _process_group() -> tuple[int, int]:
    """(rank, world size) of the initialised process group; ``InvalidArgumentError`` without one."""
    import torch.distributed as dist

    from .distributed import group_rank

    return group_rank("LoopConfig(distributed=True)", "torchrun --nproc_per_node N ..."), dist.get_world_size()


class TrainingLoop:
    """Trains ``provider`` (index -> prompts) and ``head`` on ``train``; keeps the best epoch on ``valid``."""

    def __init__(self, *, encoder: PromptEncoder, head: TaskHead, provider: nn.Module, optimizers: Mapping[str, torch.optim.Optimizer],
                 schedulers: Mapping[str, Any], train: Examples, valid: Examples, config: LoopConfig, task_kind: str,
                 checkpoint: Path | None, steps_hint: str = "train") -> None:
        self.encoder, self.head, self.provider = encoder, head, provider
        self.train, self.valid, self.config, self.task_kind = train, valid, config, task_kind
        self.optimizers = optimizers
        if not schedulers and (config.schedule != "constant" or config.warmup_steps):
            factor = config.lr_factor(self.total_steps)
            schedulers = {name: torch.optim.lr_scheduler.LambdaLR(opt, factor) for name, opt in optimizers.items()}
        self.schedulers = schedulers
        self.checkpoint, self.desc = checkpoint, steps_hint
        self.state = LoopState()
        self.rank, self.world = _process_group() if config.distributed else (0, 1)
        self._objective: nn.Module | None = None
        self._rows: list[nn.Parameter] = []
        if config.distributed:
            import torch.distributed as dist
            from torch.nn.parallel import DistributedDataParallel

            self._rows = sparse_rows(provider)
            dense = [p for p in provider.parameters() if p.requires_grad and all(p is not r for r in self._rows)]
            if self._rows and dense:
                raise InvalidArgumentError("a provider with both sparse prompt rows and dense weights cannot train data parallel: "
                                           "keep the dense part in the head, or train in one process")
            for weight in self._rows:
                with torch.no_grad():
                    dist.broadcast(weight.data, src=0)  # every rank starts from rank 0's table
            objective = _Objective(encoder, provider, head, provider_outside=bool(self._rows))
            self._objective = DistributedDataParallel(objective, find_unused_parameters=True)  # broadcasts rank 0's weights
        self.best_provider = cpu_state(provider)
        self.best_head = cpu_state(head)

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.train) // self.config.batch_size)

    @property
    def total_epochs(self) -> int:
        return self.config.total_epochs(self.steps_per_epoch)

    @property
    def total_steps(self) -> int:
        return self.total_epochs * self.steps_per_epoch

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self) -> None:
        if self.checkpoint is None or self.rank != 0:
            return
        tensors: dict[str, torch.Tensor] = {}
        for prefix, state in (("provider", self.provider.state_dict()), ("head", self.head.state_dict()),
                              ("best_provider", self.best_provider), ("best_head", self.best_head)):
            tensors |= {f"{prefix}.{k}": v for k, v in state.items()}
        meta: dict[str, Any] = {"state": dataclasses.asdict(self.state), "optimizers": {}, "schedulers": {}}
        for name, opt in self.optimizers.items():
            meta["optimizers"][name] = flatten_optimizer(f"opt_{name}", opt.state_dict(), tensors)
        for name, sched in self.schedulers.items():
            meta["schedulers"][name] = sched.state_dict()
        save_checkpoint(self.checkpoint, tensors, meta)

    def restore(self) -> bool:
        if self.checkpoint is None or not self.checkpoint.exists():
            return False
        tensors, meta = load_checkpoint(self.checkpoint)

        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}

        self.provider.load_state_dict(part("provider"))
        self.head.load_state_dict(part("head"))
        self.best_provider, self.best_head = part("best_provider"), part("best_head")
        for name, opt in self.optimizers.items():
            opt.load_state_dict(unflatten_optimizer(meta["optimizers"][name], tensors))
        for name, sched in self.schedulers.items():
            sched.load_state_dict(meta["schedulers"][name])
        self.state = LoopState(**meta["state"])
        return True

    # -- the loop -------------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> np.ndarray:
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        return torch.randperm(len(self.train), generator=generator).numpy()

    def step(self, positions: np.ndarray) -> float:
        """One optimizer step on the global batch ``positions``; returns its mean loss."""
        n_global, everyone = len(positions), positions
        if self.world > 1 and n_global >= self.world:
            positions = positions[self.rank :: self.world]  # this rank's share; DDP averages the gradients
        batch = self.encoder.collate([self.train.suffix_ids[p] for p in positions], self.train.prior_of(positions))
        device = self.encoder.backbone.device
        index = torch.as_tensor(self.train.user_index[positions], device=device)
        labels = torch.as_tensor(self.train.labels[positions], device=device)
        if self._objective is not None:
            loss = self._objective(index, batch, labels)
        else:
            loss, _ = self.head.loss(self.encoder.features(self.provider(index), batch), labels)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        if self._rows:
            self._average_rows(everyone)
        for opt in self.optimizers.values():
            opt.step()
        for sched in self.schedulers.values():
            sched.step()
        tokens = int(batch["attention_mask"].sum())
        self.state.examples_seen += len(positions)
        self.state.forward_tokens += tokens
        if any(p.requires_grad for p in self.provider.parameters()):
            self.state.backward_tokens += tokens  # gradients flowed back through the backbone
        value = loss.detach()
        if self.world > 1:
            import torch.distributed as dist

            total = (value * len(positions)).reshape(1)
            dist.all_reduce(total)  # the global batch's mean loss, the same on every rank
            return float(total.item()) / (n_global if n_global >= self.world else n_global * self.world)
        return float(value)

    def _average_rows(self, positions: np.ndarray) -> None:
        """The sparse rows' gradients averaged over the ranks, as DDP averages dense ones: only the
        rows of the global batch's users move (every rank knows them: it walks the same order)."""
        import torch.distributed as dist

        device = self._rows[0].device
        users = torch.as_tensor(np.unique(self.train.user_index[positions]), device=device)
        for weight in self._rows:
            block = torch.zeros(len(users), weight.shape[1], dtype=weight.dtype, device=device)
            if weight.grad is not None:
                grad = weight.grad.coalesce()
                block.index_add_(0, torch.searchsorted(users, grad.indices()[0]), grad.values())
            dist.all_reduce(block)
            block /= self.world
            weight.grad = torch.sparse_coo_tensor(users.unsqueeze(0), block, weight.shape).coalesce()

    def validate(self) -> dict[str, float]:
        if not len(self.valid):
            return {}
        self.provider.eval()
        self.head.eval()
        try:
            pred, tokens = run_batches(self.encoder, self.head, self.provider, self.valid, self.config.eval_batch_size)
        finally:
            self.provider.train()
            self.head.train()
        if self.rank == 0:  # every rank validates the same rows: count them once
            self.state.forward_tokens += tokens
        return metrics.summarize(self.valid.users, pred, self.valid.labels, self.task_kind)

    def fit(self, progress: bool = False, on_step: Callable[[int], None] | None = None) -> None:
        from tqdm.auto import tqdm

        cfg = self.config
        key = "rmse" if self.task_kind == "rating" else "auc"
        epochs = self.total_epochs
        bar = tqdm(total=self.total_steps, initial=self.state.global_step, disable=not progress, desc=self.desc, unit="step")
        if cfg.validate_start and self.state.validations == 0:
            self._validate_and_keep(key, [], epoch=0)
        self.provider.train()
        self.head.train()
        try:
            while self.state.epoch < epochs:
                started = time.perf_counter()
                order = self.epoch_order(self.state.epoch)
                losses = []
                for s in range(self.state.step_in_epoch, self.steps_per_epoch):
                    losses.append(self.step(order[s * cfg.batch_size : (s + 1) * cfg.batch_size]))
                    self.state.step_in_epoch = s + 1
                    self.state.global_step += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.4f}", epoch=self.state.epoch + 1)
                    if self.state.global_step % cfg.checkpoint_every == 0:
                        self.state.wall_seconds += time.perf_counter() - started
                        started = time.perf_counter()
                        self.save()
                    if on_step is not None:
                        on_step(self.state.global_step)
                last = self.state.epoch + 1 == epochs
                if last or self.state.global_step - self.state.last_valid_step >= cfg.valid_every:
                    self._validate_and_keep(key, losses)
                self.state.epoch += 1
                self.state.step_in_epoch = 0
                self.state.wall_seconds += time.perf_counter() - started
                self.save()
                if cfg.patience is not None and self.state.validations - self.state.best_validation >= cfg.patience:
                    break
        finally:
            bar.close()
        if self.world > 1:
            self._sum_over_ranks()
        self.provider.eval()
        self.head.eval()

    def _validate_and_keep(self, key: str, losses: list[float], epoch: int | None = None) -> None:
        """Validate now and keep this state if it is the best so far (``epoch``: the one it ends,
        default the current one; 0 for the starting state)."""
        epoch = self.state.epoch + 1 if epoch is None else epoch
        valid = self.validate()
        metric = valid.get(key, float("nan"))
        self.state.validations += 1
        self.state.last_valid_step = self.state.global_step
        self.state.history.append({"epoch": epoch, "step": self.state.global_step,
                                   "train_loss": float(np.mean(losses)) if losses else float("nan"),
                                   **{f"valid_{k}": v for k, v in valid.items()}})
        if not valid or _better(self.task_kind, metric, self.state.best_metric):
            self.state.best_metric, self.state.best_epoch = metric, epoch
            self.state.best_step, self.state.best_validation = self.state.global_step, self.state.validations
            self.best_provider, self.best_head = cpu_state(self.provider), cpu_state(self.head)

    def use_best(self) -> None:
        """Load the best epoch's weights into the provider and head."""
        self.provider.load_state_dict(self.best_provider)
        self.head.load_state_dict(self.best_head)

    def _sum_over_ranks(self) -> None:
        """After the fit (a collective: every rank calls it): the state counts every rank's work."""
        import torch.distributed as dist

        counts = torch.tensor([self.state.examples_seen, self.state.forward_tokens, self.state.backward_tokens], dtype=torch.int64)
        dist.all_reduce(counts)
        self.state.examples_seen, self.state.forward_tokens, self.state.backward_tokens = (int(c) for c in counts.tolist())

    def ledger(self, device: str, **extra: Any) -> CostLedger:
        if self.world > 1:
            extra = {"world_size": self.world, **extra}
        return CostLedger(
            wall_seconds=round(self.state.wall_seconds, 3), device=device, examples_seen=self.state.examples_seen,
            forward_tokens=self.state.forward_tokens, backward_tokens=self.state.backward_tokens,
            extra={"torch_threads": torch.get_num_threads(), "epochs_run": self.state.epoch,
                   "best_epoch": self.state.best_epoch, "steps": self.state.global_step,
                   "best_step": self.state.best_step, "validations": self.state.validations, **extra},
        )
