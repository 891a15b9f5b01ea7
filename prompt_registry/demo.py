"""``prompt-registry demo``: the whole story on a laptop CPU.

1. Registry basics: register a model, import prompts, an incremental version, aliases, export,
   doctor.
2. The migration story: two different backbones (a BERT-style encoder and a Llama-style decoder of
   other widths, built locally; or, with ``real=True``, MiniLM -> MPNet from PyPI packages), a data
   set with real structure (synthetic users; or MovieLens-100k), source prompts trained on the old
   model, then on the new model: random-init prompts (head only), a full retrain, and the default
   migration at a budget of 30% of the users. It prints quality and cost (seconds and backbone
   token-passes), the share of the retrain's gain over random-init the migration recovered, and
   returns every figure. ``benchmarks/bench_quality.py`` compares every method with power.
3. A two-hop chain (tiny models only): a third model arrives (a wider tiny Llama); the planner
   plans old -> new -> newest, reusing the adapter just stored for the first hop and fitting the
   second; the plan is stored, explained step by step, run, and its final set compared with
   random-init and a retrain on the newest model.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from . import validation
from .entities import TrainResult
from .registry import Registry
from .testing.models import build_tiny_bert, build_tiny_llama


def _registry_tour(registry: Registry, model: str, width: int, say: Callable[[str], Any], rng: np.random.Generator, root: Path) -> dict[str, Any]:
    users = [f"tour-{i:05d}" for i in range(1000)]
    registry.add_task("tour", "rating")
    registry.add_users(users)
    prompts = rng.normal(0, 0.02, size=(len(users), 1, width)).astype(np.float32)
    v1 = registry.import_prompts(model, "tour", prompts, users, alias="production")
    newcomers = {f"tour-new-{i}": rng.normal(0, 0.02, size=(1, width)).astype(np.float32) for i in range(10)}
    retrained = {users[0]: np.full((1, width), 0.5, dtype=np.float32)}
    v2 = registry.import_prompts(model, "tour", {**newcomers, **retrained}, base=v1.id, create_users=True)
    registry.set_alias("production", v2.id, reason="demo: 10 new users, 1 retrained")
    back = registry.get_prompts(users[:100], model, "tour", alias="production").numpy()
    same_old = bool(np.array_equal(back[1:], prompts[1:100]))
    changed = bool(np.array_equal(back[0], retrained[users[0]]))
    v1_intact = bool(np.array_equal(registry.get_prompt(users[0], model, "tour", version=1).numpy(), prompts[0]))
    export = registry.export_prompts(f"{model}/tour@production", root / "production.safetensors")
    report = registry.doctor()
    say(f"registry: v1 {v1.n_rows} rows; v2 wrote {v2.n_rows} rows and shows {v2.n_users} users (the rest shared with v1); "
        f"round trip exact={same_old and changed and v1_intact}; exported {export.n_users}; doctor {'ok' if report.ok else 'PROBLEMS'}")
    return {"ok": same_old and changed and v1_intact and report.ok, "sets": [v1.to_dict(), v2.to_dict()],
            "export": export.to_dict(), "doctor_ok": report.ok}


def _models_and_data(root: Path, real: bool, n_users: int, per_user: int, say: Callable[[str], Any]) -> tuple[dict[str, Path], Path, str]:
    from .data import make_synthetic, subsample

    if not real:
        models = {"tiny-bert": build_tiny_bert(root / "tiny-bert", hidden_size=48, seed=1),
                  "tiny-llama": build_tiny_llama(root / "tiny-llama", hidden_size=32, seed=2)}
        data = make_synthetic(root / "data", n_users=n_users, n_items=120, per_user=per_user, seed=0)
        say(f"built tiny-bert (encoder, width 48) and tiny-llama (decoder, width 32); synthetic data: {n_users} users x {per_user}")
        return models, data, "synthetic"
    from .assets import minilm_path, movielens_100k, mpnet_path

    models = {"minilm": minilm_path(), "mpnet": mpnet_path()}
    data = subsample(movielens_100k(), root / "ml-100k-subsample", n_users=n_users, per_user=per_user, min_interactions=per_user)
    say(f"MiniLM-L6 (384) -> MPNet-base (768); MovieLens-100k: {n_users} users x their last {per_user} ratings")
    return models, data, "movielens-100k"


def _test_metrics(result: TrainResult) -> dict[str, Any]:
    assert result.evaluation is not None, "trained with evaluate_split"
    return result.evaluation.metrics


def choose_threads(parameters: int, cpus: int | None = None, load: float | None = None) -> int:
    """Torch threads for a model of ``parameters`` weights on this machine: tiny models train faster
    on one thread than on two contended ones (measured: the old demo took 254 s on two threads with
    another process busy); bigger ones take the cores that are free (CPU count minus the load)."""
    cpus = cpus or os.cpu_count() or 1
    load = os.getloadavg()[0] if load is None and hasattr(os, "getloadavg") else (load or 0.0)
    if parameters < 20_000_000:
        return 1
    return max(1, min(cpus, int(round(cpus - load))))


def _chain(registry: Registry, root: Path, source: str, target: str, data: Path, train_cfg: Any, migration: Any,
           say: Callable[[str], Any]) -> dict[str, Any]:
    """A third model, and a two-hop chain to it through the model just migrated to, planned and run."""
    from .training.config import TrainConfig

    newest = "tiny-llama-40"
    registry.register_model(newest, build_tiny_llama(root / newest, hidden_size=40, seed=3))
    say(f"a third model arrives ({newest}, decoder, width 40): plan {source} -> {target} -> {newest}")
    plan = registry.planner.plan(newest, "rating", sources=[source], via=target)
    assert plan.id is not None, "a saved plan has an id"
    for step in plan.steps:
        say(f"  plan {plan.id} step {step.position}: {step.kind} {'+'.join(step.sources)} -> {step.target}"
            + (f" (adapter {step.adapter_id})" if step.adapter_id else "")
            + f", estimated {step.estimate['token_passes']:,} token-passes ({step.estimate['basis']})")
    started = time.perf_counter()
    done = registry.planner.run(plan.id, data, config=migration)
    seconds = time.perf_counter() - started
    final = registry.get_set(done.steps[-1].result["set_id"])
    chained = registry.evaluate(final.id, data).metrics["rmse"]
    runs = [registry.get_run(s.run_id) for s in done.steps if s.run_id is not None]
    tokens = sum((r.forward_tokens or 0) + (r.backward_tokens or 0) for r in runs)
    rand = registry.train_prompts(newest, "rating", data, config=TrainConfig(**{**train_cfg.to_dict(), "freeze_prompts": True}),
                                  progress=False, evaluate_split="test")
    retrain = registry.train_prompts(newest, "rating", data, config=train_cfg, progress=False, evaluate_split="test")
    r_rmse, t_rmse = _test_metrics(rand)["rmse"], _test_metrics(retrain)["rmse"]
    t_tokens = (retrain.run.forward_tokens or 0) + (retrain.run.backward_tokens or 0)
    recovered = (r_rmse - chained) / (r_rmse - t_rmse) if r_rmse != t_rmse else None
    say(f"  ran plan {plan.id} ({', '.join(s.status for s in done.steps)}) in {seconds:.1f} s: set {final.id} on {newest} "
        f"test RMSE {chained:.4f} ({tokens:,} token-passes, {tokens / t_tokens:.0%} of a retrain's); "
        f"random-init {r_rmse:.4f}, retrain {t_rmse:.4f}"
        + (f": {recovered:.0%} of the retrain's gain" if recovered is not None else ""))
    return {"plan_id": plan.id, "kind": plan.kind, "path": plan.estimate["path"], "steps": [s.kind for s in plan.steps],
            "set_id": final.id, "test_rmse": round(chained, 4), "token_passes": tokens, "seconds": round(seconds, 1),
            "random_init_rmse": round(r_rmse, 4), "retrain_rmse": round(t_rmse, 4), "retrain_token_passes": t_tokens,
            "recovered": recovered}


def run_demo(workdir: str | Path | None = None, *, echo: Callable[[str], Any] | None = print, real: bool = False,
             n_users: int | None = None, per_user: int | None = None, budget: float = 0.3, seed: int = 0,
             train_epochs: int | None = None, adapter_epochs: int | None = None, threads: int | None = None) -> dict[str, Any]:
    """The registry tour, then the migration story: source prompts, random-init, a full retrain
    and the default migration (what ``MigrationConfig()`` does, at ``budget``) on the new model,
    with quality, the share of retrain's gain recovered and the cost of each. Returns every figure."""
    import torch

    from .migration.config import MigrationConfig
    from .migration.selection import SelectionConfig
    from .training.config import TrainConfig

    validation.whole(n_users, "n_users (--users)", 20, 100_000)
    validation.whole(per_user, "per_user (--per-user)", 5, 1_000)
    validation.whole(train_epochs, "train_epochs (--train-epochs)", 1, 1_000)
    validation.whole(adapter_epochs, "adapter_epochs (--adapter-epochs)", 1, 1_000)
    validation.whole(threads, "threads (--threads)", 1, 1_024)
    validation.fraction_or_count(budget, "budget (--budget)")
    say = echo or (lambda _msg: None)
    total_started = time.perf_counter()
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="prompt-registry-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_users = n_users or (200 if real else 220)
    per_user = per_user or (40 if real else 30)
    models, data, data_name = _models_and_data(root, real, n_users, per_user, say)
    source, target = list(models)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or choose_threads(100_000_000 if real else 100_000))
    train_cfg = TrainConfig(epochs=train_epochs or (8 if real else 6), lr=(1e-3 if real else 5e-3), patience=3, seed=seed)
    # the tiny models learn at higher rates than the real ones the defaults are set for (Phi 3e-3
    # and head 1e-2, measured on this world: 98% of the retrain's gain at 0.29 of its cost, vs 79%
    # at the real-model rates), and a step budget of 2 epochs over everyone's rows
    tiny: dict[str, Any] = {} if real else {"lr": 3e-3, "head_lr": 1e-2, "max_fit_epochs": 2.0}
    if adapter_epochs:
        tiny["epochs"] = adapter_epochs
    # the cost budget (the selected share of a retrain) is reckoned against this demo's retrain, and
    # what the map leaves of it refines at the retrain's rate
    migration = MigrationConfig(seed=seed, selection=SelectionConfig(seed=seed, budget=budget), reference_epochs=train_cfg.epochs,
                                refine_lr=train_cfg.lr, **tiny)
    rows: list[dict[str, Any]] = []

    def row(name: str, model: str, rmse: float, run: Any, started: float) -> None:
        tokens = run.token_passes
        rows.append({"prompts": name, "model": model, "test_rmse": round(rmse, 4), "seconds": round(time.perf_counter() - started, 1),
                     "token_passes": tokens})
        say(f"  {name:<34} on {model:<10} test RMSE {rmse:.4f}   {tokens:>12,} token-passes")

    try:
        with Registry.init(root / "registry", actor="demo") as registry:
            for name, path in models.items():
                registry.register_model(name, path)
            tour = _registry_tour(registry, source, registry.get_model(source).hidden_size, say, rng, root)
            say("the migration story (test RMSE on each user's newest ratings; lower is better):")
            started = time.perf_counter()
            src = registry.train_prompts(source, "rating", data, config=train_cfg, progress=False, evaluate_split="test", alias="production")
            baselines = _test_metrics(src)["baselines"]
            row("source prompts (trained)", source, _test_metrics(src)["rmse"], src.run, started)
            started = time.perf_counter()
            rand = registry.train_prompts(target, "rating", data, config=TrainConfig(**{**train_cfg.to_dict(), "freeze_prompts": True}),
                                          progress=False, evaluate_split="test")
            row("random-init (head only)", target, _test_metrics(rand)["rmse"], rand.run, started)
            started = time.perf_counter()
            retrain = registry.train_prompts(target, "rating", data, config=train_cfg, progress=False, evaluate_split="test")
            row("full retrain", target, _test_metrics(retrain)["rmse"], retrain.run, started)
            started = time.perf_counter()
            result = registry.migrate([source], target, "rating", data, config=migration, progress=False)
            assert result.report is not None, "migrate evaluates by default"
            name = f"migrated ({migration.method}, {budget:g} of users)"
            row(name, target, result.report.rows[0]["rmse"], result.run, started)
            retrain_tokens = rows[2]["token_passes"]
            for r in rows:
                r["cost_vs_retrain"] = round(r["token_passes"] / retrain_tokens, 3) if retrain_tokens else None
            recovered = result.report.recovered
            migrated = rows[-1]
            say(f"the migration recovered {recovered:.0%} of the retrain's gain over random-init "
                f"at {migrated['cost_vs_retrain']:.0%} of its token-passes" if recovered is not None else "no random-init reference")
            chain = None if real else _chain(registry, root, source, target, data, train_cfg, migration, say)
            say(f"baselines: global mean {baselines['global_mean']['rmse']:.4f}, per-user mean {baselines['user_mean']['rmse']:.4f}")
            say(f"{torch.get_num_threads()} torch thread(s); {time.perf_counter() - total_started:.0f} s in all; registry and data in {root}")
            return {"ok": tour["ok"], "workdir": str(root), "data": data_name, "tour": tour, "rows": rows, "baselines": baselines,
                    "source_model": source, "target_model": target, "recovered": recovered, "threads": torch.get_num_threads(),
                    "seconds": round(time.perf_counter() - total_started, 1), "migration_config": migration.to_dict(),
                    "migration": {"set_id": result.final.id, "mapped_set_id": result.set.id, "adapter_id": result.adapter.id, "selection": result.selection},
                    "chain": chain}
    finally:
        torch.set_num_threads(previous_threads)
