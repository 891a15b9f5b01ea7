"""Dialect-specific bulk statements of the import hot path (driver-level SQL, one per batch)."""

from __future__ import annotations

import json
from collections.abc import Sequence

from sqlalchemy import Connection

from ..errors import InvalidArgumentError

_SQLITE_INSERT = (
    "INSERT INTO prompt_rows (set_id, user_id, row_index, sha256) "
    "SELECT ?, u.id, ? + j.key, substr(?, j.key * 32 + 1, 32) "
    "FROM json_each(?) AS j JOIN users AS u ON u.external_id = j.value "
    "WHERE u.deleted_at IS NULL"
)
_POSTGRES_INSERT = (
    "INSERT INTO prompt_rows (set_id, user_id, row_index, sha256) "
    "SELECT %s, u.id, %s + t.i - 1, substring(%s::bytea FROM ((t.i - 1) * 32 + 1)::int FOR 32) "
    "FROM json_array_elements_text(%s::json) WITH ORDINALITY AS t(ext, i) JOIN users AS u ON u.external_id = t.ext "
    "WHERE u.deleted_at IS NULL"
)

_SQLITE_COUNT = ("SELECT count(*) FROM json_each(?) AS j JOIN users AS u ON u.external_id = j.value "
                 "WHERE u.deleted_at IS NULL")
_POSTGRES_COUNT = ("SELECT count(*) FROM json_array_elements_text(%s::json) AS t(ext) JOIN users AS u ON u.external_id = t.ext "
                   "WHERE u.deleted_at IS NULL")


def users_json(users: Sequence[str]) -> str:
    """The JSON list a catalogue statement takes the users of one batch as."""
    return json.dumps(list(users), ensure_ascii=False)


def insert_prompt_rows(conn: Connection, set_id: int, users: Sequence[str], start: int, digests: bytes,
                       users_json_text: str | None = None, *, replace: bool = False) -> int:
    """Insert the catalogue rows of ``users`` (rows ``start...`` of the set's array) in one
    statement that also maps external ids to user ids; returns how many rows it inserted.

    Users that are unknown or deleted get no row: the caller compares the count with
    ``len(users)`` and names them. ``digests`` is the rows' sha256 concatenated (32 bytes each);
    ``users_json_text`` is ``users_json(users)`` if the caller already has it. ``replace``: a
    user's existing row in the set is overwritten (an upsert, atomic against a concurrent
    writer of the same rows) and counts as inserted: a pending sharded write's rows, which a
    killed or concurrent run of the same shard may have inserted already.
    """
    if len(digests) != 32 * len(users):
        raise InvalidArgumentError(f"{len(digests)} digest bytes for {len(users)} users")
    # the ids travel as one JSON text: the driver's per-element array quoting costs more than the query
    sql = _POSTGRES_INSERT if conn.dialect.name == "postgresql" else _SQLITE_INSERT
    if replace:  # both dialects' upsert; the SELECT's WHERE keeps SQLite's parser from reading ON as a join's
        sql += " ON CONFLICT (set_id, user_id) DO UPDATE SET row_index = excluded.row_index, sha256 = excluded.sha256"
    text = users_json(users) if users_json_text is None else users_json_text
    result = conn.exec_driver_sql(sql, (set_id, start, digests, text))
    return result.rowcount


def count_active_users(conn: Connection, users: Sequence[str]) -> int:
    """How many of ``users`` (distinct) are registered and not deleted, counted in the database
    in one statement per 50,000 users: no row per user crosses the driver (a 100,000-user check
    that fetched every user's id took 0.45 s of a sharded apply's 2.7 s on SQLite)."""
    sql = _POSTGRES_COUNT if conn.dialect.name == "postgresql" else _SQLITE_COUNT
    total = 0
    for start in range(0, len(users), 50_000):
        total += int(conn.exec_driver_sql(sql, (users_json(users[start : start + 50_000]),)).scalar_one())
    return total
