"""Frozen records returned by the public API (never ORM rows).

Each has ``to_dict()`` giving JSON-ready values (ISO timestamps), which the CLI prints with ``--json``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return value.to_dict()  # type: ignore[attr-defined]  # every dataclass held by an entity has to_dict (entities, method configs)
    return value


def version_ref(model: str, task: str, version: int) -> str:
    """The stable reference to one version: ``MODEL/TASK@vN`` (what ``Registry.get_set`` accepts)."""
    return f"{model}/{task}@v{version}"


class _Entity:
    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]  # only dataclasses subclass _Entity


@dataclasses.dataclass(frozen=True)
class ModelInfo(_Entity):
    """A registered base model, identified by the fingerprint of its config and weight files."""

    id: int
    name: str
    source: str
    revision: str | None
    architecture: str
    model_type: str | None
    hidden_size: int
    vocab_size: int | None
    fingerprint: str
    files: dict[str, str]
    created_at: dt.datetime
    created_by: str


@dataclasses.dataclass(frozen=True)
class Task(_Entity):
    id: int
    name: str
    kind: str
    created_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class User(_Entity):
    id: int
    external_id: str
    created_at: dt.datetime
    deleted_at: dt.datetime | None


@dataclasses.dataclass(frozen=True)
class PromptSet(_Entity):
    """One immutable version of the prompts of a model and task."""

    id: int
    model: str
    task: str
    version: int
    base_id: int | None
    parents: tuple[int, ...]
    prompt_len: int
    width: int
    dtype: str
    n_users: int
    n_rows: int
    store_key: str | None
    sha256: str
    status: str
    run_id: int | None
    adapter_id: int | None
    head_id: int | None
    note: str | None
    created_at: dt.datetime
    created_by: str
    aliases: tuple[str, ...]
    tags: dict[str, str | None]

    @property
    def ref(self) -> str:
        """A stable reference to this exact version: ``MODEL/TASK@vN``."""
        return version_ref(self.model, self.task, self.version)


@dataclasses.dataclass(frozen=True)
class Alias(_Entity):
    name: str
    model: str
    task: str
    set_id: int
    updated_at: dt.datetime
    updated_by: str


@dataclasses.dataclass(frozen=True)
class AliasEvent(_Entity):
    id: int
    name: str
    model: str
    task: str
    old_set_id: int | None
    new_set_id: int | None
    at: dt.datetime
    actor: str
    reason: str | None


@dataclasses.dataclass(frozen=True)
class Artifact(_Entity):
    """An adapter or task head: a safetensors blob bound to model fingerprints."""

    id: int
    kind: str
    name: str
    version: int
    task: str
    target_model: str
    target_fingerprint: str
    source_models: tuple[str, ...]
    source_fingerprints: tuple[str, ...]
    config: dict[str, Any]
    store_key: str
    sha256: str
    nbytes: int
    run_id: int | None
    created_at: dt.datetime
    created_by: str


@dataclasses.dataclass(frozen=True)
class Run(_Entity):
    id: int
    kind: str
    status: str
    model: str | None
    task: str | None
    config: dict[str, Any]
    seeds: dict[str, Any]
    started_at: dt.datetime
    finished_at: dt.datetime | None
    wall_seconds: float | None
    device: str | None
    examples_seen: int | None
    forward_tokens: int | None
    backward_tokens: int | None
    cost: dict[str, Any]
    actor: str
    error: str | None

    @property
    def token_passes(self) -> int:
        """Tokens through the backbone, forward and backward: the cost every report compares."""
        return (self.forward_tokens or 0) + (self.backward_tokens or 0)


@dataclasses.dataclass(frozen=True)
class CostLedger(_Entity):
    """What a run cost. Token-passes (tokens through the backbone, forward and backward) are the
    primary measure: unlike wall time they do not depend on machine load."""

    wall_seconds: float
    device: str
    examples_seen: int = 0
    forward_tokens: int = 0
    backward_tokens: int = 0
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def token_passes(self) -> int:
        return self.forward_tokens + self.backward_tokens


@dataclasses.dataclass(frozen=True)
class AuditEvent(_Entity):
    id: int
    at: dt.datetime
    actor: str
    action: str
    object_kind: str
    object_id: str
    reason: str | None
    details: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Evaluation(_Entity):
    """Metrics of one prompt set on one data split; ``per_user`` is filled on request."""

    id: int
    set_id: int
    run_id: int | None
    dataset: str
    split: str
    metrics: dict[str, Any]
    created_at: dt.datetime
    created_by: str
    per_user: dict[str, dict[str, float]] | None = None


@dataclasses.dataclass(frozen=True)
class ExportResult(_Entity):
    set_id: int
    path: str
    users_path: str | None
    format: str
    n_users: int
    nbytes: int


@dataclasses.dataclass(frozen=True)
class PredictionResult(_Entity):
    """What ``PromptReader.predict_file`` wrote: one prediction per (user, item) row, from one version."""

    set_id: int
    version: int
    path: str
    rows: int
    users: int
    mean_prediction: float | None
    wall_seconds: float


@dataclasses.dataclass(frozen=True)
class Problem(_Entity):
    """One finding of ``doctor``: what is wrong, with which object, and how to fix it."""

    kind: str
    object: str
    message: str
    fix: str


@dataclasses.dataclass(frozen=True)
class DoctorReport(_Entity):
    schema_revision: str | None
    sets_checked: int
    rows_checked: int
    artifacts_checked: int
    problems: tuple[Problem, ...]
    foreign: tuple[str, ...] = ()  # store objects this catalogue did not write (never deleted)

    repair: RepairReport | None = None  # what ``doctor(repair=True)`` restored before it checked

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclasses.dataclass(frozen=True)
class RepairReport(_Entity):
    """What ``doctor(repair=True)`` did (or, with ``dry_run``, would do): files made readable,
    arrays recreated, rows restored from identical copies, and what no copy holds. A dry
    run cannot read a damaged file, so it counts every row in one; the repair keeps the bytes still
    on disk and restores only the rows that fail their checksum (at most as many)."""

    dry_run: bool
    files_rebuilt: tuple[str, ...]
    arrays_recreated: tuple[str, ...]
    rows_restored: int
    restored: dict[int, tuple[str, ...]]  # set id -> users whose rows were restored
    lost: dict[int, tuple[str, ...]]  # set id -> users no other copy holds (restore from backup)
    unreadable: tuple[str, ...]  # arrays whose metadata cannot be read (restore from backup)

    @property
    def rows_lost(self) -> int:
        return sum(len(v) for v in self.lost.values())

    @property
    def nothing_to_do(self) -> bool:
        return not (self.files_rebuilt or self.arrays_recreated or self.rows_restored or self.lost or self.unreadable)


@dataclasses.dataclass(frozen=True)
class GcReport(_Entity):
    dry_run: bool
    removed: tuple[str, ...]  # store keys: orphans, and the bytes of removed sets
    nbytes: int
    skipped_young: tuple[str, ...]
    removed_sets: tuple[int, ...] = ()  # sets removed by retention (now status 'deleted')
    foreign: tuple[str, ...] = ()  # store objects this catalogue did not write: left alone
    closed_runs: tuple[int, ...] = ()  # stale runs closed as failed
    abandoned_sets: tuple[int, ...] = ()  # pending sets of sharded writes no shard touched for the grace period


@dataclasses.dataclass(frozen=True)
class TrainResult(_Entity):
    """What ``Registry.train_prompts`` made: the new set, its head, the run (with its ledger)."""

    set: PromptSet
    head_id: int
    run: Run
    best_epoch: int
    history: list[dict[str, float]]
    evaluation: Evaluation | None = None  # when evaluate_split was given


@dataclasses.dataclass(frozen=True)
class MigrationReport(_Entity):
    """Quality of a migration next to its references (all on the same held-back split)."""

    metric: str
    lower_is_better: bool
    rows: list[dict[str, Any]]  # one per compared set: name, set_id, model, metrics
    reference: str | None  # name of the row compared against: "retrain", else the first source
    share_worse: float | None  # users worse than under the reference
    worst_users: list[dict[str, Any]]
    # share of retrain's gain over random-init recovered, when both references exist on the target
    recovered: float | None = None


@dataclasses.dataclass(frozen=True)
class MigrationResult(_Entity):
    """What ``Registry.migrate`` made: the mapped (and refined) set, the adapter, its head, the run."""

    set: PromptSet  # the mapped set
    refined: PromptSet | None  # mapped + warm-start refinement, when it ran and beat the mapped prompts on validation
    adapter: Artifact
    head_id: int
    run: Run
    selection: dict[str, Any]
    report: MigrationReport | None
    alias: dict[str, Any] | None  # what happened to the alias (moved, refused by the gate)
    coverage: dict[str, Any] | None = None  # who was mapped: full / partial (imputed) / cold users, the policy

    @property
    def final(self) -> PromptSet:
        """The set the migration ends with (the refined one, else the mapped one): what the report
        evaluates and the alias moves to."""
        return self.refined or self.set


@dataclasses.dataclass(frozen=True)
class PlanStep(_Entity):
    """One step of a migration plan: ``reuse`` a stored adapter, ``fit`` one with a method, or
    ``retrain`` from scratch; with its estimate (and where each figure came from) and status."""

    position: int
    kind: str  # reuse | fit | retrain
    sources: tuple[str, ...]  # source models (several: an aggregated step); empty for retrain
    target: str
    method: str | None
    adapter_id: int | None
    estimate: dict[str, Any]  # token_passes, seconds, basis (calibrated from run N, or prior), details
    status: str = "pending"
    run_id: int | None = None
    result: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class ShardWrite(_Entity):
    """One shard of a sharded write (``Registry.apply_adapter_shard``): the rows it covers, whether
    an earlier run had already written them (``reused``), and the set once every shard is
    written (the process that finished last commits it); until then ``set`` is None and
    ``missing`` names the shards not written yet."""

    shard: int
    n_shards: int
    rows: tuple[int, int]
    reused: bool
    set: PromptSet | None
    missing: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class WorkerReport(_Entity):
    """What one worker (``prompt-registry worker``) did: each step it claimed, with ``status``
    ``done``, ``failed`` or ``lost`` (its lease was taken over before it finished: nothing
    recorded), ``taken_over`` when it took the step over from a dead worker."""

    worker: str
    steps: tuple[dict[str, Any], ...]
    seconds: float


@dataclasses.dataclass(frozen=True)
class Plan(_Entity):
    """A migration plan over the migration graph: which path, which adapters are reused or
    fitted, which users it covers, and what it is estimated to cost. ``id`` is None until stored."""

    id: int | None
    task: str
    target: str
    strategy: str  # asked for: auto | direct | chain | aggregate | retrain
    kind: str  # chosen: direct | chain | aggregate | retrain
    steps: tuple[PlanStep, ...]
    estimate: dict[str, Any]  # token_passes, seconds, users, uncovered users, alternatives considered
    inputs: dict[str, Any]  # what the planner was asked and the graph it saw: planning again gives the same plan
    status: str = "planned"
    created_at: dt.datetime | None = None
