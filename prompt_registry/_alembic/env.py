"""Alembic environment for prompt-registry.

Used two ways: programmatically (``prompt_registry.db.migrations.upgrade`` passes an engine in
``config.attributes["engine"]``), or by developers with the top-level ``alembic.ini`` and
``PROMPT_REGISTRY_DB_URL`` set, e.g. to autogenerate a new revision.
"""

import os

from alembic import context
from sqlalchemy import Engine

from prompt_registry.db.engine import make_engine
from prompt_registry.db.schema import Base

config = context.config
target_metadata = Base.metadata


def _engine() -> Engine:
    engine = config.attributes.get("engine")
    if engine is not None:
        return engine
    url = os.environ.get("PROMPT_REGISTRY_DB_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set PROMPT_REGISTRY_DB_URL to the catalogue URL to run alembic directly")
    return make_engine(url)


def run_migrations_online() -> None:
    engine = _engine()
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        raw = connection.connection.driver_connection
        assert raw is not None  # None only for a connection that was invalidated
        if sqlite:
            # Batch ALTERs on SQLite copy and drop tables; with foreign keys enforced that would
            # fail (or cascade). The pragma only works outside a transaction, so set it on the
            # driver connection before SQLAlchemy begins one, and restore it afterwards.
            raw.execute("PRAGMA foreign_keys=OFF")
        try:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=sqlite,  # SQLite needs batch ALTERs
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
            if connection.in_transaction():
                connection.commit()
            if sqlite:
                problems = raw.execute("PRAGMA foreign_key_check").fetchall()
                if problems:
                    raise RuntimeError(f"migration left foreign-key violations: {problems[:5]}")
        finally:
            if sqlite:
                raw.execute("PRAGMA foreign_keys=ON")


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) migrations are not supported; run against a database")
run_migrations_online()
