"""What makes a click task learn: templates and heads on realistic synthetic clicks, 3 seeds.

    python benchmarks/bench_click.py                     # 400 users x 30 impressions, 3 seeds (~10 min, 1 thread)

Per seed: ``make_clicks`` (Zipf item popularity, two favourite genres per user, impressions
drawn by exposure, the unclicked impressions as negatives: popularity is a strong baseline); on
a tiny encoder (BERT, width 48) and a tiny decoder (Llama, width 32), prompts trained from
scratch with each variant:

- ``plain``: the default template, the head on the backbone's answer features only;
- ``prior``: the head adds the item's prior score (logit of its training click-through rate);
- ``prior + scoring``: and scores the match of the user (hidden state at the prompt slot) and
  the candidate (the text after it) in a low-rank space;
- ``prior + scoring + history``: and the text lists the user's 5 most recent training items;
- ``random-init``: prompts frozen at init with the default click head (prior + scoring): what
  the head alone gets from the item text.

Test AUC and uAUC (mean over users), mean +- sd over seeds, against the popularity baseline and a
per-user genre click-rate model (what a user's history says, fitted on the training rows; not a
method of the library, a yardstick of the signal there is). A paired user bootstrap of each
variant's uAUC against popularity. Results: benchmarks/results/bench_click.{json,md}.
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
from prompt_registry.data import make_clicks  # noqa: E402
from prompt_registry.data.dataset import Dataset  # noqa: E402
from prompt_registry.data.synthetic import GENRES  # noqa: E402
from prompt_registry.testing.models import build_tiny_bert, build_tiny_llama  # noqa: E402
from prompt_registry.training import metrics  # noqa: E402
from prompt_registry.training.config import TrainConfig  # noqa: E402
from prompt_registry.training.stats import paired_bootstrap  # noqa: E402

HERE = Path(__file__).resolve().parent
VARIANTS = {
    "plain": {"item_prior": False, "candidate_scoring": False},
    "prior": {"item_prior": True, "candidate_scoring": False},
    "prior + scoring": {"item_prior": True, "candidate_scoring": True},
    "prior + scoring + history": {"item_prior": True, "candidate_scoring": True, "history_len": 5},
    "random-init": {"item_prior": True, "candidate_scoring": True, "freeze_prompts": True},
}


def genre_model(data: Path, test_fraction: float, valid_fraction: float) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Per-user metrics of popularity and of popularity + a per-user genre click-rate model."""
    d = Dataset.load(data)
    sp = d.split(test_fraction=test_fraction, valid_fraction=valid_fraction)
    genres = {i: np.array([g in t.split() for g in GENRES], float) for i, t in d.item_text.items()}
    y, train, test = d.labels.astype(float), sp.train, sp.test
    overall = y[train].mean()

    def logit(p: Any) -> Any:
        p = np.clip(p, 1e-4, 1 - 1e-4)
        return np.log(p / (1 - p))

    clicks: dict[str, list[float]] = {}
    for i, v in zip(d.items[train].tolist(), y[train].tolist()):
        clicks.setdefault(i, []).append(v)
    prior = np.array([logit((sum(clicks.get(i, [])) + overall) / (len(clicks.get(i, [])) + 1)) for i in d.items[test].tolist()])
    taste: dict[str, list[np.ndarray]] = {}
    for u, i, v in zip(d.users[train].tolist(), d.items[train].tolist(), y[train].tolist()):
        acc = taste.setdefault(u, [np.zeros(len(GENRES)), np.zeros(len(GENRES))])
        acc[0] += genres[i] * v
        acc[1] += genres[i]
    personal = np.array([(logit((taste[u][0] + 2 * overall) / (taste[u][1] + 2)) - logit(overall)) @ genres[i]
                         for u, i in zip(d.users[test].tolist(), d.items[test].tolist())])
    users, labels = d.users[test], y[test]
    return (metrics.per_user(users, 1 / (1 + np.exp(-prior)), labels, "click"),
            metrics.per_user(users, 1 / (1 + np.exp(-(prior + personal))), labels, "click"))


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    root = args.workdir / f"seed{seed}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    data = make_clicks(root / "data", n_users=args.users, impressions=args.impressions, seed=seed)
    out: dict[str, Any] = {"seed": seed, "rows": {}}
    popularity, genre = genre_model(data, 0.2, 0.1)
    out["rows"]["popularity"] = {"per_user": popularity}
    out["rows"]["per-user genre model (yardstick)"] = {"per_user": genre}
    with Registry.init(root / "registry", actor="bench") as reg:
        reg.register_model("tiny-bert", build_tiny_bert(root / "tiny-bert", hidden_size=48, seed=1))
        reg.register_model("tiny-llama", build_tiny_llama(root / "tiny-llama", hidden_size=32, seed=2))
        for model in ("tiny-bert", "tiny-llama"):
            for name, options in VARIANTS.items():
                started = time.perf_counter()
                config = TrainConfig(epochs=args.epochs, lr=args.lr, patience=3, seed=seed, **options)
                result = reg.train_prompts(model, "click", data, config=config, progress=False, evaluate_split="test")
                assert result.evaluation is not None
                evaluation = reg.get_evaluation(result.evaluation.id)
                row = {"per_user": evaluation.per_user, "auc": evaluation.metrics["auc"], "uauc": evaluation.metrics["uauc"],
                       "seconds": round(time.perf_counter() - started, 1), "best_epoch": result.best_epoch,
                       "token_passes": int((result.run.forward_tokens or 0) + (result.run.backward_tokens or 0))}
                out["rows"][f"{model}: {name}"] = row
                print(f"  [seed {seed}] {model:<10} {name:<28} AUC {row['auc']:.4f} uAUC {row['uauc']:.4f} "
                      f"(popularity uAUC {evaluation.metrics['baselines']['popularity']['uauc']:.4f}) {row['seconds']:5.1f} s", flush=True)
    return out


def summarize(seeds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for name in seeds[0]["rows"]:
        uauc = [float(np.mean([m["auc"] for m in s["rows"][name]["per_user"].values() if "auc" in m])) for s in seeds]
        boots = [paired_bootstrap(s["rows"][name]["per_user"], s["rows"]["popularity"]["per_user"], "click", seed=s["seed"]) for s in seeds]
        auc = [s["rows"][name]["auc"] for s in seeds if "auc" in s["rows"][name]]
        rows.append({"name": name, "uauc": mean_sd(uauc), "auc": mean_sd(auc) if auc else None,
                     "vs_popularity": {"diff_mean": float(np.mean([b["diff"] for b in boots])),
                                       "se_mean": float(np.mean([b["se"] for b in boots])), "per_seed": boots}})
    return rows


def markdown(report: dict[str, Any]) -> str:
    a = report["args"]
    lines = [f"# Click tasks: what learns ({a['users']} users x {a['impressions']} impressions, seeds {a['seeds']})", "",
             f"Command: `{report['command']}`. uAUC = mean per-user test AUC; mean +- sd over seeds; "
             "the last column is the paired user bootstrap against popularity (uAUC difference, mean paired SE).", "",
             "| row | AUC | uAUC | uAUC vs popularity |", "|---|---:|---:|---:|"]
    for r in report["summary"]:
        auc = f"{r['auc']['mean']:.4f} +- {r['auc']['sd']:.4f}" if r["auc"] else ""
        v = r["vs_popularity"]
        lines.append(f"| {r['name']} | {auc} | {r['uauc']['mean']:.4f} +- {r['uauc']['sd']:.4f} | {v['diff_mean']:+.4f} (SE {v['se_mean']:.4f}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument("--impressions", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=HERE / ".work" / "click")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--name", default="bench_click")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    seeds = [run_seed(args, seed) for seed in args.seeds]
    report = {"what": "click tasks: templates and heads vs popularity", "command": "python benchmarks/bench_click.py " + " ".join(sys.argv[1:]),
              "machine": {**machine_info(), "load": os.getloadavg()}, "args": args_record(args), "summary": summarize(seeds)}
    write_results(args.out, args.name, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
