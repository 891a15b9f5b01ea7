"""New immutable versions: imports, streaming (resumable) writes, and the one transaction that makes
fsynced bytes a visible version (see docs/design.md, "Write protocol")."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime as dt
import hashlib
import os
import re
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .. import fileio, validation
from .._context import Context
from .._util import preview
from ..audit import deletion
from ..db import lookups, mappers
from ..db.bulk import count_active_users, insert_prompt_rows, users_json
from ..db.engine import read_session, write_session
from ..db.schema import BaseModelRow, PromptRowRow, PromptSetParentRow, PromptSetRow, RunRow, TagRow, UserRow
from ..dtypes import BFLOAT16, from_torch, is_float
from ..entities import PromptSet, ShardWrite
from ..errors import (
    ConflictError,
    DTypeError,
    IntegrityError,
    InvalidArgumentError,
    InvalidFileError,
    InvalidPromptError,
    ModelMismatchError,
    NonFiniteError,
    ShapeError,
    UnknownUserError,
)
from ..ingest import BackgroundWrite, digest_batches, digests_in_batches
from ..manifest import ContentHash, row_digests
from ..store import keys
from ..store.base import DEFAULT_CHUNK_ROWS, SUPPORTED_DTYPES, TensorStore, digest_matrix
from . import resolution
from .aliases import move_alias
from .users import check_user_ids

# Rows per store write of a streaming write (``write_batch_rows``): whole chunks, a natural
# progress step, and bounded memory: at most WRITE_BATCH_ROWS rows and WRITE_BATCH_BYTES bytes
# (16,384 rows of 20 x 4,096 float32 would be 5.4 GB in one batch; capped, 256 rows, 84 MB).
WRITE_BATCH_ROWS = 64 * DEFAULT_CHUNK_ROWS
WRITE_BATCH_BYTES = 64 << 20


def write_batch_rows(row_nbytes: int) -> int:
    """Rows per batch of a streaming write whose rows are ``row_nbytes`` each: whole
    ``DEFAULT_CHUNK_ROWS`` chunks, at most ``WRITE_BATCH_ROWS`` rows, and at most
    ``WRITE_BATCH_BYTES`` unless one chunk alone is bigger (then one chunk)."""
    fit = WRITE_BATCH_BYTES // max(1, row_nbytes) // DEFAULT_CHUNK_ROWS * DEFAULT_CHUNK_ROWS
    return max(DEFAULT_CHUNK_ROWS, min(WRITE_BATCH_ROWS, fit))

PromptInput = Mapping[str, Any] | np.ndarray | Any  # Mapping user->tensor, array/tensor, or a path


def _finite_rows(rows: np.ndarray) -> np.ndarray:
    """Which rows hold only finite values.

    A row's sum is NaN/Inf if any value is (NaN and Inf propagate; Inf - Inf is NaN), so one
    BLAS matrix-vector product screens 100,000 x 576 floats in ~12 ms instead of ~43 ms for a
    full ``isfinite`` mask; only rows it flags (a sum can also overflow) are checked exactly.
    """
    if rows.dtype not in (np.float32, np.float64) or not rows.size:
        return np.isfinite(rows).all(axis=1)
    with np.errstate(over="ignore", invalid="ignore"):
        finite = np.isfinite(rows @ np.ones(rows.shape[1], dtype=rows.dtype))
    if not finite.all():
        flagged = np.flatnonzero(~finite)
        finite[flagged] = np.isfinite(rows[flagged]).all(axis=1)
    return finite


@dataclasses.dataclass(frozen=True)
class _NewSet:
    """What a new version records besides its rows: lineage, run, head, labels."""

    model: str
    task: str
    base: int | str | PromptSet | None = None
    run_id: int | None = None
    head: int | None = None
    adapter: int | None = None
    sources: Sequence[int | str | PromptSet] = ()
    alias: str | None = None
    tags: Mapping[str, str | None] | Iterable[str] | None = None
    note: str | None = None
    reason: str | None = None
    create_users: bool = False


class _ChunkJournal:
    """Row digests of the batches a streaming write has made durable (for resume after a crash).

    One small file per batch, written (tmp + fsync + rename) only after the batch's bytes were
    fsynced, so its presence means "this batch is on disk"; resume re-checks the bytes anyway.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def _path(self, start: int, stop: int) -> Path:
        return self.folder / f"rows-{start}-{stop}.sha256"

    def load(self, start: int, stop: int) -> list[bytes] | None:
        try:
            raw = self._path(start, stop).read_bytes()
        except FileNotFoundError:
            return None
        if len(raw) != 32 * (stop - start):
            return None
        return [raw[i : i + 32] for i in range(0, len(raw), 32)]

    def save(self, start: int, stop: int, digests: Sequence[bytes]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(start, stop)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as fh:
            fh.write(b"".join(digests))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def clear(self) -> None:
        if self.folder.exists():
            for child in self.folder.iterdir():
                child.unlink(missing_ok=True)
            self.folder.rmdir()


def check_bytes_present(store: TensorStore, store_key: str) -> None:
    """Inside the commit transaction: our bytes must still be there (a gc with a too-short
    grace period could have taken them for orphans)."""
    if not store.exists(store_key):
        raise IntegrityError(f"bytes {store_key!r} vanished before commit (a concurrent `gc --grace 0`?); retry")


def default_dtype(array: np.ndarray) -> str:
    """What an import stores when no dtype (and no base) is given: bfloat16 prompts stay bfloat16
    (float32 would double their bytes and add nothing); everything else is stored as float32."""
    return "bfloat16" if array.dtype == BFLOAT16 else "float32"


def _check_prompt_array(array: np.ndarray, users: Sequence[str], model: BaseModelRow, prompt_len: int | None, store_dtype: str) -> np.ndarray:
    if store_dtype not in SUPPORTED_DTYPES:
        raise DTypeError(f"cannot store prompts as {store_dtype}; use one of {', '.join(SUPPORTED_DTYPES)}")
    if not is_float(array.dtype):
        raise DTypeError(
            f"prompts have dtype {array.dtype}; soft prompts are floating point: convert with "
            ".astype(np.float32) / .float()"
        )
    if array.ndim == 2:
        array = array[:, None, :]  # users x width: prompt length 1, the PUMA default
    if array.ndim != 3:
        raise ShapeError(f"prompts have shape {array.shape}; expected (users, prompt_len, width) or (users, width)")
    if array.shape[0] != len(users):
        raise ShapeError(f"{array.shape[0]} prompt rows for {len(users)} users; give exactly one row per user")
    if array.shape[2] != model.hidden_size:
        raise ShapeError(
            f"prompts have width {array.shape[2]} but model {model.name!r} has hidden size "
            f"{model.hidden_size}; prompts for another model must be migrated, not imported"
        )
    if array.shape[1] < 1 or (prompt_len is not None and array.shape[1] != prompt_len):
        raise ShapeError(f"prompts have length {array.shape[1]}, expected {prompt_len} (the base version's prompt length)")
    with np.errstate(over="ignore"):  # overflow is reported below, per user
        converted = np.ascontiguousarray(array, dtype=store_dtype)
    finite = _finite_rows(converted.reshape(len(users), -1))
    if not finite.all():
        bad = [users[int(i)] for i in np.flatnonzero(~finite)]
        overflow = bool(np.isfinite(array.reshape(len(users), -1)[~finite]).all())
        why = f"overflow when cast to {store_dtype}" if overflow else "NaN or Inf values"
        raise NonFiniteError(f"prompts of {len(bad)} user(s) have {why}: {preview(bad)}; fix or drop them before importing")
    return converted


def _to_numpy(value: Any, what: str) -> np.ndarray:
    torch = sys.modules.get("torch")  # a tensor implies torch is imported; don't pay its import
    if torch is not None and isinstance(value, torch.Tensor):
        return from_torch(value)  # bfloat16 stays bfloat16 (numpy's, from ml_dtypes)
    if isinstance(value, np.ndarray):
        return value
    raise DTypeError(f"{what} is a {type(value).__name__}; pass a torch.Tensor or numpy.ndarray")


def _tag_items(tags: Mapping[str, str | None] | Iterable[str] | None) -> list[tuple[str, str | None]]:
    if tags is None:
        return []
    if isinstance(tags, Mapping):
        return [(str(k), None if v is None else str(v)) for k, v in tags.items()]
    return [(str(t), None) for t in tags]


def shard_bounds(n_users: int, shard: int, n_shards: int) -> list[int]:
    """Where each of ``n_shards`` shards of a sharded write of ``n_users`` users starts (and the
    last one stops): contiguous ranges of whole ``DEFAULT_CHUNK_ROWS``-row chunks, so that no two
    shards write one chunk. Refuses a shard number out of range and more shards than chunks."""
    if not (isinstance(n_shards, int) and isinstance(shard, int) and n_shards >= 1 and 0 <= shard < n_shards):
        raise InvalidArgumentError(f"shard {shard!r} of {n_shards!r}: need 0 <= shard < n_shards, n_shards >= 1")
    n_chunks = -(-n_users // DEFAULT_CHUNK_ROWS)
    if n_shards > n_chunks:
        raise InvalidArgumentError(f"{n_shards} shards for {n_users} users ({n_chunks} chunk(s) of {DEFAULT_CHUNK_ROWS}): "
                                   f"use at most {n_chunks} shards, so that every shard writes whole chunks")
    return [min(n_users, (i * n_chunks // n_shards) * DEFAULT_CHUNK_ROWS) for i in range(n_shards + 1)]


class SetWriter:
    """New immutable versions: imports, streaming writes, the one commit transaction."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def import_prompts(
        self,
        model: str,
        task: str,
        prompts: PromptInput,
        users: Sequence[str] | str | os.PathLike[str] | None = None,
        *,
        base: int | str | PromptSet | None = None,
        prompt_len: int | None = None,
        dtype: str | None = None,
        create_users: bool = False,
        alias: str | None = None,
        tags: Mapping[str, str | None] | Iterable[str] | None = None,
        note: str | None = None,
        reason: str | None = None,
        run_id: int | None = None,
        head: int | None = None,
        adapter: int | None = None,
        sources: Sequence[int | str | PromptSet] = (),
    ) -> PromptSet:
        """Write a new immutable prompt set for ``model`` and ``task``.

        ``prompts`` is a mapping user->tensor, an array/tensor (``users`` x ``prompt_len`` x
        ``width``, or ``users`` x ``width`` for length 1) with ``users`` (a list or a CSV path),
        or a path to a ``.safetensors``/``.npy`` file.

        With ``base``, the new version is incremental: it stores only the given users' rows and
        resolves every other user through ``base`` (no bytes or rows are copied).

        Training and migration pass their ``run_id`` (from ``start_run``), the task ``head``
        artifact the prompts need, the ``adapter`` that produced them and the ``sources`` sets
        they were derived from (lineage). Without ``run_id`` an ``import`` run is recorded.

        Raises ``ShapeError``/``DTypeError``/``NonFiniteError`` for bad tensors,
        ``DuplicateUserError``/``UnknownUserError`` for bad user lists, ``UnknownModelError``/
        ``UnknownTaskError``, ``InvalidFileError`` for unreadable files. Nothing stays written then
        (unknown or deleted users are found while the bytes are in flight; those bytes are removed).
        """
        validation.text(note, "note")
        validation.text(reason, "reason")
        started = time.perf_counter()
        started_at = self.ctx.now()
        array, user_ids, source, fingerprints = self._normalize_prompt_input(prompts, users)
        user_ids = check_user_ids(user_ids, what="users in the prompt input")
        with read_session(self.ctx.engine) as session:
            model_row = lookups.model_row(session, model)
            if fingerprints - {model_row.fingerprint}:
                raise ModelMismatchError(f"the PEFT folders in {source} were exported for model fingerprint(s) "
                                         f"{', '.join(sorted(f[:12] for f in fingerprints))}, not {model!r} ({model_row.fingerprint[:12]}): "
                                         "these prompts are meaningless on other weights; migrate them instead")
            lookups.task_row(session, task)
            base_row = lookups.resolve_set(session, self.ctx.caches.pair_ids, base, model=model, task=task) if base is not None else None
        if base_row is not None and dtype is not None and dtype != base_row.dtype:
            raise DTypeError(f"base set {base_row.id} stores {base_row.dtype}; an incremental version must use the same dtype")
        array = _check_prompt_array(
            array, user_ids, model_row,
            prompt_len if prompt_len is not None else (base_row.prompt_len if base_row else None),
            dtype or (base_row.dtype if base_row else default_dtype(array)),
        )
        # Bytes, digests and catalogue rows overlap (see ingest.py); the transaction commits only
        # once the writer has fsynced every byte. Unknown or deleted users fail the first batch
        # that names them, and the bytes written so far are removed.
        store_key = keys.new_key(self.ctx.catalog_id, "set")
        writer = BackgroundWrite(self.ctx.store, store_key, array, DEFAULT_CHUNK_ROWS)
        batches = digest_batches(array)
        spec = _NewSet(model=model, task=task, base=base, run_id=run_id, head=head, adapter=adapter, sources=sources,
                       alias=alias, tags=tags, note=note, reason=reason, create_users=create_users)
        try:
            return self._commit_set(spec, user_ids=user_ids, batches=batches, bytes_ready=writer.wait,
                                    store_key=store_key, shape=(int(array.shape[1]), int(array.shape[2])),
                                    dtype=str(array.dtype), source=source, started=started, started_at=started_at)
        except BaseException:
            batches.close()  # the hashing thread drops the pieces not started yet
            writer.discard()  # best effort; after a crash gc removes the bytes
            raise

    def write_prompts(
        self, model: str, task: str, users: Sequence[str], produce: Callable[[int, int], Any], *, prompt_len: int,
        dtype: str = "float32", key: str | None = None, progress: bool = False, run_id: int | None = None,
        head: int | None = None, adapter: int | None = None, sources: Sequence[int | str | PromptSet] = (),
        alias: str | None = None, tags: Mapping[str, str | None] | Iterable[str] | None = None, note: str | None = None,
        reason: str | None = None, create_users: bool = False, base: int | str | PromptSet | None = None,
    ) -> PromptSet:
        """Stream a new version chunk by chunk: ``produce(start, stop)`` returns the rows of
        ``users[start:stop]`` (array or tensor, ``(stop - start, prompt_len, width)``).

        With an idempotency ``key`` (hex, e.g. a hash of the inputs that determine the rows), a
        rerun returns the version already committed under that key without writing anything, and a
        rerun after a crash continues after the last durable chunk (each chunk's row digests are
        recorded once its bytes are fsynced). The commit is the same single transaction as
        ``import_prompts``.
        """
        from tqdm.auto import tqdm

        validation.text(note, "note")
        validation.text(reason, "reason")
        started, started_at = time.perf_counter(), self.ctx.now()
        user_ids = check_user_ids(users, what="users to write")
        if key is not None and not re.fullmatch(r"[0-9a-f]{16,64}", key):
            raise InvalidArgumentError(f"idempotency key {key!r} must be 16-64 lowercase hex characters")
        with read_session(self.ctx.engine) as session:
            model_row = lookups.model_row(session, model)
            lookups.task_row(session, task)
            if key is not None:
                done = lookups.set_by_key(session, key)
                if done is not None and done.status == "pending":
                    raise ConflictError(f"a sharded write of the same inputs is in progress (pending set {done.id}): finish it by "
                                        "rerunning its shards, or `prompt-registry gc` removes it once no shard has touched it "
                                        "for the grace period")
                if done is not None:
                    return mappers.set_entities(session, [done])[0]
            known = lookups.user_ids(session, user_ids, active_only=True)
            width = model_row.hidden_size
        if not create_users and len(known) < len(user_ids):
            missing = [u for u in user_ids if u not in known]
            raise UnknownUserError(f"{len(missing)} user(s) are not registered: {preview(missing)}; pass create_users=True")
        store_key = keys.new_key(self.ctx.catalog_id, "set", key)
        shape = (len(user_ids), prompt_len, width)
        journal = _ChunkJournal(self.ctx.scratch_dir() / "writes" / store_key)
        if self.ctx.store.exists(store_key) and self.ctx.store.array_info(store_key).shape != shape:
            self.ctx.store.delete(store_key)
        if not self.ctx.store.exists(store_key):
            journal.clear()
            self.ctx.store.create_array(store_key, shape, dtype, DEFAULT_CHUNK_ROWS)
        digests: list[bytes] = []
        bar = tqdm(total=len(user_ids), disable=not progress, desc=f"write {model}/{task}", unit="user")
        try:
            step = write_batch_rows(prompt_len * width * np.dtype(dtype).itemsize)
            for start in range(0, len(user_ids), step):
                stop = min(start + step, len(user_ids))
                saved = journal.load(start, stop)
                if saved is not None and saved == row_digests(self.ctx.store.read_rows(store_key, slice(start, stop))):
                    digests += saved  # written and fsynced before the interruption
                else:
                    rows = _check_prompt_array(_to_numpy(produce(start, stop), "produced rows"),
                                                    user_ids[start:stop], model_row, prompt_len, dtype)
                    self.ctx.store.write_rows(store_key, start, rows)
                    batch_digests = row_digests(rows)
                    journal.save(start, stop, batch_digests)
                    digests += batch_digests
                bar.update(stop - start)
        except InvalidPromptError:
            self.ctx.store.delete(store_key)  # bad rows: nothing worth resuming
            journal.clear()
            raise
        finally:
            bar.close()
        spec = _NewSet(model=model, task=task, base=base, run_id=run_id, head=head, adapter=adapter, sources=sources,
                       alias=alias, tags=tags, note=note, reason=reason, create_users=create_users)
        try:
            result = self._commit_set(spec, user_ids=user_ids, batches=digests_in_batches(digests), bytes_ready=lambda: None,
                                      store_key=store_key, shape=(prompt_len, width), dtype=dtype, source="stream", started=started,
                                      started_at=started_at, idempotency_key=key)
        except UnknownUserError:
            # a user was deleted (purged) while the rows were written: the purge found no row of
            # theirs here, so nothing else would erase these bytes; a rerun must leave them out
            self.ctx.store.delete(store_key)
            journal.clear()
            raise
        journal.clear()
        return result

    def write_prompt_shard(
        self, model: str, task: str, users: Sequence[str], produce: Callable[[int, int], Any], *, prompt_len: int, key: str,
        shard: int, n_shards: int, dtype: str = "float32", run_id: int | None = None, head: int | None = None,
        adapter: int | None = None, sources: Sequence[int | str | PromptSet] = (), note: str | None = None,
        base: int | str | PromptSet | None = None, progress: bool = False,
    ) -> ShardWrite:
        """Shard ``shard`` of ``n_shards`` processes (ranks, workers, machines) writing one version
        together, all called with the same ``users`` and idempotency ``key``.

        The users are split into ``n_shards`` contiguous, chunk-aligned ranges; this call writes
        its range (``produce(start, stop)`` as for ``write_prompts``) into the one array named by
        ``key``. The first shard makes the set's catalogue row as ``pending`` (no version; no reader
        sees it); each shard inserts its own users' ``prompt_rows`` batch by batch as their bytes
        become durable (on a thread of its own, beside the mapping of the next batches), then
        stores its row digests as a write-once ``shard-`` object. The call
        that finds every shard's digests (the last to finish) commits: it checks that every user
        still has its row and turns the set ``committed`` with the next version, in one short
        transaction (no row per user is written there); the others return with ``set`` None. A
        killed shard leaves no visible set; rerun, a shard whose digests are stored and whose rows
        still match them is reused, not written again. Two calls committing at once are serialised
        on the model's row: the second returns the set the first committed. A pending set no shard
        has touched for ``gc``'s grace period is removed by ``gc``.
        """
        from tqdm.auto import tqdm

        validation.text(note, "note")
        started, started_at = time.perf_counter(), self.ctx.now()
        user_ids = check_user_ids(users, what="users to write")
        if not re.fullmatch(r"[0-9a-f]{16,64}", key):
            raise InvalidArgumentError(f"idempotency key {key!r} must be 16-64 lowercase hex characters")
        bounds = shard_bounds(len(user_ids), shard, n_shards)
        start, stop = bounds[shard], bounds[shard + 1]
        users_sha = hashlib.sha256("\n".join(user_ids).encode()).hexdigest()

        def committed() -> PromptSet | None:
            with read_session(self.ctx.engine) as session:
                done = lookups.set_by_key(session, key)
                return mappers.set_entities(session, [done])[0] if done is not None and done.status != "pending" else None

        if (done := committed()) is not None:
            return ShardWrite(shard, n_shards, (start, stop), True, done, ())
        mine_users = user_ids[start:stop]  # this shard's users only: the commit checks every user again, once
        with read_session(self.ctx.engine) as session:
            model_row = lookups.model_row(session, model)
            lookups.task_row(session, task)
            width = model_row.hidden_size
            if count_active_users(session.connection(), mine_users) < len(mine_users):  # users are distinct (checked above)
                self._raise_unusable_users(session, mine_users)
        store, store_key, shape = self.ctx.store, keys.new_key(self.ctx.catalog_id, "set", key), (len(user_ids), prompt_len, width)
        try:
            store.create_array(store_key, shape, dtype, DEFAULT_CHUNK_ROWS)
        except FileExistsError:  # another shard (or an earlier run) made it
            pass
        except Exception:
            if not store.exists(store_key):
                raise
        if store.array_info(store_key).shape != shape:
            raise IntegrityError(f"array {store_key} in {store.location} has shape {store.array_info(store_key).shape}, not {shape}: "
                                 "the shards were not given the same users and prompt length")
        pending = self._pending_set(model, task, key, store_key, len(user_ids), prompt_len, width, dtype)
        if pending is None:  # committed by another shard since the check above
            done = committed()
            assert done is not None
            return ShardWrite(shard, n_shards, (start, stop), True, done, ())

        def manifest_key(i: int) -> str:
            return keys.new_key(self.ctx.catalog_id, "shard", hashlib.sha256(f"{key}:{n_shards}:{i}".encode()).hexdigest()[:32])

        def load_manifest(i: int) -> np.ndarray | None:
            if not store.exists(manifest_key(i)):
                return None
            from safetensors.numpy import load as load_tensors

            tensors = load_tensors(store.get_blob(manifest_key(i)))
            digests, meta = tensors["digests"], tensors["meta"].tolist()
            if meta != [bounds[i], bounds[i + 1], n_shards] or tensors["users"].tobytes().decode() != users_sha:
                raise IntegrityError(f"the digests of shard {i} ({manifest_key(i)}) were written for other users or another "
                                     "split; remove that object (`prompt-registry gc --grace 0`) and rerun every shard")
            return np.asarray(digests, dtype=np.uint8)

        mine = load_manifest(shard)
        reused = mine is not None and bool((digest_matrix(row_digests(store.read_rows(store_key, slice(start, stop)))) == mine).all())
        # rows an earlier run of this shard inserted (killed, or still running: a retry beside a
        # live run) are overwritten, never deleted first: a live run's rows never go missing
        if reused and mine is not None and self._shard_rows(pending, start, stop) != stop - start:
            self._insert_shard_rows(pending, user_ids, start, stop, np.ascontiguousarray(mine).tobytes())
        if not reused:
            if mine is not None:
                store.delete(manifest_key(shard))  # its rows no longer match: write them again
            digests: list[bytes] = []
            bar = tqdm(total=stop - start, disable=not progress, desc=f"write {model}/{task} shard {shard}/{n_shards}", unit="user")
            # the catalogue rows of the batches already durable go in on a thread of their own while
            # the next batches are mapped: a shard never idles waiting for the write lock (SQLite's
            # one writer; in one transaction at the end, the second of 2 shards waited ~0.25 s)
            inserter = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="prompt-registry-shard-rows")
            inserting: concurrent.futures.Future[None] | None = None
            handed = start  # rows start..handed are in, or being inserted

            def insert(lo: int, hi: int) -> None:
                self._insert_shard_rows(pending, user_ids, lo, hi, b"".join(digests[lo - start : hi - start]))

            try:
                step = write_batch_rows(prompt_len * width * np.dtype(dtype).itemsize)
                for lo in range(start, stop, step):
                    hi = min(lo + step, stop)
                    rows = _check_prompt_array(_to_numpy(produce(lo, hi), "produced rows"), user_ids[lo:hi], model_row, prompt_len, dtype)
                    if (done := committed()) is not None:  # another run of this shard finished and the set committed:
                        return ShardWrite(shard, n_shards, (start, stop), True, done, ())  # its bytes are not touched again
                    store.write_rows(store_key, lo, rows)  # durable on return: its rows may go in
                    digests += row_digests(rows)
                    bar.update(hi - lo)
                    if inserting is None or inserting.done():
                        if inserting is not None:
                            inserting.result()  # its error, if any, now
                        inserting, handed = inserter.submit(insert, handed, hi), hi
                if inserting is not None:
                    inserting.result()
                if handed < stop:
                    insert(handed, stop)
            except ConflictError:
                if (done := committed()) is None:  # the pending set is gone (gc), not committed by another run
                    raise
                return ShardWrite(shard, n_shards, (start, stop), True, done, ())
            except UnknownUserError:
                self._erase_deleted_rows(store_key, user_ids, start, stop)
                raise
            finally:
                inserter.shutdown(wait=True)  # no insert outlives the call, even a failed one
                bar.close()
            from safetensors.numpy import save as save_tensors

            mine = digest_matrix(digests) if digests else np.zeros((0, 32), np.uint8)
            payload = save_tensors({"digests": mine, "meta": np.array([start, stop, n_shards], dtype=np.int64),
                                    "users": np.frombuffer(users_sha.encode(), dtype=np.uint8)})
            try:
                store.put_blob(manifest_key(shard), payload)  # after the rows are durable: the shard is done
            except FileExistsError:
                mine = load_manifest(shard)  # a concurrent rerun of this shard wrote the same rows first
        manifests = [mine if i == shard else load_manifest(i) for i in range(n_shards)]
        missing = tuple(i for i, m in enumerate(manifests) if m is None)
        if missing:
            done = committed()  # a shard that finished meanwhile may have committed (and removed the digests)
            return ShardWrite(shard, n_shards, (start, stop), reused, done, () if done else missing)
        every = np.concatenate([m for m in manifests if m is not None])
        spec = _NewSet(model=model, task=task, base=base, run_id=run_id, head=head, adapter=adapter, sources=sources, note=note)
        blob = np.ascontiguousarray(every, dtype=np.uint8).tobytes()  # one bytes object, not one per row: this is after the last shard
        made = self._commit_set(spec, user_ids=user_ids, batches=digests_in_batches(blob), bytes_ready=lambda: None,
                                store_key=store_key, shape=(prompt_len, width), dtype=dtype, source="shards", started=started,
                                started_at=started_at, idempotency_key=key, pending=pending)
        for i in range(n_shards):
            store.delete(manifest_key(i))
        return ShardWrite(shard, n_shards, (start, stop), reused, made, ())

    def _pending_set(self, model: str, task: str, key: str, store_key: str, n_rows: int, prompt_len: int, width: int,
                     dtype: str) -> int | None:
        """The id of the pending set of a sharded write under ``key``, made by the first shard to
        ask; None if that set is committed already."""
        from sqlalchemy.exc import IntegrityError as DuplicateKey

        def existing() -> PromptSetRow | None:
            with read_session(self.ctx.engine) as session:
                return lookups.set_by_key(session, key)

        if (row := existing()) is None:
            try:
                with write_session(self.ctx.engine) as session:
                    made = PromptSetRow(
                        model_id=lookups.model_row(session, model).id, task_id=lookups.task_row(session, task).id, version=None,
                        prompt_len=prompt_len, width=width, dtype=dtype, n_users=n_rows, n_rows=n_rows, store_key=store_key,
                        sha256="pending", status="pending", idempotency_key=key, created_at=self.ctx.now(), created_by=self.ctx.actor)
                    session.add(made)
                    session.flush()
                    return made.id
            except DuplicateKey:  # another shard made it at the same moment
                row = existing()
                if row is None:
                    raise
        return row.id if row.status == "pending" else None

    def _erase_deleted_rows(self, store_key: str, user_ids: Sequence[str], start: int, stop: int) -> None:
        """Zero a shard's rows ``start..stop`` of users deleted (purged) while it ran: the purge
        found no row of theirs in the pending set, so nothing else erases the bytes written for them."""
        mine = user_ids[start:stop]
        with read_session(self.ctx.engine) as session:
            active = lookups.user_ids(session, mine, active_only=True)
        gone = [start + i for i, user in enumerate(mine) if user not in active]
        if gone:
            deletion.zero_rows(self.ctx.store, store_key, gone)

    def _shard_rows(self, set_id: int, start: int, stop: int) -> int:
        """How many catalogue rows the pending set ``set_id`` has in rows ``start..stop``."""
        with read_session(self.ctx.engine) as session:
            return int(session.scalar(select(func.count()).select_from(PromptRowRow).where(
                PromptRowRow.set_id == set_id, PromptRowRow.row_index >= start, PromptRowRow.row_index < stop)) or 0)

    def _insert_shard_rows(self, set_id: int, user_ids: Sequence[str], start: int, stop: int, digests: bytes) -> None:
        """Catalogue rows ``start..stop`` of the pending set (``digests`` 32 bytes a row) in one
        transaction, overwriting those an earlier or concurrent run of the shard inserted.
        Refreshes the set's ``created_at``: ``gc`` takes a pending set no shard touched for its
        grace period."""
        from sqlalchemy.exc import IntegrityError as DuplicateKey

        try:
            self._insert_shard_rows_once(set_id, user_ids, start, stop, digests, replace=False)
        except DuplicateKey:  # rows of an earlier or concurrent run of this shard: the same rows, as an upsert
            # (not always: a Postgres upsert took 0.79 s per 100,000 rows against a plain insert's 0.60 s)
            self._insert_shard_rows_once(set_id, user_ids, start, stop, digests, replace=True)

    def _insert_shard_rows_once(self, set_id: int, user_ids: Sequence[str], start: int, stop: int, digests: bytes, *,
                                replace: bool) -> None:
        with write_session(self.ctx.engine) as session:
            row = session.get(PromptSetRow, set_id)
            if row is None or row.status != "pending":
                raise ConflictError(f"the pending set {set_id} of this sharded write is gone" if row is None else
                                    f"set {set_id} was committed while shard rows {start}..{stop} were being written")
            conn = session.connection()
            for lo, hi, blob in digests_in_batches(digests):
                users = user_ids[start + lo : start + hi]
                if insert_prompt_rows(conn, set_id, users, start + lo, blob, replace=replace) != len(users):
                    self._raise_unusable_users(session, users)
            row.created_at = self.ctx.now()

    def _commit_set(self, spec: _NewSet, *, user_ids: Sequence[str], batches: Iterable[tuple[int, int, bytes]],
                    bytes_ready: Callable[[], None], store_key: str, shape: tuple[int, int], dtype: str, source: str,
                    started: float, started_at: dt.datetime, idempotency_key: str | None = None,
                    pending: int | None = None) -> PromptSet:
        """The one transaction that makes written (and fsynced) bytes a visible version.

        ``batches`` yields ``(start, stop, sha256 of rows start..stop concatenated)`` in order
        (possibly while they are still being hashed); ``bytes_ready`` blocks until every byte of
        ``store_key`` is durable and is called before anything commits. With ``pending`` (a
        sharded write's pending set, whose shards inserted the rows), no row is inserted: the set
        must hold one row per user, and is committed in place (or returned, if another shard
        committed it first).
        """
        prompt_len, width = shape
        with write_session(self.ctx.engine) as session:
            model_row = lookups.model_row(session, spec.model, lock=True)  # serialises versions on Postgres
            pending_row = session.get(PromptSetRow, pending) if pending is not None else None
            if pending is not None and pending_row is None:
                raise ConflictError(f"the pending set {pending} of this sharded write is gone (removed by gc?); rerun every shard")
            if pending_row is not None and pending_row.status != "pending":
                return mappers.set_entities(session, [pending_row])[0]  # another shard committed it first
            task_row = lookups.task_row(session, spec.task)
            base_row = lookups.resolve_set(session, self.ctx.caches.pair_ids, spec.base, model=spec.model, task=spec.task) if spec.base is not None else None
            if spec.create_users:
                existing = lookups.user_ids(session, user_ids)
                lookups.insert_users(session, [u for u in user_ids if u not in existing])
            n_users = len(user_ids)
            if base_row is not None:
                overlap = resolution.locate(self.ctx, session, base_row, user_ids)
                n_users = base_row.n_users + len(user_ids) - len(overlap)
            if spec.run_id is None:
                run = RunRow(
                    kind="import", status="succeeded", model_id=model_row.id, task_id=task_row.id,
                    config={"source": source, "n_rows": len(user_ids), "base": base_row.id if base_row else None,
                            "dtype": dtype, "prompt_len": prompt_len},
                    seeds={}, started_at=started_at, actor=self.ctx.actor,
                    cost={"bytes_written": len(user_ids) * prompt_len * width * np.dtype(dtype).itemsize},
                )
            else:
                run = lookups.run_row(session, spec.run_id)
            source_rows = [lookups.resolve_set(session, self.ctx.caches.pair_ids, src) for src in spec.sources]
            head_row = lookups.artifact_for(session, spec.head, "head", model_row) if spec.head is not None else None
            adapter_row = lookups.artifact_for(session, spec.adapter, "adapter", model_row) if spec.adapter is not None else None
            fields = dict(
                model_id=model_row.id, task_id=task_row.id, version=lookups.next_version(session, model_row.id, task_row.id),
                base_id=base_row.id if base_row else None, prompt_len=prompt_len, width=width, dtype=dtype,
                n_users=n_users, n_rows=len(user_ids), store_key=store_key, sha256="pending",
                status="committed", note=spec.note, idempotency_key=idempotency_key, head_id=head_row.id if head_row else None,
                adapter_id=adapter_row.id if adapter_row else None, created_at=self.ctx.now(), created_by=self.ctx.actor,
            )
            if pending_row is None:
                row = PromptSetRow(**fields)
                session.add(row)
            else:
                row = pending_row
                for name, value in fields.items():
                    setattr(row, name, value)
            session.add(run)
            session.flush()
            row.run_id = run.id
            if base_row is not None:
                session.add(PromptSetParentRow(set_id=row.id, parent_id=base_row.id, role="base", position=0))
            for pos, src in enumerate(source_rows):
                session.add(PromptSetParentRow(set_id=row.id, parent_id=src.id, role="source", position=pos))
            conn = session.connection()
            content = ContentHash(base_row.sha256 if base_row else None)
            for start, stop, blob in batches:
                users = user_ids[start:stop]
                batch_json = users_json(users)  # once: for the statement and for the content hash
                if pending_row is None and insert_prompt_rows(conn, row.id, users, start, blob, batch_json) != len(users):
                    self._raise_unusable_users(session, users)
                content.update(batch_json, blob)
            if pending_row is not None:
                self._check_shard_rows(session, row.id, user_ids)
            row.sha256 = content.hexdigest()
            bytes_ready()
            check_bytes_present(self.ctx.store, store_key)
            for tag_name, tag_value in _tag_items(spec.tags):
                session.add(TagRow(set_id=row.id, name=tag_name, value=tag_value, created_at=self.ctx.now(), created_by=self.ctx.actor))
            self.ctx.audit(session, "import_prompts", "prompt_set", row.id, {
                "model": spec.model, "task": spec.task, "version": row.version, "n_rows": len(user_ids),
                "base": row.base_id, "store_key": store_key, "sha256": row.sha256,
                "sources": [r.id for r in source_rows], "adapter": row.adapter_id,
            }, spec.reason)
            if spec.alias is not None:
                move_alias(self.ctx, session, spec.alias, row, spec.reason)
            if spec.run_id is None:
                run.finished_at = self.ctx.now()
                run.wall_seconds = time.perf_counter() - started
            session.flush()
            return mappers.set_entities(session, [row])[0]

    def _check_shard_rows(self, session: Session, set_id: int, user_ids: Sequence[str]) -> None:
        """Every user of a sharded write still has the row its shard inserted: a purge since then
        removed it (and zeroed the bytes), and the set can no longer be committed whole."""
        have = int(session.scalar(select(func.count()).select_from(PromptRowRow).where(PromptRowRow.set_id == set_id)) or 0)
        if have == len(user_ids):
            return
        held = {u for (u,) in session.execute(select(UserRow.external_id).join(PromptRowRow, PromptRowRow.user_id == UserRow.id)
                                                  .where(PromptRowRow.set_id == set_id))}
        lost = [u for u in user_ids if u not in held]
        active = lookups.user_ids(session, lost, active_only=True)
        gone = [u for u in lost if u not in active]
        if gone:
            raise UnknownUserError(f"user(s) {preview(gone)} were purged while this sharded write ran; deleted users cannot "
                                   "receive prompts again: apply again (the users are no longer in the source)")
        raise IntegrityError(f"the shards wrote no catalogue row for {len(lost)} user(s) ({preview(lost)}); rerun every shard")

    def _raise_unusable_users(self, session: Session, users: Sequence[str]) -> None:
        """Name the users of a batch that cannot receive prompts: unknown, or deleted."""
        active = lookups.user_ids(session, users, active_only=True)
        registered = lookups.user_ids(session, users)
        deleted = [u for u in users if u in registered and u not in active]
        if deleted:
            raise UnknownUserError(f"user(s) {preview(deleted)} were deleted; deleted users cannot receive prompts again")
        missing = [u for u in users if u not in registered]
        raise UnknownUserError(
            f"{len(missing)} user(s) are not registered: {preview(missing)}; add them first "
            "(`prompt-registry user import FILE.csv`) or pass create_users=True (`--create-users`); "
            "deleted users cannot receive prompts again"
        )

    def _normalize_prompt_input(self, prompts: PromptInput, users: Sequence[str] | str | os.PathLike[str] | None
                                ) -> tuple[np.ndarray, list[str], str, set[str]]:
        """(array, users, where from, model fingerprints the input was made for: PEFT folders say)."""
        if isinstance(users, (str, os.PathLike)):
            user_list: list[str] | None = fileio.read_users_csv(users)
        else:
            user_list = None if users is None else list(map(str, users))
        if isinstance(prompts, (str, os.PathLike)) and Path(prompts).is_dir():
            from .. import peftio

            if user_list is not None:
                raise InvalidArgumentError("PEFT folders name their users (metadata, else the folder name): leave out users=")
            found = peftio.read_folders(Path(prompts))
            shapes = {p.prompt.shape for p in found}
            if len(shapes) != 1:
                raise ShapeError(f"the PEFT folders in {prompts} hold prompts of different shapes {sorted(shapes)}")
            return (np.stack([p.prompt for p in found]), [p.user for p in found], str(Path(prompts).absolute()),
                    {p.fingerprint for p in found if p.fingerprint})
        if isinstance(prompts, (str, os.PathLike)):
            path = Path(prompts)
            array, file_users = fileio.load_prompt_file(path)
            if user_list is None:
                user_list = file_users
            if user_list is None and fileio.users_csv_path(path).exists():
                user_list = fileio.read_users_csv(fileio.users_csv_path(path))
            if user_list is None:
                raise InvalidFileError(
                    f"{path} does not say which users its rows belong to; pass users= (`--users FILE.csv`)"
                )
            return array, user_list, str(path.absolute()), set()
        if isinstance(prompts, Mapping):
            if users is not None:
                raise InvalidArgumentError("pass users= only with an array; a mapping already names its users")
            if not prompts:
                raise UnknownUserError("the prompt mapping is empty")
            user_list = [str(u) for u in prompts]
            rows = [_to_numpy(v, f"prompt of user {u!r}") for u, v in prompts.items()]
            shapes = {r.shape for r in rows}
            if len(shapes) != 1:
                raise ShapeError(f"prompts in the mapping have different shapes {sorted(shapes)}; all must share (prompt_len, width)")
            return np.stack(rows), user_list, "mapping", set()
        array = _to_numpy(prompts, "prompts")
        if user_list is None:
            raise UnknownUserError("an array of prompts needs users= (one id per row)")
        return array, user_list, "array", set()
