"""Engines and units of work for the catalogue (SQLite or Postgres).

SQLite runs in WAL mode with a busy timeout, and writers open their transaction with
``BEGIN IMMEDIATE``: two writer processes then queue on the write lock instead of failing
half-way with "database is locked" when a deferred transaction tries to upgrade its lock.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from .._forksafe import reset_in_child
from ..errors import BusyError, SchemaError

SQLITE_BUSY_TIMEOUT_MS = 60_000  # how long a writer waits for another's lock (SQLite busy timeout, Postgres lock_timeout)


def _forget_connections(engine: Engine) -> None:
    """In a forked child: a connection must not cross a fork (a SQLite handle shared by two
    processes can corrupt the database's locks; a Postgres socket shared by two interleaves their
    protocol messages). Forget the parent's pooled connections without closing them (that would
    end the parent's sessions too); the child opens its own on first use, as SQLAlchemy
    recommends for multiprocessing."""
    engine.dispose(close=False)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def on_read_only_file_system(path: Path) -> bool:
    """Whether ``path`` (or the nearest folder above it that exists) is on a read-only mount."""
    for candidate in (path, *path.parents):
        try:
            return bool(os.statvfs(candidate).f_flag & os.ST_RDONLY)
        except FileNotFoundError:
            continue
    return False


def make_engine(url: str) -> Engine:
    """Create an engine for a catalogue URL with the settings this package relies on.

    A SQLite file on a read-only file system is opened ``immutable`` (nothing can change it:
    WAL mode would otherwise need to create its ``-shm`` file there, and even reads would fail);
    reads work, writes fail with "attempt to write a readonly database". An immutable open
    ignores the ``-wal`` file, so one holding commits not yet checkpointed into the database is
    refused (the reads would silently miss them)."""
    parsed = make_url(url)
    database = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if database and database != ":memory:" and on_read_only_file_system(Path(database)):
        path = Path(database).absolute()
        wal = path.with_name(path.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            raise SchemaError(
                f"the catalogue {path} is on a read-only file system and its write-ahead log {wal.name} holds commits not yet in "
                "the database file: reading it here would miss them. Open the registry once where it is writable (that "
                "checkpoints the log), or mount it read-write"
            )
        uri = f"{path.as_uri()}?immutable=1"
        engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, check_same_thread=False),
                               poolclass=NullPool, pool_pre_ping=False)
        _configure_sqlite(engine, read_only=True)
    elif parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            pool_pre_ping=False,
        )
        _configure_sqlite(engine)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=4)
        _configure_postgres(engine)
    reset_in_child(engine, _forget_connections)
    return engine


def _configure_postgres(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: object, _record: object) -> None:
        # a writer waits for another's row lock as long as a SQLite writer waits for the file
        # lock, then fails with lock_not_available (a BusyError), instead of hanging forever
        cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
        cur.execute(f"SET lock_timeout = {int(SQLITE_BUSY_TIMEOUT_MS)}")
        cur.close()
        dbapi_conn.commit()  # type: ignore[attr-defined]


def _configure_sqlite(engine: Engine, *, read_only: bool = False) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: object) -> None:
        # Take transaction control away from the sqlite3 module so that we emit BEGIN ourselves.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if read_only:
            cur.execute("PRAGMA query_only=ON")
            cur.close()
            return
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        # WAL + NORMAL is durable across application crashes; FULL also survives power loss.
        cur.execute("PRAGMA synchronous=FULL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


@contextlib.contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """One write transaction: commits on success, rolls back on any exception.

    On SQLite the transaction starts with ``BEGIN IMMEDIATE`` (takes the write lock up front).
    """
    try:
        with engine.connect() as conn:
            if is_sqlite(engine):
                conn = conn.execution_options(sqlite_begin="IMMEDIATE")
            with conn.begin():
                with Session(bind=conn, expire_on_commit=False, autoflush=False) as session:
                    yield session
                    session.flush()
    except OperationalError as exc:
        raise _as_os_error(engine, exc) or _as_busy(exc) or exc


_BUSY_SQLSTATES = {"40001": "a serialization conflict", "40P01": "a deadlock", "55P03": "a lock it could not get"}


def _as_busy(exc: OperationalError) -> BusyError | None:
    """A write that lost to other writers (rolled back) as one clear ``BusyError``."""
    text = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
    if "database is locked" in text or "database table is locked" in text:
        why = f"other writers held the SQLite write lock for more than {SQLITE_BUSY_TIMEOUT_MS // 1000} s"
    elif (state := getattr(exc.orig, "sqlstate", None)) in _BUSY_SQLSTATES:
        why = f"Postgres ended it to resolve {_BUSY_SQLSTATES[state]} with another writer"
    else:
        return None
    return BusyError(f"the catalogue was busy: {why} ({text}); the operation was rolled back and nothing of it is visible: run it again")


_OS_ERRORS = (("disk is full", errno.ENOSPC, "No space left on device"), ("could not extend file", errno.ENOSPC, "No space left on device"),
              ("readonly database", errno.EROFS, "Read-only file system"), ("read-only transaction", errno.EROFS, "Read-only catalogue"))


def _as_os_error(engine: Engine, exc: OperationalError) -> OSError | None:
    """A catalogue write that failed for want of disk space or write access, as the OSError a
    store write would raise (rolled back: nothing of it is visible); ``None`` for other errors."""
    text = str(exc.orig)
    for needle, code, what in _OS_ERRORS:
        if needle in text:
            where = engine.url.database if is_sqlite(engine) else engine.url.render_as_string(hide_password=True)
            return OSError(code, f"{what} (the catalogue database: {text.strip().splitlines()[0]})", where)
    return None


@contextlib.contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A read-only unit of work (a consistent snapshot on both backends)."""
    with engine.connect() as conn:
        with conn.begin():
            with Session(bind=conn, expire_on_commit=False, autoflush=False) as session:
                yield session
