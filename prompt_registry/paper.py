"""The paper's claims side by side (``prompt-registry bench paper``): one run, on the same users and
splits, laid out like the tables of Zhao & Gao, "Don't Start Over" (2026), each of our figures
beside the paper's.

Rows, per seed: baselines (global mean, per-user mean); source prompts on A evaluated on A;
random-init and a full retrain on the target B; the default migration A -> B with group selection
at a budget, random selection at that budget and at three times it (the paper's Table 4
question), every other registered method (``anchor-ridge``); an aggregate A + C -> B and a chain
A -> C -> B, each planned and run by the planner, with per-hop quality and the aggregate against
its single sources. Every migration row is paired-bootstrapped over users against the retrain.
Then the registry side: importing prompts against a raw store write, and the default method's
apply throughput against a raw store read + write of the same bytes.

Scales: ``smoke`` (tiny local models, synthetic users; under 3 minutes on 2 cores: it checks
that the report is produced and finite, not that the claims hold). The ``cpu`` and ``gpu`` scales
(MiniLM, SmolLM2-135M and MPNet on MovieLens-100k) are not built yet.

Results: ``OUT/paper_<scale>.json`` (machine, versions, config, every figure;
``puma_vs_retrain.quality_ratio`` = default-method RMSE / retrain RMSE, ``cost_ratio`` = its
token-passes / the retrain's), ``paper_<scale>.md`` and PNG plots.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .registry import Registry
from .testing.models import build_tiny_bert, build_tiny_llama

# The paper's figures (Llama-3.2-1B -> 3B, Amazon Movies & TV, RMSE): what our rows stand beside.
PAPER: dict[str, Any] = {
    "retrain": 0.9414, "puma_all_users": 0.9135, "cost_share": 0.02,
    "group_2000": 0.9315, "random_2000": 0.9419, "random_6000": 0.9320,
    "chain_hops": [0.9348, 0.9355, 0.9366, 0.9277], "aggregate": 0.9217, "aggregate_singles": [0.9293, 0.9380],
    "retrain_over_puma": [0.986, 1.030],
}


@dataclasses.dataclass(frozen=True)
class Scale:
    name: str
    users: int
    per_user: int
    items: int
    train_epochs: int
    budget: float
    apply_prompts: int
    seeds: int


SCALES = {"smoke": Scale("smoke", users=100, per_user=20, items=80, train_epochs=6, budget=0.2, apply_prompts=20_000, seeds=3)}


def machine() -> dict[str, Any]:
    import torch

    versions = {}
    for dist in ("prompt-registry", "torch", "transformers", "numpy", "zarr", "sqlalchemy"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0], "versions": versions,
            "torch_threads": torch.get_num_threads()}


def _cost(run: Any) -> int:
    return int((run.forward_tokens or 0) + (run.backward_tokens or 0))


def _seed_rows(reg: Registry, root: Path, scale: Scale, seed: int, say: Callable[[str], Any]) -> dict[str, Any]:
    """Every row of one seed: ``{name: {rmse, token_passes, seconds, per_user, model}}`` plus the chain and aggregate."""
    from .data import make_synthetic
    from .migration.config import MigrationConfig
    from .migration.selection import SelectionConfig
    from .training.config import TrainConfig

    data = make_synthetic(root / f"data-{seed}", n_users=scale.users, n_items=scale.items, per_user=scale.per_user, seed=seed)
    task = f"rating-{seed}"
    reg.add_task(task, "rating")
    train = TrainConfig(epochs=scale.train_epochs, lr=5e-3, patience=3, seed=seed)
    frozen = TrainConfig(**{**train.to_dict(), "freeze_prompts": True})
    tiny: dict[str, Any] = {"lr": 3e-3, "head_lr": 1e-2, "max_fit_epochs": 2.0}  # the demo's measured rates for the tiny models

    def migration(method: str = "puma", selection: str = "group", budget: float = scale.budget) -> MigrationConfig:
        return MigrationConfig(seed=seed, method=method, selection=SelectionConfig(seed=seed, method=selection, budget=budget), **tiny)

    rows: dict[str, Any] = {}

    def record(name: str, model: str, set_id: int, run: Any, started: float, evaluation: Any = None) -> None:
        evaluation = evaluation if evaluation is not None else reg.evaluate(set_id, data)
        evaluation = reg.get_evaluation(evaluation.id)
        rows[name] = {"model": model, "rmse": float(evaluation.metrics["rmse"]), "token_passes": _cost(run) if run else 0,
                      "seconds": round(time.perf_counter() - started, 2), "set_id": set_id, "per_user": evaluation.per_user}
        say(f"  [seed {seed}] {name:<34} on {model:<7} RMSE {rows[name]['rmse']:.4f}  {rows[name]['token_passes']:>11,} token-passes")

    def trained(name: str, model: str, config: TrainConfig) -> Any:
        started = time.perf_counter()
        made = reg.train_prompts(model, task, data, config=config, progress=False, evaluate_split="test")
        record(name, model, made.set.id, made.run, started, made.evaluation)
        return made

    source = trained("source prompts on A", "A", train)
    baselines = source.evaluation.metrics["baselines"]
    on_c = trained("source prompts on C", "C", train).set.id
    trained("random-init", "B", frozen)
    trained("retrain", "B", train)

    def migrated(name: str, sources: list[str | int], config: MigrationConfig) -> None:
        started = time.perf_counter()
        result = reg.migrate(sources, "B", task, data, config=config, progress=False)
        evaluation = reg.list_evaluations(result.set.id, split="test")[0]
        record(name, "B", result.set.id, result.run, started, evaluation)

    migrated("default migration A->B (group)", ["A"], migration())
    migrated("random selection, same budget", ["A"], migration(selection="random"))
    migrated("random selection, 3x the budget", ["A"], migration(selection="random", budget=min(1.0, 3 * scale.budget)))
    migrated("anchor-ridge A->B (group)", ["A"], migration(method="anchor-ridge"))

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
            record(hop, target, set_id, run, started)
            hops.append({"name": hop, **{k: rows[hop][k] for k in ("model", "rmse", "token_passes")}})
            started = time.perf_counter()
        return hops

    aggregate = planned("aggregate A+C->B", sources=["A", "C"], strategy="aggregate")
    chain = planned("chain A->C->B", sources=["A"], via="C", strategy="chain")  # before C->B is fitted: each hop fits its own adapter
    migrated("single source C->B", [on_c], migration())  # C's trained prompts (the chain's hop 1 made a newer set on C)
    return {"seed": seed, "rows": rows, "baselines": {k: v["rmse"] for k, v in baselines.items()}, "chain": chain, "aggregate": aggregate}


def _registry_side(reg: Registry, root: Path, scale: Scale) -> dict[str, Any]:
    """Import vs a raw store write, and the default method's apply throughput vs a raw read + write."""
    import torch

    from .migration.puma.adapter import AdapterConfig, Phi

    n, width_a, width_b = scale.apply_prompts, reg.get_model("A").hidden_size, reg.get_model("B").hidden_size
    prompts = np.random.default_rng(0).normal(size=(n, 1, width_a)).astype(np.float32)
    users = [f"bulk{i:07d}" for i in range(n)]
    reg.add_task("bulk", "rating")
    started = time.perf_counter()
    made = reg.import_prompts("A", "bulk", prompts, users, create_users=True)
    import_s = time.perf_counter() - started
    raw_key = "paper-raw-write"
    started = time.perf_counter()
    reg.store.create_array(raw_key, prompts.shape, "float32")
    reg.store.write_rows(raw_key, 0, prompts)
    raw_write_s = time.perf_counter() - started
    torch.manual_seed(0)
    phi = Phi(AdapterConfig((width_a,), width_b, hidden=64))
    head = reg.put_artifact("head", "B/bulk", {"w": torch.zeros(width_b)}, task="bulk", target_model="B")
    adapter = reg.put_artifact("adapter", "A->B/bulk", phi.state_dict(), task="bulk", target_model="B", source_models=["A"],
                               config={"adapter": phi.config.to_dict(), "head_id": head.id})
    started = time.perf_counter()
    reg.apply_adapter(adapter.id, sources=[made.id], progress=False)
    apply_s = time.perf_counter() - started
    out_key = "paper-raw-apply"
    started = time.perf_counter()
    back = reg.store.read_rows(raw_key, range(n))
    reg.store.create_array(out_key, (n, 1, width_b), "float32")
    reg.store.write_rows(out_key, 0, np.zeros((n, 1, width_b), dtype=np.float32) + back[:, :, :1])
    raw_rw_s = time.perf_counter() - started
    for key in (raw_key, out_key):
        reg.store.delete(key)
    return {"prompts": n, "import_seconds": round(import_s, 3), "raw_write_seconds": round(raw_write_s, 3),
            "import_over_raw_write": round(import_s / raw_write_s, 2), "apply_seconds": round(apply_s, 3),
            "apply_prompts_per_second": round(n / apply_s), "raw_read_write_seconds": round(raw_rw_s, 3),
            "apply_over_raw_read_write": round(apply_s / raw_rw_s, 2)}


def _summary(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    from .training.stats import paired_bootstrap, recovered

    names = list(seeds[0]["rows"])
    rows: dict[str, Any] = {}
    for name in names:
        values = [s["rows"][name]["rmse"] for s in seeds]
        cost = [s["rows"][name]["token_passes"] / max(s["rows"]["retrain"]["token_passes"], 1) for s in seeds]
        entry: dict[str, Any] = {"model": seeds[0]["rows"][name]["model"], "rmse_mean": float(np.mean(values)),
                                 "rmse_sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, "rmse": values,
                                 "cost_vs_retrain": float(np.mean(cost))}
        if entry["model"] == "B" and name not in ("retrain",):
            boots = [paired_bootstrap(s["rows"][name]["per_user"], s["rows"]["retrain"]["per_user"], "rating", seed=s["seed"]) for s in seeds]
            entry["vs_retrain"] = [{"diff": b["diff"], "se": b["se"]} for b in boots]
            entry["recovered"] = float(np.mean([recovered(s["rows"]["random-init"]["rmse"], s["rows"][name]["rmse"], s["rows"]["retrain"]["rmse"])
                                               or 0.0 for s in seeds]))
        rows[name] = entry
    headroom = [paired_bootstrap(s["rows"]["random-init"]["per_user"], s["rows"]["retrain"]["per_user"], "rating", seed=s["seed"]) for s in seeds]
    return {"rows": rows, "headroom": [{"diff": h["diff"], "se": h["se"], "in_se": h["diff"] / h["se"] if h["se"] else None} for h in headroom]}


def markdown(report: dict[str, Any]) -> str:
    rows = report["summary"]["rows"]

    def cell(name: str) -> str:
        r = rows[name]
        return f"{r['rmse_mean']:.4f} +- {r['rmse_sd']:.4f}"

    pvr = report["puma_vs_retrain"]
    head = report["summary"]["headroom"]
    lines = [f"# The paper's claims at scale `{report['scale']}`", "",
             f"Command: `{report['command']}`. Seeds {report['seeds']}; {report['config']['users']} users x {report['config']['per_user']} "
             f"ratings (synthetic, tiny local models: A = {report['models']['A']}, C = {report['models']['C']}, B = {report['models']['B']}). "
             "RMSE on each user's newest ratings (test split), mean +- sd over seeds.", "",
             "At this scale the run checks that the report is produced, not that the claims hold.", "",
             "Headroom (random-init - retrain, paired SE over users): "
             + ", ".join(f"{h['diff']:.4f} ({h['in_se']:.1f} SE)" if h["in_se"] else f"{h['diff']:.4f}" for h in head), "",
             "## Table 2: retrain vs migration", "", "| row | ours | cost vs retrain | paper |", "|---|---|---:|---|",
             f"| retrain on B | {cell('retrain')} | 1.00 | {PAPER['retrain']} |",
             f"| default migration A->B | {cell('default migration A->B (group)')} | {rows['default migration A->B (group)']['cost_vs_retrain']:.2f} | "
             f"{PAPER['puma_all_users']} (about {PAPER['cost_share']:.0%} of the cost) |",
             f"| random-init on B | {cell('random-init')} | {rows['random-init']['cost_vs_retrain']:.2f} | - |",
             f"| anchor-ridge A->B | {cell('anchor-ridge A->B (group)')} | {rows['anchor-ridge A->B (group)']['cost_vs_retrain']:.2f} | - |",
             f"| source prompts on A (on A) | {cell('source prompts on A')} | - | - |",
             f"| global mean / per-user mean | {report['baselines']['global_mean']:.4f} / {report['baselines']['user_mean']:.4f} | - | - |", "",
             f"quality_ratio (default / retrain RMSE) **{pvr['quality_ratio']:.3f}** (paper: retrain/PUMA {PAPER['retrain_over_puma'][0]}-"
             f"{PAPER['retrain_over_puma'][1]}); cost_ratio **{pvr['cost_ratio']:.3f}**.", "",
             "## Table 4: which users train the adapter", "", "| selection | ours | paper |", "|---|---|---|",
             f"| group, budget {report['config']['budget']:g} | {cell('default migration A->B (group)')} | {PAPER['group_2000']} (2,000 users) |",
             f"| random, same budget | {cell('random selection, same budget')} | {PAPER['random_2000']} |",
             f"| random, 3x the budget | {cell('random selection, 3x the budget')} | {PAPER['random_6000']} (6,000) |", "",
             "## Chain A -> C -> B (planned and run by the planner)", "", "| hop | ours | paper (per hop) |", "|---|---|---|"]
    chain = [n for n in rows if n.startswith("chain")]
    for i, name in enumerate(chain):
        lines.append(f"| {name} | {cell(name)} | {PAPER['chain_hops'][i] if i < len(PAPER['chain_hops']) else '-'} |")
    lines += ["", "## Aggregate A + C -> B vs single sources", "", "| sources | ours | paper |", "|---|---|---|"]
    agg = [n for n in rows if n.startswith("aggregate")]
    lines.append(f"| A + C (aggregate) | {cell(agg[-1])} | {PAPER['aggregate']} |")
    lines.append(f"| A alone | {cell('default migration A->B (group)')} | {PAPER['aggregate_singles'][0]} |")
    lines.append(f"| C alone | {cell('single source C->B')} | {PAPER['aggregate_singles'][1]} |")
    side = report["registry"]
    lines += ["", "## The registry side", "",
              f"- import of {side['prompts']:,} prompts: {side['import_seconds']:.2f} s, {side['import_over_raw_write']:.2f}x a raw store write "
              f"({side['raw_write_seconds']:.2f} s)",
              f"- apply of the stored adapter to them: {side['apply_prompts_per_second']:,} prompts/s, {side['apply_over_raw_read_write']:.2f}x "
              f"a raw read + write of the same rows ({side['raw_read_write_seconds']:.2f} s)", "",
              "Every migration row against the retrain, paired bootstrap over users per seed (diff, SE):", ""]
    for name, r in rows.items():
        if "vs_retrain" in r:
            lines.append(f"- {name}: " + "; ".join(f"{b['diff']:+.4f} ({b['se']:.4f})" for b in r["vs_retrain"]))
    return "\n".join(lines) + "\n"


def _plots(report: dict[str, Any], out: Path, scale: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["summary"]["rows"]
    on_b = {n: r for n, r in rows.items() if r["model"] == "B"}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in on_b.items():
        ax.errorbar(r["cost_vs_retrain"], r["rmse_mean"], yerr=r["rmse_sd"], fmt="o", capsize=3, label=name)
    ax.set_xlabel("token-passes / retrain's")
    ax.set_ylabel("test RMSE on B")
    ax.legend(fontsize=6)
    fig.tight_layout()
    paths = [out / f"paper_{scale}_quality_cost.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    chain = [n for n in rows if n.startswith("chain")]
    agg = [n for n in rows if n.startswith("aggregate")][-1]
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.5))
    left.errorbar(range(1, len(chain) + 1), [rows[n]["rmse_mean"] for n in chain], yerr=[rows[n]["rmse_sd"] for n in chain], fmt="o-", capsize=3)
    left.set_xticks(range(1, len(chain) + 1), [rows[n]["model"] for n in chain])
    left.set_title("chain: RMSE per hop")
    names = [agg, "default migration A->B (group)", "single source C->B"]
    right.bar(["A+C", "A", "C"], [rows[n]["rmse_mean"] for n in names], yerr=[rows[n]["rmse_sd"] for n in names], capsize=3)
    right.set_title("aggregate vs single sources (on B)")
    fig.tight_layout()
    paths.append(out / f"paper_{scale}_chain_aggregate.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return [str(p) for p in paths]


def run_paper(scale: str = "smoke", *, seeds: int | None = None, out: str | os.PathLike[str] = "benchmarks/results",
              workdir: str | os.PathLike[str] | None = None, say: Callable[[str], Any] | None = print) -> dict[str, Any]:
    """Run every row at ``scale`` over ``seeds`` seeds and write ``paper_<scale>.{json,md}`` and PNGs to ``out``."""
    import torch

    from . import validation
    from .errors import InvalidArgumentError

    if scale not in SCALES:
        raise InvalidArgumentError(f"unknown scale {scale!r}: this release builds {', '.join(SCALES)} (cpu and gpu are not built yet)")
    spec = SCALES[scale]
    n_seeds = validation.whole(seeds, "seeds", 1, 20) or spec.seeds
    emit = say or (lambda _msg: None)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    root = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="prompt-registry-paper-"))
    shutil.rmtree(root / "registry", ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models train faster on one thread than on two contended ones (see demo.choose_threads)
    started = time.perf_counter()
    try:
        models = {"A": build_tiny_bert(root / "A", hidden_size=48, seed=1), "C": build_tiny_llama(root / "C", hidden_size=40, seed=3),
                  "B": build_tiny_llama(root / "B", hidden_size=32, seed=2)}
        with Registry.init(root / "registry", actor="paper") as reg:
            for name, path in models.items():
                reg.register_model(name, path)
            per_seed = [_seed_rows(reg, root, spec, seed, emit) for seed in range(n_seeds)]
            registry_side = _registry_side(reg, root, spec)
        summary = _summary(per_seed)
        default, retrain = summary["rows"]["default migration A->B (group)"], summary["rows"]["retrain"]
        report: dict[str, Any] = {
            "scale": scale, "command": f"prompt-registry bench paper --scale {scale} --seeds {n_seeds}", "seeds": list(range(n_seeds)),
            "machine": machine(), "config": dataclasses.asdict(spec),
            "models": {"A": "tiny-bert (encoder, width 48)", "C": "tiny-llama (decoder, width 40)", "B": "tiny-llama (decoder, width 32)"},
            "baselines": {k: float(np.mean([s["baselines"][k] for s in per_seed])) for k in per_seed[0]["baselines"]},
            "puma_vs_retrain": {"quality_ratio": default["rmse_mean"] / retrain["rmse_mean"], "cost_ratio": default["cost_vs_retrain"]},
            "summary": summary, "registry": registry_side, "paper": PAPER,
            "per_seed": [{k: v for k, v in s.items() if k != "rows"} | {"rows": {n: {k: r[k] for k in ("model", "rmse", "token_passes", "seconds")}
                                                                                for n, r in s["rows"].items()}} for s in per_seed],
            "seconds": round(time.perf_counter() - started, 1),
        }
        report["plots"] = _plots(report, out_dir, scale)
        (out_dir / f"paper_{scale}.json").write_text(json.dumps(report, indent=2, default=float) + "\n")
        (out_dir / f"paper_{scale}.md").write_text(markdown(report))
        emit(f"wrote {out_dir / f'paper_{scale}.md'} ({report['seconds']:.0f} s)")
        return report
    finally:
        torch.set_num_threads(previous)
