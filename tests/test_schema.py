"""The ORM matches the packaged head revision; old or foreign schemas are refused with the fix."""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

import prompt_registry as pr
from prompt_registry import Registry
from prompt_registry.db import migrations
from prompt_registry.db.engine import make_engine
from prompt_registry.db.schema import Base
from prompt_registry.location import resolve_location

pytestmark = pytest.mark.registry


@pytest.fixture
def model_dirs_for_schema(tmp_path):
    from conftest import make_fake_model

    return make_fake_model(tmp_path / "model-a", 16)


def _engine(backend):
    location, store = backend
    return make_engine(resolve_location(location, store).db_url)


# Revision 0005: on Postgres these are checked per statement by triggers instead of per row.
STATEMENT_CHECKED_ON_POSTGRES = {"fk_prompt_rows_set_id_prompt_sets", "fk_prompt_rows_user_id_users"}


def test_orm_metadata_matches_head_revision(backend):
    location, store = backend
    Registry.init(location, store=store).close()
    engine = _engine(backend)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, Base.metadata)
    if engine.dialect.name == "postgresql":
        replaced = [d for d in diff if d[0] == "add_fk" and d[1].name in STATEMENT_CHECKED_ON_POSTGRES]
        assert {d[1].name for d in replaced} == STATEMENT_CHECKED_ON_POSTGRES
        diff = [d for d in diff if d not in replaced]
    engine.dispose()
    assert diff == [], f"ORM and migrations disagree; add an Alembic revision: {diff}"


def test_prompt_rows_references_are_enforced(registry, tmp_path):
    """Foreign keys on SQLite, statement-level triggers on Postgres (revision 0005): same rules."""
    from conftest import make_fake_model

    registry.register_model("m", make_fake_model(tmp_path / "m", 8))
    registry.add_task("t", "rating")
    registry.add_users(["a", "b", "spare"])
    made = registry.import_prompts("m", "t", {"a": np.ones((1, 8), np.float32), "b": np.zeros((1, 8), np.float32)})
    engine = registry._ctx.engine
    with engine.connect() as conn:
        ids = dict(conn.execute(sa.text("SELECT external_id, id FROM users")).all())
    refused = [
        ("INSERT INTO prompt_rows (set_id, user_id, row_index, sha256) VALUES (:s, 999999, 9, :d)", {"s": made.id, "d": b"x" * 32}),
        ("INSERT INTO prompt_rows (set_id, user_id, row_index, sha256) VALUES (999999, :u, 9, :d)", {"u": ids["spare"], "d": b"x" * 32}),
        ("UPDATE prompt_rows SET user_id = 999999 WHERE user_id = :u", {"u": ids["a"]}),
        ("DELETE FROM users WHERE id = :u", {"u": ids["a"]}),
        ("DELETE FROM prompt_sets WHERE id = :s", {"s": made.id}),
        ("UPDATE users SET id = 999999 WHERE id = :u", {"u": ids["b"]}),
        ("UPDATE prompt_sets SET id = 999999 WHERE id = :s", {"s": made.id}),
    ]
    if engine.dialect.name == "postgresql":
        refused.append(("TRUNCATE users CASCADE", {}))
        # schema-qualified, from a session whose search_path does not name the registry's schema
        schema = engine.url.query["options"].split("=")[-1]
        refused.append((f'SET LOCAL search_path TO public;INSERT INTO "{schema}".prompt_rows '
                        "(set_id, user_id, row_index, sha256) VALUES (:s, 999999, 9, :d)", {"s": made.id, "d": b"x" * 32}))
    for sql, params in refused:
        with pytest.raises(sa.exc.IntegrityError, match="prompt_rows|FOREIGN KEY"), engine.begin() as conn:
            *setup, statement = sql.split(";")
            for line in setup:
                conn.execute(sa.text(line))
            conn.execute(sa.text(statement), params)
    with engine.begin() as conn:  # an unreferenced user may go or be renumbered; a valid row may come
        conn.execute(sa.text("UPDATE users SET id = 999998 WHERE id = :u"), {"u": ids["spare"]})
        conn.execute(sa.text("DELETE FROM users WHERE id = 999998"))
        if engine.dialect.name == "postgresql":
            schema = engine.url.query["options"].split("=")[-1]
            conn.execute(sa.text("SET LOCAL search_path TO public"))
            conn.execute(sa.text(f'UPDATE "{schema}".prompt_rows SET row_index = row_index WHERE set_id = :s'), {"s": made.id})
    assert registry.get_prompts(["a", "b"], "m", "t").shape == (2, 1, 8)


def test_migrations_ship_inside_the_package():
    from importlib import resources

    versions = resources.files("prompt_registry") / "_alembic" / "versions"
    assert any(p.name.endswith(".py") for p in versions.iterdir())
    assert migrations.head_revision()


def test_open_refuses_an_old_schema_and_names_the_upgrade_command(backend):
    location, store = backend
    Registry.init(location, store=store).close()
    engine = _engine(backend)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'base0'"))
    with pytest.raises(pr.SchemaError, match="does not know"):
        Registry.open(location, store=store)
    with engine.begin() as conn:
        # simulate a registry made by an older release: at an ancestor of head
        conn.execute(sa.text("DELETE FROM alembic_version"))
    with pytest.raises(pr.SchemaError, match="no schema revision"):
        Registry.open(location, store=store)
    engine.dispose()


def test_old_revision_is_refused_until_upgraded_and_data_survives(backend, model_dirs_for_schema):
    location, store = backend
    with Registry.init(location, store=store) as reg:
        reg.register_model("a", model_dirs_for_schema)
        reg.add_task("rate", "rating")
        reg.add_users(["u1", "u2"])
        s = reg.import_prompts("a", "rate", np.ones((2, 1, 16), np.float32), ["u1", "u2"], alias="production")
    engine = _engine(backend)
    command.downgrade(migrations.alembic_config(engine), "0001")  # as an older release left it
    with pytest.raises(pr.SchemaError, match="prompt-registry db upgrade"):
        Registry.open(location, store=store)
    before, after = Registry.upgrade(location, store=store)
    assert (before, after) == ("0001", migrations.head_revision())
    with Registry.open(location, store=store) as reg:
        assert reg.get_prompts(["u1", "u2"], "a", "rate", alias="production").shape == (2, 1, 16)
        assert reg.get_set(s.id).sha256 == s.sha256
        reg.record_evaluation(s.id, dataset="x", split="test", metrics={"rmse": 1.0})  # new tables work
    engine.dispose()


def test_empty_database_says_init(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    with pytest.raises(pr.SchemaError, match="prompt-registry init"):
        migrations.check_schema(engine, "x.db")
    engine.dispose()


def test_missing_registry_directory(tmp_path):
    with pytest.raises(pr.RegistryNotFoundError, match="prompt-registry init"):
        Registry.open(tmp_path / "nowhere")


def test_upgrade_is_idempotent(backend):
    location, store = backend
    Registry.init(location, store=store).close()
    head = migrations.head_revision()
    assert Registry.upgrade(location, store=store) == (head, head)


def test_upgrade_of_a_missing_directory_says_init(tmp_path):
    with pytest.raises(pr.RegistryNotFoundError, match="prompt-registry init"):
        Registry.upgrade(tmp_path / "nowhere")


def test_postgres_url_needs_a_store():
    with pytest.raises(pr.RegistryNotFoundError, match="--store"):
        resolve_location("postgresql+psycopg://postgres@127.0.0.1/test", None)
