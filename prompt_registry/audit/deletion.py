"""Per-user purge: remove a user's prompts from every set and erase their bytes from the store.

How a purged row is represented: a set's array keeps its shape (versions are immutable byte
layouts, and other users' row indices must not move), so ``prompt_sets.n_rows`` keeps counting
every physical row. The user's ``prompt_rows`` entry is deleted and a ``purged_rows`` entry (set,
row index, when) takes its place in one commit; then the row is overwritten with zeros in the
store, verified, and the entry marked ``erased_at`` (a crash in between leaves it pending:
invisible, reported by ``doctor``, erased by the next purge or ``gc``). ``doctor``
therefore expects ``prompt_rows + purged_rows == n_rows`` and checks that every purged row reads
back as zeros, while every other row must still match its sha256. ``n_users`` (users visible
through a version) drops by one in every version that served the user, inherited rows included.
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
from collections.abc import Sequence

import numpy as np
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from ..db.schema import BaseModelRow, PromptRowRow, PromptSetRow, PurgedRowRow, UserMetricRow, UserRow
from ..errors import ConflictError, IntegrityError, MissingDataError
from ..store.base import ArrayInfo, TensorStore
from .entities import PurgeReport
from .queries import aware, visible_sets


def lock_catalogue(session: Session) -> None:
    """Serialise with imports: they lock their model row (Postgres) before reading their base.
    All model rows, in id order, so two lockers never deadlock. SQLite: ``BEGIN IMMEDIATE``
    already holds the write lock. FOR NO KEY UPDATE, like the imports' lock: foreign-key checks
    of other writers still pass (see ``db.lookups.model_row``)."""
    session.execute(select(BaseModelRow.id).order_by(BaseModelRow.id).with_for_update(key_share=True)).all()


def purge_user(session: Session, store: TensorStore, user: UserRow, *, dry_run: bool, now: dt.datetime) -> PurgeReport:
    """Inside a write transaction: delete the user's catalogue rows and per-user metrics (each row
    becomes a *pending* ``purged_rows`` entry), fix ``n_users`` and mark the user deleted. The
    bytes are erased after the commit by ``erase_pending``: a crash in between leaves the user
    invisible everywhere and their bytes pending (``doctor`` says so; the next purge or ``gc``
    erases them), never a visible row whose bytes fail their checksum."""
    if not dry_run and not store.supports_overwrite:
        raise ConflictError(f"the store {store.location} cannot overwrite rows in place, which a purge needs")
    if not dry_run:
        lock_catalogue(session)
    held = session.execute(
        select(PromptRowRow.set_id, PromptRowRow.row_index, PromptSetRow.store_key)
        .join(PromptSetRow, PromptSetRow.id == PromptRowRow.set_id)
        .where(PromptRowRow.user_id == user.id)
        .order_by(PromptRowRow.set_id)
    ).all()
    visible = sorted({set_id for set_id, _, _ in visible_sets(session, user.id)})
    n_metrics = session.scalar(select(func.count()).select_from(UserMetricRow).where(UserMetricRow.user_id == user.id)) or 0
    if not dry_run:
        if held:
            session.execute(insert(PurgedRowRow), [{"set_id": s, "row_index": r, "purged_at": now, "erased_at": None} for s, r, _ in held])
        session.execute(delete(PromptRowRow).where(PromptRowRow.user_id == user.id))
        session.execute(delete(UserMetricRow).where(UserMetricRow.user_id == user.id))
        if visible:
            session.execute(update(PromptSetRow).where(PromptSetRow.id.in_(visible)).values(n_users=PromptSetRow.n_users - 1))
        if user.deleted_at is None:
            user.deleted_at = now
    return PurgeReport(
        user.external_id, dry_run, tuple(s for s, _, _ in held), len(held), tuple(visible), int(n_metrics),
        aware(user.deleted_at),
    )


def erase_pending(session: Session, store: TensorStore, now: dt.datetime) -> int:
    """Inside a write transaction: zero and verify the bytes of every purged row not erased yet
    (this purge's, and any an interrupted purge left), then record them erased. Returns the rows
    erased; ``IntegrityError`` if the store kept the bytes (they stay pending)."""
    pending = session.execute(
        select(PurgedRowRow.set_id, PurgedRowRow.row_index, PromptSetRow.store_key)
        .join(PromptSetRow, PromptSetRow.id == PurgedRowRow.set_id)
        .where(PurgedRowRow.erased_at.is_(None))
        .order_by(PurgedRowRow.set_id, PurgedRowRow.row_index)
    ).all()
    by_key: dict[str, list[int]] = collections.defaultdict(list)
    for _, row_index, store_key in pending:
        if store_key is not None:
            by_key[store_key].append(row_index)
    for store_key, rows in by_key.items():
        zero_rows(store, store_key, rows)
    for set_id, row_index, _ in pending:
        session.execute(update(PurgedRowRow).where(PurgedRowRow.set_id == set_id, PurgedRowRow.row_index == row_index)
                        .values(erased_at=now))
    return len(pending)


def pending_count(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(PurgedRowRow).where(PurgedRowRow.erased_at.is_(None))) or 0


def zero_rows(store: TensorStore, store_key: str, rows: Sequence[int]) -> None:
    """Overwrite rows with zeros, read them back and check that no byte of the old data is left.
    Rows whose chunk is missing from the store hold no bytes to erase: they are skipped, and the
    rest are still zeroed (one damaged chunk must not keep every other purge pending and block
    ``gc``; ``doctor`` reports the missing chunk)."""
    try:
        info = store.array_info(store_key)
    except MissingDataError:
        return  # the bytes are gone already (`doctor` reports the missing array)
    index = np.asarray(sorted(rows), dtype=np.int64)
    try:
        parts = [_zeroed(store, store_key, info, index)]
    except MissingDataError:
        parts = []
        for chunk in np.unique(index // info.chunk_rows):
            try:
                parts.append(_zeroed(store, store_key, info, index[index // info.chunk_rows == chunk]))
            except MissingDataError:
                continue  # no bytes of this chunk left anywhere in the store
    for part in parts:
        back = store.read_rows(store_key, part)
        if np.ascontiguousarray(back).view(np.uint8).any():
            raise IntegrityError(
                f"rows {part.tolist()} of array {store_key!r} in {store.location} still hold data after being "
                "overwritten with zeros; the user is already out of every set, the erasure is pending: check the store's "
                "storage and run the purge (or `prompt-registry gc`) again"
            )


def _zeroed(store: TensorStore, store_key: str, info: ArrayInfo, index: np.ndarray) -> np.ndarray:
    store.overwrite_rows(store_key, index, np.zeros((len(index), *info.shape[1:]), dtype=info.dtype))
    return index


def zero_digest(row_nbytes: int) -> bytes:
    """The sha256 every purged row must have."""
    return hashlib.sha256(bytes(row_nbytes)).digest()


def expected_digests(session: Session, set_id: int, row_nbytes: int) -> dict[int, bytes | None]:
    """row index -> the sha256 the row must have: its catalogue digest, zeros if purged and erased,
    None (not checked: old bytes or zeros) if its erasure is pending."""
    digests: dict[int, bytes | None] = dict(session.execute(select(PromptRowRow.row_index, PromptRowRow.sha256)
                                                           .where(PromptRowRow.set_id == set_id)).all())
    zero = zero_digest(row_nbytes)
    for row_index, erased_at in session.execute(select(PurgedRowRow.row_index, PurgedRowRow.erased_at).where(PurgedRowRow.set_id == set_id)):
        digests[row_index] = zero if erased_at is not None else None
    return digests


def purged_count(session: Session, set_id: int) -> int:
    return session.scalar(select(func.count()).select_from(PurgedRowRow).where(PurgedRowRow.set_id == set_id)) or 0
