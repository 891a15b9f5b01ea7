"""Migrations as registry operations, whatever the method: select users, fit, map everyone, gate.

``migrate`` fits the configured migration method (``config.method``, looked up in the table of
``base.py``; PUMA by default: an adapter Phi trained with a fresh target head on the *target
model's task loss*) over a selected subset of users, with source prompts and the target backbone
frozen; then streams every user's source prompt rows through the fitted map into a new target set
(resumable, idempotent), with lineage to the source set(s) and the adapter. The adapter artifact
records the method and its config; ``apply_adapter`` rebuilds that method from it and reuses it on
new users or a newer source version with no training. A report compares the new set with the source
set on the source model and, when one exists, a from-scratch set on the target; ``gate`` refuses
to move an alias when the migrated set is worse than that reference by more than a threshold.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..backbones.heads import TaskHead
from ..backbones.loader import Backbone, load_backbone, resolve_device
from ..backbones.prompting import PromptEncoder
from ..core.services import Services
from ..core.writes import WRITE_BATCH_BYTES, shard_bounds
from ..data.dataset import Dataset
from ..entities import Artifact, CostLedger, MigrationResult, PromptSet, Run, ShardWrite
from ..errors import ConflictError, InvalidArgumentError, UnknownAliasError, UnknownSetError
from ..training.distributed import group_rank, receive_ids, send_ids
from ..training.loop import LoopState, TrainingLoop
from ..training.trainer import checkpoint_key, keyed_config, prepare_examples, save_head
from .alignment import TokenTable
from .base import FitContext, MappingSpec, MigrationMethod, artifact_config, get_method, load_method
from .config import MigrationConfig
from .coverage import MEAN_KEY, candidate_tables, gather, plan_coverage, stored_means
from .head import HeadRefit, refit_head, warm_start_head
from .puma.selection import label_variance, select_users
from .refine import Refinement, refine
from .refine import plan as refine_plan
from .report import move_alias, quality_report


def resolve_sources(services: Services, sources: Sequence[str | int], task: str) -> list[PromptSet]:
    """A source is a set reference, or a model name meaning its ``production`` set (else latest)."""
    out = []
    for source in sources:
        text = str(source)
        if text.isdigit() or "@" in text:
            prompt_set = services.reads.get_set(text)
        else:
            try:
                prompt_set = services.reads.get_set(f"{text}/{task}@production")
            except UnknownAliasError:
                prompt_set = services.reads.get_set(f"{text}/{task}@latest")
        if prompt_set.task != task:
            raise ConflictError(f"source set {prompt_set.id} is for task {prompt_set.task!r}, not {task!r}")
        out.append(prompt_set)
    if len({s.model for s in out}) != len(out):
        raise InvalidArgumentError("each source must come from a different model")
    if len({s.prompt_len for s in out}) != 1:
        raise InvalidArgumentError("aggregated sources must share one prompt length")
    return out


def _mapping_key(adapter: Artifact, sets: Sequence[PromptSet], users: Sequence[str], base: int | None,
                 overrides: dict[str, np.ndarray] | None = None) -> str:
    parts: list[Any] = [adapter.sha256, [(s.id, s.sha256) for s in sets], hashlib.sha256("\n".join(users).encode()).hexdigest(), base]
    if overrides:
        digest = hashlib.sha256()
        for user in sorted(overrides):
            digest.update(user.encode() + b"\0" + np.ascontiguousarray(overrides[user], dtype=np.float32).tobytes())
        parts.append(digest.hexdigest())
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _producer(services: Services, method: MigrationMethod[Any], sets: Sequence[PromptSet], users: Sequence[str], device: str,
              batch_users: int, holders: Sequence[set[str]] | None, means: Sequence[torch.Tensor] | None,
              overrides: dict[str, np.ndarray] | None, window: tuple[str, str] | None = None) -> Callable[[int, int], np.ndarray]:
    """``produce(start, stop)``: the mapped prompts of ``users[start:stop]`` (for a streaming write);
    ``window``: the first and last user of every range that will be asked (an apply shard's)."""
    have = list(holders) if holders is not None else [set() for _ in sets]

    def produce(start: int, stop: int) -> np.ndarray:
        chunk = users[start:stop]
        out = []
        for i in range(0, len(chunk), batch_users):
            part = chunk[i : i + batch_users]
            with torch.no_grad():
                inputs = [t.to(device) for t in gather(services, sets, part, have, means, scan=True, window=window)]  # each user once
                out.append(method.map(*inputs).cpu().numpy())
        rows = np.concatenate(out)
        if overrides:
            for i, user in enumerate(chunk):
                if user in overrides:
                    rows[i] = overrides[user]
        return rows

    return produce


def map_users(services: Services, method: MigrationMethod[Any], adapter: Artifact, sets: Sequence[PromptSet], users: Sequence[str], *,
              target: str, task: str, head_id: int, run_id: int | None, device: str, batch_users: int,
              base: int | None = None, progress: bool = False, overrides: dict[str, np.ndarray] | None = None,
              holders: Sequence[set[str]] | None = None, means: Sequence[torch.Tensor] | None = None) -> PromptSet:
    """Stream ``users``' source rows through the fitted method into a new target set (idempotent,
    resumable); ``overrides`` (user -> prompt) replace the mapped prompt of those users. With
    ``means`` (and ``holders``, each source's users), a user missing from a source reads its mean."""
    produce = _producer(services, method.to(device), sets, users, device, batch_users, holders, means, overrides)
    return services.writes.write_prompts(
        target, task, users, produce, prompt_len=sets[0].prompt_len, key=_mapping_key(adapter, sets, users, base, overrides),
        run_id=run_id, head=head_id, adapter=adapter.id, sources=[s.id for s in sets], base=base, progress=progress,
        note=f"mapped by adapter {adapter.id} from sets {', '.join(str(s.id) for s in sets)}",
    )


def migrate(services: Services, sources: Sequence[str | int], target: str, task: str, data: str | os.PathLike[str] | Dataset, *,
            config: MigrationConfig | None = None, device: str = "auto", alias: str | None = None,
            gate: float | None = None, evaluate: bool = True, resume: bool = False, progress: bool = True) -> MigrationResult:
    """Migrate the prompts of ``sources`` (models or sets) to ``target`` for ``task`` with
    ``config.method`` (PUMA by default)."""
    config = config or MigrationConfig()
    method_class = get_method(config.method)
    dataset = Dataset.coerce(data)
    source_sets = resolve_sources(services, sources, task)
    target_info = services.models.get_model(target)
    if any(s.model == target for s in source_sets):
        raise InvalidArgumentError(f"source and target are the same model {target!r}")
    task_kind = next(t.kind for t in services.models.list_tasks() if t.name == task)
    data_users = set(dataset.users.tolist())
    cover = plan_coverage(services, source_sets, config.coverage, config.cold_start, data_users=sorted(data_users))
    cold = set(cover.cold)
    everyone = cover.mapped
    candidates = [u for u in everyone if u in data_users and u not in cold]
    if not candidates:
        raise ConflictError("no user has both a source prompt and training data; check the data set and source sets")
    split = dataset.split(test_fraction=config.test_fraction, valid_fraction=config.valid_fraction, users=candidates)
    source_tables, means = candidate_tables(services, source_sets, candidates, cover.holders)
    if means is None and cold and config.cold_start == "centroid":
        means = [t.mean(dim=0) for t in source_tables]
    variance = label_variance(candidates, dataset.users[split.train], dataset.labels[split.train])
    flat = torch.cat([t.reshape(len(candidates), -1) for t in source_tables], dim=1).numpy()
    selection = select_users(candidates, flat, variance, config.selection)
    position = {u: i for i, u in enumerate(candidates)}
    picked = np.array([position[u] for u in selection.users], dtype=np.int64)

    backbone = load_backbone(target_info, device=device, precision=config.precision)
    template = config.template_obj()
    encoder = PromptEncoder(backbone, template, source_sets[0].prompt_len, task_kind, config.max_length,
                            item_prior=config.uses_item_prior(task_kind), scoring=config.uses_scoring(task_kind))
    # user_index of every example set indexes the candidates (the rows of the source tables); the
    # selected users' examples are a subset of everyone's (tokenised once)
    all_train, valid_all = prepare_examples(dataset, split, candidates, encoder, template)
    train = all_train.subset(np.flatnonzero(np.isin(all_train.user_index, picked)))
    valid_selected = valid_all.subset(np.flatnonzero(np.isin(valid_all.user_index, picked)))
    min_steps = config.min_steps
    if config.max_fit_epochs is not None:
        min_steps = min(min_steps, math.ceil(config.max_fit_epochs * len(all_train) / config.batch_size))
    spec = MappingSpec(tuple(s.width for s in source_sets), target_info.hidden_size, source_sets[0].prompt_len)
    torch.manual_seed(config.seed)  # the method's initialisation, then the head's: reproducible for a seed
    method = method_class.create(config.method_config, spec, backbone)
    head = TaskHead(task_kind, backbone.decoder, encoder.feature_size, float(train.labels.mean()), prior=encoder.item_prior,
                    scoring_width=backbone.hidden_size if encoder.scoring else 0).to(backbone.device)
    head_from = warm_start_head(services, head, source_sets) if config.warm_start_head else None
    key = checkpoint_key("migrate", [s.sha256 for s in source_sets], target_info.fingerprint, task, dataset.fingerprint,
                         keyed_config(config.to_dict(), backbone.precision))
    checkpoint = services.ctx.scratch_dir() / "checkpoints" / f"migrate-{key}.safetensors"
    if not resume and checkpoint.exists():
        checkpoint.unlink()
    context = FitContext(backbone=backbone, encoder=encoder, task_kind=task_kind, head=head, head_lr=config.head_lr,
                         sources=[t.to(backbone.device) for t in source_tables], selected=picked, train=train,
                         valid=valid_all if config.validate_on == "all" else valid_selected, valid_selected=valid_selected,
                         batch_size=config.batch_size, eval_batch_size=config.eval_batch_size, seed=config.seed,
                         checkpoint_every=config.checkpoint_every, patience=config.patience, checkpoint=checkpoint,
                         resume=resume, progress=progress, min_steps=min_steps, warmup_steps=min(config.warmup_steps, min_steps // 5),
                         final_lr=config.final_lr, valid_every=config.valid_every, head_prefit=config.head_prefit,
                         steps_hint=f"adapter -> {target}", distributed=config.distributed,
                         token_tables=lambda: _token_tables(services, source_sets, backbone))
    rank = _rank(config)
    if rank != 0:  # a follower rank: fit with the others (data parallel), store nothing, return what rank 0 stored
        method.fit(context)
        return _follower_result(services, selection.summary(), cover.summary())
    run = services.runs.start_run("migrate", model=target, task=task, seeds={"seed": config.seed, "selection": config.selection.seed}, config={
        **config.to_dict(), "sources": [{"set_id": s.id, "model": s.model, "sha256": s.sha256} for s in source_sets],
        "target_fingerprint": target_info.fingerprint, "data": dataset.root, "data_fingerprint": dataset.fingerprint,
        "candidates": len(candidates), "selected_users": list(selection.users), "selection_summary": selection.summary(),
        "adapter": method.describe(), "n_train": len(train), "n_valid": len(context.valid), "device": backbone.device,
        "head_warm_start_from": head_from, "min_steps_effective": min_steps, "coverage": cover.summary(),
    })
    loop: TrainingLoop | None = None
    try:
        loop = method.fit(context)
        if not isinstance(loop, TrainingLoop):
            raise TypeError(f"{method_class.__qualname__}.fit must return the TrainingLoop whose best epoch it kept")
        mapped_table = _map_table(method, source_tables, backbone.device, config.apply_batch_users)
        retained = method.retained()
        for row, prompt in retained.items():
            mapped_table[row] = prompt.detach().cpu().to(mapped_table.dtype)
        head.load_state_dict(loop.best_head)
        refit = refit_head(head, encoder, mapped_table, all_train, valid_all, lr=config.head_lr, batch_size=config.eval_batch_size,
                           seed=config.seed, refit=config.head_refit)
        head_artifact = save_head(services, refit.state, head, encoder, task=task, model=target, run_id=run.id)
        stored = {**method.tensors(), **{MEAN_KEY.format(i): m.detach().cpu().contiguous() for i, m in enumerate(means or [])}}
        adapter = services.artifacts.put_artifact(
            "adapter", f"{'+'.join(s.model for s in source_sets)}->{target}/{task}", stored,
            task=task, target_model=target, source_models=[s.model for s in source_sets], run_id=run.id,
            config={**artifact_config(method), "head_id": head_artifact.id, "source_sets": [s.id for s in source_sets],
                    "selection": selection.summary(), "best_epoch": loop.state.best_epoch,
                    "coverage": {"policy": config.coverage, "imputed": means is not None}},
        )
        applied = time.perf_counter()
        overrides = {candidates[row]: mapped_table[row].numpy() for row in retained}
        mapped = map_users(services, method, adapter, source_sets, everyone, target=target, task=task, head_id=head_artifact.id,
                           run_id=run.id, device=backbone.device, batch_users=config.apply_batch_users, progress=progress,
                           overrides=overrides, holders=cover.holders, means=means)
        apply_seconds = time.perf_counter() - applied
        refinement = None
        how = refine_plan(config, candidates, refit.valid_loss, selected=len(selection.users), spent=_fit_token_passes(context, loop, refit),
                          train_tokens=all_train.tokens_by_user(encoder, len(candidates)),
                          valid_tokens=valid_all.tokens_by_user(encoder, len(candidates)))
        if how is not None and how.users:
            refinement = refine(services, mapped, head, encoder, dataset, split, how, config, head_id=head_artifact.id,
                                target=target, task=task, run_id=run.id, progress=progress)
        refined = refinement.set if refinement else None  # None too when refinement kept the mapped prompts
        ledger = _fit_ledger(context, loop, backbone.device, refit, refinement, apply_seconds=round(apply_seconds, 3),
                             mapped_users=len(everyone), selected_users=len(selection.users), retained_users=len(retained),
                             **({"refine_plan": how.budget} if how is not None and how.budget is not None else {}))
        finished = services.runs.finish_run(run.id, ledger=ledger, results={
            "best_epoch": loop.state.best_epoch, "best_step": loop.state.best_step, "history": loop.state.history,
            "head_refit": refit.summary, "mapped_set": mapped.id,
            "refined_set": refined.id if refined else None, "refined_users": refinement.users if refinement and refined else 0})
    except BaseException as exc:
        partial = loop or (context.loops[-1] if context.loops else None)
        services.runs.finish_run(run.id, status="failed", ledger=partial.ledger(backbone.device, precision=backbone.precision) if partial else None,
                                 error=f"{type(exc).__name__}: {exc}")
        if config.distributed:
            send_ids([-1, -1, -1, -1])  # the followers wait on rank 0's result: say there is none
        raise
    if config.distributed:
        send_ids([mapped.id, refined.id if refined else -1, adapter.id, finished.id])
    checkpoint.unlink(missing_ok=True)
    final = refined or mapped
    groups = {"partial": cover.partial, **({"cold": cover.cold} if config.cold_start == "centroid" else {})}
    report = (quality_report(services, final, source_sets, dataset, config, device, seen=selection.users, groups=groups)
              if evaluate or gate is not None else None)
    alias_outcome = move_alias(services, alias, final, report, gate) if alias else None
    return MigrationResult(mapped, refined, adapter, head_artifact.id, finished, selection.summary(), report, alias_outcome,
                           cover.summary())


def _token_tables(services: Services, source_sets: Sequence[PromptSet], target: Backbone) -> tuple[list[TokenTable], TokenTable]:
    """The sources' and the target's vocabularies and input embeddings (each source model loaded
    on the CPU for its embedding rows, then let go)."""
    tables = []
    for s in source_sets:
        model = load_backbone(services.models.get_model(s.model), device="cpu")
        tables.append(TokenTable.of(model.tokenizer, model.model.get_input_embeddings().weight))
        del model
    return tables, TokenTable.of(target.tokenizer, target.model.get_input_embeddings().weight)


def _rank(config: MigrationConfig) -> int:
    return group_rank("MigrationConfig(distributed=True)", "migrate run --distributed") if config.distributed else 0


def _follower_result(services: Services, selection: dict[str, Any], coverage: dict[str, Any]) -> MigrationResult:
    """On a rank other than 0: wait for rank 0's stored ids (mapped set, refined set, adapter, run)
    and read them back (the quality report and the alias are rank 0's)."""
    mapped, refined, adapter, run = receive_ids(4)
    if mapped < 0:
        raise ConflictError("rank 0 failed after the data-parallel fit; its run says why (`prompt-registry run list`)")
    artifact = services.artifacts.get_artifact(adapter)
    return MigrationResult(services.reads.get_set(mapped), services.reads.get_set(refined) if refined >= 0 else None, artifact,
                           int(artifact.config["head_id"]), services.runs.get_run(run), selection, None, None, coverage)


def _map_table(method: MigrationMethod[Any], tables: Sequence[torch.Tensor], device: str, batch: int) -> torch.Tensor:
    """Every candidate's mapped prompt (CPU), in the order of the source tables' rows, ``batch``
    users a forward pass, fewer when their inputs would pass ``WRITE_BATCH_BYTES`` (wide real
    models: 16,384 users x 20 x 4,096 floats would be 5.4 GB on the device)."""
    method = method.to(device)
    row_bytes = sum(t[0].numel() * t.element_size() for t in tables if len(t))
    batch = max(1, min(batch, WRITE_BATCH_BYTES // max(1, row_bytes)))
    out = []
    with torch.no_grad():
        for start in range(0, len(tables[0]), batch):
            out.append(method.map(*[t[start : start + batch].to(device) for t in tables]).float().cpu())
    return torch.cat(out)


def _fit_token_passes(ctx: FitContext, loop: TrainingLoop, refit: HeadRefit) -> int:
    """Token-passes (forward + backward) of the fit, its extra forward passes and the head refit:
    what a migration has spent before any refinement."""
    states = [lp.state for lp in ctx.loops or [loop]]
    return sum(s.forward_tokens + s.backward_tokens for s in states) + ctx.extra_forward_tokens + refit.forward_tokens


def _refine_validation(state: LoopState) -> dict[str, Any]:
    """What refinement did on validation: the mapped state's metric (its epoch 0) and the kept one's."""
    curve = [h for h in state.history if any(k.startswith("valid_") for k in h)]
    if not curve or curve[0].get("epoch") != 0:
        return {}
    key = next(k for k in ("valid_rmse", "valid_auc") if k in curve[0])
    return {"valid_before": curve[0][key], "valid_after": state.best_metric, "valid_metric": key[len("valid_"):],
            "valid_curve": [h.get(key) for h in curve]}


def _fit_ledger(ctx: FitContext, loop: TrainingLoop, device: str, refit: HeadRefit, refinement: Refinement | None,
                **extra: Any) -> CostLedger:
    """The run's cost: every loop the method built, its extra forward passes, the head refit (one
    forward pass over every candidate's rows) and the refinement."""
    loops = ctx.loops or [loop]
    states = [lp.state for lp in loops]
    forward = sum(s.forward_tokens for s in states) + ctx.extra_forward_tokens + refit.forward_tokens
    backward = sum(s.backward_tokens for s in states)
    examples = sum(s.examples_seen for s in states) + refit.examples
    wall = sum(s.wall_seconds for s in states)
    parts: dict[str, Any] = {"fit": {"token_passes": sum(s.forward_tokens + s.backward_tokens for s in states) + ctx.extra_forward_tokens,
                                     "steps": sum(s.global_step for s in states), "loops": len(states)},
                             "head_prefit": ctx.prefit, "head_refit": {"token_passes": refit.forward_tokens, **refit.summary}}
    if ctx.init:
        parts["phi_init"] = ctx.init  # how the map started (no token-passes: no forward pass)
    if refinement is not None:
        r = refinement.state
        forward, backward = forward + r.forward_tokens, backward + r.backward_tokens
        examples, wall = examples + r.examples_seen, wall + r.wall_seconds
        parts["refine"] = {"examples_seen": r.examples_seen, "token_passes": r.forward_tokens + r.backward_tokens, "steps": r.global_step,
                           "epochs_run": r.epoch,
                           "best_epoch": r.best_epoch, "wall_seconds": r.wall_seconds, "users": refinement.users,
                           "head_trained": refinement.head_trained, "kept_mapped": refinement.set is None,
                           **_refine_validation(r)}
    base = loop.ledger(device, precision=ctx.backbone.precision, **extra)
    return dataclasses.replace(base, wall_seconds=round(wall, 3), examples_seen=examples, forward_tokens=forward,
                               backward_tokens=backward, extra={**base.extra, **parts})


def apply_adapter(services: Services, adapter_id: int, *, sources: Sequence[str | int] | None = None, users: Sequence[str] | None = None,
                  device: str = "auto", alias: str | None = None, progress: bool = True) -> PromptSet:
    """Map prompts through a stored adapter, no training: new users, or a newer source version.

    ``sources`` default to the adapter's source models (their ``production`` set, else latest);
    ``users`` default to every user the sources share (with an adapter fitted with
    ``coverage="impute"``: every user on any source). Mapping only some users makes an
    incremental version on top of the newest set this adapter produced, when there is one.
    """
    return apply_adapter_run(services, adapter_id, sources=sources, users=users, device=device, alias=alias, progress=progress)[0]


@dataclasses.dataclass(frozen=True)
class _Apply:
    """What mapping users through a stored adapter needs, resolved once."""

    adapter: Artifact
    method: MigrationMethod[Any]
    source_sets: list[PromptSet]
    users: list[str]
    holders: Sequence[set[str]]
    means: Sequence[torch.Tensor] | None


def _prepare_apply(services: Services, adapter_id: int, sources: Sequence[str | int] | None, users: Sequence[str] | None,
                   resolve: bool = True) -> _Apply:
    adapter = services.artifacts.get_artifact(adapter_id)
    if adapter.kind != "adapter":
        raise ConflictError(f"artifact {adapter_id} is a {adapter.kind}, not an adapter")
    source_sets = resolve_sources(services, sources or list(adapter.source_models), adapter.task)
    source_fps = [services.models.get_model(s.model).fingerprint for s in source_sets]
    target_info = services.models.get_model(adapter.target_model)
    _, tensors = services.artifacts.load_artifact(adapter_id, fingerprint=target_info.fingerprint, source_fingerprints=source_fps)
    means = stored_means(tensors, len(source_sets))  # an adapter fitted with imputed sources imputes the same way
    method = load_method(adapter.config, tensors)  # the recorded method (none recorded: PUMA)
    cover = plan_coverage(services, source_sets, "impute" if means is not None else "common", resolve=resolve)
    everyone = cover.mapped
    chosen = everyone  # everyone the sources cover (a shard of many: names only, read before its window)
    if users is not None:
        chosen = list(users)
        covered = set(everyone)  # once: a set built per user made apply quadratic (50,000 users: 72 s)
        missing = [u for u in chosen if u not in covered]
        if missing:
            need = "any source set" if means is not None else "every source set (this adapter was fitted with coverage='common')"
            raise UnknownSetError(f"{len(missing)} user(s) have no prompt in {need}: {missing[:5]}")
    return _Apply(adapter, method, list(source_sets), chosen, cover.holders, means)


def apply_adapter_run(services: Services, adapter_id: int, *, sources: Sequence[str | int] | None = None, users: Sequence[str] | None = None,
                      device: str = "auto", alias: str | None = None, progress: bool = True) -> tuple[PromptSet, Run]:
    """``apply_adapter``, and the ``apply`` run that did it (the set may be an earlier run's, when
    the same inputs were mapped before: mapping is idempotent)."""
    job = _prepare_apply(services, adapter_id, sources, users)
    adapter, source_sets, chosen = job.adapter, job.source_sets, job.users
    base = None
    if users is not None:
        produced = [s for s in services.reads.list_sets(model=adapter.target_model, task=adapter.task) if s.adapter_id == adapter_id]
        base = produced[0].id if produced else None
    run = services.runs.start_run("apply", model=adapter.target_model, task=adapter.task,
                             config={"adapter_id": adapter_id, "sources": [s.id for s in source_sets], "n_users": len(chosen), "base": base})
    started = time.perf_counter()
    try:
        result = map_users(services, job.method, adapter, source_sets, chosen, target=adapter.target_model, task=adapter.task,
                           head_id=int(adapter.config["head_id"]), run_id=run.id, device=resolve_device(device),
                           batch_users=MigrationConfig().apply_batch_users, base=base, progress=progress, holders=job.holders, means=job.means)
        if alias:
            services.aliases.set_alias(alias, result.id, reason=f"adapter {adapter_id} applied")
        finished = services.runs.finish_run(run.id, ledger=CostLedger(round(time.perf_counter() - started, 3), resolve_device(device),
                                                                      len(chosen), 0, 0), results={"set_id": result.id})
    except BaseException as exc:
        services.runs.finish_run(run.id, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    return result, finished


def apply_adapter_shard(services: Services, adapter_id: int, shard: int, n_shards: int, *, sources: Sequence[str | int] | None = None,
                        device: str = "auto", progress: bool = True) -> ShardWrite:
    """Shard ``shard`` of ``n_shards`` processes mapping every user through a stored adapter
    together (``torchrun`` ranks, workers, machines; ``WritePrompts.write_prompt_shard``): each
    maps and writes its chunk-aligned range of users; the one that finishes last commits the
    set, which no one sees before every shard is written. A killed shard leaves no visible set,
    and a rerun reuses the shards already written. Each call records its own ``apply`` run with
    its shard and rows; the set names the run of the shard that committed it."""
    job = _prepare_apply(services, adapter_id, sources, None, resolve=n_shards == 1)  # a shard of many resolves only its window
    adapter, source_sets, chosen = job.adapter, job.source_sets, job.users
    bounds = shard_bounds(len(chosen), shard, n_shards)
    window = (chosen[bounds[shard]], chosen[bounds[shard + 1] - 1]) if n_shards > 1 and bounds[shard + 1] > bounds[shard] else None
    run = services.runs.start_run("apply", model=adapter.target_model, task=adapter.task,
                                  config={"adapter_id": adapter_id, "sources": [s.id for s in source_sets], "n_users": len(chosen),
                                          "base": None, "shard": shard, "n_shards": n_shards})
    started = time.perf_counter()
    dev = resolve_device(device)
    try:
        produce = _producer(services, job.method.to(dev), source_sets, chosen, dev, MigrationConfig().apply_batch_users, job.holders,
                            job.means, None, window)
        written = services.writes.write_prompt_shard(
            adapter.target_model, adapter.task, chosen, produce, prompt_len=source_sets[0].prompt_len,
            key=_mapping_key(adapter, source_sets, chosen, None), shard=shard, n_shards=n_shards, run_id=run.id,
            head=int(adapter.config["head_id"]), adapter=adapter.id, sources=[s.id for s in source_sets], progress=progress,
            note=f"mapped by adapter {adapter.id} from sets {', '.join(str(s.id) for s in source_sets)} in {n_shards} shards")
        rows = 0 if written.reused else written.rows[1] - written.rows[0]
        services.runs.finish_run(run.id, ledger=CostLedger(round(time.perf_counter() - started, 3), dev, rows, 0, 0),
                                 results={"shard": shard, "n_shards": n_shards, "rows": list(written.rows), "reused": written.reused,
                                          "set_id": written.set.id if written.set else None, "missing": list(written.missing)})
    except BaseException as exc:
        services.runs.finish_run(run.id, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    return written


