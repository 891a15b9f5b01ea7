"""The ``prompt-registry`` command: global options, and every verb wired in from its module.

Business logic here is a bug: every verb is a single call into the public Python API. Reading
verbs print a table by default and JSON with ``--json``. Errors print one line and exit 1
(2 for usage errors); ``--debug`` shows the traceback.

The command modules import only ``_common`` and the library; this module imports them (at the
top) and adds their commands, so nothing imports ``main`` back.
"""

from __future__ import annotations

import click

from . import admin_cmds, audit_cmds, bench_cmds, ml_cmds, plan_cmds, registry_cmds, ui_cmds
from ._common import Context, Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--registry", envvar="PROMPT_REGISTRY_URL", metavar="PATH_OR_DB_URL",
              help="Registry directory (default ./.prompt-registry) or database URL. Env: PROMPT_REGISTRY_URL.")
@click.option("--store", envvar="PROMPT_REGISTRY_STORE", metavar="DIR_OR_URL",
              help="Tensor store: a Zarr directory or s3://BUCKET/PREFIX (AWS_* variables; needed with a Postgres URL). "
                   "Env: PROMPT_REGISTRY_STORE.")
@click.option("--actor", envvar="PROMPT_REGISTRY_ACTOR", help="Who is acting (recorded in the audit log). Default: OS user.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="prompt-registry")
@click.pass_context
def main(ctx: click.Context, registry: str | None, store: str | None, actor: str | None, debug: bool) -> None:
    """Versioned soft prompts bound to the exact base model that can read them."""
    obj = Context(registry, store, actor, debug)
    ctx.obj = obj
    ctx.call_on_close(obj.close)


for _command in (*admin_cmds.COMMANDS, *registry_cmds.COMMANDS, *ml_cmds.COMMANDS, *audit_cmds.COMMANDS, *plan_cmds.COMMANDS, *bench_cmds.COMMANDS,
                 *ui_cmds.COMMANDS):
    main.add_command(_command)
for _command in ml_cmds.PROMPT_COMMANDS:
    registry_cmds.prompt.add_command(_command)
for _command in plan_cmds.MIGRATE_COMMANDS:
    ml_cmds.migrate.add_command(_command)

if __name__ == "__main__":  # pragma: no cover
    main(prog_name="prompt-registry")
