"""The rows of ``bench paper``: every figure of one seed, and the registry side."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..registry import Registry
from .scales import Scale

Say = Callable[[str], Any]
SOURCE_ROWS = ("source prompts on A", "source prompts on C")


def _train_config(scale: Scale, seed: int, epochs: int, **extra: Any) -> Any:
    from ..training.config import TrainConfig

    return TrainConfig(**{"epochs": epochs, "patience": scale.patience, "seed": seed, **scale.train, **extra})


class Rows:
    """Records rows ``{name: {model, rmse, token_passes, seconds, set_id, per_user}}`` of one seed."""

    def __init__(self, reg: Registry, data: Path, seed: int, say: Say) -> None:
        self.reg, self.data, self.seed, self.say = reg, data, seed, say
        self.rows: dict[str, Any] = {}

    def record(self, name: str, model: str, set_id: int, run: Any, started: float, evaluation: Any = None) -> None:
        evaluation = evaluation if evaluation is not None else self.reg.evaluate(set_id, self.data)
        evaluation = self.reg.get_evaluation(evaluation.id)  # with its per-user metrics
        # seconds: the run's own (training or migration, evaluation excluded); the wall clock since ``started`` without one
        seconds = run.wall_seconds if run is not None and run.wall_seconds is not None else time.perf_counter() - started
        parts = {k: v["token_passes"] for k, v in (run.cost if run is not None else {}).items() if isinstance(v, dict) and "token_passes" in v}
        row = {"model": model, "rmse": float(evaluation.metrics["rmse"]), "token_passes": run.token_passes if run is not None else 0,
               "seconds": round(seconds, 2), "set_id": set_id, "per_user": evaluation.per_user, "cost_parts": parts,
               "steps": run.cost.get("steps") if run is not None else None}
        self.rows[name] = row
        self.say(f"  [seed {self.seed}] {name:<34} on {model:<2} RMSE {row['rmse']:.4f}  {row['token_passes']:>13,} token-passes  "
                 f"{row['seconds']:7.1f} s")

    def trained(self, name: str, model: str, task: str, config: Any, alias: str | None = None) -> Any:
        started = time.perf_counter()
        made = self.reg.train_prompts(model, task, self.data, config=config, progress=False, evaluate_split="test", alias=alias)
        self.record(name, model, made.set.id, made.run, started, made.evaluation)
        return made


def train_sources(reg: Registry, data: Path, task: str, scale: Scale, seed: int, say: Say) -> dict[str, Any]:
    """The source prompts on A and on C (``production``: what every migration of the task reads)."""
    rows = Rows(reg, data, seed, say)
    config = _train_config(scale, seed, scale.source_epochs)
    made = rows.trained(SOURCE_ROWS[0], "A", task, config, alias="production")
    rows.trained(SOURCE_ROWS[1], "C", task, config, alias="production")
    return {"rows": rows.rows, "baselines": {k: v["rmse"] for k, v in made.evaluation.metrics["baselines"].items()}}


def seed_rows(reg: Registry, data: Path, task: str, scale: Scale, seed: int, sources: dict[str, Any], say: Say) -> dict[str, Any]:
    """Every row of one seed on a registry holding ``sources`` (``train_sources``): random-init and
    retrain on B, the migrations A -> B, the aggregate and the chain through the planner, C -> B."""
    from ..migration.config import MigrationConfig
    from ..migration.selection import SelectionConfig

    rows = Rows(reg, data, seed, say)
    rows.rows.update(sources["rows"])
    rows.trained("random-init", "B", task, _train_config(scale, seed, scale.train_epochs, freeze_prompts=True))
    rows.trained("retrain", "B", task, _train_config(scale, seed, scale.train_epochs))

    def migration(method: str = "puma", selection: str = "group", budget: float = scale.budget) -> MigrationConfig:
        return MigrationConfig(seed=seed, method=method, selection=SelectionConfig(seed=seed, method=selection, budget=budget), **scale.migration)

    def migrated(name: str, source: str | int, config: MigrationConfig) -> None:
        started = time.perf_counter()
        result = reg.migrate([source], "B", task, data, config=config, progress=False)
        evaluation = reg.list_evaluations(result.final.id, split="test")[0]
        rows.record(name, "B", result.final.id, result.run, started, evaluation)

    migrated("default migration A->B (group)", "A", migration())
    migrated("random selection, same budget", "A", migration(selection="random"))
    migrated("random selection, 3x the budget", "A", migration(selection="random", budget=min(1.0, 3 * scale.budget)))
    migrated("anchor-ridge A->B (group)", "A", migration(method="anchor-ridge"))

    def planned(name: str, **request: Any) -> list[dict[str, Any]]:
        plan = reg.planner.plan("B", task, **request)
        assert plan.id is not None, "a saved plan has an id"
        started = time.perf_counter()
        done = reg.planner.run(plan.id, data, config=migration())
        hops = []
        for step in done.steps:
            run = reg.get_run(step.run_id) if step.run_id is not None else None
            set_id = int(step.result["set_id"])
            target = reg.get_set(set_id).model
            hop = f"{name} hop {step.position + 1} ({'+'.join(step.sources)}->{target})"
            rows.record(hop, target, set_id, run, started)
            hops.append({"name": hop, **{k: rows.rows[hop][k] for k in ("model", "rmse", "token_passes")}})
            started = time.perf_counter()
        return hops

    aggregate = planned("aggregate A+C->B", sources=["A", "C"], strategy="aggregate")
    chain = planned("chain A->C->B", sources=["A"], via="C", strategy="chain")  # before C->B is fitted: each hop fits its own adapter
    # C's trained prompts (the chain's hop 1 made a newer set on C, which is not production)
    migrated("single source C->B", sources["rows"][SOURCE_ROWS[1]]["set_id"], migration())
    return {"seed": seed, "rows": rows.rows, "baselines": sources["baselines"], "chain": chain, "aggregate": aggregate}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def registry_side(reg: Registry, scale: Scale) -> dict[str, Any]:
    """Import vs a raw store write, reads vs a raw store read, and the default method's apply over
    ``apply_prompts`` prompts vs a raw store read + write of the same bytes (all in this process)."""
    import torch

    from ..migration.puma.config import default_phi

    n, width_a, width_b = scale.apply_prompts, reg.get_model("A").hidden_size, reg.get_model("B").hidden_size
    prompts = np.random.default_rng(0).normal(size=(n, 1, width_a)).astype(np.float32)
    users = [f"bulk{i:07d}" for i in range(n)]
    reg.add_task("bulk", "rating")
    made, import_s = _timed(lambda: reg.import_prompts("A", "bulk", prompts, users, create_users=True))
    raw_key, out_key = "paper-raw-write", "paper-raw-apply"

    def raw_write() -> None:
        reg.store.create_array(raw_key, prompts.shape, "float32")
        reg.store.write_rows(raw_key, 0, prompts)

    _, raw_write_s = _timed(raw_write)
    _, read_s = _timed(lambda: reg.get_prompts(users, set=made.id))
    _, raw_read_s = _timed(lambda: reg.store.read_rows(raw_key, range(n)))
    sample = np.random.default_rng(1).choice(n, size=min(n, 500), replace=False)
    single = []
    for i in sample.tolist():
        user = users[i]
        _, seconds = _timed(lambda: reg.get_prompt(user, set=made.id))  # noqa: B023 (called at once)
        single.append(seconds)
    phi = default_phi((width_a,), width_b)  # the default method's map (its weights do not change the throughput)
    head = reg.put_artifact("head", "B/bulk", {"w": torch.zeros(width_b)}, task="bulk", target_model="B")
    adapter = reg.put_artifact("adapter", "A->B/bulk", phi.state_dict(), task="bulk", target_model="B", source_models=["A"],
                               config={"adapter": phi.config.to_dict(), "head_id": head.id})
    _, apply_s = _timed(lambda: reg.apply_adapter(adapter.id, sources=[made.id], progress=False))

    def raw_read_write() -> None:
        back = reg.store.read_rows(raw_key, range(n))
        reg.store.create_array(out_key, (n, 1, width_b), "float32")
        reg.store.write_rows(out_key, 0, np.zeros((n, 1, width_b), dtype=np.float32) + back[:, :, :1])

    _, raw_rw_s = _timed(raw_read_write)
    for key in (raw_key, out_key):
        reg.store.delete(key)
    mb = prompts.nbytes / 1e6
    return {"prompts": n, "width": width_a, "megabytes": round(mb, 1), "adapter": phi.config.to_dict(),
            "import_seconds": round(import_s, 3), "raw_write_seconds": round(raw_write_s, 3),
            "import_over_raw_write": round(import_s / raw_write_s, 2),
            "read_all_seconds": round(read_s, 3), "read_megabytes_per_second": round(mb / read_s), "raw_read_seconds": round(raw_read_s, 3),
            "read_over_raw_read": round(read_s / raw_read_s, 2), "get_prompt_p50_ms": round(1e3 * float(np.median(single)), 3),
            "get_prompt_p99_ms": round(1e3 * float(np.quantile(single, 0.99)), 3),
            "apply_seconds": round(apply_s, 3), "apply_prompts_per_second": round(n / apply_s), "raw_read_write_seconds": round(raw_rw_s, 3),
            "apply_over_raw_read_write": round(apply_s / raw_rw_s, 2)}
