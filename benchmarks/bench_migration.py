"""The migration story measured: source, random-init, full retrain, PUMA (group / random selection at
the same budget) and PUMA + warm-start refinement, with quality (test RMSE) and cost (seconds and
backbone token-passes), in one run.

    python benchmarks/bench_migration.py            # tiny local backbones, synthetic users (minutes)
    python benchmarks/bench_migration.py --real     # MiniLM -> MPNet on MovieLens-100k (CPU: an hour or more)

Token-passes are the primary cost measure (wall time on a shared CPU is noisy; load average is
recorded). Results: benchmarks/results/bench_migration[_real].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from bench_store import machine_info  # same machine record as every benchmark

from prompt_registry.demo import run_demo

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", action="store_true")
    parser.add_argument("--users", type=int)
    parser.add_argument("--per-user", type=int)
    parser.add_argument("--budget", type=float, default=0.3)
    parser.add_argument("--train-epochs", type=int)
    parser.add_argument("--adapter-epochs", type=int)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=HERE / ".work" / "migration")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    workdir = args.workdir / ("real" if args.real else "tiny") / f"run-{os.getpid()}"
    result = run_demo(workdir, real=args.real, n_users=args.users, per_user=args.per_user, budget=args.budget,
                      seed=args.seed, train_epochs=args.train_epochs, adapter_epochs=args.adapter_epochs)
    report = {
        "what": "migration story: quality and cost of source, random-init, retrain, PUMA group/random, PUMA + refine",
        "machine": {**machine_info(), "load_before": load_before, "load_after": os.getloadavg()},
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        **result,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "bench_migration_real" if args.real else "bench_migration"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str))
    lines = [f"# Migration: {result['source_model']} -> {result['target_model']} on {result['data']}", "",
             f"Baselines (test RMSE): global mean {result['baselines']['global_mean']['rmse']:.4f}, "
             f"per-user mean {result['baselines']['user_mean']['rmse']:.4f}. {torch.get_num_threads()} torch threads; "
             f"load {load_before} -> {os.getloadavg()}.", "",
             "| prompts | model | test RMSE | seconds | token-passes | cost vs retrain |", "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['prompts']} | {r['model']} | {r['test_rmse']:.4f} | {r['seconds']:.1f} | {r['token_passes']:,} | {r['cost_vs_retrain']} |"
              for r in result["rows"]]
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
