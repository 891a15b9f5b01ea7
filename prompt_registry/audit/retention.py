"""Retention: which prompt sets ``gc --keep-last N --older-than DAYS`` removes, and removing them.

Per model and task, a committed set is **kept** if it is one of the newest ``keep_last`` versions,
or younger than ``older_than_days``, or an alias points at it, or a kept set needs it through
lineage (the bases of an incremental chain, transitively, and the sources it was derived from).
Every other committed set goes: its status becomes ``deleted`` (the row, its lineage, alias
history, runs and evaluations stay as history), its ``prompt_rows`` are deleted and its
``store_key`` cleared in the same transaction; the caller then deletes the bytes. Reads of a
deleted set fail with ``UnknownSetError``; audit queries still show it.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
from collections.abc import Sequence

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from .. import validation
from ..db.schema import AliasRow, PromptRowRow, PromptSetParentRow, PromptSetRow
from ..errors import InvalidArgumentError
from .deletion import lock_catalogue
from .queries import aware


@dataclasses.dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int = 1
    older_than_days: float | None = None

    def __post_init__(self) -> None:
        validation.count(self.keep_last, "keep_last", allow_none=False)
        validation.duration(self.older_than_days, "older_than_days")
        if self.keep_last < 1:
            raise InvalidArgumentError(
                f"keep_last must be at least 1, not {self.keep_last}: the newest version of each model "
                "and task is always kept"
            )
        if self.older_than_days is not None and self.older_than_days < 0:
            raise InvalidArgumentError(f"older_than_days must be 0 or more, not {self.older_than_days}")

    @classmethod
    def from_options(cls, keep_last: int | None, older_than_days: float | None) -> RetentionPolicy | None:
        """``None`` when neither option is given (gc then only removes orphan bytes)."""
        if keep_last is None and older_than_days is None:
            return None
        return cls(1 if keep_last is None else keep_last, older_than_days)


@dataclasses.dataclass(frozen=True)
class DoomedSet:
    set_id: int
    model_id: int
    task_id: int
    version: int
    store_key: str | None


def plan(session: Session, policy: RetentionPolicy, now: dt.datetime) -> list[DoomedSet]:
    """The committed sets the policy removes, oldest first.

    Three plain scans (sets, aliases, lineage edges) and the closure in Python: one pass over the
    edges. A recursive CTE seeded with every kept set is O(chain depth x edges) on Postgres, whose
    planner hash-joins the work table against all edges at every step (3.5 s for 200,000 sets in
    chains of 100, measured; this is ~0.3 s).
    """
    sets = session.execute(
        select(PromptSetRow.id, PromptSetRow.model_id, PromptSetRow.task_id, PromptSetRow.version, PromptSetRow.store_key, PromptSetRow.created_at)
        .where(PromptSetRow.status == "committed")
        .order_by(PromptSetRow.model_id, PromptSetRow.task_id, PromptSetRow.version.desc())
    ).all()
    keep = set(session.scalars(select(AliasRow.set_id)))
    cutoff = _cutoff(now, policy.older_than_days)
    rank: collections.Counter[tuple[int, int]] = collections.Counter()
    for set_id, model_id, task_id, _, _, created_at in sets:
        rank[model_id, task_id] += 1
        if rank[model_id, task_id] <= policy.keep_last or (cutoff is not None and aware(created_at) >= cutoff):
            keep.add(set_id)
    parents: dict[int, list[int]] = collections.defaultdict(list)
    for set_id, parent_id in session.execute(select(PromptSetParentRow.set_id, PromptSetParentRow.parent_id)):
        parents[set_id].append(parent_id)
    todo = list(keep)
    while todo:  # everything a kept set needs, transitively (bases and sources)
        for parent_id in parents.pop(todo.pop(), ()):
            if parent_id not in keep:
                keep.add(parent_id)
                todo.append(parent_id)
    return sorted((DoomedSet(i, m, t, v, k) for i, m, t, v, k, _ in sets if i not in keep), key=lambda d: d.set_id)


def remove(session: Session, doomed: Sequence[DoomedSet]) -> None:
    """Mark the sets deleted and drop their per-row catalogue entries (their bytes go next)."""
    ids = [d.set_id for d in doomed]
    if not ids:
        return
    session.execute(delete(PromptRowRow).where(PromptRowRow.set_id.in_(ids)))
    # store_key cleared: once committed, the bytes are unreferenced and `gc` may remove them even
    # if this process dies before it deletes them itself
    session.execute(update(PromptSetRow).where(PromptSetRow.id.in_(ids)).values(status="deleted", store_key=None))


def apply(session: Session, policy: RetentionPolicy, now: dt.datetime) -> list[DoomedSet]:
    """Inside a write transaction: plan and remove. The catalogue lock makes a concurrent import
    either commit first (its version is then the newest, kept with its base) or see its base
    deleted and fail cleanly."""
    lock_catalogue(session)
    doomed = plan(session, policy, now)
    remove(session, doomed)
    return doomed


def _cutoff(now: dt.datetime, older_than_days: float | None) -> dt.datetime | None:
    """The newest creation time a removable set may have; a span longer than the calendar holds
    (``older_than_days=1e9``) reaches back to its start: no set is that old."""
    if older_than_days is None:
        return None
    try:
        return now - dt.timedelta(days=older_than_days)
    except OverflowError:
        return dt.datetime.min.replace(tzinfo=dt.timezone.utc)
