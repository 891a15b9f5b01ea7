"""prompt_rows references checked per statement on Postgres

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 17:30:00

On Postgres a foreign key is a per-row trigger that locks the referenced row (``FOR KEY SHARE``):
an import of 100,000 prompts locked 100,000 user rows and, 100,000 times, its own new set row. The
two foreign keys of ``prompt_rows`` cost 1.0 of the 1.3 s the import spent in the catalogue
(measured on the same 100,000-row ``INSERT ... SELECT``: 0.43 s without them, 0.55 s with the
checks below). This revision replaces them, on Postgres only, with the same two rules checked
once per statement:

* after every INSERT or UPDATE of ``prompt_rows``, one anti-join over the statement's new rows
  (a transition table) finds any ``user_id`` not in ``users`` or ``set_id`` not in
  ``prompt_sets`` and raises ``foreign_key_violation``;
* after every DELETE on ``users`` or ``prompt_sets``, a deleted row still referenced by
  ``prompt_rows`` raises ``foreign_key_violation``; so does changing the ``id`` of a referenced
  row, and TRUNCATE of either table while ``prompt_rows`` has rows.

The functions run with the search_path of the migration (``SET search_path FROM CURRENT``), so
schema-qualified statements from other sessions and ``pg_dump`` restores resolve the same tables.
A data-only restore must load ``prompt_rows`` after its parents (or use ``--disable-triggers``):
pg_dump orders tables by foreign keys, and these are no longer declared.

What the per-row lock bought and these do not: a *concurrent* hard delete of a user while another
transaction inserts rows for that user. The registry never hard-deletes users or prompt sets (a
deleted user gets ``deleted_at``, a deleted set ``status='deleted'``), so only hand-written SQL
could race that way. SQLite keeps its foreign keys (cheap there: no row locks) and the ORM still
declares them; ``tests/test_schema.py`` expects exactly these two to be absent on Postgres and
checks the rules themselves on both backends.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

REFERENCES = (("set_id", "prompt_sets"), ("user_id", "users"))
NEW_ROWS_CHECK = "prompt_registry_prompt_rows_references"
PARENT_CHECK = "prompt_registry_prompt_rows_parents"
PARENT_ID_CHECK = "prompt_registry_prompt_rows_parent_id"
PARENT_TRUNCATE_CHECK = "prompt_registry_prompt_rows_parent_truncate"
# the functions resolve table names with the search_path of the migration (the registry's schema),
# not with the caller's: schema-qualified statements and pg_dump restores (search_path '') work
FUNCTION = "CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$ {body} $$"
VIOLATION = "USING ERRCODE = 'foreign_key_violation'"


def fk_name(column: str, table: str) -> str:
    return f"fk_prompt_rows_{column}_{table}"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for column, table in REFERENCES:
        op.drop_constraint(fk_name(column, table), "prompt_rows", type_="foreignkey")
    # rows of prompt_rows: every inserted or updated row points at an existing set and user
    op.execute(FUNCTION.format(name=NEW_ROWS_CHECK, body=(
        "DECLARE bad bigint; BEGIN "
        "SELECT n.user_id INTO bad FROM new_rows n LEFT JOIN users u ON u.id = n.user_id WHERE u.id IS NULL LIMIT 1; "
        f"IF FOUND THEN RAISE EXCEPTION 'prompt_rows: user_id % is not in users', bad {VIOLATION}; END IF; "
        "SELECT n.set_id INTO bad FROM (SELECT DISTINCT set_id FROM new_rows) n "
        "LEFT JOIN prompt_sets s ON s.id = n.set_id WHERE s.id IS NULL LIMIT 1; "
        f"IF FOUND THEN RAISE EXCEPTION 'prompt_rows: set_id % is not in prompt_sets', bad {VIOLATION}; END IF; "
        "RETURN NULL; END"
    )))
    for verb in ("INSERT", "UPDATE"):
        op.execute(
            f"CREATE TRIGGER prompt_rows_references_{verb.lower()} AFTER {verb} ON prompt_rows "
            f"REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION {NEW_ROWS_CHECK}()"
        )
    # parents: a user or set still referenced may not be deleted, renumbered or truncated
    referenced = "EXISTS (SELECT 1 FROM prompt_rows r WHERE r.{column} = {id})"
    op.execute(FUNCTION.format(name=PARENT_CHECK, body=(
        "DECLARE bad bigint; BEGIN "
        "IF TG_TABLE_NAME = 'users' THEN "
        f"SELECT o.id INTO bad FROM old_rows o WHERE {referenced.format(column='user_id', id='o.id')} LIMIT 1; "
        "ELSE "
        f"SELECT o.id INTO bad FROM old_rows o WHERE {referenced.format(column='set_id', id='o.id')} LIMIT 1; "
        "END IF; "
        f"IF FOUND THEN RAISE EXCEPTION '%: id % is still referenced by prompt_rows', TG_TABLE_NAME, bad {VIOLATION}; END IF; "
        "RETURN NULL; END"
    )))
    op.execute(FUNCTION.format(name=PARENT_ID_CHECK, body=(
        "BEGIN "
        f"IF (TG_TABLE_NAME = 'users' AND {referenced.format(column='user_id', id='OLD.id')}) "
        f"OR (TG_TABLE_NAME = 'prompt_sets' AND {referenced.format(column='set_id', id='OLD.id')}) THEN "
        f"RAISE EXCEPTION '%: id % is still referenced by prompt_rows', TG_TABLE_NAME, OLD.id {VIOLATION}; END IF; "
        "RETURN NEW; END"
    )))
    op.execute(FUNCTION.format(name=PARENT_TRUNCATE_CHECK, body=(
        "BEGIN "
        f"IF EXISTS (SELECT 1 FROM prompt_rows) THEN RAISE EXCEPTION '%: rows are still referenced by prompt_rows', TG_TABLE_NAME {VIOLATION}; END IF; "
        "RETURN NULL; END"
    )))
    for _, table in REFERENCES:
        op.execute(
            f"CREATE TRIGGER {table}_prompt_rows_references AFTER DELETE ON {table} "
            f"REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION {PARENT_CHECK}()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_prompt_rows_id BEFORE UPDATE OF id ON {table} "
            f"FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION {PARENT_ID_CHECK}()"
        )
        op.execute(
            f"CREATE TRIGGER {table}_prompt_rows_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {PARENT_TRUNCATE_CHECK}()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for _, table in REFERENCES:
        for suffix in ("references", "id", "truncate"):
            op.execute(f"DROP TRIGGER IF EXISTS {table}_prompt_rows_{suffix} ON {table}")
    for verb in ("insert", "update"):
        op.execute(f"DROP TRIGGER IF EXISTS prompt_rows_references_{verb} ON prompt_rows")
    for name in (NEW_ROWS_CHECK, PARENT_CHECK, PARENT_ID_CHECK, PARENT_TRUNCATE_CHECK):
        op.execute(f"DROP FUNCTION IF EXISTS {name}()")
    for column, table in REFERENCES:
        op.create_foreign_key(fk_name(column, table), "prompt_rows", table, [column], ["id"])
