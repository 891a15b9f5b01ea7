"""``prompt-registry audit ...``: lineage, user history, alias timeline, run costs, blast radius,
evaluation diffs. Each verb is one ``Registry`` call; tables by default, ``--json`` for machines.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import click

from prompt_registry.audit.queries import GROUP_BY

from ._common import Context, json_option, pass_ctx, print_json, print_record, print_table

LINEAGE_COLUMNS = ("depth", "set_id", "ref", "status", "n_users", "run_id", "run_kind", "adapter", "created_at")
EDGE_COLUMNS = ("child_id", "role", "parent_id", "adapter_id", "run_id")
RUN_COLUMNS = ("group", "runs", "succeeded", "failed", "running", "wall_seconds", "examples_seen", "forward_tokens", "backward_tokens", "token_passes")


def _when(at: dt.datetime | None) -> str:
    return at.isoformat(timespec="seconds") if at is not None else "now"


def _with_ref(items: Any) -> list[dict[str, Any]]:
    return [{**item.to_dict(), "ref": item.ref} for item in items]


@click.group()
def audit() -> None:
    """Audit queries: lineage, user history, alias moves, run costs, blast radius, diffs."""


@audit.command("lineage")
@click.argument("set_ref", metavar="SET")
@click.option("--down", is_flag=True, help="Descendants instead of ancestors.")
@click.option("--max-depth", type=click.IntRange(min=1), help="Stop after this many hops.")
@json_option
@pass_ctx
def audit_lineage(obj: Context, set_ref: str, down: bool, max_depth: int | None, as_json: bool) -> None:
    """Every ancestor (or descendant) of SET, with the adapter and run on each edge."""
    result = obj.registry.lineage(set_ref, down=down, max_depth=max_depth)
    if as_json:
        print_json(result.to_dict())
        return
    print_table(_with_ref(result.nodes), LINEAGE_COLUMNS)
    if result.edges:
        click.echo()
        print_table([e.to_dict() for e in result.edges], EDGE_COLUMNS)


@audit.command("user")
@click.argument("user_id", metavar="USER")
@json_option
@pass_ctx
def audit_user(obj: Context, user_id: str, as_json: bool) -> None:
    """All of USER's prompt versions across models and tasks, who made them, and their aliases."""
    history = obj.registry.user_history(user_id)
    if as_json:
        print_json(history.to_dict())
        return
    print_record({"user": history.user, "created_at": history.created_at, "deleted_at": history.deleted_at, "versions": len(history.versions)})
    click.echo()
    rows = [
        {**v.to_dict(), "ref": v.ref, "holder": v.holder_id if v.inherited else "own",
         "aliases": [f"{w.name} {_when(w.since)}..{_when(w.until)}" for w in v.aliases]}
        for v in history.versions
    ]
    print_table(rows, ("set_id", "ref", "status", "holder", "run_id", "run_kind", "adapter_id", "created_at", "aliases"))


@audit.command("alias")
@click.argument("name")
@click.option("--model")
@click.option("--task")
@json_option
@pass_ctx
def audit_alias(obj: Context, name: str, model: str | None, task: str | None, as_json: bool) -> None:
    """Alias NAME's full history: old -> new version, when, until when, by whom, why."""
    moves = obj.registry.alias_timeline(name, model=model, task=task)
    if as_json:
        print_json([m.to_dict() for m in moves])
        return
    rows = [
        {**m.to_dict(), "old": f"{m.old_set_id} (v{m.old_version})" if m.old_set_id else None,
         "new": f"{m.new_set_id} (v{m.new_version})" if m.new_set_id else "(deleted)"}
        for m in moves
    ]
    print_table(rows, ("id", "model", "task", "old", "new", "at", "until", "actor", "reason"))


@audit.command("runs")
@click.option("--since", type=click.DateTime(["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S"]), help="Only runs started on or after DATE (UTC).")
@click.option("--kind", help="Only runs of this kind (import, train, migrate, ...).")
@click.option("--group-by", type=click.Choice(GROUP_BY), help="One row per group.")
@json_option
@pass_ctx
def audit_runs(obj: Context, since: dt.datetime | None, kind: str | None, group_by: str | None, as_json: bool) -> None:
    """The runs' cost ledger summed: runs, wall time, examples, token passes."""
    costs = obj.registry.cost_summary(since=since, kind=kind, group_by=group_by)
    if as_json:
        print_json([c.to_dict() for c in costs])
    else:
        print_table([c.to_dict() for c in costs], RUN_COLUMNS if group_by else RUN_COLUMNS[1:])


@audit.command("blast-radius")
@click.argument("adapter", required=False, type=int)
@click.option("--set", "set_ref", metavar="SET", help="Start from this set instead of an adapter.")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True, help="How many users to list.")
@click.option("--all-users", is_flag=True, help="List every affected user.")
@json_option
@pass_ctx
def audit_blast_radius(obj: Context, adapter: int | None, set_ref: str | None, limit: int, all_users: bool, as_json: bool) -> None:
    """Every set and user derived, directly or transitively, from ADAPTER (or --set SET)."""
    if (adapter is None) == (set_ref is None):
        raise click.UsageError("give an ADAPTER id or --set SET (one of them)")
    radius = obj.registry.blast_radius(adapter, set=set_ref, user_limit=None if all_users else limit)
    if as_json:
        print_json({**radius.to_dict(), "users_truncated": radius.users_truncated})
        return
    print_table([s.to_dict() for s in radius.sets], ("depth", "set_id", "model", "task", "version", "status", "n_rows"))
    more = f" (first {len(radius.users)} listed; --all-users for every one)" if radius.users_truncated else ""
    click.echo(f"\n{len(radius.sets)} set(s), {radius.n_users} user(s){more}")
    for user_id in radius.users:
        click.echo(f"  {user_id}")


@audit.command("diff")
@click.argument("set_a", metavar="SET_A")
@click.argument("set_b", metavar="SET_B")
@click.option("--split", default="test", show_default=True)
@click.option("--dataset", help="Data set both were evaluated on (default: SET_A's newest on the split).")
@click.option("--metric", help="Only this metric.")
@click.option("--limit", type=click.IntRange(min=0), default=20, show_default=True, help="Users with the largest changes to list.")
@json_option
@pass_ctx
def audit_diff(obj: Context, set_a: str, set_b: str, split: str, dataset: str | None, metric: str | None, limit: int, as_json: bool) -> None:
    """Per-user metric differences (B - A) from the stored evaluations of SET_A and SET_B."""
    diff = obj.registry.diff_evaluations(set_a, set_b, split=split, dataset=dataset, metric=metric, limit=limit)
    if as_json:
        print_json(diff.to_dict())
        return
    click.echo(f"set {diff.set_a} (evaluation {diff.evaluation_a}) -> set {diff.set_b} (evaluation {diff.evaluation_b}) "
               f"on {diff.dataset} [{diff.split}]; users only in A: {diff.only_a}, only in B: {diff.only_b}")
    print_table([m.to_dict() for m in diff.metrics], ("metric", "n_users", "mean_a", "mean_b", "mean_delta", "n_lower", "n_higher", "n_equal"))
    if diff.users:
        click.echo()
        print_table([u.to_dict() for u in diff.users], ("user", "metric", "value_a", "value_b", "delta"))


COMMANDS = (audit,)
