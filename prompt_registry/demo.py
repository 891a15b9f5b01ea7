"""``prompt-registry demo``: the whole story on a laptop CPU.

1. Registry basics: register a model, import prompts, an incremental version, aliases, export,
   doctor.
2. The migration story: two different backbones (a BERT-style encoder and a Llama-style decoder of
   other widths, built locally; or, with ``real=True``, MiniLM -> MPNet from PyPI packages), a data
   set with real structure (synthetic users; or MovieLens-100k), source prompts trained on the old
   model, then on the new model: random-init prompts (head only), full retrain, PUMA (group and
   random selection at the same budget) and PUMA + warm-start refinement. It prints one table of
   quality and cost (seconds and backbone token-passes) and returns every figure.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

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


def run_demo(workdir: str | Path | None = None, *, echo: Callable[[str], Any] | None = print, real: bool = False,
             n_users: int | None = None, per_user: int | None = None, budget: float = 0.3, seed: int = 0,
             train_epochs: int | None = None, adapter_epochs: int | None = None) -> dict[str, Any]:
    import torch

    from .migration.config import MigrationConfig
    from .migration.selection import SelectionConfig
    from .training.config import TrainConfig

    say = echo or (lambda _msg: None)
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="prompt-registry-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    n_users = n_users or (200 if real else 160)
    per_user = per_user or (40 if real else 30)
    models, data, data_name = _models_and_data(root, real, n_users, per_user, say)
    source, target = list(models)
    train_cfg = TrainConfig(epochs=train_epochs or (8 if real else 20), lr=(1e-3 if real else 5e-3), patience=3 if real else None, seed=seed)
    migrate_epochs, migrate_lr, n_clusters = adapter_epochs or (6 if real else 10), (1e-4 if real else 1e-3), (15 if real else 6)
    rows: list[dict[str, Any]] = []

    def row(name: str, model: str, rmse: float, run: Any, started: float) -> None:
        tokens = (run.forward_tokens or 0) + (run.backward_tokens or 0)
        rows.append({"prompts": name, "model": model, "test_rmse": round(rmse, 4), "seconds": round(time.perf_counter() - started, 1),
                     "token_passes": tokens})
        say(f"  {name:<26} on {model:<10} test RMSE {rmse:.4f}   {tokens:>12,} token-passes")

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
        results = {}
        for method, refine in (("group", 0), ("random", 0), ("group", 3)):
            started = time.perf_counter()
            config = MigrationConfig(epochs=migrate_epochs, lr=migrate_lr, seed=seed, norm_match=True, refine_epochs=refine, refine_lr=train_cfg.lr,
                                     selection=SelectionConfig(method=method, seed=seed, budget=budget, n_clusters=n_clusters, min_per_cluster=2))
            result = registry.migrate([source], target, "rating", data, config=config, progress=False)
            name = f"PUMA {method} ({budget:g} of users)" + (" + refine" if refine else "")
            assert result.report is not None, "migrate evaluates by default"
            row(name, target, result.report.rows[0]["rmse"], result.run, started)
            results[name] = result
        retrain_tokens = rows[2]["token_passes"]
        for r in rows:
            r["cost_vs_retrain"] = round(r["token_passes"] / retrain_tokens, 3) if retrain_tokens else None
        say(f"baselines: global mean {baselines['global_mean']['rmse']:.4f}, per-user mean {baselines['user_mean']['rmse']:.4f}")
        say(f"torch threads: {torch.get_num_threads()}; registry and data in {root}")
        return {"ok": tour["ok"], "workdir": str(root), "data": data_name, "tour": tour, "rows": rows, "baselines": baselines,
                "source_model": source, "target_model": target,
                "migrations": {k: {"set_id": v.set.id, "adapter_id": v.adapter.id, "selection": v.selection} for k, v in results.items()}}
