"""CLI verbs of the migration planner: ``migrate plan`` (and ``show``, ``list``), ``graph show``, ``worker``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from prompt_registry.entities import Plan

from ._common import Context, device_option, json_option, pass_ctx, precision_option, print_json, print_table

_STRATEGIES = ("auto", "direct", "chain", "aggregate", "retrain")  # planning.STRATEGIES (importing it loads torch); a test keeps them equal


def _print_plan(plan: Plan) -> None:
    est = plan.estimate
    click.echo(f"plan {plan.id}: {plan.kind} ({plan.strategy} asked) {' -> '.join(est['path'])} for task {plan.task}: "
               f"{est['token_passes']:,} token-passes, ~{est['seconds']:.0f} s, {est['users']} users"
               + _coverage_text(est.get("coverage") or {}))
    rows = [{"step": s.position, "kind": s.kind, "from": "+".join(s.sources) or "(scratch)", "to": s.target,
             "method": s.method or "", "adapter": s.adapter_id or "", "token_passes": f"{s.estimate['token_passes']:,}",
             "basis": s.estimate["basis"], "status": s.status} for s in plan.steps]
    print_table(rows, list(rows[0]))
    quality = est.get("quality", {})
    click.echo(f"quality: {quality['metrics']} (evaluation {quality['evaluation_id']} of set {quality['set_id']})" if quality.get("recorded")
               else f"quality: {quality.get('note', 'unknown')}")
    for alt in est.get("alternatives", []):
        click.echo(f"  also possible: {alt['kind']} {' -> '.join(alt['path'])}: {alt['token_passes']:,} token-passes")


def _coverage_text(cov: dict[str, Any]) -> str:
    if "full" not in cov:
        return ""
    parts = [f"{cov['partial']} on only some sources ({'imputed' if cov['policy'] == 'impute' else 'not mapped'})"] if cov["partial"] else []
    if cov["none"]:
        parts.append(f"{cov['none']} with prompts for the task on no source (cold start: {cov['cold_start']})")
    return ("; " + ", ".join(parts)) if parts else ""


@click.group("plan", invoke_without_command=True)
@click.option("--to", "target", help="Target model.")
@click.option("--task")
@click.option("--from", "sources", help="Source model(s), comma-separated. Default: every other model with prompts for the task.")
@click.option("--strategy", type=click.Choice(_STRATEGIES), default="auto", show_default=True)
@click.option("--via", help="A model the chain must pass through.")
@click.option("--max-hops", type=int, default=3, show_default=True)
@click.option("--reuse-only", is_flag=True, help="Only stored adapters: no fitting, no retrain.")
@click.option("--exclude", multiple=True, help="A model no path may touch (repeatable).")
@click.option("--method", default="puma", show_default=True, help="The migration method fits use.")
@click.option("--max-token-passes", type=int, help="Budget: refuse plans estimated above it.")
@click.option("--quality-floor", type=float, help="Rule out plans whose recorded evaluations are worse (RMSE above it, AUC below it).")
@click.option("--coverage", type=click.Choice(("impute", "common")),
              help="Users on only some sources of an aggregate: map them with the missing sources' mean prompts (impute, the default) or not (common).")
@click.option("--cold-start", type=click.Choice(("skip", "centroid")),
              help="Data-set users on no source: list them (skip, the default) or give them the mapped centroid.")
@json_option
@click.pass_context
def plan(click_ctx: click.Context, target: str | None, task: str | None, sources: str | None, strategy: str, via: str | None, max_hops: int,
         reuse_only: bool, exclude: tuple[str, ...], method: str, max_token_passes: int | None, quality_floor: float | None,
         coverage: str | None, cold_start: str | None, as_json: bool) -> None:
    """Plan a migration TO a model over the graph of models and adapters; stored, with its id."""
    if click_ctx.invoked_subcommand is not None:
        return
    if not target or not task:
        raise click.UsageError("migrate plan needs --to MODEL and --task TASK (or a subcommand: show, list)")
    obj: Context = click_ctx.obj
    made = obj.registry.planner.plan(target, task, sources=[s.strip() for s in sources.split(",") if s.strip()] if sources else None,
                                     strategy=strategy, via=via, max_hops=max_hops, reuse_only=reuse_only, exclude=exclude, method=method,
                                     max_token_passes=max_token_passes, quality_floor=quality_floor, coverage=coverage, cold_start=cold_start)
    print_json(made.to_dict()) if as_json else _print_plan(made)


@plan.command("show")
@click.argument("plan_id", type=int)
@json_option
@pass_ctx
def plan_show(obj: Context, plan_id: int, as_json: bool) -> None:
    """A stored plan, its steps (with where each estimate came from) and their status."""
    made = obj.registry.planner.get(plan_id)
    print_json(made.to_dict()) if as_json else _print_plan(made)


@plan.command("list")
@click.option("--task")
@click.option("--to", "target")
@json_option
@pass_ctx
def plan_list(obj: Context, task: str | None, target: str | None, as_json: bool) -> None:
    """Stored plans, newest first."""
    plans = obj.registry.planner.list(task=task, target=target)
    if as_json:
        print_json([p.to_dict() for p in plans])
        return
    print_table([{"id": p.id, "task": p.task, "target": p.target, "kind": p.kind, "path": " -> ".join(p.estimate["path"]),
                  "token_passes": f"{p.estimate['token_passes']:,}", "status": p.status} for p in plans],
                ["id", "task", "target", "kind", "path", "token_passes", "status"])


@click.group("graph")
def graph() -> None:
    """The migration graph: models, their prompts, stored adapters."""


@graph.command("show")
@click.option("--task", required=True)
@click.option("--dot", "dot_file", type=click.Path(dir_okay=False), help="Write Graphviz text here.")
@click.option("--png", "png_file", type=click.Path(dir_okay=False), help="Draw a picture here (needs matplotlib).")
@click.option("--plan", "plan_id", type=int, help="Highlight this plan's path (with --dot or --png).")
@json_option
@pass_ctx
def graph_show(obj: Context, task: str, dot_file: str | None, png_file: str | None, plan_id: int | None, as_json: bool) -> None:
    """Print the graph of TASK (models with user counts and aliases, stored adapters), or write it as Graphviz or a PNG."""
    if plan_id is not None and not (dot_file or png_file):
        raise click.UsageError("--plan highlights a plan in a drawing: give --dot FILE or --png FILE too")
    if dot_file or png_file:
        if dot_file:
            Path(dot_file).write_text(obj.registry.planner.dot(task, plan_id=plan_id))
        if png_file:
            obj.registry.planner.png(task, png_file, plan_id=plan_id)
        click.echo(f"wrote {', '.join(f for f in (dot_file, png_file) if f)}")
        return
    described: dict[str, Any] = obj.registry.planner.graph(task)
    if as_json:
        print_json(described)
        return
    models = [{"model": n["name"], "width": n["width"], "users": n["users"], "set": n["set_id"] or "", "aliases": ",".join(n["aliases"])}
              for n in described["nodes"] if n["kind"] == "model"]
    print_table(models, ["model", "width", "users", "set", "aliases"])
    adapters = [{"adapter": e["adapter_id"], "from": e["from"], "to": e["to"], "method": e["method"]} for e in described["edges"] if e["kind"] == "reuse"]
    click.echo("stored adapters:")
    print_table(adapters, ["adapter", "from", "to", "method"])
    click.echo(f"{described['possible_fit_edges']} possible fit edge(s); every model can be retrained")


@click.command("worker")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False), help="The data set the steps train and map on.")
@click.option("--plan", "plan_id", type=int, help="Serve only this stored plan (default: every stored plan).")
@click.option("--lease-seconds", type=float, help="A dead worker's step is taken over this long after its last heartbeat (default 60).")
@click.option("--poll", "poll_seconds", type=float, help="Seconds between looks when nothing is runnable yet (default 5).")
@click.option("--max-steps", type=int, help="Exit after this many steps.")
@click.option("--idle-exit", "idle_exit_seconds", type=float, help="Exit after this many seconds without a claim.")
@click.option("--max-attempts", type=int, help="Fail a step instead of taking it over once this many workers vanished on it (default 3).")
@device_option
@precision_option
@json_option
@pass_ctx
def worker(obj: Context, data_dir: str, plan_id: int | None, lease_seconds: float | None, poll_seconds: float | None,
           max_steps: int | None, idle_exit_seconds: float | None, max_attempts: int | None, device: str, precision: str,
           as_json: bool) -> None:
    """Execute steps of stored plans beside other workers (Postgres): claim, heartbeat, take over dead workers' steps."""
    from ..planning.worker import WorkerConfig

    given: dict[str, Any] = {"lease_seconds": lease_seconds, "poll_seconds": poll_seconds, "max_steps": max_steps, "idle_exit_seconds": idle_exit_seconds,
                             "max_attempts": max_attempts}
    settings = WorkerConfig(**{k: v for k, v in given.items() if v is not None})
    report = obj.registry.planner.work(data_dir, plan_id=plan_id, worker=settings, device=device, progress=not as_json, precision=precision)
    if as_json:
        print_json(report.to_dict())
        return
    for step in report.steps:
        made = f" -> set {step['set_id']} (run {step['run_id']})" if step.get("set_id") is not None else ""
        click.echo(f"plan {step['plan_id']} step {step['position']} {step['kind']} -> {step['target']}: {step['status']}"
                   f"{' (taken over)' if step['taken_over'] else ''}{made}")
    click.echo(f"worker {report.worker}: {len(report.steps)} step(s) in {report.seconds:.1f} s")


MIGRATE_COMMANDS = (plan,)  # added to `migrate` by main
COMMANDS = (graph, worker)  # top-level verbs
