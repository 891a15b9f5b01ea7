"""Per-set user index: the users a set wrote rows for, as runs of consecutive user ids.

The blast radius asks "which users have a prompt row written by any of these sets": probing every
user (a semi-join) costs seconds at 10M users. User ids are assigned in registration order and a
set usually holds everyone, or a few ranges of them, so its users compress to a handful of runs
``[first, last + 1)``; the union of a few sets' runs is counted and listed in microseconds.

* **Built on first use** by one SQL pass over the set's rows in user-id order (gaps and islands:
  ``user_id - row_number()`` is constant along a run), then kept in ``set_user_index``.
* **Never trusted blindly**: an entry is valid only while its user count equals the set's rows
  minus its purged rows (``n_rows - count(purged_rows)``, read in the same snapshot). A purge
  removes rows, so a stale entry is seen and rebuilt; sets are otherwise immutable.
* **Derived**: losing the table loses nothing but time. Saving an entry happens in its own small
  transaction after the read; a catalogue that refuses the write (a read-only role) only loses
  the cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..db.schema import PromptRowRow, PromptSetRow, PurgedRowRow, SetUserIndexRow


def build_runs(session: Session, set_id: int) -> np.ndarray:
    """The set's user ids as sorted runs, shape (k, 2): ``[first, last + 1)``."""
    rank = func.row_number().over(order_by=PromptRowRow.user_id)
    inner = select(PromptRowRow.user_id.label("u"), (PromptRowRow.user_id - rank).label("g")).where(PromptRowRow.set_id == set_id).subquery()
    rows = session.execute(select(func.min(inner.c.u), func.max(inner.c.u)).group_by(inner.c.g).order_by(func.min(inner.c.u))).all()
    runs = np.array(rows, dtype=np.int64).reshape(-1, 2)
    runs[:, 1] += 1
    return runs


def encode(runs: np.ndarray) -> bytes:
    return np.ascontiguousarray(runs, dtype="<i8").tobytes()


def decode(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype="<i8").reshape(-1, 2).astype(np.int64)


def size(runs: np.ndarray) -> int:
    return int((runs[:, 1] - runs[:, 0]).sum()) if len(runs) else 0


def runs_for(session: Session, set_ids: Sequence[int]) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """(runs of every set in ``set_ids``, the ones just built because they had no valid entry)."""
    ids = list(set_ids)
    if not ids:
        return {}, {}
    expected = dict(session.execute(select(PromptSetRow.id, PromptSetRow.n_rows).where(PromptSetRow.id.in_(ids))).all())
    for set_id, purged in session.execute(select(PurgedRowRow.set_id, func.count()).where(PurgedRowRow.set_id.in_(ids))
                                          .group_by(PurgedRowRow.set_id)).all():
        expected[set_id] -= purged
    stored = {r.set_id: r for r in session.scalars(select(SetUserIndexRow).where(SetUserIndexRow.set_id.in_(ids)))}
    out: dict[int, np.ndarray] = {}
    built: dict[int, np.ndarray] = {}
    for set_id in ids:
        entry = stored.get(set_id)
        if entry is not None and entry.n_users == expected[set_id]:
            out[set_id] = decode(entry.runs)
        else:
            out[set_id] = built[set_id] = build_runs(session, set_id)
    return out, built


def save(session: Session, built: dict[int, np.ndarray]) -> None:
    """Store (or replace) entries, inside the caller's write transaction."""
    for set_id, runs in built.items():
        session.merge(SetUserIndexRow(set_id=set_id, n_users=size(runs), runs=encode(runs)))


def union(runs: Sequence[np.ndarray]) -> np.ndarray:
    """The union of sorted runs, merged (overlapping or touching runs become one)."""
    parts = [r for r in runs if len(r)]
    if not parts:
        return np.zeros((0, 2), dtype=np.int64)
    allr = np.concatenate(parts)
    allr = allr[np.argsort(allr[:, 0], kind="stable")]
    reach = np.maximum.accumulate(allr[:, 1])
    starts_group = np.r_[True, allr[1:, 0] > reach[:-1]]
    first = np.flatnonzero(starts_group)
    return np.stack([allr[first, 0], np.maximum.reduceat(allr[:, 1], first)], axis=1)


def first_ids(runs: np.ndarray, limit: int | None) -> np.ndarray:
    """The smallest ``limit`` ids of merged runs (``None``: all), ascending."""
    out: list[np.ndarray] = []
    left = None if limit is None else int(limit)
    for start, stop in runs.tolist():
        if left is not None and left <= 0:
            break
        take = stop - start if left is None else min(stop - start, left)
        out.append(np.arange(start, start + take, dtype=np.int64))
        if left is not None:
            left -= take
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
