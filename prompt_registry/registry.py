"""The ``Registry`` facade, the one public entry point: ``open``/``init`` build a ``Context`` and one service per concern
(``core/``); every method is a docstring and one call into a service, which runs it as one unit of work and documents its
arguments and errors in full (see docs/design.md)."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._context import Context
from .audit.entities import AliasMove, BlastRadius, EvaluationDiff, Lineage, PurgeReport, RunCost, UserHistory
from .core import opening
from .core.admin import DEFAULT_GC_GRACE_SECONDS
from .core.services import Services
from .core.writes import PromptInput
from .db import migrations
from .entities import (
    Alias,
    AliasEvent,
    Artifact,
    AuditEvent,
    CostLedger,
    DoctorReport,
    Evaluation,
    ExportResult,
    GcReport,
    MigrationResult,
    ModelInfo,
    PromptSet,
    Run,
    ShardWrite,
    Task,
    TrainResult,
    User,
)
from .liveness import STALE_AFTER_SECONDS
from .names import TASK_KINDS
from .store.base import TensorStore

if TYPE_CHECKING:  # annotations only: importing them loads torch
    from .backbones.loader import Backbone
    from .data.dataset import Dataset
    from .migration.config import MigrationConfig
    from .planning import Planner
    from .serving import PromptReader, ReaderConfig
    from .training.config import TrainConfig

__all__ = ["DEFAULT_GC_GRACE_SECONDS", "TASK_KINDS", "Registry"]
Where = str | os.PathLike[str] | None


class Registry:
    """Versioned soft prompts bound to the base models that read them: ``Registry.open(location)`` (or ``init``), ``location`` a
    directory (SQLite + Zarr, default ``./.prompt-registry``) or a database URL with ``store=``. A context manager, or ``close()``."""

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self.where, self.actor, self.catalog_id = ctx.where, ctx.actor, ctx.catalog_id  # for messages and audits
        self._s = Services.build(ctx)  # one service per concern; what training and migration receive

    @classmethod
    def init(cls, location: Where = None, *, store: Where = None, actor: str | None = None) -> Registry:
        """Create a registry (or bring one to the current schema) and open it (``StoreBindingError``: store of another catalogue)."""
        return cls(opening.create(location, store, actor))

    @classmethod
    def open(cls, location: Where = None, *, store: Where = None, actor: str | None = None) -> Registry:
        """Open an existing registry (``SchemaError``: not at this package's schema; ``StoreBindingError``: another's store)."""
        return cls(opening.open_existing(location, store, actor))

    @staticmethod
    def upgrade(location: Where = None, *, store: Where = None) -> tuple[str | None, str]:
        """Apply the packaged Alembic migrations; returns (revision before, revision after)."""
        return opening.upgrade(location, store)

    def close(self) -> None:
        """Release the database connections and store handles."""
        self._ctx.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.where!r}, store={self.store.location!r})"

    @property
    def store(self) -> TensorStore:
        """The tensor store (bound to this catalogue)."""
        return self._ctx.store

    @property
    def schema_revision(self) -> str | None:
        """The catalogue's Alembic revision."""
        return migrations.current_revision(self._ctx.engine)

    @property
    def planner(self) -> Planner:
        """Migration plans over the graph of models and adapters: plan, get, list, graph, dot (``planning.Planner``)."""
        from .planning import Planner
        return Planner(self._s)

    def scratch_dir(self) -> Path:
        """A local directory for working files (checkpoints): beside the store."""
        return self._ctx.scratch_dir()

    def train_prompts(self, model: str, task: str, data: str | os.PathLike[str] | Dataset, *, users: Sequence[str] | None = None,
            config: TrainConfig | None = None, device: str = "auto", checkpoint_dir: str | os.PathLike[str] | None = None, resume: bool = False,
            progress: bool = True, alias: str | None = None, evaluate_split: str | None = None, on_step: Callable[[int], None] | None = None) -> TrainResult:
        """Train every user's prompt and the task head from scratch on frozen ``model`` (see ``training.trainer``)."""
        from .training.trainer import train_prompts
        return train_prompts(self._s, model, task, data, users=users, config=config, device=device, checkpoint_dir=checkpoint_dir, resume=resume,
            progress=progress, alias=alias, evaluate_split=evaluate_split, on_step=on_step)

    def evaluate(self, ref: int | str | PromptSet, data: str | os.PathLike[str] | Dataset, *, split: str = "test", config: TrainConfig | None = None,
            device: str = "auto", backbone: Backbone | None = None, batch_size: int = 128, precision: str = "fp32") -> Evaluation:
        """Evaluate a set (with its head) on a data split; stored as an ``eval`` run + evaluation."""
        from .training.evaluate import evaluate_set
        return evaluate_set(self._s, ref, data, split=split, config=config, device=device, backbone=backbone, batch_size=batch_size,
                            precision=precision)

    def migrate(self, sources: Sequence[str | int], target: str, task: str, data: str | os.PathLike[str] | Dataset, *, config: MigrationConfig | None = None,
            device: str = "auto", alias: str | None = None, gate: float | None = None, evaluate: bool = True, resume: bool = False,
            progress: bool = True) -> MigrationResult:
        """Migrate ``sources``' prompts (models or sets) to ``target`` with ``config.method``; ``gate`` guards ``alias`` (``migration.migrate``)."""
        from .migration.migrate import migrate
        return migrate(self._s, sources, target, task, data, config=config, device=device, alias=alias, gate=gate, evaluate=evaluate, resume=resume,
            progress=progress)

    def apply_adapter(self, adapter_id: int, *, sources: Sequence[str | int] | None = None, users: Sequence[str] | None = None, device: str = "auto",
            alias: str | None = None, progress: bool = True) -> PromptSet:
        """Map prompts through a stored adapter without training: new users, or a newer source version."""
        from .migration.migrate import apply_adapter
        return apply_adapter(self._s, adapter_id, sources=sources, users=users, device=device, alias=alias, progress=progress)

    def apply_adapter_shard(self, adapter_id: int, shard: int, n_shards: int, *, sources: Sequence[str | int] | None = None,
            device: str = "auto", progress: bool = True) -> ShardWrite:
        """Shard ``shard`` of ``n_shards`` processes mapping every user through an adapter; the last to finish commits (``migration.migrate``)."""
        from .migration.migrate import apply_adapter_shard
        return apply_adapter_shard(self._s, adapter_id, shard, n_shards, sources=sources, device=device, progress=progress)

    def register_model(self, name: str, path: str | os.PathLike[str], *, revision: str | None = None, reason: str | None = None) -> ModelInfo:
        """Register a local model folder under ``name``, fingerprinting its config and weights."""
        return self._s.models.register_model(name, path, revision=revision, reason=reason)

    def get_model(self, name: str) -> ModelInfo:
        """A registered model by name (``UnknownModelError`` if none)."""
        return self._s.models.get_model(name)

    def list_models(self) -> list[ModelInfo]:
        """All registered models, by name."""
        return self._s.models.list_models()

    def add_task(self, name: str, kind: str) -> Task:
        """Create a task (``rating`` or ``click``); idempotent when it exists with the same kind."""
        return self._s.models.add_task(name, kind)

    def list_tasks(self) -> list[Task]:
        """All tasks, by name."""
        return self._s.models.list_tasks()

    def add_users(self, users: Iterable[str], *, exist_ok: bool = False) -> int:
        """Register users by external id; returns how many were new."""
        return self._s.users.add_users(users, exist_ok=exist_ok)

    def list_users(self, *, limit: int | None = 100, offset: int = 0, include_deleted: bool = False) -> list[User]:
        """Users in registration order (``limit=None`` for all)."""
        return self._s.users.list_users(limit=limit, offset=offset, include_deleted=include_deleted)

    def count_users(self) -> int:
        """How many (non-deleted) users are registered."""
        return self._s.users.count_users()

    def import_prompts(self, model: str, task: str, prompts: PromptInput, users: Sequence[str] | str | os.PathLike[str] | None = None, *,
            base: int | str | PromptSet | None = None, prompt_len: int | None = None, dtype: str | None = None, create_users: bool = False,
            alias: str | None = None, tags: Mapping[str, str | None] | Iterable[str] | None = None, note: str | None = None, reason: str | None = None,
            run_id: int | None = None, head: int | None = None, adapter: int | None = None, sources: Sequence[int | str | PromptSet] = ()) -> PromptSet:
        """Write a new immutable prompt set for ``model`` and ``task`` (``prompts`` may be a folder of PEFT folders)."""
        return self._s.writes.import_prompts(model, task, prompts, users, base=base, prompt_len=prompt_len, dtype=dtype, create_users=create_users,
            alias=alias, tags=tags, note=note, reason=reason, run_id=run_id, head=head, adapter=adapter, sources=sources)

    def write_prompts(self, model: str, task: str, users: Sequence[str], produce: Callable[[int, int], Any], *, prompt_len: int, dtype: str = "float32",
            key: str | None = None, progress: bool = False, run_id: int | None = None, head: int | None = None, adapter: int | None = None,
            sources: Sequence[int | str | PromptSet] = (), alias: str | None = None, tags: Mapping[str, str | None] | Iterable[str] | None = None,
            note: str | None = None, reason: str | None = None, create_users: bool = False, base: int | str | PromptSet | None = None) -> PromptSet:
        """Stream a new version chunk by chunk: ``produce(start, stop)`` returns ``users[start:stop]``'s rows, ``(stop - start, prompt_len, width)``."""
        return self._s.writes.write_prompts(model, task, users, produce, prompt_len=prompt_len, dtype=dtype, key=key, progress=progress, run_id=run_id,
            head=head, adapter=adapter, sources=sources, alias=alias, tags=tags, note=note, reason=reason, create_users=create_users, base=base)

    def get_set(self, ref: int | str | PromptSet) -> PromptSet:
        """A prompt set by id or ``MODEL/TASK@ALIAS`` (``@latest``, ``@vN``)."""
        return self._s.reads.get_set(ref)

    def get_prompt(self, user: str, model: str | None = None, task: str | None = None, *, alias: str | None = None, version: int | None = None,
            set: int | str | PromptSet | None = None, fingerprint: str | None = None, verify: bool = True) -> Any:
        """One user's prompt as a ``torch.Tensor`` of shape ``(prompt_len, width)``."""
        return self._s.reads.get_prompt(user, model, task, alias=alias, version=version, set=set, fingerprint=fingerprint, verify=verify)

    def get_prompts(self, users: Sequence[str], model: str | None = None, task: str | None = None, *, alias: str | None = None, version: int | None = None,
            set: int | str | PromptSet | None = None, fingerprint: str | None = None, verify: bool = True) -> Any:
        """Prompts of many users, ordered as asked: ``torch.Tensor`` ``(len(users), prompt_len, width)``."""
        return self._s.reads.get_prompts(users, model, task, alias=alias, version=version, set=set, fingerprint=fingerprint, verify=verify)

    def reader(self, model: str, task: str, *, alias: str | None = "production", version: int | None = None, fingerprint: str | None = None,
            device: str = "cpu", dtype: Any = None, config: ReaderConfig | None = None, default: Any = None) -> PromptReader:
        """A read-only ``PromptReader`` for inference, pinned to the version ``alias`` (or ``version``) names now (``serving.reader``)."""
        from .serving import PromptReader
        return PromptReader(self._s, model, task, alias=alias, version=version, fingerprint=fingerprint, device=device, dtype=dtype, config=config,
            default=default)

    def list_set_users(self, ref: int | str | PromptSet) -> list[str]:
        """Every user with a prompt in this version (through its incremental bases), sorted."""
        return self._s.reads.list_set_users(ref)

    def export_prompts(self, ref: int | str | PromptSet, path: str | os.PathLike[str], *, verify: bool = True, format: str | None = None,
            users: Sequence[str] | None = None) -> ExportResult:
        """Write a version's prompts to ``.safetensors``/``.npy`` (+ ``.users.csv``), or ``format="peft"``: a PEFT folder per user."""
        return self._s.reads.export_prompts(ref, path, verify=verify, format=format, users=users)

    def list_sets(self, *, model: str | None = None, task: str | None = None, tag: str | None = None, alias: str | None = None,
            include_deleted: bool = False) -> list[PromptSet]:
        """Prompt sets, newest first, filtered by model, task, tag name and alias name."""
        return self._s.reads.list_sets(model=model, task=task, tag=tag, alias=alias, include_deleted=include_deleted)

    def set_alias(self, name: str, ref: int | str | PromptSet, *, reason: str | None = None) -> Alias:
        """Point alias ``name`` of the set's model and task at that set (history is kept)."""
        return self._s.aliases.set_alias(name, ref, reason=reason)

    def get_alias(self, name: str, model: str, task: str) -> Alias:
        """Where alias ``name`` of ``model``/``task`` points (``UnknownAliasError`` if unset)."""
        return self._s.aliases.get_alias(name, model, task)

    def delete_alias(self, name: str, model: str, task: str, *, reason: str | None = None) -> None:
        """Remove an alias (its history stays, ending with a deletion event)."""
        return self._s.aliases.delete_alias(name, model, task, reason=reason)

    def list_aliases(self, *, model: str | None = None, task: str | None = None) -> list[Alias]:
        """Current aliases, optionally of one model and/or task."""
        return self._s.aliases.list_aliases(model=model, task=task)

    def alias_history(self, name: str, *, model: str | None = None, task: str | None = None) -> list[AliasEvent]:
        """Every move of alias ``name`` (optionally of one model/task), oldest first."""
        return self._s.aliases.alias_history(name, model=model, task=task)

    def tag(self, ref: int | str | PromptSet, name: str, value: str | None = None) -> PromptSet:
        """Attach (or update) tag ``name`` on a set. Tags are mutable labels; versions are not."""
        return self._s.aliases.tag(ref, name, value)

    def untag(self, ref: int | str | PromptSet, name: str) -> PromptSet:
        """Remove tag ``name`` from a set (a no-op if absent)."""
        return self._s.aliases.untag(ref, name)

    def put_artifact(self, kind: str, name: str, tensors: Mapping[str, Any], *, task: str, target_model: str, source_models: Sequence[str] = (),
            config: Mapping[str, Any] | None = None, run_id: int | None = None) -> Artifact:
        """Store an adapter or task head (safetensors) bound to model fingerprints; a new version of ``name``."""
        return self._s.artifacts.put_artifact(kind, name, tensors, task=task, target_model=target_model, source_models=source_models,
            config=config, run_id=run_id)

    def get_artifact(self, artifact_id: int) -> Artifact:
        """An adapter or head by id (``UnknownArtifactError`` if none)."""
        return self._s.artifacts.get_artifact(artifact_id)

    def list_artifacts(self, *, kind: str | None = None, task: str | None = None, target_model: str | None = None) -> list[Artifact]:
        """Adapters and heads, newest first, optionally filtered."""
        return self._s.artifacts.list_artifacts(kind=kind, task=task, target_model=target_model)

    def load_artifact(self, artifact_id: int, *, fingerprint: str | None = None, source_fingerprints: Sequence[str] | None = None) -> tuple[Artifact,
            dict[str, Any]]:
        """The artifact and its tensors (``torch``), checksum-verified."""
        return self._s.artifacts.load_artifact(artifact_id, fingerprint=fingerprint, source_fingerprints=source_fingerprints)

    def start_run(self, kind: str, *, model: str | None = None, task: str | None = None, config: Mapping[str, Any] | None = None,
            seeds: Mapping[str, Any] | None = None) -> Run:
        """Record the start of a run (training, migration, evaluation, ...) with its full config."""
        return self._s.runs.start_run(kind, model=model, task=task, config=config, seeds=seeds)

    def finish_run(self, run_id: int, *, status: str = "succeeded", ledger: CostLedger | None = None, error: str | None = None,
            results: Mapping[str, Any] | None = None) -> Run:
        """Close a run with its status, cost ledger, and results (stored in ``cost['results']``)."""
        return self._s.runs.finish_run(run_id, status=status, ledger=ledger, error=error, results=results)

    def get_run(self, run_id: int) -> Run:
        """A run (import, training, migration, ...) with its config and cost ledger."""
        return self._s.runs.get_run(run_id)

    def list_runs(self, *, kind: str | None = None, limit: int = 100) -> list[Run]:
        """Runs, newest first, optionally of one kind."""
        return self._s.runs.list_runs(kind=kind, limit=limit)

    def record_evaluation(self, ref: int | str | PromptSet, *, dataset: str, split: str, metrics: Mapping[str, Any],
            per_user: Mapping[str, Mapping[str, float]] | None = None, run_id: int | None = None) -> Evaluation:
        """Store an evaluation of a set: overall ``metrics`` and optional per-user metric values."""
        return self._s.runs.record_evaluation(ref, dataset=dataset, split=split, metrics=metrics, per_user=per_user, run_id=run_id)

    def get_evaluation(self, evaluation_id: int, *, per_user: bool = True) -> Evaluation:
        """An evaluation with (by default) its per-user metrics."""
        return self._s.runs.get_evaluation(evaluation_id, per_user=per_user)

    def list_evaluations(self, ref: int | str | PromptSet | None = None, *, split: str | None = None) -> list[Evaluation]:
        """Evaluations (newest first), optionally of one set and/or split; without per-user values."""
        return self._s.runs.list_evaluations(ref, split=split)

    def audit_events(self, *, object_kind: str | None = None, object_id: str | None = None, limit: int = 100) -> list[AuditEvent]:
        """The append-only audit log, newest first."""
        return self._s.runs.audit_events(object_kind=object_kind, object_id=object_id, limit=limit)

    def lineage(self, ref: int | str | PromptSet, *, down: bool = False, max_depth: int | None = None) -> Lineage:
        """Every ancestor (``down``: descendant) of a set through bases and sources, with each edge's run and adapter (``audit.queries``)."""
        return self._s.audit.lineage(ref, down=down, max_depth=max_depth)

    def user_history(self, user: str) -> UserHistory:
        """Every prompt version of a user (written or inherited), what made each, the alias windows on it (``audit.queries``)."""
        return self._s.audit.user_history(user)

    def alias_timeline(self, name: str, *, model: str | None = None, task: str | None = None) -> list[AliasMove]:
        """Every move of alias ``name`` (old and new version, who, why, until when it stood), oldest first; ``UnknownAliasError`` if never set."""
        return self._s.audit.alias_timeline(name, model=model, task=task)

    def cost_summary(self, *, since: dt.datetime | dt.date | None = None, kind: str | None = None, group_by: str | None = None) -> list[RunCost]:
        """The runs' cost ledger summed (runs, wall time, examples, token passes), overall or per ``group_by`` = ``model``, ``task``,
        ``kind`` or ``month``; runs of ``kind`` started at or after ``since`` (a date: its UTC midnight). ``ConflictError``: other group_by."""
        return self._s.audit.cost_summary(since=since, kind=kind, group_by=group_by)

    def blast_radius(self, adapter: int | None = None, *, set: int | str | PromptSet | None = None, user_limit: int | None = 1000) -> BlastRadius:
        """Every set derived from an adapter (or a set), and the users with a prompt written by one: count, first ``user_limit``."""
        return self._s.audit.blast_radius(adapter, set=set, user_limit=user_limit)

    def diff_evaluations(self, set_a: int | str | PromptSet, set_b: int | str | PromptSet, *, split: str = "test", dataset: str | None = None,
            metric: str | None = None, limit: int | None = 100) -> EvaluationDiff:
        """Per-user metric differences (B - A) of the newest evaluations of two sets on ``split``: summary, ``limit`` largest changes."""
        return self._s.audit.diff_evaluations(set_a, set_b, split=split, dataset=dataset, metric=metric, limit=limit)

    def doctor(self, *, checksums: bool = True, repair: bool = False, dry_run: bool = False, stale_after_seconds: float = STALE_AFTER_SECONDS) -> DoctorReport:
        """Check schema, catalogue vs store, row checksums and stale runs; ``repair`` first rebuilds files and restores rows (``core.admin``)."""
        return self._s.admin.doctor(checksums=checksums, repair=repair, dry_run=dry_run, stale_after_seconds=stale_after_seconds)

    def gc(self, *, dry_run: bool = False, grace_seconds: float = DEFAULT_GC_GRACE_SECONDS, keep_last: int | None = None,
            older_than_days: float | None = None, stale_after_seconds: float = STALE_AFTER_SECONDS) -> GcReport:
        """Apply retention (``keep_last``/``older_than_days``), remove this catalogue's orphan objects, close stale runs (``core.admin``)."""
        return self._s.admin.gc(dry_run=dry_run, grace_seconds=grace_seconds, keep_last=keep_last, older_than_days=older_than_days,
            stale_after_seconds=stale_after_seconds)

    def purge_user(self, user: str, *, reason: str | None = None, dry_run: bool = False) -> PurgeReport:
        """Delete a user everywhere: rows, metrics, bytes (zeroed and verified; old object versions too); audited (``audit.deletion``)."""
        return self._s.admin.purge_user(user, reason=reason, dry_run=dry_run)
