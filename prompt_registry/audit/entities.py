"""Frozen records returned by the audit API (never ORM rows); ``to_dict()`` gives JSON-ready values."""

from __future__ import annotations

import dataclasses
import datetime as dt

from ..entities import _Entity, version_ref


@dataclasses.dataclass(frozen=True)
class LineageNode(_Entity):
    """A set reached by a lineage walk, with the run and adapter that made it."""

    set_id: int
    model: str
    task: str
    version: int
    status: str
    depth: int  # hops from the set the walk started at (0 = that set)
    n_users: int
    n_rows: int
    run_id: int | None
    run_kind: str | None
    adapter_id: int | None
    adapter: str | None  # "name vN"
    created_at: dt.datetime
    created_by: str

    @property
    def ref(self) -> str:
        return version_ref(self.model, self.task, self.version)


@dataclasses.dataclass(frozen=True)
class LineageEdge(_Entity):
    """``child`` was made from ``parent``: as an incremental version (``base``) or from its prompts
    (``source``, e.g. a migration); ``run_id``/``adapter_id`` are the child's, i.e. the edge's."""

    child_id: int
    parent_id: int
    role: str
    position: int
    depth: int
    run_id: int | None
    adapter_id: int | None


@dataclasses.dataclass(frozen=True)
class Lineage(_Entity):
    set_id: int
    direction: str  # "up" (ancestors) or "down" (descendants)
    nodes: tuple[LineageNode, ...]
    edges: tuple[LineageEdge, ...]


@dataclasses.dataclass(frozen=True)
class AliasWindow(_Entity):
    """Alias ``name`` pointed at a set from ``since`` until ``until`` (``None``: still does)."""

    name: str
    set_id: int
    since: dt.datetime
    until: dt.datetime | None
    actor: str
    reason: str | None
    event_id: int


@dataclasses.dataclass(frozen=True)
class UserVersion(_Entity):
    """A version in which a user has a prompt: written by this set, or inherited from ``holder_id``
    (an incremental base) when ``inherited``."""

    set_id: int
    model: str
    task: str
    version: int
    status: str
    holder_id: int
    inherited: bool
    row_sha256: str
    run_id: int | None
    run_kind: str | None
    adapter_id: int | None
    created_at: dt.datetime
    aliases: tuple[AliasWindow, ...]

    @property
    def ref(self) -> str:
        return version_ref(self.model, self.task, self.version)


@dataclasses.dataclass(frozen=True)
class UserHistory(_Entity):
    user: str
    created_at: dt.datetime
    deleted_at: dt.datetime | None
    versions: tuple[UserVersion, ...]  # by model, task, version


@dataclasses.dataclass(frozen=True)
class AliasMove(_Entity):
    """One move of an alias (``new_set_id`` ``None``: deleted) and how long it stood."""

    id: int
    name: str
    model: str
    task: str
    old_set_id: int | None
    old_version: int | None
    new_set_id: int | None
    new_version: int | None
    at: dt.datetime
    until: dt.datetime | None
    actor: str
    reason: str | None


@dataclasses.dataclass(frozen=True)
class RunCost(_Entity):
    """The cost ledger of the runs in one group (``group`` is ``None`` for the overall total)."""

    group: str | None
    runs: int
    succeeded: int
    failed: int
    running: int
    wall_seconds: float
    examples_seen: int
    forward_tokens: int
    backward_tokens: int

    @property
    def token_passes(self) -> int:
        return self.forward_tokens + self.backward_tokens

    def to_dict(self) -> dict[str, object]:
        return {**super().to_dict(), "token_passes": self.token_passes}


@dataclasses.dataclass(frozen=True)
class AffectedSet(_Entity):
    set_id: int
    model: str
    task: str
    version: int
    status: str
    depth: int  # 0: made by the adapter (or the set asked about); n: n derivations further
    n_rows: int


@dataclasses.dataclass(frozen=True)
class BlastRadius(_Entity):
    """Every set derived, directly or transitively, from an adapter or a set, and the users with a
    prompt row written by one of them (``users``: the first ``user_limit`` by registration order)."""

    adapter_id: int | None
    set_id: int | None
    sets: tuple[AffectedSet, ...]
    n_users: int
    users: tuple[str, ...]

    @property
    def users_truncated(self) -> bool:
        return len(self.users) < self.n_users


@dataclasses.dataclass(frozen=True)
class MetricDiff(_Entity):
    """One metric over the users evaluated in both sets (``delta`` = B - A)."""

    metric: str
    n_users: int
    mean_a: float | None
    mean_b: float | None
    mean_delta: float | None
    n_lower: int  # users whose value is lower in B
    n_higher: int
    n_equal: int


@dataclasses.dataclass(frozen=True)
class UserMetricDiff(_Entity):
    user: str
    metric: str
    value_a: float
    value_b: float
    delta: float


@dataclasses.dataclass(frozen=True)
class EvaluationDiff(_Entity):
    """Per-user metric differences between the evaluations of two sets on the same data."""

    set_a: int
    set_b: int
    evaluation_a: int
    evaluation_b: int
    dataset: str
    split: str
    only_a: int  # users evaluated in A only
    only_b: int
    metrics: tuple[MetricDiff, ...]
    users: tuple[UserMetricDiff, ...]  # largest |delta| first, at most ``limit``


@dataclasses.dataclass(frozen=True)
class PurgeReport(_Entity):
    """What a per-user purge removed (or, with ``dry_run``, would remove). No prompt data."""

    user: str
    dry_run: bool
    sets: tuple[int, ...]  # sets whose row of this user was removed and zeroed in the store
    rows_zeroed: int
    visible_in: tuple[int, ...]  # sets that served a prompt of this user (their n_users drop by 1)
    metrics_removed: int
    deleted_at: dt.datetime | None
