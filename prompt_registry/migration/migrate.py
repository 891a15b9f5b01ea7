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
import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..backbones.heads import TaskHead
from ..backbones.loader import load_backbone, resolve_device
from ..backbones.prompting import PromptEncoder, Template
from ..core.services import Services
from ..data.dataset import Dataset
from ..entities import Artifact, CostLedger, Evaluation, MigrationReport, MigrationResult, PromptSet
from ..errors import ConflictError, InvalidArgumentError, UnknownAliasError, UnknownSetError
from ..training import metrics
from ..training.config import TrainConfig
from ..training.evaluate import evaluate_set
from ..training.loop import LoopConfig, PromptTable, TrainingLoop
from ..training.trainer import checkpoint_key, prepare_examples, save_head
from .base import FitContext, MappingSpec, MigrationMethod, artifact_config, get_method, load_method
from .config import MigrationConfig
from .puma.selection import label_variance, select_users


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


def _common_users(services: Services, sets: Sequence[PromptSet]) -> list[str]:
    common: set[str] | None = None
    for s in sets:
        users = set(services.reads.list_set_users(s.id))
        common = users if common is None else common & users
    return sorted(common or ())


def _mapping_key(adapter: Artifact, sets: Sequence[PromptSet], users: Sequence[str], base: int | None) -> str:
    blob = json.dumps([adapter.sha256, [(s.id, s.sha256) for s in sets], hashlib.sha256("\n".join(users).encode()).hexdigest(), base])
    return hashlib.sha256(blob.encode()).hexdigest()


def map_users(services: Services, method: MigrationMethod[Any], adapter: Artifact, sets: Sequence[PromptSet], users: Sequence[str], *,
              target: str, task: str, head_id: int, run_id: int | None, device: str, batch_users: int,
              base: int | None = None, progress: bool = False) -> PromptSet:
    """Stream ``users``' source rows through the fitted method into a new target set (idempotent, resumable)."""
    method = method.to(device)

    def produce(start: int, stop: int) -> np.ndarray:
        chunk = users[start:stop]
        out = []
        for i in range(0, len(chunk), batch_users):
            part = chunk[i : i + batch_users]
            with torch.no_grad():
                inputs = [services.reads.get_prompts(part, set=s.id).to(device).float() for s in sets]
                out.append(method.map(*inputs).cpu().numpy())
        return np.concatenate(out)

    return services.writes.write_prompts(
        target, task, users, produce, prompt_len=sets[0].prompt_len, key=_mapping_key(adapter, sets, users, base),
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
    dataset = data if isinstance(data, Dataset) else Dataset.load(data)
    source_sets = resolve_sources(services, sources, task)
    target_info = services.models.get_model(target)
    if any(s.model == target for s in source_sets):
        raise InvalidArgumentError(f"source and target are the same model {target!r}")
    task_kind = next(t.kind for t in services.models.list_tasks() if t.name == task)
    everyone = _common_users(services, source_sets)
    data_users = set(dataset.users.tolist())
    candidates = [u for u in everyone if u in data_users]
    if not candidates:
        raise ConflictError("no user has both a source prompt and training data; check the data set and source sets")
    split = dataset.split(test_fraction=config.test_fraction, valid_fraction=config.valid_fraction, users=candidates)
    source_tables = [services.reads.get_prompts(candidates, set=s.id).float() for s in source_sets]
    variance = label_variance(candidates, dataset.users[split.train], dataset.labels[split.train])
    flat = torch.cat([t.reshape(len(candidates), -1) for t in source_tables], dim=1).numpy()
    selection = select_users(candidates, flat, variance, config.selection)
    position = {u: i for i, u in enumerate(candidates)}
    picked = np.array([position[u] for u in selection.users], dtype=np.int64)

    backbone = load_backbone(target_info, device=device)
    template = Template(config.template)
    encoder = PromptEncoder(backbone, template, source_sets[0].prompt_len, task_kind, config.max_length)
    keep = np.isin(dataset.users, np.array(selection.users))
    sub_split = dataclasses.replace(split, train=split.train[keep[split.train]], valid=split.valid[keep[split.valid]])
    train, valid = prepare_examples(dataset, sub_split, list(selection.users), encoder, template)
    spec = MappingSpec(tuple(s.width for s in source_sets), target_info.hidden_size, source_sets[0].prompt_len)
    torch.manual_seed(config.seed)  # the method's initialisation, then the head's: reproducible for a seed
    method = method_class.create(config.method_config, spec, backbone)
    head = TaskHead(task_kind, backbone.decoder, encoder.feature_size, float(train.labels.mean())).to(backbone.device)
    key = checkpoint_key("migrate", [s.sha256 for s in source_sets], target_info.fingerprint, task, dataset.fingerprint, config.to_dict())
    checkpoint = services.ctx.scratch_dir() / "checkpoints" / f"migrate-{key}.safetensors"
    if not resume and checkpoint.exists():
        checkpoint.unlink()
    context = FitContext(backbone=backbone, encoder=encoder, task_kind=task_kind, head=head, head_lr=config.head_lr,
                         sources=[t[picked].to(backbone.device) for t in source_tables], train=train, valid=valid,
                         batch_size=config.batch_size, eval_batch_size=config.eval_batch_size, seed=config.seed,
                         checkpoint_every=config.checkpoint_every, patience=config.patience, checkpoint=checkpoint,
                         resume=resume, progress=progress, steps_hint=f"adapter -> {target}")
    run = services.runs.start_run("migrate", model=target, task=task, seeds={"seed": config.seed, "selection": config.selection.seed}, config={
        **config.to_dict(), "sources": [{"set_id": s.id, "model": s.model, "sha256": s.sha256} for s in source_sets],
        "target_fingerprint": target_info.fingerprint, "data": dataset.root, "data_fingerprint": dataset.fingerprint,
        "candidates": len(candidates), "selected_users": list(selection.users), "selection_summary": selection.summary(),
        "adapter": method.describe(), "n_train": len(train), "n_valid": len(valid), "device": backbone.device,
    })
    loop: TrainingLoop | None = None
    try:
        loop = method.fit(context)
        if not isinstance(loop, TrainingLoop):
            raise TypeError(f"{method_class.__qualname__}.fit must return the TrainingLoop whose best epoch it kept")
        head_artifact = save_head(services, loop.best_head, head, encoder, task=task, model=target, run_id=run.id)
        adapter = services.artifacts.put_artifact(
            "adapter", f"{'+'.join(s.model for s in source_sets)}->{target}/{task}", method.tensors(),
            task=task, target_model=target, source_models=[s.model for s in source_sets], run_id=run.id,
            config={**artifact_config(method), "head_id": head_artifact.id, "source_sets": [s.id for s in source_sets],
                    "selection": selection.summary(), "best_epoch": loop.state.best_epoch},
        )
        applied = time.perf_counter()
        mapped = map_users(services, method, adapter, source_sets, everyone, target=target, task=task, head_id=head_artifact.id,
                           run_id=run.id, device=backbone.device, batch_users=config.apply_batch_users, progress=progress)
        apply_seconds = time.perf_counter() - applied
        refined, refine_state = None, None
        if config.refine_epochs > 0:
            refined, refine_state = _refine(services, mapped, head, encoder, dataset, split, candidates, config,
                                            backbone.device, task_kind, target, task, run.id, progress)
        ledger = loop.ledger(backbone.device, apply_seconds=round(apply_seconds, 3), mapped_users=len(everyone),
                             selected_users=len(selection.users))
        if refine_state is not None:
            ledger = dataclasses.replace(
                ledger, wall_seconds=round(ledger.wall_seconds + refine_state.wall_seconds, 3),
                examples_seen=ledger.examples_seen + refine_state.examples_seen,
                forward_tokens=ledger.forward_tokens + refine_state.forward_tokens,
                backward_tokens=ledger.backward_tokens + refine_state.backward_tokens,
                extra={**ledger.extra, "refine": {"examples_seen": refine_state.examples_seen,
                                                  "token_passes": refine_state.forward_tokens + refine_state.backward_tokens,
                                                  "best_epoch": refine_state.best_epoch, "wall_seconds": refine_state.wall_seconds}},
            )
        finished = services.runs.finish_run(run.id, ledger=ledger, results={"best_epoch": loop.state.best_epoch, "history": loop.state.history,
                                                                        "mapped_set": mapped.id, "refined_set": refined.id if refined else None})
    except BaseException as exc:
        partial = loop or (context.loops[-1] if context.loops else None)
        services.runs.finish_run(run.id, status="failed", ledger=partial.ledger(backbone.device) if partial else None,
                            error=f"{type(exc).__name__}: {exc}")
        raise
    checkpoint.unlink(missing_ok=True)
    final = refined or mapped
    report = quality_report(services, final, source_sets, dataset, config, device) if evaluate or gate is not None else None
    alias_outcome = _move_alias(services, alias, final, report, gate) if alias else None
    return MigrationResult(mapped, refined, adapter, head_artifact.id, finished, selection.summary(), report, alias_outcome)


def _refine(services: Services, mapped: PromptSet, head: TaskHead, encoder: PromptEncoder, dataset: Dataset, split: Any,
            candidates: list[str], config: MigrationConfig, device: str, task_kind: str, target: str, task: str,
            run_id: int, progress: bool) -> tuple[PromptSet, Any]:
    """Warm start: continue training every user's mapped prompt on the target (and the head)."""
    start = services.reads.get_prompts(candidates, set=mapped.id).float()
    train, valid = prepare_examples(dataset, split, candidates, encoder, encoder.template)
    table = PromptTable(start).to(device)
    loop = TrainingLoop(encoder=encoder, head=head, provider=table, schedulers={}, train=train, valid=valid, task_kind=task_kind,
                        optimizers={"prompts": torch.optim.SparseAdam(table.parameters(), lr=config.refine_lr),
                                    "head": torch.optim.AdamW(head.parameters(), lr=config.head_lr)},
                        config=LoopConfig(config.refine_epochs, config.batch_size, config.eval_batch_size, config.seed,
                                          config.checkpoint_every, config.patience),
                        checkpoint=None, steps_hint=f"refine {target}")
    loop.fit(progress)
    loop.use_best()
    head_artifact = save_head(services, loop.best_head, head, encoder, task=task, model=target, run_id=run_id)
    prompts = loop.best_provider["rows.weight"].reshape(len(candidates), mapped.prompt_len, -1).numpy()
    # an incremental version of the mapped set: users without training data keep their mapped prompt
    refined = services.writes.import_prompts(target, task, prompts, candidates, base=mapped.id, run_id=run_id, head=head_artifact.id,
                                      note=f"warm-start refinement of set {mapped.id}")
    return refined, loop.state


def apply_adapter(services: Services, adapter_id: int, *, sources: Sequence[str | int] | None = None, users: Sequence[str] | None = None,
                  device: str = "auto", alias: str | None = None, progress: bool = True) -> PromptSet:
    """Map prompts through a stored adapter, no training: new users, or a newer source version.

    ``sources`` default to the adapter's source models (their ``production`` set, else latest);
    ``users`` default to every user the sources share. Mapping only some users makes an
    incremental version on top of the newest set this adapter produced, when there is one.
    """
    adapter = services.artifacts.get_artifact(adapter_id)
    if adapter.kind != "adapter":
        raise ConflictError(f"artifact {adapter_id} is a {adapter.kind}, not an adapter")
    source_sets = resolve_sources(services, sources or list(adapter.source_models), adapter.task)
    source_fps = [services.models.get_model(s.model).fingerprint for s in source_sets]
    target_info = services.models.get_model(adapter.target_model)
    _, tensors = services.artifacts.load_artifact(adapter_id, fingerprint=target_info.fingerprint, source_fingerprints=source_fps)
    method = load_method(adapter.config, tensors)  # the recorded method (none recorded: PUMA)
    everyone = _common_users(services, source_sets)
    chosen = list(users) if users is not None else everyone
    covered = set(everyone)  # once: a set built per user made apply quadratic (50,000 users: 72 s)
    missing = [u for u in chosen if u not in covered]
    if missing:
        raise UnknownSetError(f"{len(missing)} user(s) have no prompt in every source set: {missing[:5]}")
    base = None
    if users is not None:
        produced = [s for s in services.reads.list_sets(model=adapter.target_model, task=adapter.task) if s.adapter_id == adapter_id]
        base = produced[0].id if produced else None
    run = services.runs.start_run("apply", model=adapter.target_model, task=adapter.task,
                             config={"adapter_id": adapter_id, "sources": [s.id for s in source_sets], "n_users": len(chosen), "base": base})
    started = time.perf_counter()
    try:
        result = map_users(services, method, adapter, source_sets, chosen, target=adapter.target_model, task=adapter.task,
                           head_id=int(adapter.config["head_id"]), run_id=run.id, device=resolve_device(device),
                           batch_users=4096, base=base, progress=progress)
        if alias:
            services.aliases.set_alias(alias, result.id, reason=f"adapter {adapter_id} applied")
        services.runs.finish_run(run.id, ledger=CostLedger(round(time.perf_counter() - started, 3), resolve_device(device), len(chosen), 0, 0),
                            results={"set_id": result.id})
    except BaseException as exc:
        services.runs.finish_run(run.id, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    return result


def _evaluate(services: Services, prompt_set: PromptSet, dataset: Dataset, config: MigrationConfig, device: str) -> Evaluation | None:
    if prompt_set.head_id is None:
        return None
    # a set's evaluation on the same data and split is deterministic: reuse a stored one
    dataset_label = f"{dataset.root}#{dataset.fingerprint[:12]}"
    for earlier in services.runs.list_evaluations(prompt_set.id, split="test"):
        recorded = services.runs.get_run(earlier.run_id).config if earlier.run_id is not None else {}
        if earlier.dataset == dataset_label and recorded.get("test_fraction") == config.test_fraction \
                and recorded.get("valid_fraction") == config.valid_fraction:
            return services.runs.get_evaluation(earlier.id)
    split_config = TrainConfig(test_fraction=config.test_fraction, valid_fraction=config.valid_fraction)
    evaluation = evaluate_set(services, prompt_set.id, dataset, split="test", config=split_config, device=device)
    return services.runs.get_evaluation(evaluation.id)


def _scratch_reference(services: Services, target_set: PromptSet) -> PromptSet | None:
    """The newest from-scratch (trained) set of the target model and task, if any."""
    for candidate in services.reads.list_sets(model=target_set.model, task=target_set.task):
        if candidate.run_id is not None and services.runs.get_run(candidate.run_id).kind == "train":
            return candidate
    return None


def quality_report(services: Services, new_set: PromptSet, source_sets: Sequence[PromptSet], dataset: Dataset,
                   config: MigrationConfig, device: str) -> MigrationReport:
    kind = next(t.kind for t in services.models.list_tasks() if t.name == new_set.task)
    metric, lower = ("rmse", True) if kind == "rating" else ("auc", False)
    rows: list[dict[str, Any]] = []
    new_eval = _evaluate(services, new_set, dataset, config, device)
    assert new_eval is not None
    rows.append({"name": "migrated", "set_id": new_set.id, "model": new_set.model, **_plain(new_eval.metrics)})
    for s in source_sets:
        ev = _evaluate(services, s, dataset, config, device)
        if ev is not None:
            rows.append({"name": f"source ({s.model})", "set_id": s.id, "model": s.model, **_plain(ev.metrics), "_eval": ev})
    scratch = _scratch_reference(services, new_set)
    if scratch is not None:
        ev = _evaluate(services, scratch, dataset, config, device)
        if ev is not None:  # None for a set stored without a head, as for the sources
            rows.append({"name": "retrain", "set_id": scratch.id, "model": scratch.model, **_plain(ev.metrics), "_eval": ev})
    reference_row = next((r for r in rows if r["name"] == "retrain"), None) or next((r for r in rows[1:]), None)
    share, worst = None, []
    if reference_row is not None and new_eval.per_user:
        ref_users = reference_row["_eval"].per_user
        share = metrics.share_worse(new_eval.per_user, ref_users, metric if kind == "rating" else "auc", lower)
        deltas = [(u, new_eval.per_user[u][metric] - ref_users[u][metric]) for u in new_eval.per_user
                  if u in ref_users and metric in new_eval.per_user[u] and metric in ref_users[u]]
        deltas.sort(key=lambda d: -d[1] if lower else d[1])
        worst = [{"user": u, "delta": round(d, 4)} for u, d in deltas[:5]]
    for r in rows:
        r.pop("_eval", None)
    return MigrationReport(metric, lower, rows, None if reference_row is None else reference_row["name"], share, worst)


def _plain(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k in ("rmse", "mae", "auc", "uauc", "n", "baselines")}


def _move_alias(services: Services, alias: str, final: PromptSet, report: MigrationReport | None, gate: float | None) -> dict[str, Any]:
    if gate is not None:
        if report is None or report.reference is None:
            return {"alias": alias, "moved": False, "why": "gate asked but there is no reference set to compare with"}
        new = report.rows[0][report.metric]
        ref_row = next(r for r in report.rows[1:] if r["name"] == report.reference)
        ref = ref_row[report.metric]
        worse_by = (new - ref) if report.lower_is_better else (ref - new)
        if worse_by > gate:
            return {"alias": alias, "moved": False, "why": f"{report.metric} {new:.4f} is worse than {ref_row['name']} "
                    f"{ref:.4f} by {worse_by:.4f} > gate {gate}", "set_id": final.id}
    services.aliases.set_alias(alias, final.id, reason="migration" + (f" (gate {gate} passed)" if gate is not None else ""))
    return {"alias": alias, "moved": True, "set_id": final.id}
