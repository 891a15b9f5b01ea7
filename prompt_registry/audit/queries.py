"""Audit and lineage queries: SQL in the catalogue, identical on SQLite and Postgres.

Graph walks are recursive CTEs over ``prompt_set_parents`` (``set_id`` -> ``parent_id``, both
indexed), so a lineage or blast radius costs one statement however deep it goes. Every query
orders by integer ids (never by text, whose collation differs between databases) so both backends
return the same rows in the same order. Each function takes an open session and returns entities.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import Integer, String, and_, case, exists, func, literal_column, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.expression import FunctionElement

from .._util import aware, echo
from ..db.schema import (
    AliasEventRow,
    ArtifactRow,
    BaseModelRow,
    EvaluationRow,
    PromptRowRow,
    PromptSetParentRow,
    PromptSetRow,
    RunRow,
    TaskRow,
    UserMetricRow,
    UserRow,
)
from ..errors import InvalidArgumentError, NotFoundError
from . import user_index
from .entities import (
    AffectedSet,
    AliasMove,
    AliasWindow,
    BlastRadius,
    EvaluationDiff,
    Lineage,
    LineageEdge,
    LineageNode,
    MetricDiff,
    RunCost,
    UserHistory,
    UserMetricDiff,
    UserVersion,
)

# Lineage is a DAG (a parent is always older than its child); the cap only guards the recursion
# against a hand-edited catalogue with a cycle.
MAX_DEPTH = 10_000
GROUP_BY = ("model", "task", "kind", "month")

_parents = PromptSetParentRow.__table__
_rows = PromptRowRow.__table__


def _names(session: Session) -> tuple[dict[int, str], dict[int, str]]:
    models = dict(session.execute(select(BaseModelRow.id, BaseModelRow.name)).all())
    tasks = dict(session.execute(select(TaskRow.id, TaskRow.name)).all())
    return models, tasks


def _one(value: int) -> Any:
    """An integer literal typed INTEGER (Postgres needs matching types across a recursive UNION)."""
    return literal_column(str(int(value)), Integer)


# ------------------------------------------------------------------------------------ lineage


def lineage(session: Session, set_id: int, *, down: bool = False, max_depth: int | None = None) -> Lineage:
    """Ancestors (or, with ``down``, descendants) of a set through every base and source edge."""
    cap = min(max_depth if max_depth is not None else MAX_DEPTH, MAX_DEPTH)
    # walking up follows child -> parent (primary key); walking down parent -> child (parent_id index)
    near = _parents.c.parent_id if down else _parents.c.set_id
    seed = select(
        _parents.c.set_id.label("child_id"), _parents.c.parent_id, _parents.c.role, _parents.c.position,
        _one(1).label("depth"),
    ).where(near == set_id)
    walk = seed.cte("walk", recursive=True)
    prev = walk.alias("prev")
    frontier = prev.c.child_id if down else prev.c.parent_id
    walk = walk.union(
        select(_parents.c.set_id, _parents.c.parent_id, _parents.c.role, _parents.c.position, prev.c.depth + 1)
        .join(prev, near == frontier)
        .where(prev.c.depth < cap)
    )
    child = aliased(PromptSetRow)
    edge_rows = session.execute(
        select(walk.c.child_id, walk.c.parent_id, walk.c.role, walk.c.position, func.min(walk.c.depth), child.run_id, child.adapter_id)
        .join(child, child.id == walk.c.child_id)
        .group_by(walk.c.child_id, walk.c.parent_id, walk.c.role, walk.c.position, child.run_id, child.adapter_id)
        .order_by(func.min(walk.c.depth), walk.c.child_id, walk.c.position)
    ).all()
    edges = tuple(LineageEdge(c, p, role, pos, depth, run, adapter) for c, p, role, pos, depth, run, adapter in edge_rows)
    depths = {set_id: 0}
    for edge in edges:
        node = edge.child_id if down else edge.parent_id
        depths[node] = min(depths.get(node, edge.depth), edge.depth)
    return Lineage(set_id, "down" if down else "up", _nodes(session, depths), edges)


def _nodes(session: Session, depths: dict[int, int]) -> tuple[LineageNode, ...]:
    models, tasks = _names(session)
    rows = session.execute(
        select(PromptSetRow, RunRow.kind, ArtifactRow.name, ArtifactRow.version)
        .outerjoin(RunRow, RunRow.id == PromptSetRow.run_id)
        .outerjoin(ArtifactRow, ArtifactRow.id == PromptSetRow.adapter_id)
        .where(PromptSetRow.id.in_(list(depths)))
    ).all()
    nodes = [
        LineageNode(
            s.id, models[s.model_id], tasks[s.task_id], s.version, s.status, depths[s.id], s.n_users, s.n_rows,
            s.run_id, run_kind, s.adapter_id, f"{name} v{version}" if name is not None else None,
            aware(s.created_at), s.created_by,
        )
        for s, run_kind, name, version in rows
    ]
    return tuple(sorted(nodes, key=lambda n: (n.depth, n.set_id)))


# ------------------------------------------------------------------------------------ users


def visible_sets(session: Session, user_id: int) -> list[tuple[int, int, bytes]]:
    """``(set, holder, sha256)`` for every committed set that serves a prompt of the user: the
    sets that wrote a row for them, and the incremental versions that inherit it (until one
    writes its own row for the user)."""
    other = _rows.alias("other")
    seed = (
        select(_rows.c.set_id.label("set_id"), _rows.c.set_id.label("holder_id"), _rows.c.sha256.label("sha256"))
        .join(PromptSetRow, PromptSetRow.id == _rows.c.set_id)
        .where(_rows.c.user_id == user_id, PromptSetRow.status == "committed")
    )
    vis = seed.cte("vis", recursive=True)
    prev = vis.alias("prev")
    # a version has one base, so the walk down base edges is a tree: UNION ALL never repeats
    vis = vis.union_all(
        select(_parents.c.set_id, prev.c.holder_id, prev.c.sha256)
        .join(prev, _parents.c.parent_id == prev.c.set_id)
        .join(PromptSetRow, PromptSetRow.id == _parents.c.set_id)
        .where(
            _parents.c.role == "base", PromptSetRow.status == "committed",
            ~exists().where(other.c.set_id == _parents.c.set_id, other.c.user_id == user_id),
        )
    )
    return [(s, h, bytes(d)) for s, h, d in session.execute(select(vis.c.set_id, vis.c.holder_id, vis.c.sha256).order_by(vis.c.set_id))]


def _until() -> Any:
    """When the alias event ``AliasEventRow`` was superseded: the next event of the same alias."""
    after = aliased(AliasEventRow)
    return (
        select(func.min(after.at))
        .where(
            after.name == AliasEventRow.name, after.model_id == AliasEventRow.model_id,
            after.task_id == AliasEventRow.task_id, after.id > AliasEventRow.id,
        )
        .scalar_subquery()
    )


def alias_windows(session: Session, set_ids: Sequence[int]) -> dict[int, list[AliasWindow]]:
    """For each set, every period during which an alias pointed at it."""
    out: dict[int, list[AliasWindow]] = {}
    if not set_ids:
        return out
    rows = session.execute(
        select(AliasEventRow.id, AliasEventRow.name, AliasEventRow.new_set_id, AliasEventRow.at, _until(), AliasEventRow.actor, AliasEventRow.reason)
        .where(AliasEventRow.new_set_id.in_(list(set_ids)))
        .order_by(AliasEventRow.id)
    )
    for event_id, name, set_id, at, until, actor, reason in rows:
        out.setdefault(set_id, []).append(AliasWindow(name, set_id, aware(at), aware(until), actor, reason, event_id))
    return out


def user_history(session: Session, user: UserRow) -> UserHistory:
    """Every version with a prompt of ``user``, the run and adapter that made it, and its aliases."""
    visible = visible_sets(session, user.id)
    if not visible:
        return UserHistory(user.external_id, aware(user.created_at), aware(user.deleted_at), ())
    models, tasks = _names(session)
    sets = dict(
        (s.id, (s, kind)) for s, kind in session.execute(
            select(PromptSetRow, RunRow.kind).outerjoin(RunRow, RunRow.id == PromptSetRow.run_id)
            .where(PromptSetRow.id.in_([set_id for set_id, _, _ in visible]))
        )
    )
    windows = alias_windows(session, list(sets))
    versions = []
    for set_id, holder, digest in sorted(visible, key=lambda v: (sets[v[0]][0].model_id, sets[v[0]][0].task_id, sets[v[0]][0].version)):
        s, kind = sets[set_id]
        versions.append(UserVersion(
            set_id, models[s.model_id], tasks[s.task_id], s.version, s.status, holder, holder != set_id,
            digest.hex(), s.run_id, kind, s.adapter_id, aware(s.created_at), tuple(windows.get(set_id, ())),
        ))
    return UserHistory(user.external_id, aware(user.created_at), aware(user.deleted_at), tuple(versions))


# ------------------------------------------------------------------------------------ aliases


def alias_timeline(session: Session, name: str, *, model_id: int | None = None, task_id: int | None = None) -> list[AliasMove]:
    """Every move of alias ``name`` (old -> new set and versions, who, why, how long it stood)."""
    old, new = aliased(PromptSetRow), aliased(PromptSetRow)
    stmt = (
        select(
            AliasEventRow.id, AliasEventRow.name, AliasEventRow.model_id, AliasEventRow.task_id,
            AliasEventRow.old_set_id, old.version, AliasEventRow.new_set_id, new.version,
            AliasEventRow.at, _until(), AliasEventRow.actor, AliasEventRow.reason,
        )
        .outerjoin(old, old.id == AliasEventRow.old_set_id)
        .outerjoin(new, new.id == AliasEventRow.new_set_id)
        .where(AliasEventRow.name == name)
        .order_by(AliasEventRow.id)
    )
    if model_id is not None:
        stmt = stmt.where(AliasEventRow.model_id == model_id)
    if task_id is not None:
        stmt = stmt.where(AliasEventRow.task_id == task_id)
    models, tasks = _names(session)
    return [
        AliasMove(i, n, models[m], tasks[t], o, ov, ns, nv, aware(at), aware(until), actor, reason)
        for i, n, m, t, o, ov, ns, nv, at, until, actor, reason in session.execute(stmt)
    ]


# ------------------------------------------------------------------------------------ runs


class month_utc(FunctionElement[str]):
    """``YYYY-MM`` of a UTC timestamp (each database spells it differently)."""

    type = String()
    name = "month_utc"
    inherit_cache = True


@compiles(month_utc, "sqlite")
def _month_sqlite(element: month_utc, compiler: Any, **kw: Any) -> str:
    return f"strftime('%Y-%m', {compiler.process(element.clauses, **kw)})"


@compiles(month_utc, "postgresql")
def _month_postgresql(element: month_utc, compiler: Any, **kw: Any) -> str:
    return f"to_char(({compiler.process(element.clauses, **kw)}) AT TIME ZONE 'UTC', 'YYYY-MM')"


def cost_summary(session: Session, *, since: dt.datetime | None = None, kind: str | None = None, group_by: str | None = None) -> list[RunCost]:
    """The runs' cost ledger summed, overall or per model, task, kind or month (oldest first)."""
    if group_by is not None and group_by not in GROUP_BY:
        raise InvalidArgumentError(f"cannot group runs by {echo(group_by)}; use one of {', '.join(GROUP_BY)}")
    key: Any = {
        None: literal_column("NULL", String), "model": BaseModelRow.name, "task": TaskRow.name,
        "kind": RunRow.kind, "month": month_utc(RunRow.started_at),
    }[group_by]
    stmt = (
        select(
            key.label("grp"), func.count(),
            *(func.coalesce(func.sum(case((RunRow.status == s, 1), else_=0)), 0) for s in ("succeeded", "failed", "running")),
            *(func.coalesce(func.sum(c), 0) for c in (RunRow.wall_seconds, RunRow.examples_seen, RunRow.forward_tokens, RunRow.backward_tokens)),
        )
        .select_from(RunRow)
        .outerjoin(BaseModelRow, BaseModelRow.id == RunRow.model_id)
        .outerjoin(TaskRow, TaskRow.id == RunRow.task_id)
    )
    if group_by is not None:
        stmt = stmt.group_by(key)
    if since is not None:
        stmt = stmt.where(RunRow.started_at >= since)
    if kind is not None:
        stmt = stmt.where(RunRow.kind == kind)
    out = [
        RunCost(grp, int(n), int(ok), int(bad), int(running), float(wall), int(examples), int(fwd), int(bwd))
        for grp, n, ok, bad, running, wall, examples, fwd, bwd in session.execute(stmt)
        if n  # an empty ungrouped total still returns one row of zeros
    ]
    # in Python: NULLs sort differently on the two databases
    return sorted(out, key=lambda c: (c.group is None, c.group or ""))


# ------------------------------------------------------------------------------------ blast radius


def blast_radius(session: Session, *, adapter_id: int | None = None, set_id: int | None = None,
                 user_limit: int | None = 1000) -> tuple[BlastRadius, dict[int, np.ndarray]]:
    """Every set derived from the adapter (or set), through any chain of base and source edges,
    and the users with a prompt row written by one of those sets; with the per-set user index
    entries built on the way (``user_index``), for the caller to save."""
    if (adapter_id is None) == (set_id is None):
        raise InvalidArgumentError("give either an adapter or a set for the blast radius, not both or neither")
    start = PromptSetRow.adapter_id == adapter_id if adapter_id is not None else PromptSetRow.id == set_id
    reach = select(PromptSetRow.id.label("set_id"), _one(0).label("depth")).where(start).cte("reach", recursive=True)
    prev = reach.alias("prev")
    reach = reach.union(
        select(_parents.c.set_id, prev.c.depth + 1).join(prev, _parents.c.parent_id == prev.c.set_id).where(prev.c.depth < MAX_DEPTH)
    )
    depth = func.min(reach.c.depth)
    models, tasks = _names(session)
    sets = tuple(
        AffectedSet(s.id, models[s.model_id], tasks[s.task_id], s.version, s.status, d, s.n_rows)
        for s, d in session.execute(
            select(PromptSetRow, depth).join(reach, reach.c.set_id == PromptSetRow.id)
            .group_by(PromptSetRow.id).order_by(depth, PromptSetRow.id)
        )
    )
    # the users: the union of the affected sets' user-id runs (a semi-join probing every user
    # took 8.9 s at 10M users on Postgres), then the first ``user_limit`` of them by id
    runs, built = user_index.runs_for(session, [s.set_id for s in sets])
    merged = user_index.union(list(runs.values()))
    users = tuple[str, ...]()
    if user_limit is None or user_limit > 0:
        first = user_index.first_ids(merged, user_limit).tolist()
        names = dict(session.execute(select(UserRow.id, UserRow.external_id).where(UserRow.id.in_(first))).all()) if first else {}
        users = tuple(names[i] for i in first)
    return BlastRadius(adapter_id, set_id, sets, user_index.size(merged), users), built


# ------------------------------------------------------------------------------------ evaluation diff


def _latest_evaluation(session: Session, set_id: int, split: str, dataset: str | None) -> EvaluationRow | None:
    stmt = select(EvaluationRow).where(EvaluationRow.set_id == set_id, EvaluationRow.split == split)
    if dataset is not None:
        stmt = stmt.where(EvaluationRow.dataset == dataset)
    return session.scalars(stmt.order_by(EvaluationRow.id.desc()).limit(1)).first()


def _evaluation_pair(session: Session, set_a: int, set_b: int, split: str, dataset: str | None) -> tuple[EvaluationRow, EvaluationRow]:
    """The newest evaluation of A on ``split`` (and ``dataset``), and B's newest on the same data."""
    eval_a = _latest_evaluation(session, set_a, split, dataset)
    if eval_a is None:
        raise NotFoundError(
            f"set {set_a} has no evaluation on split {echo(split)}{f' of {echo(dataset)}' if dataset else ''}; "
            "record one with Registry.record_evaluation, or pick another --split/--dataset"
        )
    eval_b = _latest_evaluation(session, set_b, split, eval_a.dataset)
    if eval_b is None:
        others = sorted(set(session.scalars(select(EvaluationRow.dataset).where(EvaluationRow.set_id == set_b, EvaluationRow.split == split))))
        raise NotFoundError(
            f"set {set_b} has no evaluation on {echo(eval_a.dataset)} split {echo(split)} (the data set {set_a} was "
            f"evaluated on); it has {', '.join(map(repr, others)) or 'none'} on that split. Per-user "
            "differences only mean something on the same data: evaluate both sets on one data set"
        )
    return eval_a, eval_b


def _only_in(session: Session, evaluation: int, other: int, metric: str | None) -> int:
    mine, theirs = aliased(UserMetricRow), aliased(UserMetricRow)
    stmt = select(func.count(func.distinct(mine.user_id))).where(
        mine.evaluation_id == evaluation,
        ~exists().where(theirs.evaluation_id == other, theirs.user_id == mine.user_id, theirs.metric == mine.metric),
    )
    if metric is not None:
        stmt = stmt.where(mine.metric == metric)
    return int(session.scalar(stmt) or 0)


def evaluation_diff(session: Session, set_a: int, set_b: int, *, split: str = "test", dataset: str | None = None,
                    metric: str | None = None, limit: int | None = 100) -> EvaluationDiff:
    """Per-user metric differences (B - A) between the stored evaluations of two sets."""
    eval_a, eval_b = _evaluation_pair(session, set_a, set_b, split, dataset)
    a, b = aliased(UserMetricRow), aliased(UserMetricRow)
    pairs = and_(b.evaluation_id == eval_b.id, b.user_id == a.user_id, b.metric == a.metric)
    where = [a.evaluation_id == eval_a.id] + ([a.metric == metric] if metric is not None else [])
    delta = b.value - a.value

    def count(cond: Any) -> Any:
        return func.coalesce(func.sum(case((cond, 1), else_=0)), 0)

    summary = session.execute(
        select(a.metric, func.count(), func.avg(a.value), func.avg(b.value), func.avg(delta),
               count(b.value < a.value), count(b.value > a.value), count(b.value == a.value))
        .join(b, pairs).where(*where).group_by(a.metric).order_by(a.metric)
    )
    metrics = tuple(
        MetricDiff(m, int(n), _float(ma), _float(mb), _float(md), int(lo), int(hi), int(eq))
        for m, n, ma, mb, md, lo, hi, eq in summary
    )
    users: tuple[UserMetricDiff, ...] = ()
    if limit is None or limit > 0:
        stmt = (
            select(UserRow.external_id, a.metric, a.value, b.value, delta)
            .join(b, pairs).join(UserRow, UserRow.id == a.user_id).where(*where)
            .order_by(func.abs(delta).desc(), a.user_id, a.metric)
        )
        rows = session.execute(stmt if limit is None else stmt.limit(limit))
        users = tuple(UserMetricDiff(u, m, float(va), float(vb), float(d)) for u, m, va, vb, d in rows)
    return EvaluationDiff(
        set_a, set_b, eval_a.id, eval_b.id, eval_a.dataset, split,
        _only_in(session, eval_a.id, eval_b.id, metric), _only_in(session, eval_b.id, eval_a.id, metric), metrics, users,
    )


def _float(value: Any) -> float | None:
    return None if value is None else float(value)
