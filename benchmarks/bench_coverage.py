"""Which coverage policy for an aggregated migration whose sources hold different users.

    python benchmarks/bench_coverage.py                    # 400 users x 30, 3 seeds (~10 min, 1 thread)

Per seed: synthetic users; source A (tiny BERT, width 48) holds prompts for the first 70% of the
users, source B (tiny BERT, width 24) for the last 70%: 40% are on both, 30% only on A, 30% only
on B. Target: a tiny Llama (width 32). Every row is evaluated on the same held-back test split and
split by user group (full = on both sources, only-A, only-B):

- ``random-init`` (prompts at init, head fitted) and ``retrain`` on the target: floor and ceiling;
- ``impute``: one A + B adapter over everyone with a source; a missing source reads its mean prompt;
- ``common + random-init``: the A + B adapter over the 40% on both; the others start at random-init;
- ``fallback``: the common A + B adapter for the 40%, and a direct A -> target (B -> target)
  adapter for the users only on A (only on B): three fits;
- ``direct A``: one A -> target adapter for A's users (B's-only users at random-init).

Reported: pooled test RMSE per group, mean +- sd over seeds, a paired user bootstrap of each
policy against ``fallback`` on the partial users, and token-passes. The policy the library
defaults to (``MigrationConfig.coverage``) is the one this benchmark supports; docs/coverage.md
quotes the committed figures. Results: benchmarks/results/bench_coverage.{json,md}.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import args_record, machine_info, mean_sd, write_results  # noqa: E402

from prompt_registry import Registry  # noqa: E402
from prompt_registry.data import make_synthetic  # noqa: E402
from prompt_registry.data.dataset import Dataset  # noqa: E402
from prompt_registry.migration.config import MigrationConfig  # noqa: E402
from prompt_registry.migration.puma.selection import SelectionConfig  # noqa: E402
from prompt_registry.testing.models import build_tiny_bert, build_tiny_llama  # noqa: E402
from prompt_registry.training.config import TrainConfig  # noqa: E402
from prompt_registry.training.stats import paired_bootstrap, pooled  # noqa: E402

HERE = Path(__file__).resolve().parent
GROUPS = ("full", "only_a", "only_b", "partial", "all")


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    root = args.workdir / f"seed{seed}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    data = make_synthetic(root / "data", n_users=args.users, n_items=200, per_user=args.per_user, seed=seed)
    train_cfg = TrainConfig(epochs=args.train_epochs, lr=5e-3, seed=seed, patience=3)
    out: dict[str, Any] = {"seed": seed, "rows": {}}
    with Registry.init(root / "registry", actor="bench") as reg:
        reg.register_model("a", build_tiny_bert(root / "a", hidden_size=48, seed=1))
        reg.register_model("b", build_tiny_bert(root / "b", hidden_size=24, seed=3))
        reg.register_model("t", build_tiny_llama(root / "t", hidden_size=32, seed=2))
        users = Dataset.load(data).user_ids()
        rng = np.random.default_rng(seed)
        order = [users[i] for i in rng.permutation(len(users))]
        cut_a, cut_b = int(0.7 * len(order)), int(0.3 * len(order))
        on_a, on_b = order[:cut_a], order[cut_b:]
        groups = {"full": sorted(set(on_a) & set(on_b)), "only_a": sorted(set(on_a) - set(on_b)), "only_b": sorted(set(on_b) - set(on_a))}
        groups["partial"] = groups["only_a"] + groups["only_b"]
        groups["all"] = sorted(users)
        reg.train_prompts("a", "task", data, users=on_a, config=train_cfg, progress=False, alias="production")
        reg.train_prompts("b", "task", data, users=on_b, config=train_cfg, progress=False, alias="production")

        def per_user(set_id: int) -> dict[str, dict[str, float]]:
            return reg.get_evaluation(reg.evaluate(set_id, data).id).per_user

        t0 = time.perf_counter()
        rand = reg.train_prompts("t", "task", data, config=TrainConfig(**{**train_cfg.to_dict(), "freeze_prompts": True}),
                                 progress=False)
        rand_pu, rand_cost = per_user(rand.set.id), rand.run.token_passes
        retrain = reg.train_prompts("t", "task", data, config=train_cfg, progress=False)
        retrain_pu, retrain_cost = per_user(retrain.set.id), retrain.run.token_passes

        def config(policy: str) -> MigrationConfig:
            return MigrationConfig(seed=seed, coverage=policy, lr=3e-3, head_lr=1e-2, selection=SelectionConfig(budget=args.budget, seed=seed))

        def migrate(sources: list[str], policy: str) -> tuple[dict[str, dict[str, float]], int]:
            result = reg.migrate(sources, "t", "task", data, config=config(policy), progress=False, evaluate=False)
            return per_user(result.set.id), result.run.token_passes

        impute, impute_cost = migrate(["a", "b"], "impute")
        common, common_cost = migrate(["a", "b"], "common")
        direct_a, a_cost = migrate(["a"], "common")
        direct_b, b_cost = migrate(["b"], "common")

        def compose(parts: list[tuple[dict[str, dict[str, float]], list[str]]]) -> dict[str, dict[str, float]]:
            merged: dict[str, dict[str, float]] = {}
            for table, who in parts:
                merged.update({u: table[u] for u in who})
            return merged

        rows = {
            "random-init": (rand_pu, rand_cost),
            "retrain": (retrain_pu, retrain_cost),
            "impute": (impute, impute_cost),
            "common + random-init": (compose([(common, groups["full"]), (rand_pu, groups["partial"])]), common_cost),
            "fallback": (compose([(common, groups["full"]), (direct_a, groups["only_a"]), (direct_b, groups["only_b"])]),
                         common_cost + a_cost + b_cost),
            "direct A": (compose([(direct_a, on_a), (rand_pu, groups["only_b"])]), a_cost),
        }
        for name, (table, cost) in rows.items():
            out["rows"][name] = {"groups": {g: pooled(table, groups[g], "rating") for g in GROUPS}, "token_passes": cost, "per_user": table}
            print(f"  [seed {seed}] {name:<22} " + "  ".join(f"{g} {out['rows'][name]['groups'][g]:.4f}" for g in GROUPS)
                  + f"  {cost:>11,} token-passes", flush=True)
        out["group_sizes"] = {g: len(v) for g, v in groups.items()}
        out["groups_users"] = {g: groups[g] for g in ("only_a", "only_b", "partial")}
        out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def summarize(seeds: list[dict[str, Any]]) -> dict[str, Any]:
    names = list(seeds[0]["rows"])
    rows = []
    for name in names:
        row: dict[str, Any] = {"name": name}
        for g in GROUPS:
            values = [s["rows"][name]["groups"][g] for s in seeds]
            row[g] = mean_sd(values)
        row["token_passes"] = float(np.mean([s["rows"][name]["token_passes"] for s in seeds]))
        boots = []
        for s in seeds:
            partial = s["groups_users"]["partial"]
            a = {u: s["rows"][name]["per_user"][u] for u in partial}
            b = {u: s["rows"]["fallback"]["per_user"][u] for u in partial}
            boots.append(paired_bootstrap(a, b, "rating", seed=s["seed"]))
        row["partial_vs_fallback"] = {"diff_mean": float(np.mean([b["diff"] for b in boots])),
                                      "se_mean": float(np.mean([b["se"] for b in boots])), "per_seed": boots}
        rows.append(row)
    return {"rows": rows, "group_sizes": seeds[0]["group_sizes"], "seconds": [s["seconds"] for s in seeds]}


def without_per_user(seed: dict[str, Any]) -> dict[str, Any]:
    """A seed's record for the JSON: its rows without the per-user metrics."""
    rows = {name: {k: v for k, v in row.items() if k != "per_user"} for name, row in seed["rows"].items()}
    return {**{k: v for k, v in seed.items() if k != "rows"}, "rows": rows}


def markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    lines = [f"# Coverage policies for an aggregate with partly covered users ({report['args']['users']} users x "
             f"{report['args']['per_user']}, seeds {report['args']['seeds']})", "",
             f"Command: `{report['command']}`. Group sizes (seed 0): {s['group_sizes']}. Pooled test RMSE, mean +- sd over seeds; "
             "the last column is a paired user bootstrap against `fallback` on the partial users (diff, mean paired SE).", "",
             "| row | full | only A | only B | partial | all | token-passes | partial vs fallback |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in s["rows"]:
        cells = [f"{r[g]['mean']:.4f} +- {r[g]['sd']:.4f}" for g in GROUPS]
        b = r["partial_vs_fallback"]
        lines.append(f"| {r['name']} | " + " | ".join(cells) + f" | {r['token_passes']:,.0f} | {b['diff_mean']:+.4f} (SE {b['se_mean']:.4f}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--per-user", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--train-epochs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=HERE / ".work" / "coverage")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--name", default="bench_coverage")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [run_seed(args, seed) for seed in args.seeds]
    report = {"what": "coverage policies of an aggregated migration with partly covered users",
              "command": "python benchmarks/bench_coverage.py " + " ".join(sys.argv[1:]),
              "machine": {**machine_info(), "load": os.getloadavg()}, "args": args_record(args), "summary": summarize(seeds),
              "seeds": [without_per_user(s) for s in seeds]}
    write_results(args.out, args.name, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
