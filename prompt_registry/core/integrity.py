"""Finding damaged store bytes (``doctor``) and restoring them (``doctor --repair``).

Every prompt row has the sha256 the catalogue recorded when it was written, so a damaged row can
be restored byte for byte from any other copy with the same digest: the same prompt kept by
another version (a full re-import, a retrain that left most users alone) or a purged row (zeros).
Artifact blobs (adapters, heads) have no second copy (each records its own name): ``doctor``
reports a damaged one, to be restored from backup or retrained. A repaired version holds exactly
the bytes it held when it was committed; nothing else about it changes. Structural damage
(a missing, truncated or padded shard file, a corrupted shard index, a missing array) is made
readable first (``TensorStore.rebuild_files``): what is still on disk is kept, shard indexes
are rewritten from the layout, lost rows are restored where a copy exists. Rows no copy holds
stay reported (restore them from backup or re-import the set); the rest of the set reads.

The scan reads in a snapshot, without blocking writers; the damaged sets are then repaired in one
write transaction that holds the lock purges and imports take (no purge zeroes a row while it is
restored), which records a ``repair`` audit event.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from .._context import Context
from .._util import preview
from ..audit import deletion
from ..db.engine import read_session, write_session
from ..db.schema import PromptRowRow, PromptSetRow, UserRow
from ..entities import RepairReport
from ..errors import IntegrityError
from ..manifest import row_digests
from ..store.base import FileDamage, TensorStore

SCAN_ROWS = 4096  # rows read at a time when every row of a set is checked


def users_of(session: Session, set_id: int) -> dict[int, str]:
    """row index -> user id of a set's own rows."""
    return dict(session.execute(select(PromptRowRow.row_index, UserRow.external_id).join(UserRow, UserRow.id == PromptRowRow.user_id)
                                .where(PromptRowRow.set_id == set_id)).all())


def bad_rows(store: TensorStore, key: str, n_rows: int, digests: dict[int, bytes | None],
             skip: Sequence[FileDamage] = ()) -> list[int]:
    """Rows whose bytes do not match ``digests`` (``None``: not checked), reading every row
    outside the ``skip`` files (damaged: none of their rows is readable, so all count as bad)."""
    bad: list[int] = []
    unreadable = np.zeros(n_rows, dtype=bool)
    for damage in skip:
        unreadable[damage.rows[0]:damage.rows[1]] = True
    for start in range(0, n_rows, SCAN_ROWS):
        stop = min(start + SCAN_ROWS, n_rows)
        readable = np.flatnonzero(~unreadable[start:stop]) + start
        found = row_digests(store.read_rows(key, readable)) if len(readable) else []
        for i, digest in zip(readable.tolist(), found):
            expected = digests.get(i)
            if i in digests and expected is None:
                continue  # a purged row whose erasure is pending: old bytes or zeros, never read
            if expected != digest:
                bad.append(i)
    bad.extend(i for i in np.flatnonzero(unreadable).tolist() if digests.get(i, b"") is not None)
    return sorted(bad)


@dataclasses.dataclass
class _Damaged:
    set_id: int
    key: str
    row_shape: tuple[int, int]
    dtype: str
    rows: list[int]
    digests: dict[int, bytes | None]
    users: dict[int, str]


def _scan(ctx: Context, session: Session, row: PromptSetRow, fix: bool) -> tuple[list[str], bool, _Damaged | None]:
    """One set: its damaged files (rebuilt when ``fix``), whether its array was missing (recreated
    when ``fix``) and its damaged rows. ``IntegrityError`` when the array cannot be repaired here
    (metadata that cannot be read, or an array that is not the one the catalogue describes)."""
    key = row.store_key
    assert key is not None
    shape = (row.n_rows, row.prompt_len, row.width)
    files: list[FileDamage] = []
    missing = not ctx.store.exists(key)
    if missing:
        files = [FileDamage(key, (0, row.n_rows), "missing", "the array is gone")]
        if fix:  # an array of zeros: every row fails until restored
            ctx.store.create_array(key, shape, row.dtype)
            ctx.store.rebuild_files(key)
    else:
        info = ctx.store.array_info(key)
        if info.shape != shape or info.dtype != row.dtype:
            raise IntegrityError(f"array {key!r} is {info.shape} {info.dtype}, the catalogue says {shape} {row.dtype}: "
                                 "restore it from backup")
        files = ctx.store.rebuild_files(key) if fix else ctx.store.damaged_files(key)
    digests = deletion.expected_digests(session, row.id, int(np.prod(shape[1:])) * np.dtype(row.dtype).itemsize)
    bad = bad_rows(ctx.store, key, row.n_rows, digests, () if fix else files)
    damaged = _Damaged(row.id, key, (row.prompt_len, row.width), row.dtype, bad, digests, users_of(session, row.id)) if bad else None
    return ([] if missing else [d.path for d in files]), missing, damaged


def repair(ctx: Context, *, dry_run: bool = False) -> RepairReport:
    """Make damaged files readable and restore every damaged row another copy holds.

    The scan reads every row in a read-only snapshot (writers go on meanwhile); only the sets it
    found damaged are then rebuilt and restored, under the lock purges and imports take. A set
    that cannot be repaired here is listed in ``unreadable`` and the others go on."""
    rebuilt: list[str] = []
    recreated: list[str] = []
    unreadable: list[str] = []
    damaged_ids: list[int] = []
    found: list[_Damaged] = []
    with read_session(ctx.engine) as session:
        sets = session.scalars(select(PromptSetRow).where(PromptSetRow.status == "committed", PromptSetRow.store_key.is_not(None))
                               .order_by(PromptSetRow.id)).all()
        for row in sets:
            try:
                files, missing, damaged = _scan(ctx, session, row, fix=False)
            except (IntegrityError, ValueError) as exc:
                unreadable.append(f"set {row.id}: {exc}")
                continue
            if files or missing or damaged:
                damaged_ids.append(row.id)
            if dry_run:
                rebuilt += files
                recreated += [row.store_key] if missing and row.store_key else []
                found += [damaged] if damaged else []
        if dry_run:
            restored, lost = _restore_rows(session, ctx.store, found, dry_run=True)
    if not dry_run and damaged_ids:
        with write_session(ctx.engine) as session:
            deletion.lock_catalogue(session)  # no purge zeroes, no import reads, what we restore meanwhile
            for row in session.scalars(select(PromptSetRow).where(PromptSetRow.id.in_(damaged_ids)).order_by(PromptSetRow.id)):
                try:
                    files, missing, damaged = _scan(ctx, session, row, fix=True)
                except (IntegrityError, ValueError) as exc:
                    unreadable.append(f"set {row.id}: {exc}")
                    continue
                rebuilt += files
                recreated += [row.store_key] if missing and row.store_key else []
                found += [damaged] if damaged else []
            restored, lost = _restore_rows(session, ctx.store, found, dry_run=False)
            report = _report(False, rebuilt, recreated, restored, lost, unreadable)
            ctx.audit(session, "repair", "store", ctx.store.location, {
                "files_rebuilt": rebuilt, "arrays_recreated": recreated, "rows_restored": report.rows_restored,
                "rows_lost": report.rows_lost, "unreadable": unreadable})
        ctx.caches.forget()
        return report
    if not dry_run:
        restored, lost = {}, {}
    return _report(dry_run, rebuilt, recreated, restored, lost, unreadable)


def _report(dry_run: bool, rebuilt: list[str], recreated: list[str], restored: dict[int, list[str]], lost: dict[int, list[str]],
            unreadable: list[str]) -> RepairReport:
    return RepairReport(dry_run=dry_run, files_rebuilt=tuple(rebuilt), arrays_recreated=tuple(recreated),
                        rows_restored=sum(len(v) for v in restored.values()), restored={k: tuple(v) for k, v in restored.items()},
                        lost={k: tuple(v) for k, v in lost.items()}, unreadable=tuple(unreadable))


def _restore_rows(session: Session, store: TensorStore, damaged: Sequence[_Damaged], dry_run: bool
                  ) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """Restore each damaged row from a verified copy with its digest (zeros for an erased purged
    row): ``({set id: users restored}, {set id: users no copy holds})``."""
    wanted = {d for s in damaged for i in s.rows if (d := s.digests.get(i)) is not None}
    broken = {(s.set_id, i) for s in damaged for i in s.rows}
    donors = _donors(session, wanted, broken)
    restored: dict[int, list[str]] = collections.defaultdict(list)
    lost: dict[int, list[str]] = collections.defaultdict(list)
    for s in damaged:
        rows: list[int] = []
        data: list[np.ndarray] = []
        for i in s.rows:
            expected = s.digests.get(i)
            copy = None if expected is None else _copy_of(store, expected, s.row_shape, s.dtype, donors.get(expected, ()))
            who = s.users.get(i, f"row {i} (purged)")
            if copy is None:
                lost[s.set_id].append(who)
                continue
            rows.append(i)
            data.append(copy)
            restored[s.set_id].append(who)
            if len(rows) == SCAN_ROWS:  # bounded memory: restore in batches
                _write_back(store, s, rows, data, dry_run)
                rows, data = [], []
        _write_back(store, s, rows, data, dry_run)
    return dict(restored), dict(lost)


def _write_back(store: TensorStore, s: _Damaged, rows: list[int], data: list[np.ndarray], dry_run: bool) -> None:
    if not rows or dry_run:
        return
    index = np.asarray(rows, dtype=np.int64)
    store.overwrite_rows(s.key, index, np.stack(data))
    still = [i for i, d in zip(rows, row_digests(store.read_rows(s.key, index))) if d != s.digests.get(i)]
    if still:
        raise IntegrityError(f"rows {preview(still)} of array {s.key!r} in {store.location} still fail their sha256 "
                             "check after being restored: check the store's storage")


def _donors(session: Session, digests: Iterable[bytes], broken: set[tuple[int, int]]
            ) -> dict[bytes, list[tuple[str, tuple[int, int], str, int]]]:
    """digest -> ``(store key, (prompt_len, width), dtype, row)`` of every other committed row with it."""
    out: dict[bytes, list[tuple[str, tuple[int, int], str, int]]] = collections.defaultdict(list)
    wanted = sorted(set(digests))
    for start in range(0, len(wanted), 500):
        found = session.execute(
            select(PromptRowRow.sha256, PromptRowRow.set_id, PromptRowRow.row_index, PromptSetRow.store_key,
                   PromptSetRow.prompt_len, PromptSetRow.width, PromptSetRow.dtype)
            .join(PromptSetRow, PromptSetRow.id == PromptRowRow.set_id)
            .where(PromptRowRow.sha256.in_(wanted[start:start + 500]), PromptSetRow.status == "committed")
            .order_by(PromptRowRow.set_id.desc())
        ).all()
        for digest, set_id, row_index, key, prompt_len, width, dtype in found:
            if key is not None and (set_id, row_index) not in broken:
                out[digest].append((key, (prompt_len, width), dtype, row_index))
    return out


def _copy_of(store: TensorStore, digest: bytes, row_shape: tuple[int, int], dtype: str,
             donors: Sequence[tuple[str, tuple[int, int], str, int]]) -> np.ndarray | None:
    if digest == deletion.zero_digest(int(np.prod(row_shape)) * np.dtype(dtype).itemsize):
        return np.zeros(row_shape, dtype=dtype)
    for key, shape, donor_dtype, row in donors:
        if shape != row_shape or donor_dtype != dtype:
            continue
        try:
            data = store.read_rows(key, np.asarray([row], dtype=np.int64))
        except IntegrityError:
            continue  # that copy is damaged too
        if row_digests(data)[0] == digest:
            return np.asarray(data[0])
    return None
