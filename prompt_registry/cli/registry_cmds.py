"""Registry verbs: models, tasks, users, prompt sets and aliases. Each is one ``Registry`` call."""

from __future__ import annotations

from pathlib import Path

import click

from prompt_registry.fileio import read_users_csv
from prompt_registry.registry import TASK_KINDS
from prompt_registry.store.base import SUPPORTED_DTYPES

from ._common import Context, _cell, emit, json_option, pass_ctx, print_json, print_record

# ---------------------------------------------------------------------------------------- models / tasks

MODEL_COLUMNS = ("id", "name", "architecture", "hidden_size", "vocab_size", "revision", "fingerprint")


@click.group()
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


@click.group()
def task() -> None:
    """Tasks (rating or click)."""


@task.command("add")
@click.argument("name")
@click.option("--kind", type=click.Choice(TASK_KINDS), required=True)
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


@click.group()
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


@click.group()
def prompt() -> None:
    """Prompt sets: import, export, show, list."""


@prompt.command("import")
@click.argument("file", type=click.Path(exists=True))
@click.option("--format", "fmt", type=click.Choice(["auto", "peft"]), default="auto", show_default=True,
              help="peft: FILE is a PEFT prompt-tuning folder, or a folder of them (users from their metadata or folder names).")
@click.option("--model", required=True)
@click.option("--task", required=True)
@click.option("--users", "users_file", type=click.Path(exists=True, dir_okay=False), help="CSV with a user_id column, one row per prompt row.")
@click.option("--base", help="Make an incremental version on top of this set (id or MODEL/TASK@ALIAS).")
@click.option("--prompt-len", type=int, help="Expected prompt length (checked).")
@click.option("--dtype", type=click.Choice(SUPPORTED_DTYPES), help="Storage dtype (default: the base's, else bfloat16 for bfloat16 input, else float32).")
@click.option("--create-users", is_flag=True, help="Register unknown users instead of failing.")
@click.option("--alias", help="Point this alias at the new version.")
@click.option("--tag", "tags", multiple=True, help="Tag the new version (repeatable).")
@click.option("--note", help="Free-text note stored with the version.")
@json_option
@pass_ctx
def prompt_import(obj: Context, file: str, fmt: str, model: str, task: str, users_file: str | None, base: str | None, prompt_len: int | None,
                  dtype: str | None, create_users: bool, alias: str | None, tags: tuple[str, ...], note: str | None, as_json: bool) -> None:
    """Import prompts from FILE (.safetensors or .npy; --format peft: PEFT prompt-tuning folders) as a new version."""
    if (fmt == "peft") != Path(file).is_dir():
        raise click.BadParameter("--format peft reads a folder; a .safetensors/.npy FILE is read without it", param_hint="FILE")
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
@click.argument("file")
@click.option("--format", "fmt", type=click.Choice(["auto", "peft"]), default="auto", show_default=True,
              help="peft: FILE is a folder; one PEFT prompt-tuning folder per user is written in it.")
@click.option("--users", "users_file", type=click.Path(exists=True, dir_okay=False), help="CSV (user_id) of the users to export; default all.")
@click.option("--no-verify", is_flag=True, help="Skip the per-row checksum check.")
@json_option
@pass_ctx
def prompt_export(obj: Context, set_ref: str, file: str, fmt: str, users_file: str | None, no_verify: bool, as_json: bool) -> None:
    """Export the prompts of SET to FILE (.safetensors or .npy, plus FILE.users.csv), or as PEFT folders (--format peft)."""
    result = obj.registry.export_prompts(set_ref, file, verify=not no_verify, format=None if fmt == "auto" else fmt,
                                         users=read_users_csv(users_file) if users_file else None)
    if as_json:
        print_json(result.to_dict())
    else:
        click.echo(f"exported set {result.set_id}: {result.n_users} users to {result.path}" + (f" (users: {result.users_path})" if result.users_path else ""))


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


@click.group()
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
    emit(obj.registry.alias_history(name, model=model, task=task), as_json,
        ("id", "name", "model", "task", "old_set_id", "new_set_id", "at", "actor", "reason"))


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


COMMANDS = (model, task, user, prompt, alias)
