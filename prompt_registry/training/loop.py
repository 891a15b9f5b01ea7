"""The one training loop behind prompt training, adapter training and warm-start refinement.

What is trained differs (a per-user prompt table, or an adapter mapping frozen source prompts);
everything else is shared: seeded data order, the task head, validation every epoch with the best
epoch kept, the cost ledger (token-passes), and crash-safe checkpoints that make ``resume`` give
the same result as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..backbones.heads import TaskHead
from ..backbones.prompting import PromptEncoder
from ..entities import CostLedger
from . import metrics
from .checkpoint import flatten_optimizer, load_checkpoint, save_checkpoint, unflatten_optimizer
from .examples import Examples


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    epochs: int
    batch_size: int
    eval_batch_size: int
    seed: int
    checkpoint_every: int
    patience: int | None


@dataclasses.dataclass
class LoopState:
    """Everything a checkpoint holds besides module and optimizer states."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_metric: float = float("nan")
    best_epoch: int = -1
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


def run_batches(encoder: PromptEncoder, head: TaskHead, prompt_source: Callable[[torch.Tensor], torch.Tensor],
                examples: Examples, batch_size: int) -> tuple[np.ndarray, int]:
    """Predictions for every example (no gradients) and the forward tokens it cost."""
    preds = []
    tokens = 0
    device = encoder.backbone.device
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            pos = list(range(start, min(start + batch_size, len(examples))))
            batch = encoder.collate([examples.suffix_ids[p] for p in pos])
            tokens += int(batch["attention_mask"].sum())
            index = torch.as_tensor(examples.user_index[pos], device=device)
            preds.append(head.predict(encoder.features(prompt_source(index), batch)).cpu().numpy())
    return (np.concatenate(preds) if preds else np.empty(0, np.float32)), tokens


def _better(kind: str, new: float, old: float) -> bool:
    if np.isnan(old):
        return True
    return new < old if kind == "rating" else new > old


def _cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


class TrainingLoop:
    """Trains ``provider`` (index -> prompts) and ``head`` on ``train``; keeps the best epoch on ``valid``."""

    def __init__(self, *, encoder: PromptEncoder, head: TaskHead, provider: nn.Module, optimizers: Mapping[str, torch.optim.Optimizer],
                 schedulers: Mapping[str, Any], train: Examples, valid: Examples, config: LoopConfig, task_kind: str,
                 checkpoint: Path | None, steps_hint: str = "train") -> None:
        self.encoder, self.head, self.provider = encoder, head, provider
        self.optimizers, self.schedulers = optimizers, schedulers
        self.train, self.valid, self.config, self.task_kind = train, valid, config, task_kind
        self.checkpoint, self.desc = checkpoint, steps_hint
        self.state = LoopState()
        self.best_provider = _cpu_state(provider)
        self.best_head = _cpu_state(head)

    @property
    def steps_per_epoch(self) -> int:
        return -(-len(self.train) // self.config.batch_size)

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self) -> None:
        if self.checkpoint is None:
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
        batch = self.encoder.collate([self.train.suffix_ids[p] for p in positions])
        device = self.encoder.backbone.device
        index = torch.as_tensor(self.train.user_index[positions], device=device)
        labels = torch.as_tensor(self.train.labels[positions], device=device)
        loss, _ = self.head.loss(self.encoder.features(self.provider(index), batch), labels)
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in self.optimizers.values():
            opt.step()
        for sched in self.schedulers.values():
            sched.step()
        tokens = int(batch["attention_mask"].sum())
        self.state.examples_seen += len(positions)
        self.state.forward_tokens += tokens
        if any(p.requires_grad for p in self.provider.parameters()):
            self.state.backward_tokens += tokens  # gradients flowed back through the backbone
        return float(loss.detach())

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
        self.state.forward_tokens += tokens
        return metrics.summarize(self.valid.users, pred, self.valid.labels, self.task_kind)

    def fit(self, progress: bool = False, on_step: Callable[[int], None] | None = None) -> None:
        from tqdm.auto import tqdm

        cfg = self.config
        key = "rmse" if self.task_kind == "rating" else "auc"
        bar = tqdm(total=cfg.epochs * self.steps_per_epoch, initial=self.state.global_step, disable=not progress,
                   desc=self.desc, unit="step")
        self.provider.train()
        self.head.train()
        try:
            while self.state.epoch < cfg.epochs:
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
                valid = self.validate()
                metric = valid.get(key, float("nan"))
                self.state.history.append({"epoch": self.state.epoch + 1,
                                           "train_loss": float(np.mean(losses)) if losses else float("nan"),
                                           **{f"valid_{k}": v for k, v in valid.items()}})
                if not valid or _better(self.task_kind, metric, self.state.best_metric):
                    self.state.best_metric, self.state.best_epoch = metric, self.state.epoch + 1
                    self.best_provider, self.best_head = _cpu_state(self.provider), _cpu_state(self.head)
                self.state.epoch += 1
                self.state.step_in_epoch = 0
                self.state.wall_seconds += time.perf_counter() - started
                self.save()
                if cfg.patience is not None and self.state.epoch - self.state.best_epoch >= cfg.patience:
                    break
        finally:
            bar.close()
        self.provider.eval()
        self.head.eval()

    def use_best(self) -> None:
        """Load the best epoch's weights into the provider and head."""
        self.provider.load_state_dict(self.best_provider)
        self.head.load_state_dict(self.best_head)

    def ledger(self, device: str, **extra: Any) -> CostLedger:
        return CostLedger(
            wall_seconds=round(self.state.wall_seconds, 3), device=device, examples_seen=self.state.examples_seen,
            forward_tokens=self.state.forward_tokens, backward_tokens=self.state.backward_tokens,
            extra={"torch_threads": torch.get_num_threads(), "epochs_run": self.state.epoch,
                   "best_epoch": self.state.best_epoch, "steps": self.state.global_step, **extra},
        )
