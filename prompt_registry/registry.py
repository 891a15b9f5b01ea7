"""The ``Registry`` facade: the one public entry point.

Each public method is one unit of work. Writes follow one protocol: validate everything, write the
tensor bytes and fsync them, then commit every catalogue row in one transaction. If anything
fails, the transaction rolls back and the bytes are removed (or, after a crash, left as orphans
for ``gc``): no row ever points at missing bytes, and nothing is half-visible.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import errno
import getpass
import hashlib
import json
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, bindparam, delete, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from . import fileio, liveness
from ._forksafe import fresh_lock
from .audit import deletion, retention
from .audit.api import AuditMixin
from .db import info, migrations
from .db.engine import make_engine, read_session, write_session
from .db.schema import (
    AliasEventRow,
    AliasRow,
    ArtifactRow,
    ArtifactSourceRow,
    AuditEventRow,
    BaseModelRow,
    EvaluationRow,
    PromptRowRow,
    PromptSetParentRow,
    PromptSetRow,
    RunRow,
    TagRow,
    TaskRow,
    UserMetricRow,
    UserRow,
)
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
    ModelInfo,
    Problem,
    PromptSet,
    Run,
    Task,
    User,
)
from .errors import (
    ChecksumError,
    ConflictError,
    DTypeError,
    DuplicateUserError,
    IntegrityError,
    InvalidArgumentError,
    InvalidFileError,
    InvalidPromptError,
    MissingDataError,
    ModelConflictError,
    ModelMismatchError,
    NonFiniteError,
    NotFoundError,
    RegistryNotFoundError,
    SchemaError,
    ShapeError,
    StoreBindingError,
    UnknownAliasError,
    UnknownArtifactError,
    UnknownModelError,
    UnknownRunError,
    UnknownSetError,
    UnknownTaskError,
    UnknownUserError,
)
from .ingest import (
    BackgroundWrite,
    digest_batches,
    digests_in_batches,
    insert_prompt_rows,
    users_json,
)
from .location import DB_FILE, Location, resolve_location
from .manifest import ContentHash, Manifest, row_digests
from .modelinfo import describe_model
from .store import keys
from .store.base import DEFAULT_CHUNK_ROWS, SUPPORTED_DTYPES, StoredObject, TensorStore
from .store.resolve import is_memory, open_store

TASK_KINDS = ("rating", "click")
DEFAULT_GC_GRACE_SECONDS = 3600.0
# Rows per store write: whole chunks, bounded memory, and a natural progress step.
WRITE_BATCH_ROWS = 64 * DEFAULT_CHUNK_ROWS
_QUERY_BATCH = 2000
# Reads of at least this many users load (and cache) the version's whole manifest.
MANIFEST_MIN_USERS = 1024
MANIFEST_CACHE_ROWS = 5_000_000  # ~0.5-1 GB of Python objects at the most  # bound IN (...) lists (SQLite's variable limit, plan sizes)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-/:]{0,199}$")
_ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]{0,99}$")
_VERSION_RE = re.compile(r"^v?(\d+)$")
LATEST = "latest"

PromptInput = Mapping[str, Any] | np.ndarray | Any  # Mapping user->tensor, array/tensor, or a path

# Statements of the read path, built once: building a select() per call costs more than running
# it (measured ~0.3 ms of a ~2.5 ms single-prompt read on Postgres).
_LATEST_SET = (
    select(PromptSetRow)
    .where(PromptSetRow.model_id == bindparam("model_id"), PromptSetRow.task_id == bindparam("task_id"),
           PromptSetRow.status == "committed")
    .order_by(PromptSetRow.version.desc())
    .limit(1)
)
_SET_VERSION = select(PromptSetRow).where(
    PromptSetRow.model_id == bindparam("model_id"), PromptSetRow.task_id == bindparam("task_id"),
    PromptSetRow.version == bindparam("version"),
)
_ALIAS = select(AliasRow).where(
    AliasRow.name == bindparam("name"), AliasRow.model_id == bindparam("model_id"), AliasRow.task_id == bindparam("task_id"),
)
# (user, holder set, row index, sha256) of the rows the given sets wrote (optionally: these users)
_SET_RECORDS = (
    select(UserRow.external_id, PromptRowRow.set_id, PromptRowRow.row_index, PromptRowRow.sha256)
    .join(UserRow, UserRow.id == PromptRowRow.user_id)
    .where(PromptRowRow.set_id.in_(bindparam("sets", expanding=True)))
)
_USER_RECORDS = _SET_RECORDS.where(UserRow.external_id.in_(bindparam("users", expanding=True)))


def _set_records(session: Session, set_ids: Sequence[int]) -> list[tuple[str, int, int, bytes]]:
    """Every ``(user, set id, row index, sha256)`` of ``set_ids``, fetched with the driver's cursor
    in the session's transaction: building SQLAlchemy rows cost more than the query (a
    100,000-user manifest, open to first 10,000-user batch read: 0.43-0.55 -> 0.24 s on SQLite,
    0.50 -> 0.30 s on Postgres)."""
    if not set_ids:
        return []
    ids = ", ".join(str(int(i)) for i in set_ids)  # integers from the catalogue, inlined
    cursor = session.connection().connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(
            "SELECT u.external_id, r.set_id, r.row_index, r.sha256 FROM prompt_rows r "
            f"JOIN users u ON u.id = r.user_id WHERE r.set_id IN ({ids})"
        )
        return cursor.fetchall()
    finally:
        cursor.close()


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def _batched(items: Sequence[Any], size: int = _QUERY_BATCH) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


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


def _preview(items: Iterable[Any], n: int = 5) -> str:
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


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


def _binding_message(loc: Location, bound: str, mine: str | None) -> str:
    this = f"{loc.display} (catalogue {mine[:12]})" if mine else f"the new registry at {loc.display}"
    return (
        f"the tensor store {loc.store} belongs to another catalogue (id {bound[:12]}), not to {this}: "
        "a store serves one catalogue, and two registries sharing one would delete each other's data. "
        "Give this registry its own store: pass --store DIR (Python: store=...), or, for a directory "
        "registry, unset PROMPT_REGISTRY_STORE so that it uses the store inside its directory"
    )


def _referenced_keys(session: Session) -> set[str]:
    keys_ = set(session.scalars(select(PromptSetRow.store_key).where(PromptSetRow.store_key.is_not(None))))
    keys_ |= set(session.scalars(select(ArtifactRow.store_key)))
    return keys_  # type: ignore[return-value]


def _bind_store(engine: Engine, store: TensorStore, loc: Location) -> str:
    """Bind ``store`` to the catalogue of ``engine`` (or check that it is); returns the catalogue id.

    A store already bound to another id is refused, except in one case that proves ownership: the
    catalogue's own objects carry the store's id and none carries the catalogue's (the catalogue was
    downgraded below revision 0006 and upgraded again, which made it a new id). Then the catalogue
    takes its old id back.
    """
    with read_session(engine) as session:
        mine = info.catalog_id(session)
    bound = store.bound_catalog()
    if bound is None:
        try:
            bound = store.bind(mine)
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise
            return mine  # a read-only store: nothing can be written (or deleted) through us either
    if bound == mine:
        return mine
    with write_session(engine) as session:
        owners = {keys.owner(k) for k in _referenced_keys(session)}
        if bound in owners and mine not in owners:
            info.set_catalog_id(session, bound)
            session.add(AuditEventRow(at=_utcnow(), actor=_default_actor(), action="restore_catalog_id", object_kind="registry",
                                      object_id=loc.display, reason=None, details={"catalog_id": bound, "replaced": mine}))
            return bound
    raise StoreBindingError(_binding_message(loc, bound, mine))


def _default_actor() -> str:
    actor = os.environ.get("PROMPT_REGISTRY_ACTOR")
    if actor:
        return actor
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return "unknown"


class Registry(AuditMixin):
    """Versioned soft prompts bound to the exact base models that can read them.

    Open one with ``Registry.open(location)`` (or create it with ``Registry.init``); ``location``
    is a directory (SQLite + Zarr inside, default ``./.prompt-registry``) or a database URL with
    ``store=`` naming the Zarr directory. Use it as a context manager or call ``close()``.
    """

    def __init__(self, engine: Engine, store: TensorStore, *, where: str, catalog_id: str, actor: str | None = None) -> None:
        self._engine = engine
        self._store = store
        self.where = where
        self.catalog_id = catalog_id  # named in the store it is bound to and in every key it writes
        self.actor = actor or _default_actor()
        self._heartbeat = liveness.Heartbeat(engine, _utcnow)
        self._chains: dict[int, tuple[tuple[int, str | None], ...]] = {}
        # (model name, task name) -> (model id, task id): rows that are never renamed or deleted
        self._pair_ids: dict[tuple[str, str], tuple[int, int]] = {}
        self._manifests: collections.OrderedDict[int, Manifest] = collections.OrderedDict()
        self._lock = fresh_lock(self)  # a forked child gets it unheld

    # ------------------------------------------------------------------ open / init / upgrade
    @classmethod
    def init(cls, location: str | os.PathLike[str] | None = None, *, store: str | os.PathLike[str] | None = None, actor: str | None = None) -> Registry:
        """Create a registry (or bring an existing one to the current schema) and open it.

        ``StoreBindingError`` (before anything is created) if the store already belongs to another
        catalogue: a store serves one catalogue.
        """
        loc = resolve_location(location, store)
        bound = cls._existing_binding(loc)
        if bound is not None and cls._is_new_catalogue(loc):
            raise StoreBindingError(_binding_message(loc, bound, None))
        if loc.directory is not None:
            loc.directory.mkdir(parents=True, exist_ok=True)
        engine = make_engine(loc.db_url)
        try:
            before, after = migrations.upgrade(engine)
            tensor_store = cls._make_store(loc, create=True)
            catalog_id = _bind_store(engine, tensor_store, loc)
        except BaseException:
            engine.dispose()
            raise
        registry = cls(engine, tensor_store, where=loc.display, catalog_id=catalog_id, actor=actor)
        if before != after:
            with write_session(engine) as session:
                registry._audit(session, "init", "registry", loc.display, {"schema": after, "store": loc.store, "catalog_id": catalog_id})
        return registry

    @classmethod
    def open(cls, location: str | os.PathLike[str] | None = None, *, store: str | os.PathLike[str] | None = None, actor: str | None = None) -> Registry:
        """Open an existing registry; ``SchemaError`` if its schema is not this package's head,
        ``StoreBindingError`` if the store belongs to another catalogue."""
        loc = resolve_location(location, store)
        cls._require_directory(loc)
        engine = make_engine(loc.db_url)
        try:
            migrations.check_schema(engine, loc.display)
        except SchemaError:
            engine.dispose()
            raise
        except Exception as exc:  # connection refused, bad URL, ...
            engine.dispose()
            raise RegistryNotFoundError(f"cannot open the catalogue at {loc.display}: {exc}") from exc
        try:
            tensor_store = cls._make_store(loc, create=False)
            catalog_id = _bind_store(engine, tensor_store, loc)
        except BaseException:
            engine.dispose()
            raise
        return cls(engine, tensor_store, where=loc.display, catalog_id=catalog_id, actor=actor)

    @classmethod
    def _existing_binding(cls, loc: Location) -> str | None:
        """The catalogue an existing store is bound to (``None``: no store there yet, or unbound)."""
        if is_memory(loc.store):
            return None
        try:
            existing = cls._make_store(loc, create=False)
        except MissingDataError:
            return None
        try:
            return existing.bound_catalog()
        finally:
            existing.close()

    @staticmethod
    def _is_new_catalogue(loc: Location) -> bool:
        if loc.directory is not None:
            return not (loc.directory / DB_FILE).exists()
        engine = make_engine(loc.db_url)
        try:
            return migrations.current_revision(engine) is None
        except Exception:  # noqa: BLE001 - unreachable: init reports it when it connects
            return False
        finally:
            engine.dispose()

    @staticmethod
    def upgrade(location: str | os.PathLike[str] | None = None, *, store: str | os.PathLike[str] | None = None) -> tuple[str | None, str]:
        """Apply the packaged Alembic migrations; returns (revision before, revision after)."""
        loc = resolve_location(location, store)
        Registry._require_directory(loc)
        engine = make_engine(loc.db_url)
        try:
            return migrations.upgrade(engine)
        finally:
            engine.dispose()

    @staticmethod
    def _require_directory(loc: Location) -> None:
        if loc.directory is not None and not (loc.directory / DB_FILE).exists():
            raise RegistryNotFoundError(
                f"no registry at {loc.directory}; create one with `prompt-registry init "
                f"--registry {loc.directory}` or point --registry / PROMPT_REGISTRY_URL at an existing one"
            )

    @staticmethod
    def _make_store(loc: Location, *, create: bool) -> TensorStore:
        return open_store(loc.store, create=create)

    def close(self) -> None:
        """Release the database connections and store handles."""
        self._heartbeat.stop()
        self._store.close()
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry({self.where!r}, store={self._store.location!r})"

    @property
    def store(self) -> TensorStore:
        return self._store

    @property
    def schema_revision(self) -> str | None:
        return migrations.current_revision(self._engine)

    def scratch_dir(self) -> Path:
        """A local directory for working files (training checkpoints): beside the store."""
        root = self._store.local_root or Path(tempfile.gettempdir()) / "prompt-registry"
        path = root / "work"
        path.mkdir(parents=True, exist_ok=True)
        return path

    # ------------------------------------------------------------------ training and evaluation
    def train_prompts(self, model: str, task: str, data: str | os.PathLike[str], **kwargs: Any) -> Any:
        """Train every user's prompt and the task head from scratch on frozen ``model``.

        Keyword arguments: ``users``, ``config`` (``TrainConfig``), ``device``, ``resume``,
        ``checkpoint_dir``, ``progress``, ``alias``, ``evaluate_split``. Returns a ``TrainResult``
        (the new set, its head, the run with its cost ledger). See ``training.trainer``.
        """
        from .training.trainer import train_prompts

        return train_prompts(self, model, task, data, **kwargs)

    def evaluate(self, ref: int | str | PromptSet, data: str | os.PathLike[str], *, split: str = "test", **kwargs: Any) -> Evaluation:
        """Evaluate a set (with its head) on a data split; stored as an ``eval`` run + evaluation."""
        from .training.evaluate import evaluate_set

        return evaluate_set(self, ref.id if isinstance(ref, PromptSet) else ref, data, split=split, **kwargs)

    # ------------------------------------------------------------------ internal helpers
    def _audit(self, session: Session, action: str, kind: str, obj: Any, details: dict[str, Any], reason: str | None = None) -> None:
        session.add(
            AuditEventRow(
                at=_utcnow(), actor=self.actor, action=action, object_kind=kind,
                object_id=str(obj), reason=reason, details=details,
            )
        )

    @staticmethod
    def _model_row(session: Session, name: str, *, lock: bool = False) -> BaseModelRow:
        stmt = select(BaseModelRow).where(BaseModelRow.name == name)
        if lock:
            # FOR NO KEY UPDATE: lockers of a model row queue behind each other, but foreign-key
            # checks of rows that refer to the model (FOR KEY SHARE) pass. With FOR UPDATE an
            # import (model lock, then alias lock) and a set_alias (alias lock, then the key check
            # of its history row on the model) deadlocked.
            stmt = stmt.with_for_update(key_share=True)
        row = session.scalars(stmt).one_or_none()
        if row is None:
            known = session.scalars(select(BaseModelRow.name).order_by(BaseModelRow.name).limit(10)).all()
            raise UnknownModelError(
                f"unknown model {name!r} (registered: {', '.join(known) or 'none'}); "
                f"register it with `prompt-registry model add {name} --path DIR`"
            )
        return row

    @staticmethod
    def _task_row(session: Session, name: str) -> TaskRow:
        row = session.scalars(select(TaskRow).where(TaskRow.name == name)).one_or_none()
        if row is None:
            known = session.scalars(select(TaskRow.name).order_by(TaskRow.name).limit(10)).all()
            raise UnknownTaskError(
                f"unknown task {name!r} (known: {', '.join(known) or 'none'}); "
                f"create it with `prompt-registry task add {name} --kind rating|click`"
            )
        return row

    @staticmethod
    def _model_entity(row: BaseModelRow) -> ModelInfo:
        return ModelInfo(
            id=row.id, name=row.name, source=row.source, revision=row.revision,
            architecture=row.architecture, model_type=row.model_type, hidden_size=row.hidden_size,
            vocab_size=row.vocab_size, fingerprint=row.fingerprint, files=dict(row.files),
            created_at=_aware(row.created_at), created_by=row.created_by,  # type: ignore[arg-type]
        )

    @staticmethod
    def _task_entity(row: TaskRow) -> Task:
        return Task(id=row.id, name=row.name, kind=row.kind, created_at=_aware(row.created_at))  # type: ignore[arg-type]

    def _set_entities(self, session: Session, rows: Sequence[PromptSetRow]) -> list[PromptSet]:
        if not rows:
            return []
        ids = [r.id for r in rows]
        names = {
            "model": dict(session.execute(select(BaseModelRow.id, BaseModelRow.name)).all()),
            "task": dict(session.execute(select(TaskRow.id, TaskRow.name)).all()),
        }
        parents: dict[int, list[int]] = {}
        aliases: dict[int, list[str]] = {}
        tags: dict[int, dict[str, str | None]] = {}
        for chunk in _batched(ids):
            for set_id, parent_id in session.execute(
                select(PromptSetParentRow.set_id, PromptSetParentRow.parent_id)
                .where(PromptSetParentRow.set_id.in_(chunk))
                .order_by(PromptSetParentRow.set_id, PromptSetParentRow.position)
            ):
                parents.setdefault(set_id, []).append(parent_id)
            for set_id, name in session.execute(select(AliasRow.set_id, AliasRow.name).where(AliasRow.set_id.in_(chunk)).order_by(AliasRow.name)):
                aliases.setdefault(set_id, []).append(name)
            for set_id, name, value in session.execute(select(TagRow.set_id, TagRow.name, TagRow.value).where(TagRow.set_id.in_(chunk)).order_by(TagRow.name)):
                tags.setdefault(set_id, {})[name] = value
        return [
            PromptSet(
                id=r.id, model=names["model"][r.model_id], task=names["task"][r.task_id],
                version=r.version, base_id=r.base_id, parents=tuple(parents.get(r.id, ())),
                prompt_len=r.prompt_len, width=r.width, dtype=r.dtype, n_users=r.n_users,
                n_rows=r.n_rows, store_key=r.store_key, sha256=r.sha256, status=r.status,
                run_id=r.run_id, adapter_id=r.adapter_id, head_id=r.head_id, note=r.note,
                created_at=_aware(r.created_at), created_by=r.created_by,  # type: ignore[arg-type]
                aliases=tuple(aliases.get(r.id, ())), tags=tags.get(r.id, {}),
            )
            for r in rows
        ]

    def _resolve_set(self, session: Session, ref: int | str | PromptSet, *, model: str | None = None, task: str | None = None) -> PromptSetRow:
        """A set by id, ``MODEL/TASK@ALIAS``, ``MODEL/TASK@latest`` or ``MODEL/TASK@vN``."""
        if isinstance(ref, PromptSet):
            ref = ref.id
        text = str(ref).strip()
        if text.isdigit():
            row = session.get(PromptSetRow, int(text))
            if row is None:
                raise UnknownSetError(f"no prompt set with id {text}; list them with `prompt-registry prompt list`")
        else:
            if "@" not in text or "/" not in text.split("@")[0]:
                raise UnknownSetError(
                    f"cannot parse set reference {text!r}: use a set id or MODEL/TASK@ALIAS "
                    "(ALIAS may be `latest` or `vN`)"
                )
            head, selector = text.rsplit("@", 1)
            model_name, task_name = head.rsplit("/", 1)
            row = self._select_set(session, model_name, task_name, selector)
        if row.status != "committed":
            raise UnknownSetError(f"prompt set {row.id} is {row.status}; it can no longer be read")
        if model is not None or task is not None:
            self._check_set_matches(session, row, model, task)
        return row

    def _pair(self, session: Session, model: str, task: str) -> tuple[int, int]:
        """Ids of a model and a task by name (cached: a read resolves them on every call)."""
        ids = self._pair_ids.get((model, task))
        if ids is None:
            ids = self._model_row(session, model).id, self._task_row(session, task).id
            self._pair_ids[(model, task)] = ids
        return ids

    def _select_set(self, session: Session, model: str, task: str, selector: str | int) -> PromptSetRow:
        model_id, task_id = self._pair(session, model, task)
        ids = {"model_id": model_id, "task_id": task_id}
        selector = str(selector)
        version = _VERSION_RE.match(selector)
        if selector == LATEST:
            row = session.scalars(_LATEST_SET, ids).one_or_none()
            if row is None:
                raise UnknownSetError(
                    f"model {model!r} has no prompt sets for task {task!r} yet; import some with "
                    f"`prompt-registry prompt import --model {model} --task {task} FILE`"
                )
            return row
        if version:
            row = session.scalars(_SET_VERSION, {**ids, "version": int(version.group(1))}).one_or_none()
            if row is None:
                raise UnknownSetError(f"{model}/{task} has no version {version.group(1)}; see `prompt-registry prompt list --model {model}`")
            return row  # a deleted version is reported as such by the caller
        alias = session.scalars(_ALIAS, {**ids, "name": selector}).one_or_none()
        if alias is None:
            raise UnknownAliasError(
                f"no alias {selector!r} for {model}/{task}; set it with "
                f"`prompt-registry alias set {selector} {model}/{task}@latest`"
            )
        return session.get_one(PromptSetRow, alias.set_id)

    def _check_set_matches(self, session: Session, row: PromptSetRow, model: str | None, task: str | None) -> None:
        set_model = session.get_one(BaseModelRow, row.model_id)
        if model is not None and model != set_model.name:
            other = self._model_row(session, model)
            raise ModelMismatchError(
                f"prompt set {row.id} holds prompts for model {set_model.name!r} (fingerprint "
                f"{set_model.fingerprint[:12]}), not for {model!r} ({other.fingerprint[:12]}); a prompt "
                f"only works on the model it was made for: migrate it to {model!r} first"
            )
        if task is not None:
            set_task = session.get_one(TaskRow, row.task_id)
            if task != set_task.name:
                raise ConflictError(f"prompt set {row.id} is for task {set_task.name!r}, not {task!r}")

    def _chain(self, session: Session, row: PromptSetRow) -> tuple[tuple[int, str | None], ...]:
        """``(set_id, store_key)`` from this version up through its incremental bases."""
        cached = self._chains.get(row.id)
        if cached is not None:
            return cached
        chain: list[tuple[int, str | None]] = []
        current: PromptSetRow | None = row
        while current is not None:
            chain.append((current.id, current.store_key))
            current = session.get(PromptSetRow, current.base_id) if current.base_id is not None else None
        result = tuple(chain)
        with self._lock:
            self._chains[row.id] = result
        return result

    def _locate(self, session: Session, row: PromptSetRow, users: Sequence[str] | None) -> Manifest:
        """Resolve ``users`` (``None``: everyone) of a version through its chain, via SQL."""
        chain_ids = [set_id for set_id, _ in self._chain(session, row)]
        if users is None:
            records: list[Any] = _set_records(session, chain_ids)
        else:
            records = []
            conn = session.connection()
            for batch in _batched(list(dict.fromkeys(users))):
                records += conn.execute(_USER_RECORDS, {"sets": chain_ids, "users": list(batch)}).all()
        return Manifest.resolve(row.id, chain_ids, records)

    def _manifest(self, session: Session, row: PromptSetRow, users: Sequence[str] | None) -> Manifest:
        """A manifest covering ``users``: the cached full one, a new full one for big reads, or
        a small one for just these users (single reads stay cheap on huge sets)."""
        with self._lock:
            cached = self._manifests.get(row.id)
            if cached is not None:
                self._manifests.move_to_end(row.id)
                return cached
            base = self._manifests.get(row.base_id) if row.base_id is not None else None
        if base is not None:
            manifest = base.overlay(row.id, _set_records(session, [row.id]))
        elif users is not None and len(users) < MANIFEST_MIN_USERS:
            return self._locate(session, row, users)
        else:
            manifest = self._locate(session, row, None)
        with self._lock:
            self._manifests[row.id] = manifest
            total = sum(len(m) for m in self._manifests.values())
            while total > MANIFEST_CACHE_ROWS and len(self._manifests) > 1:
                total -= len(self._manifests.popitem(last=False)[1])
        return manifest

    def _read_users(self, session: Session, row: PromptSetRow, users: Sequence[str] | None, verify: bool) -> tuple[list[str], np.ndarray]:
        manifest = self._manifest(session, row, users)
        users = sorted(manifest.users) if users is None else list(users)
        positions = manifest.positions(users)
        keys = dict(self._chain(session, row))
        return users, manifest.read(self._store, keys, positions, (row.prompt_len, row.width), row.dtype, verify=verify)

    # ------------------------------------------------------------------ models and tasks
    def register_model(self, name: str, path: str | os.PathLike[str], *, revision: str | None = None, reason: str | None = None) -> ModelInfo:
        """Register a local model folder under ``name``, fingerprinting its config and weights.

        Idempotent for the same fingerprint; ``ModelConflictError`` if ``name`` is registered with
        other weights (register the new weights under a new name).
        """
        if not _NAME_RE.match(name):
            raise InvalidArgumentError(f"invalid model name {name!r}: use letters, digits and . _ - / : (max 200)")
        desc = describe_model(path)
        with write_session(self._engine) as session:
            existing = session.scalars(select(BaseModelRow).where(BaseModelRow.name == name)).one_or_none()
            if existing is not None:
                if existing.fingerprint != desc.fingerprint:
                    raise ModelConflictError(
                        f"model {name!r} is registered with fingerprint {existing.fingerprint[:12]} "
                        f"(from {existing.source}), but {path} has {desc.fingerprint[:12]}: these are "
                        f"different weights. Register them under a new name, e.g. {name + '-v2'!r}"
                    )
                return self._model_entity(existing)
            row = BaseModelRow(
                name=name, source=str(Path(path).absolute()), revision=revision,
                architecture=desc.architecture, model_type=desc.model_type, hidden_size=desc.hidden_size,
                vocab_size=desc.vocab_size, fingerprint=desc.fingerprint, files=desc.files,
                created_at=_utcnow(), created_by=self.actor,
            )
            session.add(row)
            session.flush()
            self._audit(session, "register_model", "model", name, {"fingerprint": desc.fingerprint, "source": row.source}, reason)
            return self._model_entity(row)

    def get_model(self, name: str) -> ModelInfo:
        """A registered model by name (``UnknownModelError`` if none)."""
        with read_session(self._engine) as session:
            return self._model_entity(self._model_row(session, name))

    def list_models(self) -> list[ModelInfo]:
        """All registered models, by name."""
        with read_session(self._engine) as session:
            return [self._model_entity(r) for r in session.scalars(select(BaseModelRow).order_by(BaseModelRow.name))]

    def add_task(self, name: str, kind: str) -> Task:
        """Create a task (``rating`` or ``click``); idempotent when it exists with the same kind."""
        if kind not in TASK_KINDS:
            raise InvalidArgumentError(f"unknown task kind {kind!r}; use one of {', '.join(TASK_KINDS)}")
        if not _ALIAS_RE.match(name):
            raise InvalidArgumentError(f"invalid task name {name!r}: start with a letter; letters, digits, . _ - (no '/')")
        with write_session(self._engine) as session:
            row = session.scalars(select(TaskRow).where(TaskRow.name == name)).one_or_none()
            if row is not None:
                if row.kind != kind:
                    raise ConflictError(f"task {name!r} exists with kind {row.kind!r}, not {kind!r}")
                return self._task_entity(row)
            row = TaskRow(name=name, kind=kind, created_at=_utcnow())
            session.add(row)
            session.flush()
            self._audit(session, "add_task", "task", name, {"kind": kind})
            return self._task_entity(row)

    def list_tasks(self) -> list[Task]:
        """All tasks, by name."""
        with read_session(self._engine) as session:
            return [self._task_entity(r) for r in session.scalars(select(TaskRow).order_by(TaskRow.name))]

    # ------------------------------------------------------------------ users
    def add_users(self, users: Iterable[str], *, exist_ok: bool = False) -> int:
        """Register users by external id; returns how many were new.

        ``DuplicateUserError`` for an id given twice, or (unless ``exist_ok``) already registered.
        """
        ids = self._check_user_ids(users, what="users to add")
        with write_session(self._engine) as session:
            existing = self._user_ids(session, ids)
            if existing and not exist_ok:
                raise DuplicateUserError(
                    f"{len(existing)} user(s) already exist: {_preview(sorted(existing))}; "
                    "pass exist_ok=True (`--skip-existing`) to add only the new ones"
                )
            new = [u for u in ids if u not in existing]
            self._insert_users(session, new)
            if new:
                self._audit(session, "add_users", "users", len(new), {"count": len(new), "first": new[:5]})
            return len(new)

    @staticmethod
    def _check_user_ids(users: Iterable[str], *, what: str) -> list[str]:
        ids = list(map(str, users))
        if not ids:
            raise UnknownUserError(f"no {what} given")
        lengths = list(map(len, ids))
        if min(lengths) < 1 or max(lengths) > 200 or any(map(str.isspace, ids)):  # C loops: 100,000 ids in ms
            bad = [u for u in ids if not u.strip() or len(u) > 200]
            raise InvalidArgumentError(f"invalid user id(s) {_preview(bad)}: ids are 1-200 non-blank characters")
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dupes = sorted({u for u in ids if u in seen or seen.add(u)})  # type: ignore[func-returns-value]
            raise DuplicateUserError(f"user id(s) given more than once: {_preview(dupes)}; each user may appear once")
        return ids

    @staticmethod
    def _user_ids(session: Session, users: Sequence[str], *, active_only: bool = False) -> dict[str, int]:
        """external id -> internal id for the given users that exist (and, with ``active_only``,
        were not deleted: a purged user must not come back through an old data dump)."""
        if len(users) > 10 * _QUERY_BATCH:
            total = session.scalar(select(func.count()).select_from(UserRow)) or 0
            if total <= 4 * len(users):  # one scan beats hundreds of IN (...) lookups
                wanted = set(users)
                # driver-level rows: SQLAlchemy's Row objects cost more than the query here
                sql = "SELECT external_id, id FROM users" + (" WHERE deleted_at IS NULL" if active_only else "")
                rows = session.connection().exec_driver_sql(sql).fetchall()
                return {ext: uid for ext, uid in rows if ext in wanted}
        found: dict[str, int] = {}
        stmt = select(UserRow.external_id, UserRow.id)
        if active_only:
            stmt = stmt.where(UserRow.deleted_at.is_(None))
        for batch in _batched(users):
            found.update(session.execute(stmt.where(UserRow.external_id.in_(batch))).all())
        return found

    def _insert_users(self, session: Session, users: Sequence[str]) -> None:
        if not users:
            return
        now = _utcnow()
        dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
        # ON CONFLICT DO NOTHING: a concurrent writer may create the same user first
        stmt = dialect.insert(UserRow).on_conflict_do_nothing(index_elements=["external_id"])
        for batch in _batched(users, 10_000):
            session.execute(stmt, [{"external_id": u, "created_at": now} for u in batch])

    def list_users(self, *, limit: int | None = 100, offset: int = 0, include_deleted: bool = False) -> list[User]:
        """Users in registration order (``limit=None`` for all)."""
        with read_session(self._engine) as session:
            stmt = select(UserRow).order_by(UserRow.id).offset(offset)
            if not include_deleted:
                stmt = stmt.where(UserRow.deleted_at.is_(None))
            if limit is not None:
                stmt = stmt.limit(limit)
            return [User(r.id, r.external_id, _aware(r.created_at), _aware(r.deleted_at)) for r in session.scalars(stmt)]  # type: ignore[arg-type]

    def count_users(self) -> int:
        """How many (non-deleted) users are registered."""
        with read_session(self._engine) as session:
            return session.scalar(select(func.count()).select_from(UserRow).where(UserRow.deleted_at.is_(None))) or 0

    # ------------------------------------------------------------------ prompt import
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
        started = time.perf_counter()
        started_at = _utcnow()
        array, user_ids, source = self._normalize_prompt_input(prompts, users)
        user_ids = self._check_user_ids(user_ids, what="users in the prompt input")
        with read_session(self._engine) as session:
            model_row = self._model_row(session, model)
            self._task_row(session, task)
            base_row = self._resolve_set(session, base, model=model, task=task) if base is not None else None
        if base_row is not None and dtype is not None and dtype != base_row.dtype:
            raise DTypeError(f"base set {base_row.id} stores {base_row.dtype}; an incremental version must use the same dtype")
        array = self._check_prompt_array(
            array, user_ids, model_row,
            prompt_len if prompt_len is not None else (base_row.prompt_len if base_row else None),
            dtype or (base_row.dtype if base_row else "float32"),
        )
        # Bytes, digests and catalogue rows overlap (see ingest.py); the transaction commits only
        # once the writer has fsynced every byte. Unknown or deleted users fail the first batch
        # that names them, and the bytes written so far are removed.
        store_key = keys.new_key(self.catalog_id, "set")
        writer = BackgroundWrite(self._store, store_key, array, DEFAULT_CHUNK_ROWS)
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

        started, started_at = time.perf_counter(), _utcnow()
        user_ids = self._check_user_ids(users, what="users to write")
        if key is not None and not re.fullmatch(r"[0-9a-f]{16,64}", key):
            raise InvalidArgumentError(f"idempotency key {key!r} must be 16-64 lowercase hex characters")
        with read_session(self._engine) as session:
            model_row = self._model_row(session, model)
            self._task_row(session, task)
            if key is not None:
                done = session.scalars(select(PromptSetRow).where(PromptSetRow.idempotency_key == key)).one_or_none()
                if done is not None:
                    return self._set_entities(session, [done])[0]
            known = self._user_ids(session, user_ids, active_only=True)
            width = model_row.hidden_size
        if not create_users and len(known) < len(user_ids):
            missing = [u for u in user_ids if u not in known]
            raise UnknownUserError(f"{len(missing)} user(s) are not registered: {_preview(missing)}; pass create_users=True")
        store_key = keys.new_key(self.catalog_id, "set", key)
        shape = (len(user_ids), prompt_len, width)
        journal = _ChunkJournal(self.scratch_dir() / "writes" / store_key)
        if self._store.exists(store_key) and self._store.array_info(store_key).shape != shape:
            self._store.delete(store_key)
        if not self._store.exists(store_key):
            journal.clear()
            self._store.create_array(store_key, shape, dtype, DEFAULT_CHUNK_ROWS)
        digests: list[bytes] = []
        bar = tqdm(total=len(user_ids), disable=not progress, desc=f"write {model}/{task}", unit="user")
        try:
            for start in range(0, len(user_ids), WRITE_BATCH_ROWS):
                stop = min(start + WRITE_BATCH_ROWS, len(user_ids))
                saved = journal.load(start, stop)
                if saved is not None and saved == row_digests(self._store.read_rows(store_key, slice(start, stop))):
                    digests += saved  # written and fsynced before the interruption
                else:
                    rows = self._check_prompt_array(self._to_numpy(produce(start, stop), "produced rows"),
                                                    user_ids[start:stop], model_row, prompt_len, dtype)
                    self._store.write_rows(store_key, start, rows)
                    batch_digests = row_digests(rows)
                    journal.save(start, stop, batch_digests)
                    digests += batch_digests
                bar.update(stop - start)
        except InvalidPromptError:
            self._store.delete(store_key)  # bad rows: nothing worth resuming
            journal.clear()
            raise
        finally:
            bar.close()
        spec = _NewSet(model=model, task=task, base=base, run_id=run_id, head=head, adapter=adapter, sources=sources,
                       alias=alias, tags=tags, note=note, reason=reason, create_users=create_users)
        result = self._commit_set(spec, user_ids=user_ids, batches=digests_in_batches(digests), bytes_ready=lambda: None, store_key=store_key,
                                  shape=(prompt_len, width), dtype=dtype, source="stream", started=started,
                                  started_at=started_at, idempotency_key=key)
        journal.clear()
        return result

    def _commit_set(self, spec: _NewSet, *, user_ids: Sequence[str], batches: Iterable[tuple[int, int, bytes]],
                    bytes_ready: Callable[[], None], store_key: str, shape: tuple[int, int], dtype: str, source: str,
                    started: float, started_at: dt.datetime, idempotency_key: str | None = None) -> PromptSet:
        """The one transaction that makes written (and fsynced) bytes a visible version.

        ``batches`` yields ``(start, stop, sha256 of rows start..stop concatenated)`` in order
        (possibly while they are still being hashed); ``bytes_ready`` blocks until every byte of
        ``store_key`` is durable and is called before anything commits.
        """
        prompt_len, width = shape
        with write_session(self._engine) as session:
            model_row = self._model_row(session, spec.model, lock=True)  # serialises versions on Postgres
            task_row = self._task_row(session, spec.task)
            base_row = self._resolve_set(session, spec.base, model=spec.model, task=spec.task) if spec.base is not None else None
            if spec.create_users:
                existing = self._user_ids(session, user_ids)
                self._insert_users(session, [u for u in user_ids if u not in existing])
            n_users = len(user_ids)
            if base_row is not None:
                overlap = self._locate(session, base_row, user_ids)
                n_users = base_row.n_users + len(user_ids) - len(overlap)
            if spec.run_id is None:
                run = RunRow(
                    kind="import", status="succeeded", model_id=model_row.id, task_id=task_row.id,
                    config={"source": source, "n_rows": len(user_ids), "base": base_row.id if base_row else None,
                            "dtype": dtype, "prompt_len": prompt_len},
                    seeds={}, started_at=started_at, actor=self.actor,
                    cost={"bytes_written": len(user_ids) * prompt_len * width * np.dtype(dtype).itemsize},
                )
            else:
                run = self._run_row(session, spec.run_id)
            source_rows = [self._resolve_set(session, src) for src in spec.sources]
            head_row = self._artifact_for(session, spec.head, "head", model_row) if spec.head is not None else None
            adapter_row = self._artifact_for(session, spec.adapter, "adapter", model_row) if spec.adapter is not None else None
            row = PromptSetRow(
                model_id=model_row.id, task_id=task_row.id, version=self._next_version(session, model_row.id, task_row.id),
                base_id=base_row.id if base_row else None, prompt_len=prompt_len, width=width, dtype=dtype,
                n_users=n_users, n_rows=len(user_ids), store_key=store_key, sha256="pending",
                status="committed", note=spec.note, idempotency_key=idempotency_key, head_id=head_row.id if head_row else None,
                adapter_id=adapter_row.id if adapter_row else None, created_at=_utcnow(), created_by=self.actor,
            )
            session.add_all([run, row])
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
                if insert_prompt_rows(conn, row.id, users, start, blob, batch_json) != len(users):
                    self._raise_unusable_users(session, users)
                content.update(batch_json, blob)
            row.sha256 = content.hexdigest()
            bytes_ready()
            self._check_bytes_present(store_key)
            for tag_name, tag_value in self._tag_items(spec.tags):
                session.add(TagRow(set_id=row.id, name=tag_name, value=tag_value, created_at=_utcnow(), created_by=self.actor))
            self._audit(session, "import_prompts", "prompt_set", row.id, {
                "model": spec.model, "task": spec.task, "version": row.version, "n_rows": len(user_ids),
                "base": row.base_id, "store_key": store_key, "sha256": row.sha256,
                "sources": [r.id for r in source_rows], "adapter": row.adapter_id,
            }, spec.reason)
            if spec.alias is not None:
                self._move_alias(session, spec.alias, row, spec.reason)
            if spec.run_id is None:
                run.finished_at = _utcnow()
                run.wall_seconds = time.perf_counter() - started
            session.flush()
            return self._set_entities(session, [row])[0]

    def _raise_unusable_users(self, session: Session, users: Sequence[str]) -> None:
        """Name the users of a batch that cannot receive prompts: unknown, or deleted."""
        active = self._user_ids(session, users, active_only=True)
        registered = self._user_ids(session, users)
        deleted = [u for u in users if u in registered and u not in active]
        if deleted:
            raise UnknownUserError(f"user(s) {_preview(deleted)} were deleted; deleted users cannot receive prompts again")
        missing = [u for u in users if u not in registered]
        raise UnknownUserError(
            f"{len(missing)} user(s) are not registered: {_preview(missing)}; add them first "
            "(`prompt-registry user import FILE.csv`) or pass create_users=True (`--create-users`); "
            "deleted users cannot receive prompts again"
        )

    @staticmethod
    def _next_version(session: Session, model_id: int, task_id: int) -> int:
        latest = session.scalar(select(func.max(PromptSetRow.version)).where(PromptSetRow.model_id == model_id, PromptSetRow.task_id == task_id))
        return (latest or 0) + 1

    @staticmethod
    def _tag_items(tags: Mapping[str, str | None] | Iterable[str] | None) -> list[tuple[str, str | None]]:
        if tags is None:
            return []
        if isinstance(tags, Mapping):
            return [(str(k), None if v is None else str(v)) for k, v in tags.items()]
        return [(str(t), None) for t in tags]

    def _check_bytes_present(self, store_key: str) -> None:
        """Inside the commit transaction: our bytes must still be there (a gc with a too-short
        grace period could have taken them for orphans)."""
        if not self._store.exists(store_key):
            raise IntegrityError(f"bytes {store_key!r} vanished before commit (a concurrent `gc --grace 0`?); retry")

    def _normalize_prompt_input(self, prompts: PromptInput, users: Sequence[str] | str | os.PathLike[str] | None) -> tuple[np.ndarray, list[str], str]:
        if isinstance(users, (str, os.PathLike)):
            user_list: list[str] | None = fileio.read_users_csv(users)
        else:
            user_list = None if users is None else list(map(str, users))
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
            return array, user_list, str(path.absolute())
        if isinstance(prompts, Mapping):
            if users is not None:
                raise InvalidArgumentError("pass users= only with an array; a mapping already names its users")
            if not prompts:
                raise UnknownUserError("the prompt mapping is empty")
            user_list = [str(u) for u in prompts]
            rows = [self._to_numpy(v, f"prompt of user {u!r}") for u, v in prompts.items()]
            shapes = {r.shape for r in rows}
            if len(shapes) != 1:
                raise ShapeError(f"prompts in the mapping have different shapes {sorted(shapes)}; all must share (prompt_len, width)")
            return np.stack(rows), user_list, "mapping"
        array = self._to_numpy(prompts, "prompts")
        if user_list is None:
            raise UnknownUserError("an array of prompts needs users= (one id per row)")
        return array, user_list, "array"

    @staticmethod
    def _to_numpy(value: Any, what: str) -> np.ndarray:
        torch = sys.modules.get("torch")  # a tensor implies torch is imported; don't pay its import
        if torch is not None and isinstance(value, torch.Tensor):
            tensor = value.detach().cpu()
            if tensor.dtype == torch.bfloat16:
                tensor = tensor.to(torch.float32)  # numpy has no bfloat16; the cast is exact
            return tensor.numpy()
        if isinstance(value, np.ndarray):
            return value
        raise DTypeError(f"{what} is a {type(value).__name__}; pass a torch.Tensor or numpy.ndarray")

    @staticmethod
    def _check_prompt_array(array: np.ndarray, users: Sequence[str], model: BaseModelRow, prompt_len: int | None, store_dtype: str) -> np.ndarray:
        if store_dtype not in SUPPORTED_DTYPES:
            raise DTypeError(f"cannot store prompts as {store_dtype}; use one of {', '.join(SUPPORTED_DTYPES)}")
        if array.dtype.kind != "f":
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
            bad = [users[i] for i in np.flatnonzero(~finite)]
            overflow = bool(np.isfinite(array.reshape(len(users), -1)[~finite]).all())
            why = f"overflow when cast to {store_dtype}" if overflow else "NaN or Inf values"
            raise NonFiniteError(f"prompts of {len(bad)} user(s) have {why}: {_preview(bad)}; fix or drop them before importing")
        return converted

    # ------------------------------------------------------------------ prompt reads
    def get_set(self, ref: int | str | PromptSet) -> PromptSet:
        """A prompt set by id or ``MODEL/TASK@ALIAS`` (``@latest``, ``@vN``)."""
        with read_session(self._engine) as session:
            return self._set_entities(session, [self._resolve_set(session, ref)])[0]

    def _read_target(self, session: Session, model: str | None, task: str | None, alias: str | None, version: int | None, set: int | str | PromptSet | None) -> PromptSetRow:
        if set is not None:
            if alias is not None or version is not None:
                raise InvalidArgumentError("give either set= or alias=/version=, not both")
            return self._resolve_set(session, set, model=model, task=task)
        if model is None or task is None:
            raise UnknownSetError("say which prompts: model= and task= (with alias= or version=), or set=")
        if alias is not None and version is not None:
            raise InvalidArgumentError("give either alias= or version=, not both")
        return self._select_set(session, model, task, f"v{version}" if version is not None else (alias or LATEST))

    @staticmethod
    def _check_fingerprint(session: Session, row: PromptSetRow, fingerprint: str | None) -> None:
        if fingerprint is None:
            return
        model = session.get_one(BaseModelRow, row.model_id)
        if model.fingerprint != fingerprint:
            raise ModelMismatchError(
                f"prompt set {row.id} was made for model {model.name!r} with fingerprint "
                f"{model.fingerprint[:12]}, but the caller's model has {fingerprint[:12]}: these prompts "
                "are meaningless on other weights; migrate them to the new model"
            )

    def get_prompt(
        self, user: str, model: str | None = None, task: str | None = None, *, alias: str | None = None,
        version: int | None = None, set: int | str | PromptSet | None = None, fingerprint: str | None = None,
        verify: bool = True,
    ) -> Any:
        """One user's prompt as a ``torch.Tensor`` of shape ``(prompt_len, width)``.

        Pick the version with ``alias`` (default ``latest``), ``version`` or ``set``. Pass the
        serving model's ``fingerprint`` to refuse prompts made for other weights
        (``ModelMismatchError``). ``verify`` checks the row's sha256 (``ChecksumError``).
        """
        return self.get_prompts([user], model, task, alias=alias, version=version, set=set, fingerprint=fingerprint, verify=verify)[0]

    def get_prompts(
        self, users: Sequence[str], model: str | None = None, task: str | None = None, *, alias: str | None = None,
        version: int | None = None, set: int | str | PromptSet | None = None, fingerprint: str | None = None,
        verify: bool = True,
    ) -> Any:
        """Prompts of many users, ordered as asked: ``torch.Tensor`` ``(len(users), prompt_len, width)``."""
        import torch

        users = list(map(str, users))
        with read_session(self._engine) as session:
            row = self._read_target(session, model, task, alias, version, set)
            self._check_fingerprint(session, row, fingerprint)
            _, data = self._read_users(session, row, users, verify)
        return torch.from_numpy(data)

    def migrate(self, sources: Sequence[str | int], target: str, task: str, data: str | os.PathLike[str], **kwargs: Any) -> Any:
        """Migrate the prompts of ``sources`` (model names or set references) to ``target`` with PUMA.

        Keyword arguments: ``config`` (``MigrationConfig``: epochs, lrs, selection, refine, ...),
        ``device``, ``alias``, ``gate`` (max allowed metric loss vs the reference before the alias
        is refused), ``evaluate``, ``resume``, ``progress``. Returns a ``MigrationResult``.
        """
        from .migration.migrate import migrate

        return migrate(self, sources, target, task, data, **kwargs)

    def apply_adapter(self, adapter_id: int, **kwargs: Any) -> PromptSet:
        """Map prompts through a stored adapter without training (``sources``, ``users``, ``alias``)."""
        from .migration.migrate import apply_adapter

        return apply_adapter(self, adapter_id, **kwargs)

    def list_set_users(self, ref: int | str | PromptSet) -> list[str]:
        """Every user with a prompt in this version (through its incremental bases), sorted."""
        with read_session(self._engine) as session:
            return sorted(self._manifest(session, self._resolve_set(session, ref), None).users)

    def export_prompts(self, ref: int | str | PromptSet, path: str | os.PathLike[str], *, verify: bool = True) -> ExportResult:
        """Write every user's prompt of a version to ``.safetensors`` or ``.npy`` (+ ``.users.csv``)."""
        path = Path(path)
        with read_session(self._engine) as session:
            row = self._resolve_set(session, ref)
            users, array = self._read_users(session, row, None, verify)
            model_row = session.get_one(BaseModelRow, row.model_id)
            task_row = session.get_one(TaskRow, row.task_id)
        meta = {
            "set_id": str(row.id), "model": model_row.name, "model_fingerprint": model_row.fingerprint,
            "task": task_row.name, "version": str(row.version), "sha256": row.sha256,
        }
        fmt, users_path = fileio.save_prompt_file(path, array, users, meta)
        return ExportResult(row.id, str(path), str(users_path) if users_path else None, fmt, len(users), int(array.nbytes))

    def list_sets(self, *, model: str | None = None, task: str | None = None, tag: str | None = None, alias: str | None = None, include_deleted: bool = False) -> list[PromptSet]:
        """Prompt sets, newest first, filtered by model, task, tag name and alias name."""
        with read_session(self._engine) as session:
            stmt = select(PromptSetRow).order_by(PromptSetRow.id.desc())
            if model is not None:
                stmt = stmt.where(PromptSetRow.model_id == self._model_row(session, model).id)
            if task is not None:
                stmt = stmt.where(PromptSetRow.task_id == self._task_row(session, task).id)
            if tag is not None:
                stmt = stmt.where(PromptSetRow.id.in_(select(TagRow.set_id).where(TagRow.name == tag)))
            if alias is not None:
                stmt = stmt.where(PromptSetRow.id.in_(select(AliasRow.set_id).where(AliasRow.name == alias)))
            if not include_deleted:
                stmt = stmt.where(PromptSetRow.status == "committed")
            return self._set_entities(session, session.scalars(stmt).all())

    # ------------------------------------------------------------------ aliases and tags
    def _move_alias(self, session: Session, name: str, row: PromptSetRow, reason: str | None) -> AliasRow:
        if not _ALIAS_RE.match(name) or name == LATEST or _VERSION_RE.match(name):
            raise InvalidArgumentError(
                f"invalid alias name {name!r}: start with a letter, use letters, digits, . _ -; "
                "`latest` and `vN` are reserved"
            )
        alias, old = self._lock_or_create_alias(session, name, row)
        if old == row.id:
            return alias  # already there: no event
        if old is not None:
            alias.set_id, alias.updated_at, alias.updated_by = row.id, _utcnow(), self.actor
        session.add(AliasEventRow(name=name, model_id=row.model_id, task_id=row.task_id, old_set_id=old, new_set_id=row.id, at=_utcnow(), actor=self.actor, reason=reason))
        self._audit(session, "set_alias", "alias", name, {"model_id": row.model_id, "task_id": row.task_id, "old_set_id": old, "new_set_id": row.id}, reason)
        session.flush()
        return alias

    def _lock_or_create_alias(self, session: Session, name: str, row: PromptSetRow) -> tuple[AliasRow, int | None]:
        """The alias row of ``name`` for the set's model and task, locked for this transaction,
        and the set it pointed at before (``None``: created now, pointing at ``row``).

        Creation is an ``INSERT ... ON CONFLICT DO NOTHING``: of two transactions creating the
        same new alias, the second waits for the first and then moves the alias it created,
        instead of failing on the unique key (Postgres; SQLite serialises writers anyway).
        """
        values = {"name": name, "model_id": row.model_id, "task_id": row.task_id, "set_id": row.id,
                  "updated_at": _utcnow(), "updated_by": self.actor}
        insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        stmt = (insert(AliasRow).values(values).on_conflict_do_nothing(index_elements=["name", "model_id", "task_id"])
                .returning(AliasRow.id))
        locked = select(AliasRow).where(AliasRow.name == name, AliasRow.model_id == row.model_id,
                                        AliasRow.task_id == row.task_id).with_for_update()
        for _ in range(3):  # the conflicting row can vanish again (a concurrent delete_alias)
            created = session.execute(stmt).scalar_one_or_none()
            if created is not None:
                return session.get_one(AliasRow, created), None
            alias = session.scalars(locked).one_or_none()
            if alias is not None:
                return alias, alias.set_id
        raise ConflictError(f"alias {name!r} is being created and deleted concurrently; retry")

    def _alias_entity(self, session: Session, row: AliasRow) -> Alias:
        return Alias(
            name=row.name, model=session.get_one(BaseModelRow, row.model_id).name,
            task=session.get_one(TaskRow, row.task_id).name, set_id=row.set_id,
            updated_at=_aware(row.updated_at), updated_by=row.updated_by,  # type: ignore[arg-type]
        )

    def set_alias(self, name: str, ref: int | str | PromptSet, *, reason: str | None = None) -> Alias:
        """Point alias ``name`` of the set's model and task at that set (history is kept)."""
        with write_session(self._engine) as session:
            row = self._resolve_set(session, ref)
            return self._alias_entity(session, self._move_alias(session, name, row, reason))

    def get_alias(self, name: str, model: str, task: str) -> Alias:
        """Where alias ``name`` of ``model``/``task`` points (``UnknownAliasError`` if unset)."""
        with read_session(self._engine) as session:
            row = self._alias_row(session, name, model, task)
            return self._alias_entity(session, row)

    def _alias_row(self, session: Session, name: str, model: str, task: str, *, lock: bool = False) -> AliasRow:
        model_row, task_row = self._model_row(session, model), self._task_row(session, task)
        stmt = select(AliasRow).where(AliasRow.name == name, AliasRow.model_id == model_row.id, AliasRow.task_id == task_row.id)
        row = session.scalars(stmt.with_for_update() if lock else stmt).one_or_none()
        if row is None:
            raise UnknownAliasError(f"no alias {name!r} for {model}/{task}; see `prompt-registry alias list`")
        return row

    def delete_alias(self, name: str, model: str, task: str, *, reason: str | None = None) -> None:
        """Remove an alias (its history stays, ending with a deletion event)."""
        with write_session(self._engine) as session:
            row = self._alias_row(session, name, model, task, lock=True)
            session.add(AliasEventRow(name=name, model_id=row.model_id, task_id=row.task_id, old_set_id=row.set_id, new_set_id=None, at=_utcnow(), actor=self.actor, reason=reason))
            self._audit(session, "delete_alias", "alias", name, {"model": model, "task": task, "old_set_id": row.set_id}, reason)
            session.delete(row)

    def list_aliases(self, *, model: str | None = None, task: str | None = None) -> list[Alias]:
        """Current aliases, optionally of one model and/or task."""
        with read_session(self._engine) as session:
            stmt = select(AliasRow).order_by(AliasRow.name, AliasRow.model_id, AliasRow.task_id)
            if model is not None:
                stmt = stmt.where(AliasRow.model_id == self._model_row(session, model).id)
            if task is not None:
                stmt = stmt.where(AliasRow.task_id == self._task_row(session, task).id)
            return [self._alias_entity(session, r) for r in session.scalars(stmt)]

    def alias_history(self, name: str, *, model: str | None = None, task: str | None = None) -> list[AliasEvent]:
        """Every move of alias ``name`` (optionally of one model/task), oldest first."""
        with read_session(self._engine) as session:
            stmt = select(AliasEventRow).where(AliasEventRow.name == name).order_by(AliasEventRow.id)
            if model is not None:
                stmt = stmt.where(AliasEventRow.model_id == self._model_row(session, model).id)
            if task is not None:
                stmt = stmt.where(AliasEventRow.task_id == self._task_row(session, task).id)
            rows = session.scalars(stmt).all()
            if not rows:
                raise UnknownAliasError(f"alias {name!r} has never been set; see `prompt-registry alias list`")
            models = dict(session.execute(select(BaseModelRow.id, BaseModelRow.name)).all())
            tasks = dict(session.execute(select(TaskRow.id, TaskRow.name)).all())
            return [
                AliasEvent(r.id, r.name, models[r.model_id], tasks[r.task_id], r.old_set_id, r.new_set_id, _aware(r.at), r.actor, r.reason)  # type: ignore[arg-type]
                for r in rows
            ]

    def tag(self, ref: int | str | PromptSet, name: str, value: str | None = None) -> PromptSet:
        """Attach (or update) tag ``name`` on a set. Tags are mutable labels; versions are not."""
        with write_session(self._engine) as session:
            row = self._resolve_set(session, ref)
            existing = session.get(TagRow, (row.id, name))
            if existing is None:
                session.add(TagRow(set_id=row.id, name=name, value=value, created_at=_utcnow(), created_by=self.actor))
            else:
                existing.value = value
            self._audit(session, "tag", "prompt_set", row.id, {"tag": name, "value": value})
            session.flush()
            return self._set_entities(session, [row])[0]

    def untag(self, ref: int | str | PromptSet, name: str) -> PromptSet:
        """Remove tag ``name`` from a set (a no-op if absent)."""
        with write_session(self._engine) as session:
            row = self._resolve_set(session, ref)
            session.execute(delete(TagRow).where(TagRow.set_id == row.id, TagRow.name == name))
            self._audit(session, "untag", "prompt_set", row.id, {"tag": name})
            return self._set_entities(session, [row])[0]

    # ------------------------------------------------------------------ artifacts (adapters, heads)
    def put_artifact(
        self, kind: str, name: str, tensors: Mapping[str, Any], *, task: str, target_model: str,
        source_models: Sequence[str] = (), config: Mapping[str, Any] | None = None, run_id: int | None = None,
    ) -> Artifact:
        """Store an adapter or task head (safetensors) bound to model fingerprints; a new version of ``name``."""
        import torch
        from safetensors.torch import save as save_safetensors

        if kind not in ("adapter", "head"):
            raise InvalidArgumentError(f"unknown artifact kind {kind!r}; use 'adapter' or 'head'")
        if kind == "adapter" and not source_models:
            raise InvalidArgumentError("an adapter needs at least one source model")
        with read_session(self._engine) as session:
            target = self._model_row(session, target_model)
            sources = [self._model_row(session, m) for m in source_models]
            self._task_row(session, task)
        meta = {"kind": kind, "name": name, "task": task, "target_fingerprint": target.fingerprint,
                "source_fingerprints": json.dumps([s.fingerprint for s in sources]), "config": json.dumps(dict(config or {}))}
        payload = {k: (v if isinstance(v, torch.Tensor) else torch.from_numpy(np.asarray(v))).detach().cpu().contiguous() for k, v in tensors.items()}
        data = save_safetensors(payload, metadata=meta)
        store_key = keys.new_key(self.catalog_id, "artifact")
        self._store.put_blob(store_key, data)
        try:
            with write_session(self._engine) as session:
                target = self._model_row(session, target_model, lock=True)
                task_row = self._task_row(session, task)
                version = (session.scalar(select(func.max(ArtifactRow.version)).where(ArtifactRow.kind == kind, ArtifactRow.name == name)) or 0) + 1
                row = ArtifactRow(
                    kind=kind, name=name, version=version, task_id=task_row.id, target_model_id=target.id,
                    target_fingerprint=target.fingerprint, source_fingerprints=[s.fingerprint for s in sources],
                    config=dict(config or {}), store_key=store_key, sha256=hashlib.sha256(data).hexdigest(),
                    nbytes=len(data), run_id=run_id, created_at=_utcnow(), created_by=self.actor,
                )
                session.add(row)
                session.flush()
                self._check_bytes_present(store_key)
                for pos, src in enumerate(sources):
                    session.add(ArtifactSourceRow(artifact_id=row.id, position=pos, model_id=src.id))
                self._audit(session, "put_artifact", kind, row.id, {"name": name, "version": version, "sha256": row.sha256})
                session.flush()
                return self._artifact_entity(session, row)
        except BaseException:
            self._store.delete(store_key)
            raise

    def _artifact_entity(self, session: Session, row: ArtifactRow) -> Artifact:
        sources = session.scalars(
            select(BaseModelRow.name).join(ArtifactSourceRow, ArtifactSourceRow.model_id == BaseModelRow.id)
            .where(ArtifactSourceRow.artifact_id == row.id).order_by(ArtifactSourceRow.position)
        ).all()
        return Artifact(
            id=row.id, kind=row.kind, name=row.name, version=row.version,
            task=session.get_one(TaskRow, row.task_id).name,
            target_model=session.get_one(BaseModelRow, row.target_model_id).name,
            target_fingerprint=row.target_fingerprint, source_models=tuple(sources),
            source_fingerprints=tuple(row.source_fingerprints), config=dict(row.config),
            store_key=row.store_key, sha256=row.sha256, nbytes=row.nbytes, run_id=row.run_id,
            created_at=_aware(row.created_at), created_by=row.created_by,  # type: ignore[arg-type]
        )

    def get_artifact(self, artifact_id: int) -> Artifact:
        """An adapter or head by id (``UnknownArtifactError`` if none)."""
        with read_session(self._engine) as session:
            row = session.get(ArtifactRow, int(artifact_id))
            if row is None:
                raise UnknownArtifactError(f"no artifact with id {artifact_id}; see `prompt-registry adapter list`")
            return self._artifact_entity(session, row)

    def list_artifacts(self, *, kind: str | None = None, task: str | None = None, target_model: str | None = None) -> list[Artifact]:
        """Adapters and heads, newest first, optionally filtered."""
        with read_session(self._engine) as session:
            stmt = select(ArtifactRow).order_by(ArtifactRow.id.desc())
            if kind is not None:
                stmt = stmt.where(ArtifactRow.kind == kind)
            if task is not None:
                stmt = stmt.where(ArtifactRow.task_id == self._task_row(session, task).id)
            if target_model is not None:
                stmt = stmt.where(ArtifactRow.target_model_id == self._model_row(session, target_model).id)
            return [self._artifact_entity(session, r) for r in session.scalars(stmt)]

    def load_artifact(self, artifact_id: int, *, fingerprint: str | None = None, source_fingerprints: Sequence[str] | None = None) -> tuple[Artifact, dict[str, Any]]:
        """The artifact and its tensors (``torch``), checksum-verified.

        ``fingerprint``/``source_fingerprints``: the models the caller will use it with; a
        mismatch raises ``ModelMismatchError``.
        """
        from safetensors.torch import load as load_safetensors

        artifact = self.get_artifact(artifact_id)
        if fingerprint is not None and fingerprint != artifact.target_fingerprint:
            raise ModelMismatchError(
                f"{artifact.kind} {artifact.id} ({artifact.name} v{artifact.version}) was trained for target "
                f"model {artifact.target_model!r} ({artifact.target_fingerprint[:12]}), not for a model with "
                f"fingerprint {fingerprint[:12]}; train a new one for that model"
            )
        if source_fingerprints is not None and list(source_fingerprints) != list(artifact.source_fingerprints):
            raise ModelMismatchError(
                f"{artifact.kind} {artifact.id} maps from {list(artifact.source_models)}; the given source models "
                "have other fingerprints (or order)"
            )
        data = self._store.get_blob(artifact.store_key)
        if hashlib.sha256(data).hexdigest() != artifact.sha256:
            raise ChecksumError(
                f"{artifact.kind} {artifact.id} blob {artifact.store_key!r} fails its sha256 check; "
                "restore it from backup or retrain it"
            )
        return artifact, load_safetensors(data)

    # ------------------------------------------------------------------ evaluations
    def record_evaluation(
        self, ref: int | str | PromptSet, *, dataset: str, split: str, metrics: Mapping[str, Any],
        per_user: Mapping[str, Mapping[str, float]] | None = None, run_id: int | None = None,
    ) -> Evaluation:
        """Store an evaluation of a set: overall ``metrics`` and optional per-user metric values."""
        per_user = per_user or {}
        with write_session(self._engine) as session:
            row = self._resolve_set(session, ref)
            if run_id is not None:
                self._run_row(session, run_id)
            ids = self._user_ids(session, list(per_user), active_only=True)
            unknown = [u for u in per_user if u not in ids]
            if unknown:
                raise UnknownUserError(f"per-user metrics name unregistered user(s): {_preview(unknown)}")
            evaluation = EvaluationRow(
                set_id=row.id, run_id=run_id, dataset=dataset, split=split,
                metrics=json.loads(json.dumps(dict(metrics), default=float)), created_at=_utcnow(), created_by=self.actor,
            )
            session.add(evaluation)
            session.flush()
            values = [
                {"evaluation_id": evaluation.id, "user_id": ids[user], "metric": metric, "value": float(value)}
                for user, user_metrics in per_user.items() for metric, value in user_metrics.items()
            ]
            if values:
                session.execute(UserMetricRow.__table__.insert(), values)
            self._audit(session, "record_evaluation", "evaluation", evaluation.id, {"set_id": row.id, "split": split, "metrics": evaluation.metrics})
            return self._evaluation_entity(session, evaluation, with_users=False)

    @staticmethod
    def _evaluation_entity(session: Session, row: EvaluationRow, *, with_users: bool) -> Evaluation:
        per_user: dict[str, dict[str, float]] | None = None
        if with_users:
            per_user = {}
            for ext, metric, value in session.execute(
                select(UserRow.external_id, UserMetricRow.metric, UserMetricRow.value)
                .join(UserRow, UserRow.id == UserMetricRow.user_id).where(UserMetricRow.evaluation_id == row.id)
            ):
                per_user.setdefault(ext, {})[metric] = value
        return Evaluation(row.id, row.set_id, row.run_id, row.dataset, row.split, dict(row.metrics),
                          _aware(row.created_at), row.created_by, per_user)  # type: ignore[arg-type]

    def get_evaluation(self, evaluation_id: int, *, per_user: bool = True) -> Evaluation:
        """An evaluation with (by default) its per-user metrics."""
        with read_session(self._engine) as session:
            row = session.get(EvaluationRow, int(evaluation_id))
            if row is None:
                raise NotFoundError(f"no evaluation with id {evaluation_id}")
            return self._evaluation_entity(session, row, with_users=per_user)

    def list_evaluations(self, ref: int | str | PromptSet | None = None, *, split: str | None = None) -> list[Evaluation]:
        """Evaluations (newest first), optionally of one set and/or split; without per-user values."""
        with read_session(self._engine) as session:
            stmt = select(EvaluationRow).order_by(EvaluationRow.id.desc())
            if ref is not None:
                stmt = stmt.where(EvaluationRow.set_id == self._resolve_set(session, ref).id)
            if split is not None:
                stmt = stmt.where(EvaluationRow.split == split)
            return [self._evaluation_entity(session, r, with_users=False) for r in session.scalars(stmt)]

    # ------------------------------------------------------------------ runs and audit log
    @staticmethod
    def _run_row(session: Session, run_id: int) -> RunRow:
        row = session.get(RunRow, int(run_id))
        if row is None:
            raise UnknownRunError(f"no run with id {run_id}; see `prompt-registry audit runs`")
        return row

    def _artifact_for(self, session: Session, artifact_id: int, kind: str, model_row: BaseModelRow) -> ArtifactRow:
        row = session.get(ArtifactRow, int(artifact_id))
        if row is None or row.kind != kind:
            raise UnknownArtifactError(f"no {kind} with id {artifact_id}; see `prompt-registry adapter list`")
        if row.target_fingerprint != model_row.fingerprint:
            raise ModelMismatchError(
                f"{kind} {artifact_id} was made for model fingerprint {row.target_fingerprint[:12]}, "
                f"not for {model_row.name!r} ({model_row.fingerprint[:12]})"
            )
        return row

    def start_run(self, kind: str, *, model: str | None = None, task: str | None = None,
                  config: Mapping[str, Any] | None = None, seeds: Mapping[str, Any] | None = None) -> Run:
        """Record the start of a run (training, migration, evaluation, ...) with its full config.

        The run records this process (host, pid) and beats while it is open, so that a run whose
        process dies is recognised as stale. Starting a run closes, as ``failed``, the stale runs
        of the same kind, model and task (a rerun after a crash).
        """
        me = liveness.current()
        with write_session(self._engine) as session:
            model_id = self._model_row(session, model).id if model else None
            task_id = self._task_row(session, task).id if task else None
            now = _utcnow()
            earlier = session.scalars(select(RunRow).where(RunRow.status == "running", RunRow.kind == kind,
                                                           RunRow.model_id == model_id, RunRow.task_id == task_id)).all()
            self._close_stale_runs(session, earlier, now, me, liveness.STALE_AFTER_SECONDS, reason=f"a new {kind} run started")
            row = RunRow(
                kind=kind, status="running", model_id=model_id, task_id=task_id,
                config=json.loads(json.dumps(dict(config or {}), default=str)),
                seeds=dict(seeds or {}), started_at=now, actor=self.actor, cost={},
                host=me.host, pid=me.pid, process_token=me.token, heartbeat_at=now,
            )
            session.add(row)
            session.flush()
            self._audit(session, "start_run", "run", row.id, {"kind": kind, "host": me.host, "pid": me.pid})
            entity = self._run_entity(session, row)
        self._heartbeat.add(entity.id)
        return entity

    def _close_stale_runs(self, session: Session, runs: Sequence[RunRow], now: dt.datetime, me: liveness.ProcessIdentity,
                          stale_after: float, *, reason: str, dry_run: bool = False) -> list[int]:
        """Mark the stale ones of ``runs`` (status ``running``) failed; returns their ids."""
        closed = []
        for run in runs:
            why = liveness.stale_reason(run, now, stale_after, me)
            if why is None:
                continue
            closed.append(run.id)
            if not dry_run:
                run.status, run.finished_at = "failed", now
                run.error = f"stale: {why}; closed when {reason}"
                self._audit(session, "close_stale_run", "run", run.id, {"why": why, "closed_by": reason})
        return closed

    def finish_run(self, run_id: int, *, status: str = "succeeded", ledger: CostLedger | None = None,
                   error: str | None = None, results: Mapping[str, Any] | None = None) -> Run:
        """Close a run with its status, cost ledger, and results (stored in ``cost['results']``)."""
        if status not in ("succeeded", "failed"):
            raise InvalidArgumentError(f"a run finishes as 'succeeded' or 'failed', not {status!r}")
        self._heartbeat.discard(int(run_id))
        with write_session(self._engine) as session:
            row = self._run_row(session, run_id)
            if row.status != "running":
                raise ConflictError(f"run {run_id} already finished ({row.status})")
            row.status, row.finished_at, row.error = status, _utcnow(), error
            if ledger is not None:
                row.wall_seconds, row.device = ledger.wall_seconds, ledger.device
                row.examples_seen, row.forward_tokens, row.backward_tokens = ledger.examples_seen, ledger.forward_tokens, ledger.backward_tokens
            cost = dict(ledger.extra) if ledger is not None else {}
            if results is not None:
                cost["results"] = json.loads(json.dumps(dict(results), default=str))
            row.cost = cost
            self._audit(session, "finish_run", "run", row.id, {"status": status})
            session.flush()
            return self._run_entity(session, row)

    def get_run(self, run_id: int) -> Run:
        """A run (import, training, migration, ...) with its config and cost ledger."""
        with read_session(self._engine) as session:
            return self._run_entity(session, self._run_row(session, run_id))

    @staticmethod
    def _run_entity(session: Session, r: RunRow) -> Run:
        model = session.get_one(BaseModelRow, r.model_id).name if r.model_id else None
        task = session.get_one(TaskRow, r.task_id).name if r.task_id else None
        return Run(
            r.id, r.kind, r.status, model, task, dict(r.config), dict(r.seeds), _aware(r.started_at),  # type: ignore[arg-type]
            _aware(r.finished_at), r.wall_seconds, r.device, r.examples_seen, r.forward_tokens,
            r.backward_tokens, dict(r.cost), r.actor, r.error,
        )

    def list_runs(self, *, kind: str | None = None, limit: int = 100) -> list[Run]:
        """Runs, newest first, optionally of one kind."""
        with read_session(self._engine) as session:
            stmt = select(RunRow).order_by(RunRow.id.desc()).limit(limit)
            if kind is not None:
                stmt = stmt.where(RunRow.kind == kind)
            return [self._run_entity(session, r) for r in session.scalars(stmt)]

    def audit_events(self, *, object_kind: str | None = None, object_id: str | None = None, limit: int = 100) -> list[AuditEvent]:
        """The append-only audit log, newest first."""
        with read_session(self._engine) as session:
            stmt = select(AuditEventRow).order_by(AuditEventRow.id.desc()).limit(limit)
            if object_kind is not None:
                stmt = stmt.where(AuditEventRow.object_kind == object_kind)
            if object_id is not None:
                stmt = stmt.where(AuditEventRow.object_id == str(object_id))
            return [AuditEvent(r.id, _aware(r.at), r.actor, r.action, r.object_kind, r.object_id, r.reason, dict(r.details)) for r in session.scalars(stmt)]  # type: ignore[arg-type]

    # ------------------------------------------------------------------ doctor and gc
    def _unreferenced(self, session: Session) -> tuple[list[StoredObject], list[StoredObject]]:
        """Store objects no catalogue row refers to: (this catalogue's orphans, foreign objects).

        Only a key that names this catalogue (``store.keys``) is provably an orphan of ours;
        anything else unreferenced (keys of the format before revision 0006, an operator's files,
        another registry's objects) is foreign and is never deleted.
        """
        referenced = _referenced_keys(session)
        loose = [o for o in self._store.list_objects() if o.key not in referenced]
        return [o for o in loose if keys.owner(o.key) == self.catalog_id], [o for o in loose if keys.owner(o.key) != self.catalog_id]

    def _running_runs(self, session: Session) -> Sequence[RunRow]:
        return session.scalars(select(RunRow).where(RunRow.status == "running").order_by(RunRow.id)).all()

    def doctor(self, *, checksums: bool = True, stale_after_seconds: float = liveness.STALE_AFTER_SECONDS) -> DoctorReport:
        """Check schema, catalogue vs store consistency, (by default) every row checksum, and
        runs left ``running`` by a process that died (see ``liveness``). Objects in the store that
        this catalogue did not write are listed in ``foreign``, not counted as problems."""
        problems: list[Problem] = []
        revision = migrations.current_revision(self._engine)
        try:
            migrations.check_schema(self._engine, self.where)
        except SchemaError as exc:
            problems.append(Problem("schema", self.where, str(exc), f"run `{migrations.UPGRADE_COMMAND}`"))
            return DoctorReport(revision, 0, 0, 0, tuple(problems))
        rows_checked = 0
        with read_session(self._engine) as session:
            sets = session.scalars(select(PromptSetRow).where(PromptSetRow.status == "committed").order_by(PromptSetRow.id)).all()
            artifacts = session.scalars(select(ArtifactRow).order_by(ArtifactRow.id)).all()
            orphans, foreign = self._unreferenced(session)
            for row in sets:
                rows_checked += self._check_set(session, row, checksums, problems)
            now, me = _utcnow(), liveness.current()
            for run in self._running_runs(session):
                why = liveness.stale_reason(run, now, stale_after_seconds, me)
                if why is not None:
                    problems.append(Problem("stale-run", f"run {run.id} ({run.kind})", f"is still 'running' but {why}",
                                            "run `prompt-registry gc` to close it as failed (a rerun of the operation closes it too)"))
        for art in artifacts:
            try:
                data = self._store.get_blob(art.store_key)
            except IntegrityError as exc:
                problems.append(Problem("missing", f"{art.kind} {art.id}", str(exc), "restore the blob from backup or retrain the artifact"))
                continue
            if hashlib.sha256(data).hexdigest() != art.sha256:
                problems.append(Problem("checksum", f"{art.kind} {art.id}", f"blob {art.store_key} fails its sha256 check", "restore it from backup or retrain it"))
        if orphans:
            problems.append(Problem(
                "orphan", f"{len(orphans)} store object(s)",
                f"bytes this catalogue wrote that no row refers to (e.g. an interrupted write): {_preview([o.key for o in orphans], 3)}",
                "run `prompt-registry gc --dry-run`, then `prompt-registry gc`",
            ))
        return DoctorReport(revision, len(sets), rows_checked, len(artifacts), tuple(problems), tuple(o.key for o in foreign))

    def _check_set(self, session: Session, row: PromptSetRow, checksums: bool, problems: list[Problem]) -> int:
        what = f"set {row.id}"
        n_rows = session.scalar(select(func.count()).select_from(PromptRowRow).where(PromptRowRow.set_id == row.id)) or 0
        n_rows += deletion.purged_count(session, row.id)  # purged rows stay in the array, as zeros
        if n_rows != row.n_rows:
            problems.append(Problem("catalogue", what, f"has {n_rows} prompt rows, expected {row.n_rows}", "restore the catalogue from backup"))
        if row.store_key is None:
            return 0
        try:
            info = self._store.array_info(row.store_key)
        except IntegrityError as exc:
            problems.append(Problem("missing", what, str(exc), "restore the store from backup, or re-import this set"))
            return 0
        expected = (row.n_rows, row.prompt_len, row.width)
        if info.shape != expected or info.dtype != row.dtype:
            problems.append(Problem("shape", what, f"array is {info.shape} {info.dtype}, catalogue says {expected} {row.dtype}", "restore the store from backup"))
            return 0
        if not checksums:
            return 0
        users = dict(session.execute(select(PromptRowRow.row_index, UserRow.external_id).join(UserRow, UserRow.id == PromptRowRow.user_id).where(PromptRowRow.set_id == row.id)).all())
        digests = deletion.expected_digests(session, row.id, info.row_nbytes)  # purged rows: the digest of zeros
        bad: list[str] = []
        for start in range(0, row.n_rows, WRITE_BATCH_ROWS):
            stop = min(start + WRITE_BATCH_ROWS, row.n_rows)
            try:
                data = self._store.read_rows(row.store_key, slice(start, stop))
            except IntegrityError as exc:
                problems.append(Problem("missing", what, str(exc), "restore the store from backup, or re-import this set"))
                return start
            for i, digest in enumerate(row_digests(data), start=start):
                if digests.get(i) != digest:
                    bad.append(users.get(i, f"row {i}"))
        if bad:
            problems.append(Problem(
                "checksum", what, f"{len(bad)} row(s) fail their sha256 check (users {_preview(bad)})",
                "restore the store from backup, or re-import the set (a new version) and move aliases to it",
            ))
        return row.n_rows

    def gc(self, *, dry_run: bool = False, grace_seconds: float = DEFAULT_GC_GRACE_SECONDS,
           keep_last: int | None = None, older_than_days: float | None = None,
           stale_after_seconds: float = liveness.STALE_AFTER_SECONDS) -> GcReport:
        """Remove the prompt sets retention no longer needs (with ``keep_last``/``older_than_days``),
        then store objects this catalogue wrote and no row refers to (bytes of interrupted writes),
        and close stale runs (left ``running`` by a process that died) as ``failed``.

        Retention, per model and task, keeps the newest ``keep_last`` versions (at least 1; 1 if
        only ``older_than_days`` is given), sets younger than ``older_than_days``, sets an alias
        points at, and every set a kept one needs through lineage (bases and sources). The others
        are marked ``deleted`` (their history stays; reads fail) and their bytes removed; their
        ids are ``removed_sets``. Orphans younger than ``grace_seconds`` are kept: they may belong
        to a write in flight. Objects whose key does not name this catalogue are never deleted
        (``foreign``). ``dry_run`` lists what would go. ``ConflictError`` for ``keep_last < 1``.
        """
        now = _utcnow()
        policy = retention.RetentionPolicy.from_options(keep_last, older_than_days)
        sets: list[retention.DoomedSet] = []
        if policy is not None and dry_run:
            with read_session(self._engine) as session:
                sets = retention.plan(session, policy, now)
        elif policy is not None:
            with write_session(self._engine) as session:
                sets = retention.apply(session, policy, now)
                for d in sets:
                    self._audit(session, "retention_delete", "prompt_set", d.set_id, {
                        "version": d.version, "store_key": d.store_key, "keep_last": policy.keep_last, "older_than_days": policy.older_than_days})
            self._forget_cached_reads()
        objects = {o.key: o for o in self._store.list_objects()}
        set_bytes = [objects[d.store_key] for d in sets if d.store_key in objects]
        if not dry_run:
            for obj in set_bytes:  # unreferenced since the commit; not subject to the grace period
                self._store.delete(obj.key)
        with read_session(self._engine) as session:
            orphans, foreign = self._unreferenced(session)
        young = tuple(o.key for o in orphans if (now - o.modified_at).total_seconds() < grace_seconds)
        doomed = [o for o in orphans if o.key not in young]
        if not dry_run and doomed:
            # re-check under a write transaction: a writer may have committed since the listing
            with write_session(self._engine) as session:
                referenced = _referenced_keys(session)
                doomed = [o for o in doomed if o.key not in referenced]
                for obj in doomed:
                    self._store.delete(obj.key)
                self._audit(session, "gc", "store", self._store.location, {"removed": [o.key for o in doomed], "nbytes": sum(o.nbytes for o in doomed)})
        session_of = read_session if dry_run else write_session
        with session_of(self._engine) as session:
            closed = self._close_stale_runs(session, self._running_runs(session), now, liveness.current(), stale_after_seconds,
                                            reason="gc ran", dry_run=dry_run)
        removed = set_bytes + doomed
        return GcReport(dry_run, tuple(o.key for o in removed), sum(o.nbytes for o in removed), young, tuple(d.set_id for d in sets),
                        tuple(o.key for o in foreign), tuple(closed))
