"""Catalogue lookups: rows by name or reference, with errors that say how to fix the input.

Functions of an open ``Session``; the services (``core/``) own the sessions and transactions.
Statements of the read path are built once (building a ``select()`` per call cost more than
running it: ~0.3 ms of a ~2.5 ms single-prompt read on Postgres).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .. import validation
from .._util import QUERY_BATCH, batched, echo, utcnow, word
from ..entities import PromptSet
from ..errors import (
    ConflictError,
    ModelMismatchError,
    UnknownAliasError,
    UnknownArtifactError,
    UnknownModelError,
    UnknownRunError,
    UnknownSetError,
    UnknownTaskError,
    UnknownUserError,
)
from ..names import LATEST, VERSION_RE
from .schema import AliasRow, ArtifactRow, BaseModelRow, PromptRowRow, PromptSetRow, RunRow, TaskRow, UserRow

PairIds = dict[tuple[str, str], tuple[int, int]]  # (model name, task name) -> ids, cached by the caller


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
USER_RECORDS = _SET_RECORDS.where(UserRow.external_id.in_(bindparam("users", expanding=True)))


_SET_BY_KEY = select(PromptSetRow).where(PromptSetRow.idempotency_key == bindparam("key"))


def set_by_key(session: Session, key: str) -> PromptSetRow | None:
    """The set written under idempotency ``key`` (committed, deleted or a pending sharded write), if any."""
    return session.scalars(_SET_BY_KEY, {"key": key}).one_or_none()


def set_records(session: Session, set_ids: Sequence[int]) -> Sequence[tuple[str, int, int, bytes]]:
    """Every ``(user, set id, row index, sha256)`` of ``set_ids``, fetched with the driver's cursor
    in the session's transaction: building SQLAlchemy rows cost more than the query (a
    100,000-user manifest, open to first 10,000-user batch read: 0.43-0.55 -> 0.24 s on SQLite,
    0.50 -> 0.30 s on Postgres)."""
    return _fetch_rows(session, "u.external_id, r.set_id, r.row_index, r.sha256", set_ids)


def window_records(session: Session, set_ids: Sequence[int], first: str, last: str) -> Sequence[tuple[str, int, int, bytes]]:
    """``set_records`` of the users from ``first`` to ``last`` (both included) in code point
    order, the order of Python's ``sorted``: SQLite compares text bytewise (UTF-8), Postgres is
    told ``COLLATE "C"`` (its default collation may order text otherwise)."""
    return _fetch_rows(session, "u.external_id, r.set_id, r.row_index, r.sha256", set_ids, (first, last))


def set_user_names(session: Session, set_ids: Sequence[int]) -> list[str]:
    """The users with a row in any of ``set_ids``, each once, unsorted: the names alone, without
    the row locations and digests a manifest resolves."""
    names = [row[0] for row in _fetch_rows(session, "u.external_id", set_ids)]
    return list(dict.fromkeys(names)) if len(set_ids) > 1 else names  # a user is in a version's chain more than once


def _fetch_rows(session: Session, columns: str, set_ids: Sequence[int], window: tuple[str, str] | None = None) -> Sequence[Any]:
    if not set_ids:
        return []
    ids = ", ".join(str(int(i)) for i in set_ids)  # integers from the catalogue, inlined
    sql = f"SELECT {columns} FROM prompt_rows r JOIN users u ON u.id = r.user_id WHERE r.set_id IN ({ids})"
    params: tuple[str, ...] = ()
    if window is not None:
        postgres = session.get_bind().dialect.name == "postgresql"
        column, mark = ('u.external_id COLLATE "C"', "%s") if postgres else ("u.external_id", "?")
        sql += f" AND {column} >= {mark} AND {column} <= {mark}"
        params = window
    dbapi = session.connection().connection.dbapi_connection
    assert dbapi is not None  # None only for a connection that was invalidated
    cursor = dbapi.cursor()
    try:
        cursor.execute(sql, params)
        return cursor.fetchall()
    finally:
        cursor.close()


def referenced_keys(session: Session) -> set[str]:
    """Every store key a catalogue row refers to (prompt sets, deleted ones included, and artifacts)."""
    keys = set(session.scalars(select(PromptSetRow.store_key).where(PromptSetRow.store_key.is_not(None))))
    keys |= set(session.scalars(select(ArtifactRow.store_key)))
    return keys  # type: ignore[return-value]  # the WHERE drops NULL keys: a filter the column's type cannot see


def user_row(session: Session, user: str) -> UserRow:
    row = session.scalars(select(UserRow).where(UserRow.external_id == str(user))).one_or_none()
    if row is None:
        raise UnknownUserError(f"no user {echo(user)}; see `prompt-registry user list --include-deleted`")
    return row


def audited_set(session: Session, pair_ids: PairIds, ref: int | str | PromptSet) -> PromptSetRow:
    """Like ``resolve_set``, but a numeric id may name a deleted set: audits cover history."""
    set_id = ref.id if isinstance(ref, PromptSet) else ref
    if isinstance(set_id, int) or validation.is_id_text(str(set_id).strip()):
        row = session.get(PromptSetRow, validation.as_id(set_id, "a set id"))
        if row is None or row.status == "pending":  # a sharded write in progress has no history yet
            raise UnknownSetError(f"no prompt set with id {set_id}; list them with `prompt-registry prompt list`")
        return row
    return resolve_set(session, pair_ids, ref)


def model_row(session: Session, name: str, *, lock: bool = False) -> BaseModelRow:
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
            f"unknown model {echo(name)} (registered: {', '.join(known) or 'none'}); "
            f"register it with `prompt-registry model add {word(name, 'NAME')} --path DIR`"
        )
    return row


def task_row(session: Session, name: str) -> TaskRow:
    row = session.scalars(select(TaskRow).where(TaskRow.name == name)).one_or_none()
    if row is None:
        known = session.scalars(select(TaskRow.name).order_by(TaskRow.name).limit(10)).all()
        raise UnknownTaskError(
            f"unknown task {echo(name)} (known: {', '.join(known) or 'none'}); "
            f"create it with `prompt-registry task add {word(name, 'NAME')} --kind rating|click`"
        )
    return row


def user_ids(session: Session, users: Sequence[str], *, active_only: bool = False) -> dict[str, int]:
    """external id -> internal id for the given users that exist (and, with ``active_only``,
    were not deleted: a purged user must not come back through an old data dump)."""
    if len(users) > 10 * QUERY_BATCH:
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
    for batch in batched(users):
        found.update(session.execute(stmt.where(UserRow.external_id.in_(batch))).all())
    return found


def insert_users(session: Session, users: Sequence[str]) -> None:
    if not users:
        return
    now = utcnow()
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    # ON CONFLICT DO NOTHING: a concurrent writer may create the same user first
    stmt = dialect.insert(UserRow).on_conflict_do_nothing(index_elements=["external_id"])
    for batch in batched(users, 10_000):
        session.execute(stmt, [{"external_id": u, "created_at": now} for u in batch])


def run_row(session: Session, run_id: int) -> RunRow:
    row = session.get(RunRow, validation.as_id(run_id, "a run id"))
    if row is None:
        raise UnknownRunError(f"no run with id {run_id}; see `prompt-registry audit runs`")
    return row


def artifact_for(session: Session, artifact_id: int, kind: str, model_row: BaseModelRow) -> ArtifactRow:
    row = session.get(ArtifactRow, validation.as_id(artifact_id, "an artifact id"))
    if row is None or row.kind != kind:
        raise UnknownArtifactError(f"no {kind} with id {artifact_id}; see `prompt-registry adapter list`")
    if row.target_fingerprint != model_row.fingerprint:
        raise ModelMismatchError(
            f"{kind} {artifact_id} was made for model fingerprint {row.target_fingerprint[:12]}, "
            f"not for {model_row.name!r} ({model_row.fingerprint[:12]})"
        )
    return row


def next_version(session: Session, model_id: int, task_id: int) -> int:
    latest = session.scalar(select(func.max(PromptSetRow.version)).where(PromptSetRow.model_id == model_id, PromptSetRow.task_id == task_id))
    return (latest or 0) + 1


def alias_row(session: Session, name: str, model: str, task: str, *, lock: bool = False) -> AliasRow:
    model_id, task_id = model_row(session, model).id, task_row(session, task).id
    stmt = select(AliasRow).where(AliasRow.name == name, AliasRow.model_id == model_id, AliasRow.task_id == task_id)
    row = session.scalars(stmt.with_for_update() if lock else stmt).one_or_none()
    if row is None:
        raise UnknownAliasError(f"no alias {echo(name)} for {model}/{task}; see `prompt-registry alias list`")
    return row


def check_set_matches(session: Session, row: PromptSetRow, model: str | None, task: str | None) -> None:
    set_model = session.get_one(BaseModelRow, row.model_id)
    if model is not None and model != set_model.name:
        other = model_row(session, model)
        raise ModelMismatchError(
            f"prompt set {row.id} holds prompts for model {set_model.name!r} (fingerprint "
            f"{set_model.fingerprint[:12]}), not for {echo(model)} ({other.fingerprint[:12]}); a prompt "
            f"only works on the model it was made for: migrate it to {echo(model)} first"
        )
    if task is not None:
        set_task = session.get_one(TaskRow, row.task_id)
        if task != set_task.name:
            raise ConflictError(f"prompt set {row.id} is for task {set_task.name!r}, not {echo(task)}")


def pair(session: Session, pair_ids: PairIds, model: str, task: str) -> tuple[int, int]:
    """Ids of a model and a task by name (cached: a read resolves them on every call)."""
    ids = pair_ids.get((model, task))
    if ids is None:
        ids = model_row(session, model).id, task_row(session, task).id
        pair_ids[(model, task)] = ids
    return ids


def select_set(session: Session, pair_ids: PairIds, model: str, task: str, selector: str | int) -> PromptSetRow:
    model_id, task_id = pair(session, pair_ids, model, task)
    ids = {"model_id": model_id, "task_id": task_id}
    selector = str(selector)
    version = VERSION_RE.match(selector)
    if selector == LATEST:
        row = session.scalars(_LATEST_SET, ids).one_or_none()
        if row is None:
            raise UnknownSetError(
                f"model {echo(model)} has no prompt sets for task {echo(task)} yet; import some with "
                f"`prompt-registry prompt import --model {model} --task {task} FILE`"
            )
        return row
    if version:
        row = session.scalars(_SET_VERSION, {**ids, "version": validation.as_id(version.group(1), "a version number")}).one_or_none()
        if row is None:
            raise UnknownSetError(f"{model}/{task} has no version {version.group(1)}; see `prompt-registry prompt list --model {model}`")
        return row  # a deleted version is reported as such by the caller
    alias = session.scalars(_ALIAS, {**ids, "name": selector}).one_or_none()
    if alias is None:
        raise UnknownAliasError(
            f"no alias {echo(selector)} for {model}/{task}; set it with "
            f"`prompt-registry alias set {word(selector, 'ALIAS')} {model}/{task}@latest`"
        )
    return session.get_one(PromptSetRow, alias.set_id)


def resolve_set(session: Session, pair_ids: PairIds, ref: int | str | PromptSet, *, model: str | None = None, task: str | None = None) -> PromptSetRow:
    """A set by id, ``MODEL/TASK@ALIAS``, ``MODEL/TASK@latest`` or ``MODEL/TASK@vN``."""
    if isinstance(ref, PromptSet):
        ref = ref.id
    text = str(ref).strip()
    if text.isdigit():  # ASCII digits only, in range: as_id says so
        row = session.get(PromptSetRow, validation.as_id(text, "a set id"))
        if row is None:
            raise UnknownSetError(f"no prompt set with id {text}; list them with `prompt-registry prompt list`")
    else:
        if "@" not in text or "/" not in text.split("@")[0]:
            raise UnknownSetError(
                f"cannot parse set reference {echo(text)}: use a set id or MODEL/TASK@ALIAS "
                "(ALIAS may be `latest` or `vN`)"
            )
        head, selector = text.rsplit("@", 1)
        model_name, task_name = head.rsplit("/", 1)
        row = select_set(session, pair_ids, model_name, task_name, selector)
    if row.status == "pending":
        raise UnknownSetError(f"no prompt set with id {row.id} yet: it is a sharded write whose shards are not all in")
    if row.status != "committed":
        raise UnknownSetError(f"prompt set {row.id} is {row.status}; it can no longer be read")
    if model is not None or task is not None:
        check_set_matches(session, row, model, task)
    return row


def insert_alias_if_absent(session: Session, values: dict[str, object]) -> int | None:
    """``INSERT ... ON CONFLICT DO NOTHING`` of an alias row: its id, or ``None`` if the alias
    already existed (on Postgres a concurrent creator's insert waits for the first to finish)."""
    insert = postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    stmt = insert(AliasRow).values(values).on_conflict_do_nothing(index_elements=["name", "model_id", "task_id"]).returning(AliasRow.id)
    return session.execute(stmt).scalar_one_or_none()
