"""Does a per-user prompt add anything on real MovieLens ratings, and does the head make it? The
headroom (random-init -> retrain, in paired standard errors) of one real model under each rating
head, on the same users and split.

The quality benchmarks on MovieLens-100k could not rank migration methods because the headroom was
0.2-1.4 paired SE: a head reading the item text (random-init: prompts frozen at init) did as well
as trained prompts. The rating head can add the item's prior (its training mean rating, with a
learned weight) and candidate scoring (a low-rank match of the user, at the prompt slot, with the
item text after it); both are on by default for click tasks only. This measures, for the plain
head, the item prior, and prior + scoring: test RMSE of random-init and of the retrain, the paired
user bootstrap of the difference, and the per-user-mean baseline.

    python benchmarks/bench_headroom.py                        # MiniLM-L6, 300 users x 40, seed 0
    python benchmarks/bench_headroom.py --users 100 --epochs 2  # a quick look

Results: ``benchmarks/results/bench_headroom.{json,md}``. Nothing is selected on the test split:
epochs are kept on the validation tail of the training rows.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import machine_info, write_results  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
HEADS = {"plain": {"item_prior": False, "candidate_scoring": False}, "item prior": {"item_prior": True, "candidate_scoring": False},
         "item prior + scoring": {"item_prior": True, "candidate_scoring": True}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="minilm", choices=["minilm", "mpnet"])
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--per-user", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--patience", type=int, default=2)
    p.add_argument("--head-lr", type=float, default=1e-2, help="the cpu paper scale's rate for real-model heads")
    p.add_argument("--heads", nargs="*", default=list(HEADS), choices=list(HEADS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    p.add_argument("--name", default="bench_headroom")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from prompt_registry import Registry
    from prompt_registry.assets import minilm_path, movielens_100k, mpnet_path
    from prompt_registry.data.dataset import Dataset, subsample
    from prompt_registry.training.config import TrainConfig
    from prompt_registry.training.stats import paired_bootstrap, pooled

    work = Path(tempfile.mkdtemp(prefix="bench-headroom-"))
    rows: list[dict[str, Any]] = []
    try:
        data = Dataset.load(subsample(movielens_100k(), work / "ml", n_users=args.users, per_user=args.per_user,
                                      min_interactions=args.per_user, seed=args.seed))
        with Registry.init(work / "registry", actor="bench") as reg:
            reg.register_model(args.model, minilm_path() if args.model == "minilm" else mpnet_path())
            per_user_mean = None
            for head in args.heads:
                results = {}
                for kind, freeze in (("random-init", True), ("retrain", False)):
                    config = TrainConfig(epochs=args.epochs, patience=args.patience, head_lr=args.head_lr, seed=args.seed,
                                         freeze_prompts=freeze, **HEADS[head])
                    started = time.perf_counter()
                    trained = reg.train_prompts(args.model, "rating", data, config=config, progress=False, evaluate_split="test")
                    assert trained.evaluation is not None
                    ev = reg.get_evaluation(trained.evaluation.id)
                    results[kind] = {"rmse": trained.evaluation.metrics["rmse"], "per_user": ev.per_user or {},
                                     "token_passes": trained.run.token_passes, "seconds": round(time.perf_counter() - started, 1),
                                     "best_epoch": trained.best_epoch}
                    per_user_mean = trained.evaluation.metrics.get("baselines", {}).get("user_mean", {}).get("rmse", per_user_mean)
                    print(f"{head:22s} {kind:12s} rmse {results[kind]['rmse']:.4f}  {results[kind]['seconds']} s", flush=True)
                boot = paired_bootstrap(results["random-init"]["per_user"], results["retrain"]["per_user"], "rating")
                users = sorted(results["retrain"]["per_user"])
                rows.append({"head": head, **HEADS[head],
                             "random_init": pooled(results["random-init"]["per_user"], users, "rating"),
                             "retrain": pooled(results["retrain"]["per_user"], users, "rating"),
                             "headroom": boot["diff"], "se": boot["se"], "headroom_se": boot["diff"] / boot["se"] if boot["se"] else None,
                             "users": boot["users"], "retrain_best_epoch": results["retrain"]["best_epoch"],
                             "seconds": {k: v["seconds"] for k, v in results.items()},
                             "token_passes": {k: v["token_passes"] for k, v in results.items()}})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report = {"what": "headroom random-init -> retrain per rating head, one real model, MovieLens-100k",
              "command": shlex.join(["python", "benchmarks/bench_headroom.py", *(argv if argv is not None else sys.argv[1:])]),
              "machine": machine_info(), "args": {k: str(v) for k, v in vars(args).items()}, "per_user_mean": per_user_mean, "rows": rows}
    lines = [f"# Per-user headroom on MovieLens-100k: {args.model}, {args.users} users x {args.per_user}, seed {args.seed}", "",
             __doc__.split("\n\n")[1].replace("\n", " "), "",
             f"Command: `{report['command']}`. Per-user-mean baseline: {per_user_mean:.4f}. Retrain and random-init: "
             f"{args.epochs} epochs, patience {args.patience}, head lr {args.head_lr:g}, best validation epoch kept.", "",
             "| head | random-init RMSE | retrain RMSE | headroom (random-init - retrain) | paired SE | headroom / SE | s (random-init / retrain) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['head']} | {r['random_init']:.4f} | {r['retrain']:.4f} | {r['headroom']:+.4f} | {r['se']:.4f} | "
                     f"{r['headroom_se']:.1f} | {r['seconds']['random-init']} / {r['seconds']['retrain']} |")
    write_results(args.out, args.name, report, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
