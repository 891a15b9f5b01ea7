"""Training every user's soft prompt (and the task head) from scratch on a frozen backbone.

This is the "full retrain" baseline that migrations are judged against. The result is written
through the registry: a head artifact, then a prompt set (bytes first, one transaction) that names
the run, whose ledger records wall time, device, examples seen and backbone token-passes.

Long runs checkpoint every ``checkpoint_every`` steps and at each epoch end (safetensors, tmp +
fsync + rename); ``resume=True`` continues from the checkpoint of the same configuration and gives
the same result as an uninterrupted run (data order is a pure function of seed and epoch).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .._util import echo
from ..backbones.heads import TaskHead
from ..backbones.loader import Backbone, load_backbone
from ..backbones.prompting import PromptEncoder
from ..core.services import Services
from ..data.dataset import Dataset, Split
from ..entities import Artifact, TrainResult
from ..errors import ConflictError, InvalidArgumentError
from .config import TrainConfig
from .distributed import group_rank, receive_ids, send_ids
from .examples import Examples, build_examples, item_priors, user_histories
from .headfit import HeadFitConfig, cached_features, fit_head
from .loop import LoopConfig, PromptTable, TrainingLoop, cpu_state


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


def checkpoint_key(*parts: Any) -> str:
    """A stable name for a run's checkpoint: same inputs and config, same file."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def keyed_config(config: dict[str, Any], precision: str) -> dict[str, Any]:
    """A config as its checkpoint key reads it: the precision the run resolved to (``auto`` is bf16
    on one machine, fp32 on another), left out at fp32 so keys from before precision still match."""
    keyed = {k: v for k, v in config.items() if k != "precision"}
    return keyed if precision == "fp32" else {**keyed, "precision": precision}


def prepare_examples(dataset: Dataset, split: Split, users: Sequence[str], encoder: PromptEncoder, template: Any) -> tuple[Examples, Examples]:
    index = {u: i for i, u in enumerate(users)}
    histories = user_histories(dataset, split.train, template.history_len)
    priors = item_priors(dataset, split.train, encoder.task_kind) if encoder.item_prior else None
    return (build_examples(dataset, split.train, index, encoder, template, histories, priors),
            build_examples(dataset, split.valid, index, encoder, template, histories, priors))


def _optimizers(table: PromptTable, head: TaskHead, config: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    optimizers: dict[str, torch.optim.Optimizer] = {"head": torch.optim.AdamW(head.parameters(), lr=config.head_lr)}
    if config.freeze_prompts:
        table.rows.weight.requires_grad_(False)  # no backward pass through the backbone at all
    else:
        optimizers["prompts"] = torch.optim.SparseAdam(table.parameters(), lr=config.lr)
    return optimizers


def loop_config(config: TrainConfig) -> LoopConfig:
    return LoopConfig(epochs=config.epochs, batch_size=config.batch_size, eval_batch_size=config.eval_batch_size,
                      seed=config.seed, checkpoint_every=config.checkpoint_every, patience=config.patience,
                      min_steps=config.min_steps, warmup_steps=config.warmup_steps, schedule=config.schedule,
                      final_lr=config.final_lr, valid_every=config.valid_every, distributed=config.distributed)


def train_prompts(services: Services, model: str, task: str, data: str | os.PathLike[str] | Dataset, *, users: Sequence[str] | None = None,
                  config: TrainConfig | None = None, device: str = "auto", checkpoint_dir: str | os.PathLike[str] | None = None,
                  resume: bool = False, progress: bool = True, alias: str | None = None,
                  evaluate_split: str | None = None, on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Train prompts for ``users`` (default: everyone in the data) of ``model`` on ``task``.

    With ``config.distributed`` (under torchrun), every rank prepares the same examples and table
    and trains data parallel (``training.loop``); rank 0 alone records the run, stores the head and
    the set, moves the alias and evaluates, then tells the other ranks what it stored, which they
    read back (their result has no evaluation)."""
    config = config or TrainConfig()
    rank = _rank(config, resume)
    dataset = Dataset.coerce(data)
    task_info = next((t for t in services.models.list_tasks() if t.name == task), None)
    if task_info is None and rank == 0:
        services.models.add_task(task, dataset.kind)  # raises UnknownTask-style errors for bad names
    if config.distributed:
        import torch.distributed as dist

        dist.barrier()  # a new task exists (rank 0 made it) before any rank reads it
    if task_info is None:
        task_info = next(t for t in services.models.list_tasks() if t.name == task)
    if task_info.kind != dataset.kind:
        raise ConflictError(f"task {echo(task)} is a {task_info.kind} task but {dataset.root} holds {dataset.kind} labels")
    info = services.models.get_model(model)
    split = dataset.split(test_fraction=config.test_fraction, valid_fraction=config.valid_fraction, users=users)
    train_users = list(dict.fromkeys(dataset.users[split.train].tolist()))
    backbone = load_backbone(info, device=device, precision=config.precision)
    key = checkpoint_key(info.fingerprint, task, dataset.fingerprint, train_users, keyed_config(config.to_dict(), backbone.precision))
    checkpoint = Path(checkpoint_dir or services.ctx.scratch_dir() / "checkpoints") / f"train-{key}.safetensors"
    if not resume:
        checkpoint.unlink(missing_ok=True)  # a fresh run must not silently continue an old one (every rank may try)
    template = config.template_obj()
    encoder = PromptEncoder(backbone, template, config.prompt_len, task_info.kind, config.max_length,
                            item_prior=config.uses_item_prior(task_info.kind), scoring=config.uses_scoring(task_info.kind))
    train, valid = prepare_examples(dataset, split, train_users, encoder, template)
    generator = torch.Generator().manual_seed(config.seed)
    table = PromptTable(init_prompts(len(train_users), config.prompt_len, backbone, config.init, generator)).to(backbone.device)
    torch.manual_seed(config.seed)
    head = TaskHead(task_info.kind, backbone.decoder, encoder.feature_size, float(train.labels.mean()),
                    prior=encoder.item_prior, scoring_width=backbone.hidden_size if encoder.scoring else 0).to(backbone.device)
    loop = TrainingLoop(
        encoder=encoder, head=head, provider=table, train=train, valid=valid, config=loop_config(config),
        optimizers=_optimizers(table, head, config),
        schedulers={}, task_kind=task_info.kind, checkpoint=checkpoint, steps_hint=f"train {model}/{task}",
    )
    resumed = loop.restore() if resume else False
    if rank != 0:  # a follower rank: train with the others, store nothing, return what rank 0 stored
        loop.fit(False, on_step)
        return _follower_result(services)
    run_config = {**config.to_dict(), "data": dataset.root, "data_fingerprint": dataset.fingerprint,
                  "model_fingerprint": info.fingerprint, "n_users": len(train_users),
                  "n_train": len(train), "n_valid": len(valid), "device": backbone.device,
                  "resumed_from_step": loop.state.global_step if resumed else None}
    run = services.runs.start_run("train", model=model, task=task, config=run_config, seeds={"seed": config.seed})
    try:
        if config.freeze_prompts:
            _fit_head_only(loop, encoder, table, config)  # prompts fixed: one forward pass, then the head on cached features
        else:
            loop.fit(progress, on_step)
        loop.use_best()
        head_artifact = save_head(services, loop.best_head, head, encoder, task=task, model=model, run_id=run.id)
        prompts = loop.best_provider["rows.weight"].reshape(len(train_users), config.prompt_len, -1)
        prompt_set = services.writes.import_prompts(model, task, prompts.numpy(), train_users, create_users=True,
                                             run_id=run.id, head=head_artifact.id, alias=alias, note=f"trained by run {run.id}")
        finished = services.runs.finish_run(run.id, ledger=loop.ledger(backbone.device, precision=backbone.precision),
                                       results={"best_epoch": loop.state.best_epoch, "history": loop.state.history})
    except BaseException as exc:
        services.runs.finish_run(run.id, status="failed", ledger=loop.ledger(backbone.device, precision=backbone.precision),
                                 error=f"{type(exc).__name__}: {exc}")
        if config.distributed:
            send_ids([-1, -1, -1])  # the followers wait on rank 0's ids: say there are none
        raise
    if config.distributed:
        send_ids([prompt_set.id, head_artifact.id, finished.id])
    checkpoint.unlink(missing_ok=True)
    evaluation = None
    if evaluate_split is not None:
        from .evaluate import evaluate_set

        evaluation = evaluate_set(services, prompt_set.id, dataset, split=evaluate_split, config=config, device=device, backbone=backbone)
    return TrainResult(prompt_set, head_artifact.id, finished, loop.state.best_epoch, loop.state.history, evaluation)


def _rank(config: TrainConfig, resume: bool) -> int:
    if not config.distributed:
        return 0
    if resume:
        raise InvalidArgumentError("distributed training does not resume (a checkpoint is one process's): rerun it")
    if config.freeze_prompts:
        raise InvalidArgumentError("freeze_prompts fits the head on cached features in one pass: run it in one process, "
                                   "without distributed")
    return group_rank("TrainConfig(distributed=True)", "prompt train --distributed")


def _follower_result(services: Services) -> TrainResult:
    """On a rank other than 0: wait for rank 0's ids (set, head, run) and read back what it stored."""
    set_id, head_id, run_id = receive_ids(3)
    if set_id < 0:
        raise ConflictError("rank 0 failed after the data-parallel training; its run says why (`prompt-registry run list`)")
    run = services.runs.get_run(run_id)
    return TrainResult(services.reads.get_set(set_id), head_id, run, int(run.cost.get("results", {}).get("best_epoch", -1)),
                       list(run.cost.get("results", {}).get("history", [])), None)


def _fit_head_only(loop: TrainingLoop, encoder: PromptEncoder, table: PromptTable, config: TrainConfig) -> None:
    """The random-init baseline: the head fitted on cached features of the fixed prompts; the
    loop's state records its cost (forward tokens only) and best epoch, as a trained run would."""
    started = time.perf_counter()
    train = cached_features(encoder, table, loop.train, config.eval_batch_size)
    valid = cached_features(encoder, table, loop.valid, config.eval_batch_size)
    fit = fit_head(loop.head, train, valid, HeadFitConfig(lr=config.head_lr), seed=config.seed)
    state = loop.state
    state.wall_seconds += time.perf_counter() - started
    state.forward_tokens += train.forward_tokens + valid.forward_tokens
    state.examples_seen += len(loop.train) + len(loop.valid)
    state.epoch, state.best_epoch, state.global_step, state.best_metric = fit.epochs_run, fit.best_epoch, fit.steps, fit.best_metric
    state.history = [{"epoch": h["epoch"], "train_loss": h["train_loss"], "valid_" + ("rmse" if loop.task_kind == "rating" else "auc"): h["valid"]}
                     for h in fit.history]
    loop.best_head = fit.state
    loop.best_provider = cpu_state(table)


def save_head(services: Services, state: dict[str, torch.Tensor], head: TaskHead, encoder: PromptEncoder, *,
              task: str, model: str, run_id: int) -> Artifact:
    """Store a trained head as an artifact whose config rebuilds it and its inputs exactly
    (template, history length, prompt length, max length): evaluation and migration read it."""
    template = encoder.template
    config = {**head.config(), "template": template.text, "history_len": template.history_len,
              "prompt_len": encoder.prompt_len, "max_length": encoder.max_length}
    return services.artifacts.put_artifact("head", f"{task}-head", state, task=task, target_model=model, run_id=run_id, config=config)
