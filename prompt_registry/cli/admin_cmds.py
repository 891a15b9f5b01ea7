"""Admin verbs: create and upgrade a registry, check it (doctor), collect garbage (gc)."""

from __future__ import annotations

import sys

import click

from prompt_registry import Registry, RepairReport
from prompt_registry.registry import DEFAULT_GC_GRACE_SECONDS

from ._common import Context, _cell, json_option, pass_ctx, print_json

# ---------------------------------------------------------------------------------------- init / db


@click.command()
@pass_ctx
def init(obj: Context) -> None:
    """Create a registry (SQLite + Zarr directory by default) at the current schema."""
    with Registry.init(obj.location, store=obj.store, actor=obj.actor) as registry:
        click.echo(f"registry ready at {registry.where} (schema {registry.schema_revision}, store {registry.store.location})")


@click.group()
def db() -> None:
    """Catalogue schema management."""


@db.command("upgrade")
@pass_ctx
def db_upgrade(obj: Context) -> None:
    """Apply the Alembic migrations shipped with this package."""
    before, after = Registry.upgrade(obj.location, store=obj.store)
    click.echo(f"schema {before or '(empty)'} -> {after}" if before != after else f"schema already at {after}")


# ---------------------------------------------------------------------------------------- health


@click.command()
@click.option("--no-checksums", is_flag=True, help="Skip reading every row (only structure checks).")
@click.option("--repair", is_flag=True, help="First rebuild damaged files and restore rows from identical copies other versions hold.")
@click.option("--dry-run", is_flag=True, help="With --repair: say what would be restored, change nothing.")
@json_option
@pass_ctx
def doctor(obj: Context, no_checksums: bool, repair: bool, dry_run: bool, as_json: bool) -> None:
    """Verify schema, catalogue vs store, and checksums. Exit 1 if anything is wrong (after --repair: anything left)."""
    report = obj.registry.doctor(checksums=not no_checksums, repair=repair, dry_run=dry_run)
    if as_json:
        print_json(report.to_dict())
    else:
        if report.repair is not None:
            _print_repair(report.repair)
        click.echo(f"schema {report.schema_revision}; {report.sets_checked} sets, {report.rows_checked} rows, {report.artifacts_checked} artifacts checked")
        for problem in report.problems:
            click.echo(f"PROBLEM [{problem.kind}] {problem.object}: {problem.message}\n  fix: {problem.fix}")
        if report.foreign:
            click.echo(f"note: {len(report.foreign)} store object(s) were not written by this catalogue and are left alone "
                       f"(keys from before store binding, or files put there by hand): {_cell(report.foreign)}")
        click.echo("ok" if report.ok else f"{len(report.problems)} problem(s)")
    if not report.ok:
        sys.exit(1)


def _some(users: tuple[str, ...]) -> str:
    return ", ".join(users[:5]) + (f" and {len(users) - 5} more" if len(users) > 5 else "")


def _print_repair(r: RepairReport) -> None:
    verb = "would" if r.dry_run else "repair:"
    if r.nothing_to_do:
        click.echo("repair: nothing damaged")
        return
    for path in r.files_rebuilt:
        click.echo(f"{verb} rebuild {path}")
    for key in r.arrays_recreated:
        click.echo(f"{verb} recreate array {key}")
    for set_id, users in r.restored.items():
        click.echo(f"{verb} restore {len(users)} row(s) of set {set_id} from identical copies (users {_some(users)})")
    for set_id, users in r.lost.items():
        click.echo(f"LOST {len(users)} row(s) of set {set_id}: no other copy holds them (users {_some(users)})")
    for line in r.unreadable:
        click.echo(f"UNREADABLE {line}")


@click.command()
@click.option("--dry-run", is_flag=True, help="List what would be removed.")
@click.option("--grace", "grace_seconds", type=float, default=DEFAULT_GC_GRACE_SECONDS, show_default=True,
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
    if report.abandoned_sets:
        click.echo(f"{verb} {len(report.abandoned_sets)} abandoned sharded write(s) (pending sets no shard touched for "
                   f"{grace_seconds:g}s): {_cell(report.abandoned_sets)}")


COMMANDS = (init, db, doctor, gc)
