"""Real-data check of the "1+N" system: train prompts on MovieLens-100k with a real frozen backbone.

Compares the trained prompts' test RMSE with the global-mean and per-user-mean baselines and
records the cost ledger. Everything comes offline from PyPI packages (see prompt_registry.assets).

    python benchmarks/movielens_retrain.py --model minilm --users 300 --per-user 40 --epochs 15

On ML-100k the per-user mean is the strong baseline: prompts that cannot beat it learned nothing
beyond a bias.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from bench_store import machine_info  # same machine record as every benchmark

from prompt_registry import Registry
from prompt_registry.assets import minilm_path, movielens_100k, mpnet_path
from prompt_registry.data import subsample
from prompt_registry.training.config import TrainConfig

HERE = Path(__file__).resolve().parent
MODELS = {"minilm": minilm_path, "mpnet": mpnet_path}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="minilm")
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--per-user", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--patience", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=HERE / ".work" / "movielens")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    full = movielens_100k()
    data = subsample(full, args.workdir / f"ml-{args.users}x{args.per_user}", n_users=args.users,
                     per_user=args.per_user, min_interactions=args.per_user, seed=args.seed)
    reg_dir = args.workdir / f"registry-{args.model}-{int(time.time())}"
    with Registry.init(reg_dir, actor="bench") as registry:
        registry.register_model(args.model, MODELS[args.model]())
        config = TrainConfig(epochs=args.epochs, lr=args.lr, head_lr=args.head_lr, batch_size=args.batch_size,
                             patience=args.patience, seed=args.seed)
        result = registry.train_prompts(args.model, "rating", data, config=config, evaluate_split="test", progress=True)
    m = result.evaluation.metrics
    run = result.run
    report = {
        "what": "prompt training from scratch on MovieLens-100k (subsample), test RMSE vs baselines",
        "machine": {**machine_info(), "load_before": load_before, "load_after": os.getloadavg()},
        "data": {"source": str(full), "subsample": str(data), "users": args.users, "per_user": args.per_user,
                 "split": "per-user chronological 80/20, validation tail 10% of train"},
        "model": args.model, "config": config.to_dict(), "best_epoch": result.best_epoch, "history": result.history,
        "test": {"trained_prompts": {"rmse": m["rmse"], "mae": m["mae"]}, **m["baselines"], "n": m["n"]},
        "ledger": {"wall_seconds": run.wall_seconds, "device": run.device, "examples_seen": run.examples_seen,
                   "forward_tokens": run.forward_tokens, "backward_tokens": run.backward_tokens},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"movielens_retrain_{args.model}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    rows = [("trained prompts", m["rmse"], m["mae"]),
            ("global mean", m["baselines"]["global_mean"]["rmse"], m["baselines"]["global_mean"]["mae"]),
            ("per-user mean", m["baselines"]["user_mean"]["rmse"], m["baselines"]["user_mean"]["mae"])]
    md = [f"# MovieLens-100k, {args.model}: {args.users} users x last {args.per_user} ratings", "",
          f"Test split: {int(m['n'])} ratings. Best epoch {result.best_epoch} of {len(result.history)} (patience {args.patience}).", "",
          "| prompts | test RMSE | test MAE |", "|---|---:|---:|"]
    md += [f"| {name} | {rmse:.4f} | {mae:.4f} |" for name, rmse, mae in rows]
    md += ["", "| cost | value |", "|---|---:|", f"| wall seconds ({run.device}, {torch.get_num_threads()} threads) | {run.wall_seconds:.1f} |",
           f"| examples seen | {run.examples_seen} |", f"| forward token-passes | {run.forward_tokens} |",
           f"| backward token-passes | {run.backward_tokens} |", f"| load average before/after | {load_before} / {os.getloadavg()} |"]
    (args.out / f"{stem}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
