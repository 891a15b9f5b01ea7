"""Serving benchmark: ``PromptReader`` on a set of ``--users`` x 1 x ``--width`` prompts (SQLite +
local Zarr, this process).

* ``open_to_first_batch_s``: from ``Registry.reader(...)`` to the first 32-user batch returned
  (the resident table loads in the background meanwhile); then until the table is resident;
* ``batch`` p50/p99 for 1, 32 and 256 random users, resident and LRU (budget 0; cold and warm:
  the LRU holds ``--lru-users``), against a baseline in the same process: ``get_prompts`` of the
  same users (a verified read through the catalogue per call);
* predictions per second of ``PromptReader.predict`` with the tiny Llama (batch 64, and one pair
  at a time), against ``evaluate`` of the same set in this process;
* ``refresh`` latency: after the alias moves to another version (until the swap returns, and
  until the new table is resident), and a no-change refresh (the catalogue check alone).

Targets (issue 18): a 256-user gather p99 < 1 ms from the resident table; open of a
100,000 x 1 x 576 set to first batch < 0.5 s.

Results: ``benchmarks/results/bench_serving.{json,md,png}``.

    python benchmarks/bench_serving.py                 # 100,000 x 576
    python benchmarks/bench_serving.py --users 20000   # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import args_record, machine_info, make_model_dir, publish, pyplot  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def percentiles(times: list[float]) -> dict[str, float]:
    arr = np.array(times) * 1000
    return {"n": len(times), "p50_ms": round(float(np.percentile(arr, 50)), 4), "p99_ms": round(float(np.percentile(arr, 99)), 4),
            "mean_ms": round(float(arr.mean()), 4)}


def timed(fn: Any, picks: list[list[str]]) -> dict[str, float]:
    fn(picks[0])  # warm-up
    times = []
    for users in picks:
        start = time.perf_counter()
        fn(users)
        times.append(time.perf_counter() - start)
    return percentiles(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--width", type=int, default=576)
    p.add_argument("--repeats", type=int, default=1000)
    p.add_argument("--lru-users", type=int, default=10_000)
    p.add_argument("--predict-pairs", type=int, default=2000, help="About how many test pairs the predictions section scores.")
    p.add_argument("--name", default="bench_serving")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    import torch

    from prompt_registry import Registry
    from prompt_registry.serving import ReaderConfig

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    users = [f"user-{i:07d}" for i in range(args.users)]
    report: dict[str, Any] = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "command": "python benchmarks/bench_serving.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                              "machine": machine_info(), "args": args_record(args)}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        reg = Registry.init(Path(tmp) / "reg", actor="bench")
        reg.register_model("m", make_model_dir(Path(tmp) / "model", args.width))
        reg.add_task("rate", "rating")
        reg.add_users(users)
        data = [rng.standard_normal((args.users, 1, args.width), dtype=np.float32) for _ in range(2)]
        v1 = reg.import_prompts("m", "rate", data[0], users, alias="production")
        v2 = reg.import_prompts("m", "rate", data[1], users)
        reg.close()
        reg = Registry.open(Path(tmp) / "reg")  # cold: nothing cached from the imports
        first = users[:32]
        start = time.perf_counter()
        reader = reg.reader("m", "rate", config=ReaderConfig(check_every_seconds=None))
        got = reader.batch(first)
        open_first = time.perf_counter() - start
        assert np.array_equal(got.numpy(), data[0][:32])
        reader.wait_resident()
        resident_after = time.perf_counter() - start
        report["open"] = {"open_to_first_batch_s": round(open_first, 4), "open_to_resident_s": round(resident_after, 4),
                          "nbytes": int(data[0].nbytes)}
        print(f"open -> first batch {open_first * 1000:.1f} ms, -> resident {resident_after:.2f} s", flush=True)
        lru = reg.reader("m", "rate", config=ReaderConfig(memory_budget_bytes=0, lru_users=args.lru_users, check_every_seconds=None))
        batches: dict[str, Any] = {}
        for n in (1, 32, 256):
            picks = [[users[int(i)] for i in rng.integers(0, args.users, n)] for _ in range(args.repeats)]
            hot = [users[: args.lru_users // 2][int(i)] for i in rng.integers(0, args.lru_users // 2, n)]
            lru.batch(users[: args.lru_users // 2])  # the LRU holds the hot half
            batches[str(n)] = {
                "resident": timed(reader.batch, picks),
                "lru_random": timed(lru.batch, picks[: max(50, args.repeats // 10)]),
                "lru_hot": timed(lru.batch, [hot] * max(50, args.repeats // 10)),
                "baseline_get_prompts": timed(lambda u: reg.get_prompts(u, "m", "rate", alias="production"), picks[: max(50, args.repeats // 10)]),
            }
            print(f"  {n} users: resident p99 {batches[str(n)]['resident']['p99_ms']:.3f} ms, LRU (random) p99 "
                  f"{batches[str(n)]['lru_random']['p99_ms']:.2f} ms, get_prompts p99 {batches[str(n)]['baseline_get_prompts']['p99_ms']:.2f} ms",
                  flush=True)
        report["batch"] = batches
        refresh: dict[str, Any] = {}
        start = time.perf_counter()
        assert not reader.refresh()
        refresh["no_change_s"] = round(time.perf_counter() - start, 4)
        reg.set_alias("production", v2.id)
        start = time.perf_counter()
        assert reader.refresh()
        refresh["swap_s"] = round(time.perf_counter() - start, 4)
        reader.wait_resident()
        refresh["swap_to_resident_s"] = round(time.perf_counter() - start, 4)
        assert reader.set.id == v2.id and np.array_equal(reader.batch(first).numpy(), data[1][:32])
        report["refresh"] = refresh
        reg.close()
        del v1
        report["predict"] = bench_predict(Path(tmp) / "predict", args.predict_pairs)
    gather = report["batch"]["256"]["resident"]["p99_ms"]
    report["gather_256_p99_ms"] = gather
    report["open_to_first_batch_s"] = report["open"]["open_to_first_batch_s"]
    report["targets"] = [
        {"name": "256-user gather p99 from the resident table", "value": gather, "goal": "< 1 ms", "met": gather < 1.0},
        {"name": f"open of a {args.users:,} x 1 x {args.width} set to first batch", "value": report["open_to_first_batch_s"],
         "goal": "< 0.5 s (100,000 x 1 x 576)", "met": report["open_to_first_batch_s"] < 0.5 and args.users >= 100_000},
    ]
    publish(args.out, args.name, report, markdown(report), plot)
    return 0


def plot(r: dict[str, Any], path: Path) -> None:
    """Batch latency p50 / p99 by batch size: resident, LRU and the get_prompts baseline (log scale)."""
    plt = pyplot()
    sizes = list(r["batch"])
    modes = [("resident", "resident"), ("lru_random", "LRU, random users"), ("lru_hot", "LRU, hot users"), ("baseline_get_prompts", "get_prompts")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, q in zip(axes, ("p50_ms", "p99_ms")):
        for key, label in modes:
            ax.plot([int(n) for n in sizes], [r["batch"][n][key][q] for n in sizes], marker="o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("users per batch")
        ax.set_title(q.replace("_ms", ""))
    axes[0].set_ylabel("ms")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"PromptReader.batch, {r['args']['users']:,} x 1 x {r['args']['width']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def bench_predict(root: Path, n_pairs: int) -> dict[str, Any]:
    """Predictions per second of ``PromptReader.predict`` with the tiny Llama (2 layers, width 32),
    against ``evaluate`` of the same set (the training code's batched pass) in this process."""
    from prompt_registry import Registry
    from prompt_registry.data.dataset import Dataset
    from prompt_registry.data.synthetic import make_synthetic
    from prompt_registry.serving import ReaderConfig
    from prompt_registry.testing.models import build_tiny_llama
    from prompt_registry.training.config import TrainConfig

    data_dir = make_synthetic(root / "data", n_users=200, n_items=100, per_user=max(5, n_pairs // 40), seed=0)
    reg = Registry.init(root / "reg", actor="bench")
    reg.register_model("tiny", build_tiny_llama(root / "tiny-llama", hidden_size=32))
    trained = reg.train_prompts("tiny", "rate", data_dir, config=TrainConfig(epochs=1), progress=False, alias="production")
    data = Dataset.load(data_dir)
    run = trained.run.config
    test = data.split(test_fraction=run["test_fraction"], valid_fraction=run["valid_fraction"]).test
    users, items = data.users[test].tolist(), data.items[test].tolist()
    reader = reg.reader("tiny", "rate", config=ReaderConfig(check_every_seconds=None))
    reader.predict(users[:64], items[:64], data=data)  # the backbone and head load once
    out: dict[str, Any] = {"pairs": len(users), "model": "tiny Llama, 2 layers, width 32, one torch thread"}
    for batch in (1, 64):
        count = len(users) if batch > 1 else min(len(users), 300)
        start = time.perf_counter()
        reader.predict(users[:count], items[:count], data=data, batch_size=batch)
        out[f"predictions_per_s_batch_{batch}"] = round(count / (time.perf_counter() - start), 1)
    start = time.perf_counter()
    reg.evaluate(trained.set.id, data, split="test", batch_size=64)
    out["baseline_evaluate_examples_per_s"] = round(len(users) / (time.perf_counter() - start), 1)
    out["predict_over_evaluate"] = round(out["predictions_per_s_batch_64"] / out["baseline_evaluate_examples_per_s"], 3)
    reg.close()
    print(f"predict: {out['predictions_per_s_batch_64']:.0f}/s at batch 64 ({out['predict_over_evaluate']:.2f}x evaluate)", flush=True)
    return out


def markdown(r: dict[str, Any]) -> str:
    a = r["args"]
    lines = ["# bench_serving", "", f"Run {r['started']}; command: `{r['command']}`. {a['users']:,} users x 1 x {a['width']} float32 "
             f"({r['open']['nbytes'] / 1e6:.0f} MB), SQLite + local Zarr, one torch thread.", "",
             f"Open to first batch (32 users): **{r['open']['open_to_first_batch_s'] * 1000:.1f} ms**; to resident: "
             f"{r['open']['open_to_resident_s']:.2f} s.", "",
             "| users per batch | resident p50 / p99 ms | LRU, random users p50 / p99 ms | LRU, hot users p50 / p99 ms | "
             "baseline get_prompts p50 / p99 ms |", "|---:|---:|---:|---:|---:|"]
    for n, b in r["batch"].items():
        cells = [f"{b[k]['p50_ms']:.3f} / {b[k]['p99_ms']:.3f}" for k in ("resident", "lru_random", "lru_hot", "baseline_get_prompts")]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    f = r["refresh"]
    lines += ["", f"Refresh: no change {f['no_change_s'] * 1000:.1f} ms; alias moved: swap {f['swap_s'] * 1000:.1f} ms, new table resident "
              f"after {f['swap_to_resident_s']:.2f} s.", ""]
    if "predict" in r:
        q = r["predict"]
        lines += [f"Predictions ({q['model']}, {q['pairs']:,} test pairs): **{q['predictions_per_s_batch_64']:,.0f}/s** at batch 64, "
                  f"{q['predictions_per_s_batch_1']:,.0f}/s one pair at a time; `evaluate` of the same set (baseline, same process): "
                  f"{q['baseline_evaluate_examples_per_s']:,.0f} examples/s ({q['predict_over_evaluate']:.2f}x).", ""]
    lines += ["## Targets", "", "| target | value | goal | met |", "|---|---:|---|---|"]
    lines += [f"| {t['name']} | {t['value']} | {t['goal']} | {'yes' if t['met'] else 'NO'} |" for t in r["targets"]]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
