"""Training every user's soft prompt (and the task head) from scratch on a frozen backbone.

This is the "full retrain" baseline that migrations are judged against. The result is written
through the registry: a head artifact, then a prompt set (bytes first, one transaction) that names
the run, whose ledger records wall time, device, examples seen and backbone token-passes.

Long runs checkpoint every ``checkpoint_every`` steps and at each epoch end (safetensors, tmp +
fsync + rename); ``resume=True`` continues from the checkpoint of the same configuration and gives
the same result as an uninterrupted run (data order is a pure function of seed and epoch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..backbones.heads import TaskHead
from ..backbones.loader import Backbone, load_backbone
from ..backbones.prompting import PromptEncoder
from ..data.dataset import Dataset, Split
from ..entities import CostLedger, PromptSet, Run
from ..errors import ConflictError
from . import metrics
from .checkpoint import flatten_optimizer, load_checkpoint, save_checkpoint, unflatten_optimizer
from .config import TrainConfig
from .examples import Examples, build_examples, user_histories


@dataclasses.dataclass(frozen=True)
class TrainResult:
    set: PromptSet
    head_id: int
    run: Run
    best_epoch: int
    history: list[dict[str, float]]
    evaluation: Any | None = None  # an Evaluation when evaluate_split was given


@dataclasses.dataclass
class _State:
    """Everything a checkpoint holds besides the modules and optimizers."""

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


def init_prompts(n_users: int, prompt_len: int, backbone: Backbone, how: str, generator: torch.Generator) -> torch.Tensor:
    """New prompts on the scale of the model's own token embeddings.

    ``token-norm``: random directions scaled to the mean token-embedding norm (norms differ by 30x
    across real models: MiniLM ~1, SmolLM2 ~3, Gemma-3 ~26). ``token``: copies of random token
    embeddings.
    """
    width = backbone.hidden_size
    if how == "token":
        table = backbone.model.get_input_embeddings().weight.detach().cpu()
        picks = torch.randint(0, table.shape[0], (n_users * prompt_len,), generator=generator)
        return table[picks].reshape(n_users, prompt_len, width).clone()
    direction = torch.randn(n_users, prompt_len, width, generator=generator)
    return direction / direction.norm(dim=-1, keepdim=True) * backbone.token_norm


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

    def export(self) -> torch.Tensor:
        return self.rows.weight.detach().cpu().reshape(-1, self.prompt_len, self.width).clone()


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


class _Run:
    """One training run: data, modules, optimizers, checkpointing."""

    def __init__(self, registry: Any, model: str, task: str, data: Dataset, split: Split, users: list[str],
                 config: TrainConfig, backbone: Backbone, task_kind: str, checkpoint: Path | None) -> None:
        self.registry, self.model_name, self.task = registry, model, task
        self.config, self.backbone, self.task_kind = config, backbone, task_kind
        self.users = users
        self.checkpoint = checkpoint
        template = config.template_obj()
        self.encoder = PromptEncoder(backbone, template, config.prompt_len, task_kind, config.max_length)
        index = {u: i for i, u in enumerate(users)}
        histories = user_histories(data, split.train, template.history_len)
        self.train = build_examples(data, split.train, index, self.encoder, template, histories)
        self.valid = build_examples(data, split.valid, index, self.encoder, template, histories)
        self.overhead = len(self.encoder.lead) + len(self.encoder.prefix_ids) + len(self.encoder.trail)
        generator = torch.Generator().manual_seed(config.seed)
        self.table = PromptTable(init_prompts(len(users), config.prompt_len, backbone, config.init, generator)).to(backbone.device)
        torch.manual_seed(config.seed)
        self.head = TaskHead(task_kind, backbone.decoder, self.encoder.feature_size, float(self.train.labels.mean())).to(backbone.device)
        self.opt_prompts = torch.optim.SparseAdam(self.table.parameters(), lr=config.lr)
        self.opt_head = torch.optim.AdamW(self.head.parameters(), lr=config.head_lr)
        self.state = _State()
        self.best_prompts = self.table.export()
        self.best_head = {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()}

    # -- checkpoints ----------------------------------------------------------------------------
    def save(self) -> None:
        if self.checkpoint is None:
            return
        tensors: dict[str, torch.Tensor] = {"prompts": self.table.rows.weight, "best_prompts": self.best_prompts}
        tensors |= {f"head.{k}": v for k, v in self.head.state_dict().items()}
        tensors |= {f"best_head.{k}": v for k, v in self.best_head.items()}
        meta = {
            "state": dataclasses.asdict(self.state),
            "opt_prompts": flatten_optimizer("opt_prompts", self.opt_prompts.state_dict(), tensors),
            "opt_head": flatten_optimizer("opt_head", self.opt_head.state_dict(), tensors),
        }
        save_checkpoint(self.checkpoint, tensors, meta)

    def restore(self) -> bool:
        if self.checkpoint is None or not self.checkpoint.exists():
            return False
        tensors, meta = load_checkpoint(self.checkpoint)
        with torch.no_grad():
            self.table.rows.weight.copy_(tensors["prompts"])
        self.head.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("head.")})
        self.best_prompts = tensors["best_prompts"]
        self.best_head = {k[10:]: v for k, v in tensors.items() if k.startswith("best_head.")}
        self.opt_prompts.load_state_dict(unflatten_optimizer(meta["opt_prompts"], tensors))
        self.opt_head.load_state_dict(unflatten_optimizer(meta["opt_head"], tensors))
        self.state = _State(**meta["state"])
        return True

    # -- the loop -------------------------------------------------------------------------------
    def epoch_order(self, epoch: int) -> np.ndarray:
        generator = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        return torch.randperm(len(self.train), generator=generator).numpy()

    def step(self, positions: np.ndarray) -> float:
        batch = self.encoder.collate([self.train.suffix_ids[p] for p in positions])
        device = self.backbone.device
        index = torch.as_tensor(self.train.user_index[positions], device=device)
        labels = torch.as_tensor(self.train.labels[positions], device=device)
        loss, _ = self.head.loss(self.encoder.features(self.table(index), batch), labels)
        self.opt_prompts.zero_grad(set_to_none=True)
        self.opt_head.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_prompts.step()
        self.opt_head.step()
        tokens = int(batch["attention_mask"].sum())
        self.state.examples_seen += len(positions)
        self.state.forward_tokens += tokens
        self.state.backward_tokens += tokens
        return float(loss.detach())

    def validate(self) -> dict[str, float]:
        if not len(self.valid):
            return {}
        pred, tokens = run_batches(self.encoder, self.head, self.table, self.valid, self.config.eval_batch_size)
        self.state.forward_tokens += tokens
        return metrics.summarize(self.valid.users, pred, self.valid.labels, self.task_kind)

    def fit(self, progress: bool, on_step: Callable[[int], None] | None) -> None:
        from tqdm.auto import tqdm

        cfg = self.config
        steps_per_epoch = -(-len(self.train) // cfg.batch_size)
        key = "rmse" if self.task_kind == "rating" else "auc"
        bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=self.state.global_step, disable=not progress,
                   desc=f"train {self.model_name}/{self.task}", unit="step")
        self.head.train()
        try:
            while self.state.epoch < cfg.epochs:
                started = time.perf_counter()
                order = self.epoch_order(self.state.epoch)
                losses = []
                for s in range(self.state.step_in_epoch, steps_per_epoch):
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
                self.head.eval()
                valid = self.validate()
                self.head.train()
                metric = valid.get(key, float("nan"))
                self.state.history.append({"epoch": self.state.epoch + 1, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                                           **{f"valid_{k}": v for k, v in valid.items()}})
                if not valid or _better(self.task_kind, metric, self.state.best_metric):
                    self.state.best_metric, self.state.best_epoch = metric, self.state.epoch + 1
                    self.best_prompts = self.table.export()
                    self.best_head = {k: v.detach().cpu().clone() for k, v in self.head.state_dict().items()}
                self.state.epoch += 1
                self.state.step_in_epoch = 0
                self.state.wall_seconds += time.perf_counter() - started
                self.save()
                if cfg.patience is not None and self.state.epoch - self.state.best_epoch >= cfg.patience:
                    break
        finally:
            bar.close()

    def ledger(self) -> CostLedger:
        return CostLedger(
            wall_seconds=round(self.state.wall_seconds, 3), device=self.backbone.device,
            examples_seen=self.state.examples_seen, forward_tokens=self.state.forward_tokens,
            backward_tokens=self.state.backward_tokens,
            extra={"torch_threads": torch.get_num_threads(), "epochs_run": self.state.epoch,
                   "best_epoch": self.state.best_epoch, "steps": self.state.global_step},
        )


def checkpoint_key(model_fp: str, task: str, data_fp: str, users: Sequence[str], config: TrainConfig) -> str:
    blob = json.dumps([model_fp, task, data_fp, list(users), config.to_dict()], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def train_prompts(registry: Any, model: str, task: str, data: str | Path | Dataset, *, users: Sequence[str] | None = None,
                  config: TrainConfig | None = None, device: str = "auto", checkpoint_dir: str | Path | None = None,
                  resume: bool = False, progress: bool = True, alias: str | None = None,
                  evaluate_split: str | None = None, on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Train prompts for ``users`` (default: everyone in the data) of ``model`` on ``task``."""
    config = config or TrainConfig()
    dataset = data if isinstance(data, Dataset) else Dataset.load(data)
    task_info = next((t for t in registry.list_tasks() if t.name == task), None)
    if task_info is None:
        registry.add_task(task, dataset.kind)  # raises UnknownTask-style errors for bad names
        task_info = next(t for t in registry.list_tasks() if t.name == task)
    if task_info.kind != dataset.kind:
        raise ConflictError(f"task {task!r} is a {task_info.kind} task but {dataset.root} holds {dataset.kind} labels")
    info = registry.get_model(model)
    split = dataset.split(test_fraction=config.test_fraction, valid_fraction=config.valid_fraction, users=users)
    train_users = list(dict.fromkeys(dataset.users[split.train].tolist()))
    backbone = load_backbone(info, device=device)
    key = checkpoint_key(info.fingerprint, task, dataset.fingerprint, train_users, config)
    checkpoint = Path(checkpoint_dir or registry.scratch_dir() / "checkpoints") / f"train-{key}.safetensors"
    if not resume and checkpoint.exists():
        checkpoint.unlink()  # a fresh run must not silently continue an old one
    job = _Run(registry, model, task, dataset, split, train_users, config, backbone, task_info.kind, checkpoint)
    resumed = job.restore() if resume else False
    run_config = {**config.to_dict(), "data": dataset.root, "data_fingerprint": dataset.fingerprint,
                  "model_fingerprint": info.fingerprint, "n_users": len(train_users),
                  "n_train": len(job.train), "n_valid": len(job.valid), "device": backbone.device,
                  "resumed_from_step": job.state.global_step if resumed else None}
    run = registry.start_run("train", model=model, task=task, config=run_config, seeds={"seed": config.seed})
    try:
        job.fit(progress, on_step)
        head = registry.put_artifact(
            "head", f"{task}-head", job.best_head, task=task, target_model=model, run_id=run.id,
            config={**job.head.config(), "template": config.template_obj().text, "history_len": config.history_len,
                    "prompt_len": config.prompt_len, "max_length": config.max_length},
        )
        prompt_set = registry.import_prompts(model, task, job.best_prompts.numpy(), train_users, create_users=True,
                                             run_id=run.id, head=head.id, alias=alias, note=f"trained by run {run.id}")
        finished = registry.finish_run(run.id, ledger=job.ledger(), results={"best_epoch": job.state.best_epoch,
                                                                              "history": job.state.history})
    except BaseException as exc:
        registry.finish_run(run.id, status="failed", ledger=job.ledger(), error=f"{type(exc).__name__}: {exc}")
        raise
    checkpoint.unlink(missing_ok=True)
    evaluation = None
    if evaluate_split is not None:
        from .evaluate import evaluate_set

        evaluation = evaluate_set(registry, prompt_set.id, dataset, split=evaluate_split, config=config, device=device, backbone=backbone)
    return TrainResult(prompt_set, head.id, finished, job.state.best_epoch, job.state.history, evaluation)
