"""Schema versioning: the Alembic migrations shipped inside the package.

``upgrade`` runs them (``prompt-registry db upgrade``); ``check_schema`` is called when a registry
opens and refuses an old, missing or unknown schema with a message naming the fix.
"""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

from ..errors import SchemaError

UPGRADE_COMMAND = "prompt-registry db upgrade"


def alembic_config(engine: Engine) -> Config:
    """An Alembic config pointing at the packaged migrations and bound to ``engine``."""
    cfg = alembic_config_for_scripts()
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    script = ScriptDirectory.from_config(alembic_config_for_scripts())
    head = script.get_current_head()
    assert head is not None, "the packaged migrations have no head revision"
    return head


def alembic_config_for_scripts() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("prompt_registry") / "_alembic"))
    return cfg


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Bring the schema to ``revision``; returns (revision before, revision after)."""
    before = current_revision(engine)
    if before is not None and before not in known_revisions():
        raise SchemaError(
            f"the catalogue is at schema revision {before}, which this version of prompt-registry does not know "
            "(written by a newer release?): upgrade the package (`pip install -U prompt-registry`), or downgrade the "
            f"schema to {head_revision()} with the release that wrote it (`alembic downgrade {head_revision()}`)"
        )
    command.upgrade(alembic_config(engine), revision)
    after = current_revision(engine)
    assert after is not None
    return before, after


def known_revisions() -> set[str]:
    """Every revision the packaged migrations know."""
    return {rev.revision for rev in ScriptDirectory.from_config(alembic_config_for_scripts()).walk_revisions()}


def check_schema(engine: Engine, where: str) -> None:
    """Raise ``SchemaError`` unless the catalogue at ``where`` is at the packaged head revision."""
    current = current_revision(engine)
    head = head_revision()
    if current == head:
        return
    if current is None:
        tables = set(inspect(engine).get_table_names())
        if "prompt_sets" in tables:
            raise SchemaError(
                f"the catalogue at {where} has tables but no schema revision; "
                "it was not created by prompt-registry or its alembic_version table was dropped"
            )
        raise SchemaError(
            f"the catalogue at {where} has no prompt-registry schema; "
            f"run `prompt-registry init` (new registry) or `{UPGRADE_COMMAND}`"
        )
    if current not in known_revisions():
        raise SchemaError(
            f"the catalogue at {where} is at schema revision {current}, which this version of prompt-registry "
            f"(schema {head}) does not know (written by a newer release?): upgrade the package (`pip install -U "
            f"prompt-registry`), or, to keep this release, downgrade the schema to {head} with the release that wrote it "
            f"(`alembic downgrade {head}`) or restore a backup"
        )
    raise SchemaError(
        f"the catalogue at {where} is at schema revision {current} but this package needs {head}; "
        f"run `{UPGRADE_COMMAND}` (back up the database first)"
    )
