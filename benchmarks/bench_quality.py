"""Migration quality with statistical power: every method against random-init and retrain, over
seeds, with a paired user bootstrap, seen/unseen users and token-pass cost.

    python benchmarks/bench_quality.py                         # synthetic: tiny pair, 2,000 users x 40, 3 seeds
    python benchmarks/bench_quality.py --users 500 --seeds 0   # a quicker look
    python benchmarks/bench_quality.py --setting movielens     # MiniLM -> MPNet on MovieLens-100k (CPU: long)
    python benchmarks/bench_quality.py --setting movielens-decoder  # MiniLM -> SmolLM2-135M (a decoder target)
    python benchmarks/bench_quality.py --scale gpu             # on an accelerator: both real pairs, all 943 users, every rating
    python benchmarks/bench_quality.py --merge results/a.partial.json results/b.partial.json --name x
                                                               # one result from one process per seed

Per seed and setting: source prompts are trained on the source model; on the target, random-init
(prompts frozen at init, head fitted on cached features), a full retrain, then every migration row
(PUMA with each Phi variant and group/random selection at each budget, anchor-ridge, selective
refinement). Every row is evaluated on the same held-back test split; the paired bootstrap
resamples users (pooled RMSE from per-user squared errors, or mean per-user AUC). Cost is
backbone token-passes (forward + backward) of the run that made the set, as a share of the
retrain's; wall seconds beside it. Nothing is selected on the test split: epochs, states and
regularisers are chosen on validation tails of the training rows.

Results: benchmarks/results/bench_quality.{json,md,png}. The JSON holds one object per setting
with its ``seeds`` and ``rows`` and a top-level ``targets`` list ({name, value, goal, met}).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import args_record, machine_info, mean_sd, write_results  # noqa: E402  (same machine record as every benchmark)

from prompt_registry import Registry  # noqa: E402
from prompt_registry.backbones.loader import PRECISIONS  # noqa: E402
from prompt_registry.data import make_clicks, make_synthetic, subsample  # noqa: E402
from prompt_registry.migration.config import MigrationConfig  # noqa: E402
from prompt_registry.migration.puma import PumaConfig  # noqa: E402
from prompt_registry.migration.puma.selection import SelectionConfig  # noqa: E402
from prompt_registry.testing.models import build_tiny_bert, build_tiny_llama  # noqa: E402
from prompt_registry.training.config import TrainConfig  # noqa: E402
from prompt_registry.training.stats import paired_bootstrap  # noqa: E402

HERE = Path(__file__).resolve().parent
PHIS = ("mlp", "linear", "lowrank", "linear+mlp")


# ------------------------------------------------------------------------------------ one seed
SETTINGS = ("synthetic", "movielens", "movielens-decoder", "click")


def world(setting: str, root: Path, args: argparse.Namespace, seed: int) -> tuple[dict[str, Path], Path, str, str]:
    if setting == "synthetic":
        models = {"tiny-bert": build_tiny_bert(root / "tiny-bert", hidden_size=48, seed=1),
                  "tiny-llama": build_tiny_llama(root / "tiny-llama", hidden_size=32, seed=2)}
        data = make_synthetic(root / "data", n_users=args.users, n_items=200, per_user=args.per_user or 40, seed=seed)
        return models, data, "tiny-bert", "tiny-llama"
    if setting == "click":
        models = {"tiny-bert": build_tiny_bert(root / "tiny-bert", hidden_size=48, seed=1),
                  "tiny-llama": build_tiny_llama(root / "tiny-llama", hidden_size=32, seed=2)}
        data = make_clicks(root / "data", n_users=args.users, impressions=args.per_user or 40, seed=seed)
        return models, data, "tiny-bert", "tiny-llama"
    from prompt_registry.assets import minilm_path, movielens_100k, mpnet_path, smollm2_path

    # the decoder setting's target is SmolLM2-135M, the one decoder PyPI packages (../shared/DATA.md)
    target = "smollm2" if setting == "movielens-decoder" else "mpnet"
    models = {"minilm": minilm_path(), target: smollm2_path() if target == "smollm2" else mpnet_path()}
    data = subsample(movielens_100k(), root / "ml", n_users=args.users, per_user=args.per_user, min_interactions=args.per_user or 1, seed=seed)
    return models, data, "minilm", target


def migration_rows(args: argparse.Namespace, setting: str) -> list[tuple[str, dict[str, Any]]]:
    """(row name, MigrationConfig keywords) of every migration row."""
    rows: list[tuple[str, dict[str, Any]]] = []
    real = setting.startswith("movielens")
    lr = args.adapter_lr or (1e-4 if real else 3e-3)
    # the default cost budget refines with what the map left, at the library's refine lr unless told
    # (seeds 0-11 of the tiny settings ran the train lr or said otherwise; see the README)
    refine = {"refine_lr": args.refine_lr or MigrationConfig().refine_lr}
    default_phi = args.phis[0]
    for budget in args.budgets:
        for i, phi in enumerate(args.phis):
            for sel in ("group", "random") if i < args.random_phis else ("group",):
                rows.append((f"puma {phi} {sel} b={budget:g}", {"method": "puma", "method_config": {"phi": phi, "lr": lr, "output_scale": phi != "mlp"},
                                                               "selection": {"method": sel, "budget": budget}, **refine}))
        rows.append((f"puma {default_phi} group b={budget:g}, map only", {  # the same without the budget's refinement
            "method": "puma", "method_config": {"phi": default_phi, "lr": lr, "output_scale": default_phi != "mlp"},
            "selection": {"method": "group", "budget": budget}, "cost_budget": None}))
        rows.append((f"anchor-ridge group b={budget:g}", {"method": "anchor-ridge", "method_config": {"lr": args.train_lr},
                                                          "selection": {"method": "group", "budget": budget}, **refine}))
    rows.append((f"puma {default_phi} group b={args.budgets[-1]:g} + refine 20%",
                 {"method": "puma", "method_config": {"phi": default_phi, "lr": lr, "output_scale": default_phi != "mlp"},
                  "selection": {"method": "group", "budget": args.budgets[-1]}, "refine_epochs": 3, "refine_share": 0.2,
                  "refine_lr": args.train_lr}))
    rows.append((f"puma {default_phi} group b={args.budgets[-1]:g} + refine all 2 epochs",  # every user warm-started on the target
                 {"method": "puma", "method_config": {"phi": default_phi, "lr": lr, "output_scale": default_phi != "mlp"},
                  "selection": {"method": "group", "budget": args.budgets[-1]}, "refine_epochs": 2, "refine_share": 1.0,
                  "refine_lr": args.train_lr}))
    return rows


def run_seed(setting: str, args: argparse.Namespace, seed: int, say: Any) -> dict[str, Any]:
    root = args.workdir / setting / f"seed{seed}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    models, data, source, target = world(setting, root, args, seed)
    kind = "rating" if setting != "click" else "click"
    train_cfg = TrainConfig(epochs=args.train_epochs, lr=args.train_lr, seed=seed, patience=args.patience, precision=args.precision)
    out: dict[str, Any] = {"seed": seed, "rows": {}}
    with Registry.init(root / "registry", actor="bench") as reg:
        for name, path in models.items():
            reg.register_model(name, path)

        def record(name: str, evaluation: Any, run: Any, seconds: float, set_id: int, extra: dict[str, Any] | None = None) -> None:
            evaluation = reg.get_evaluation(evaluation.id)  # with its per-user metrics
            m = evaluation.metrics
            out["rows"][name] = {"metrics": {k: m[k] for k in ("rmse", "mae", "auc", "uauc") if k in m}, "token_passes": run.token_passes,
                                 "seconds": round(seconds, 1), "per_user": evaluation.per_user, "set_id": set_id, **(extra or {})}
            key = "rmse" if kind == "rating" else "uauc"
            say(f"  [{setting} seed {seed}] {name:<42} {key} {m[key]:.4f}  {run.token_passes:>13,} token-passes  {seconds:6.1f} s")

        started = time.perf_counter()
        src = reg.train_prompts(source, "task", data, config=train_cfg, progress=False, evaluate_split="test", alias="production")
        record(f"source ({source})", src.evaluation, src.run, time.perf_counter() - started, src.set.id)
        out["baselines"] = src.evaluation.metrics["baselines"]
        started = time.perf_counter()
        rand = reg.train_prompts(target, "task", data, config=TrainConfig(**{**train_cfg.to_dict(), "freeze_prompts": True}),
                                 progress=False, evaluate_split="test")
        record("random-init", rand.evaluation, rand.run, time.perf_counter() - started, rand.set.id)
        started = time.perf_counter()
        retrain = reg.train_prompts(target, "task", data, config=train_cfg, progress=False, evaluate_split="test")
        record("retrain", retrain.evaluation, retrain.run, time.perf_counter() - started, retrain.set.id)
        for name, spec in migration_rows(args, setting):
            if args.rows and not re.search(args.rows, name):
                continue
            selection = SelectionConfig(seed=seed, **spec.pop("selection"))
            head_lr = args.head_lr or (1e-3 if setting.startswith("movielens") else 1e-2)
            # the cost budget's reference is this setting's retrain (its epochs), as the cost column's
            config = MigrationConfig(seed=seed, selection=selection, min_steps=args.min_steps, head_lr=head_lr,
                                     reference_epochs=args.train_epochs, precision=args.precision, **spec)
            started = time.perf_counter()
            result = reg.migrate([source], target, "task", data, config=config, progress=False)
            final = result.final
            evaluation = reg.list_evaluations(final.id, split="test")[0]
            report = result.report
            assert report is not None
            groups = {k: v for k, v in report.rows[0].items() if k.startswith(("seen_", "unseen_"))}
            record(name, evaluation, result.run, time.perf_counter() - started, final.id,
                   {"groups": groups, "steps": result.run.cost.get("steps"), "selection_warnings": result.selection.get("warnings", [])})
    return out


# ------------------------------------------------------------------------------------ summary
def summarize(setting: str, seeds: list[dict[str, Any]]) -> dict[str, Any]:
    kind = "click" if setting == "click" else "rating"
    key, lower = ("rmse", True) if kind == "rating" else ("uauc", False)
    names = list(seeds[0]["rows"])
    rows = []
    for name in names:
        values = [s["rows"][name]["metrics"][key] for s in seeds]
        ratio = [s["rows"][name]["token_passes"] / s["rows"]["retrain"]["token_passes"] for s in seeds]
        recovered = []
        for s in seeds:
            r, ri, rt = s["rows"][name]["metrics"][key], s["rows"]["random-init"]["metrics"][key], s["rows"]["retrain"]["metrics"][key]
            recovered.append(((ri - r) / (ri - rt)) if lower else ((r - ri) / (rt - ri)))
        boot = [paired_bootstrap(s["rows"][name]["per_user"], s["rows"]["retrain"]["per_user"], kind, seed=s["seed"]) for s in seeds]
        vs_random = [paired_bootstrap(s["rows"][name]["per_user"], s["rows"]["random-init"]["per_user"], kind, seed=s["seed"]) for s in seeds]
        row: dict[str, Any] = {
            "name": name, key: {**mean_sd(values), "values": values},
            "cost_vs_retrain": {"mean": float(np.mean(ratio)), "values": ratio},
            "recovered": {"mean": float(np.mean(recovered)), "values": recovered},
            "vs_retrain": {"diff_mean": float(np.mean([b["diff"] for b in boot])), "se_mean": float(np.mean([b["se"] for b in boot])),
                           "per_seed": boot},
            "vs_random_init": {"diff_mean": float(np.mean([b["diff"] for b in vs_random])),
                               "se_mean": float(np.mean([b["se"] for b in vs_random]))},
            "seconds": float(np.mean([s["rows"][name]["seconds"] for s in seeds])),
            "groups": seeds[0]["rows"][name].get("groups", {}),
        }
        if kind == "click":
            aucs = [s["rows"][name]["metrics"]["auc"] for s in seeds]
            row["auc"] = {**mean_sd(aucs), "values": aucs}
        rows.append(row)
    baselines = {k: float(np.mean([s["baselines"][k][key if kind == "rating" else "uauc"] for s in seeds])) for k in seeds[0]["baselines"]}
    headroom = next(r for r in rows if r["name"] == "random-init")["vs_retrain"]
    return {"setting": setting, "kind": kind, "metric": key, "seeds": [s["seed"] for s in seeds], "baselines": baselines, "rows": rows,
            "headroom": {"diff": headroom["diff_mean"], "paired_se": headroom["se_mean"],
                         "in_se": abs(headroom["diff_mean"]) / max(headroom["se_mean"], 1e-12)}}


def targets(results: dict[str, Any], default_name: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    syn = results.get("synthetic")
    if syn:
        by = {r["name"]: r for r in syn["rows"]}
        for budget, goal_rec, goal_cost in ((0.3, 0.99, 0.30), (0.1, 0.95, 0.15)):
            row = by.get(default_name["synthetic"].format(b=budget))
            if row is None:
                continue
            rec, c = row["recovered"]["mean"], row["cost_vs_retrain"]["mean"]
            out.append({"name": f"(a) synthetic b={budget:g}: recovered share at cost", "value": {"recovered": rec, "cost": c},
                        "goal": {"recovered": f">= {goal_rec}", "cost": f"<= {goal_cost}"}, "met": bool(rec >= goal_rec and c <= goal_cost)})
    ml = results.get("movielens")
    if ml:
        by = {r["name"]: r for r in ml["rows"]}
        row = by.get(default_name["movielens"].format(b=0.3))
        if row is not None:
            vs_r = row["vs_random_init"]
            beats = -vs_r["diff_mean"] / max(vs_r["se_mean"], 1e-12)
            within = row["vs_retrain"]["diff_mean"] / next(r for r in ml["rows"] if r["name"] == "retrain")["rmse"]["mean"]
            c = row["cost_vs_retrain"]["mean"]
            out.append({"name": "(b) movielens: beats random-init by paired SEs; within 1% of retrain at <= 0.35 cost",
                        "value": {"paired_se_vs_random": beats, "relative_gap_to_retrain": within, "cost": c},
                        "goal": {"paired_se_vs_random": ">= 2", "relative_gap_to_retrain": "<= 0.01", "cost": "<= 0.35"},
                        "met": bool(beats >= 2 and within <= 0.01 and c <= 0.35)})
    click = results.get("click")
    if click:
        by = {r["name"]: r for r in click["rows"]}
        popularity = click["baselines"]["popularity"]  # uAUC
        trained = {n: by[n]["uauc"]["mean"] - popularity for n in by if n == "retrain" or n.startswith("source")}
        out.append({"name": "(c) click: trained prompts beat popularity on uAUC by >= 0.03", "value": trained, "goal": ">= 0.03 each",
                    "met": bool(trained and min(trained.values()) >= 0.03)})
        row = by.get(default_name["click"].format(b=0.3))
        source = next((r for n, r in by.items() if n.startswith("source")), None)
        if row is not None and source is not None:
            gap = by["retrain"]["auc"]["mean"] - row["auc"]["mean"]
            vs_source = row["auc"]["mean"] - source["auc"]["mean"]
            out.append({"name": "(c) click: migrated AUC within 0.01 of retrain and >= source AUC - 0.01",
                        "value": {"retrain_minus_migrated": gap, "migrated_minus_source": vs_source},
                        "goal": {"retrain_minus_migrated": "<= 0.01", "migrated_minus_source": ">= -0.01"},
                        "met": bool(gap <= 0.01 and vs_source >= -0.01)})
    for name, res in results.items():
        rnd = next(r for r in res["rows"] if r["name"] == "random-init")
        lower = res["kind"] == "rating"
        worse = [r["name"] for r in res["rows"] if r["name"] not in ("random-init",) and not r["name"].startswith("source")
                 and ((r[res["metric"]]["mean"] > rnd[res["metric"]]["mean"]) if lower else (r[res["metric"]]["mean"] < rnd[res["metric"]]["mean"]))]
        out.append({"name": f"{name}: no row worse than random-init", "value": worse, "goal": "[]", "met": not worse})
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Migration quality with power", "", f"Default migration (the targets' rows): `{report['default_migration']}`.", "",
             f"Command: `{report['command']}`. Machine: {report['machine']['cpu_count']} CPUs, "
             f"{report['machine']['torch_threads']['intra_op']} torch threads. Cost = backbone token-passes / the retrain's.", ""]
    for name in report["settings_run"]:
        res = report[name]
        key = res["metric"]
        h = res["headroom"]
        lines += [f"## {name} (seeds {res['seeds']}, {report['args']['users']} users x {report['args']['per_user'] or 'all their'})", "",
                  "Baselines: " + ", ".join(f"{k} {v:.4f}" for k, v in res["baselines"].items()) + ".",
                  f"Headroom random-init -> retrain: {h['diff']:+.4f} = {h['in_se']:.1f} paired standard errors"
                  + (" (under ~10: this setting cannot rank methods)" if h["in_se"] < 10 else "") + ".", "",
                  f"| row | {key} mean +- sd | recovered | vs retrain (paired diff +- se) | cost vs retrain | seen / unseen | s |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in res["rows"]:
            g = r.get("groups") or {}
            seen = next((v for k, v in g.items() if k.startswith("seen_")), None)
            unseen = next((v for k, v in g.items() if k.startswith("unseen_")), None)
            su = f"{seen:.4f} / {unseen:.4f}" if seen is not None and unseen is not None else ""
            lines.append(f"| {r['name']} | {r[key]['mean']:.4f} +- {r[key]['sd']:.4f} | {r['recovered']['mean']:.3f} | "
                         f"{r['vs_retrain']['diff_mean']:+.4f} +- {r['vs_retrain']['se_mean']:.4f} | {r['cost_vs_retrain']['mean']:.3f} | {su} | "
                         f"{r['seconds']:.0f} |")
        lines.append("")
    lines += ["## Targets", "", "| target | value | goal | met |", "|---|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['name']} | {json.dumps(t['value'], default=lambda v: round(v, 4))} | {json.dumps(t['goal'])} | {'yes' if t['met'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = {name: report[name] for name in report["settings_run"]}
    fig, axes = plt.subplots(1, len(settings), figsize=(7 * len(settings), 5), squeeze=False)
    for ax, (name, res) in zip(axes[0], settings.items()):
        key = res["metric"]
        for r in res["rows"]:
            if r["name"].startswith("source"):
                continue
            ax.errorbar(r["cost_vs_retrain"]["mean"], r[key]["mean"], yerr=r[key]["sd"], fmt="o", capsize=3)
            ax.annotate(r["name"], (r["cost_vs_retrain"]["mean"], r[key]["mean"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel("token-passes / retrain's")
        ax.set_ylabel(f"test {key} (mean +- sd over seeds)")
        ax.set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def command_line() -> str:
    """How this process was started, as the results record it."""
    return "python benchmarks/bench_quality.py " + " ".join(sys.argv[1:])


def machine_record() -> dict[str, Any]:
    """What the runs ran on, and how loaded it was when recorded."""
    return {**machine_info(), "load": os.getloadavg()}


def report_of(command: str, machine: dict[str, Any], args: dict[str, Any], results: dict[str, Any], default: dict[str, str],
              **extra: Any) -> dict[str, Any]:
    """The results JSON of a run (or a merge of runs): one object per setting and the targets."""
    return {"what": "migration quality vs retrain and random-init, paired user bootstrap, token-pass cost",
            "command": command, "machine": machine, "args": args, **extra,
            "default_migration": default["synthetic"], "settings_run": list(results), **results, "targets": targets(results, default)}


# the arguments that may differ between the runs one merged result summarises
MERGE_FREE = ("seeds", "name", "out", "workdir", "merge")
# arguments added after partial files were first written: a file without one ran at this value
LATER_ARGS = {"precision": "fp32", "scale": "cpu"}


def merged(paths: list[Path], default: dict[str, str]) -> dict[str, Any]:
    """One report from the partial files of runs that differ only in their seeds (and where they wrote)."""
    parts = [json.loads(p.read_text()) for p in paths]
    first = parts[0]
    fixed = {k: v for k, v in {**LATER_ARGS, **first["args"]}.items() if k not in MERGE_FREE}
    for path, part in zip(paths, parts):
        if part["setting"] != first["setting"]:
            raise SystemExit(f"{path} is a {part['setting']!r} run, {paths[0]} a {first['setting']!r} one: merge one setting at a time")
        args = {**LATER_ARGS, **part["args"]}
        differ = sorted(k for k in set(fixed) | set(args) if k not in MERGE_FREE and args.get(k) != fixed.get(k))
        if differ:
            raise SystemExit(f"{path} ran with other arguments than {paths[0]} ({', '.join(differ)}): only --seeds may differ")
    seeds = sorted((s for part in parts for s in part["seeds"]), key=lambda s: s["seed"])
    numbers = [s["seed"] for s in seeds]
    if len(set(numbers)) != len(numbers):
        raise SystemExit(f"seed(s) {sorted({n for n in numbers if numbers.count(n) > 1})} appear in more than one file: keep one run per seed")
    setting = first["setting"]
    results = {setting: summarize(setting, seeds)}
    torch.set_num_threads(int(fixed.get("threads", 1)))  # the machine record then names the runs' thread count
    runs = [part.get("command") or "python benchmarks/bench_quality.py (seeds " + part["args"]["seeds"] + ")" for part in parts]
    return report_of(command_line() + " (merging: " + "; ".join(runs) + ")", first.get("machine") or machine_record(),
                     {**fixed, "seeds": numbers}, results, default, merged_from=[str(p) for p in paths])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setting", action="append", choices=SETTINGS, help="repeatable; default synthetic")
    parser.add_argument("--scale", choices=("cpu", "gpu"), default="cpu",
                        help="gpu (an accelerator; refused without CUDA): default settings movielens and movielens-decoder with every "
                             "user (943) and every rating, the backbones at --precision auto")
    parser.add_argument("--users", type=int, help="default 2000; 943 (everyone) at --scale gpu")
    parser.add_argument("--per-user", type=int, help="each user's most recent N interactions; default 40; every one at --scale gpu")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budgets", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--phis", nargs="+", default=list(PHIS), choices=PHIS)
    parser.add_argument("--retarget", type=Path, help="recompute the targets (for the library's default Phi) of a results JSON, run nothing")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="PARTIAL",
                        help="summarise the .partial.json files of runs that differ only in --seeds (e.g. one process per seed) "
                             "into one result named --name, run nothing")
    parser.add_argument("--min-steps", type=int, default=MigrationConfig().min_steps)
    parser.add_argument("--train-epochs", type=int, default=15)
    parser.add_argument("--train-lr", type=float, default=5e-3)
    parser.add_argument("--adapter-lr", type=float, help="default: 3e-3 on the tiny pair, 1e-4 (the library's) on real models")
    parser.add_argument("--refine-lr", type=float, help="the cost budget's refinement lr in every migration row; default: MigrationConfig.refine_lr")
    parser.add_argument("--head-lr", type=float, help="migration head lr; default: 1e-2 on the tiny pair, 1e-3 (the library's) on real models")
    parser.add_argument("--random-phis", type=int, default=2, help="random selection is run for the first N Phi variants")
    parser.add_argument("--rows", help="run only the migration rows whose name matches this regular expression (baselines always run)")
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="the backbones' passes in every row (bf16: autocast; 2x faster on an AVX512-BF16 CPU); default fp32, "
                             "auto at --scale gpu")
    parser.add_argument("--workdir", type=Path, default=HERE / ".work" / "quality")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--name", default="bench_quality")
    args = parser.parse_args()
    gpu = args.scale == "gpu"
    if gpu and not (args.merge or args.retarget) and not torch.cuda.is_available():
        raise SystemExit("--scale gpu needs an accelerator (torch.cuda.is_available() is False here): run it on a lent device, "
                         "or name the settings and sizes at CPU scale (e.g. --setting movielens --users 300 --per-user 40)")
    args.users = args.users or (943 if gpu else 2000)
    args.per_user = args.per_user if args.per_user is not None else (None if gpu else 40)
    args.precision = args.precision or ("auto" if gpu else "fp32")
    args.setting = args.setting or (["movielens", "movielens-decoder"] if gpu else None)
    default_phi = PumaConfig().phi
    default = {s: f"puma {default_phi} group b={{b:g}}" for s in SETTINGS}
    if args.retarget:
        report = json.loads(args.retarget.read_text())
        results = {name: report[name] for name in report["settings_run"]}
        report.update(default_migration=default["synthetic"], targets=targets(results, default))
        args.retarget.write_text(json.dumps(report, indent=1, default=float))
        args.retarget.with_suffix(".md").write_text(markdown(report))
        print(markdown(report))
        return
    if args.merge:
        report = merged(args.merge, default)
        write_results(args.out, args.name, report, markdown(report))
        plot(report, args.out / f"{args.name}.png")
        print(markdown(report))
        return
    torch.set_num_threads(args.threads)
    settings = args.setting or ["synthetic"]
    results, raw = {}, {}
    for setting in settings:
        seeds = []
        for seed in args.seeds:
            seeds.append(run_seed(setting, args, seed, print))
            # each finished seed is kept: a long real-model run killed later loses only the seed it was on
            partial = args.out / f"{args.name}.partial.json"
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps({"setting": setting, "command": command_line(), "machine": machine_record(),
                                           "args": {k: str(v) for k, v in vars(args).items()}, "seeds": seeds}, default=float))
        raw[setting] = seeds
        results[setting] = summarize(setting, seeds)
    report = report_of(command_line(), machine_record(), args_record(args), results, default)
    write_results(args.out, args.name, report, markdown(report))
    plot(report, args.out / f"{args.name}.png")
    print(markdown(report))


if __name__ == "__main__":
    main()
