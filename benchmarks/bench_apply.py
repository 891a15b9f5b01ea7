"""Apply throughput: map N users' stored prompts through a stored adapter (no training).

What is measured, on one fresh SQLite registry directory (and Postgres with ``--postgres``):

* **Baseline, same process, same bytes:** a raw store round trip: ``store.read_rows`` of the N
  source rows, then ``create_array`` + ``write_rows`` (fsynced) of N target-width rows. This is the
  floor any apply pays in I/O.
* **Adapter alone:** the adapter's forward pass over the N source rows in the same batches
  ``apply_adapter`` uses (torch, ``--threads`` threads): the floor it pays in compute.
* **``apply_adapter`` of everyone** (a full new version) and **of ``--incremental`` new users**
  (an incremental version on the newest set the adapter produced): wall seconds and prompts/s,
  and the full apply as a ratio of baseline + adapter.

The adapter is the migration method's default Phi for the given widths with random weights (the
throughput does not depend on what it learned); the models are tiny local folders that only need
to be fingerprinted (apply never loads a backbone).

Results: ``benchmarks/results/bench_apply.json`` + ``.md``. Run::

    python benchmarks/bench_apply.py                     # 100,000 users, 384 -> 576, SQLite
    python benchmarks/bench_apply.py --users 20000 --postgres
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
import torch
from bench_store import DEFAULT_PG_URL, RESULTS_DIR, machine_info, make_model_dir

from prompt_registry import Registry
from prompt_registry.migration.puma.adapter import AdapterConfig, Phi

TASK = "rate"
APPLY_BATCH_USERS = 4096  # what apply_adapter maps per forward pass


def build(location: str, store: str | None, work: Path, n: int, source_width: int, target_width: int,
          seed: int) -> tuple[Registry, int, list[str]]:
    """A registry with a source set of ``n`` users and a stored adapter source -> target."""
    reg = Registry.init(location, store=store, actor="bench")
    reg.register_model("source", make_model_dir(work / f"source-{uuid.uuid4().hex[:6]}", source_width))
    reg.register_model("target", make_model_dir(work / f"target-{uuid.uuid4().hex[:6]}", target_width))
    reg.add_task(TASK, "rating")
    rng = np.random.default_rng(seed)
    users = [f"user{i:07d}" for i in range(n)]
    reg.import_prompts("source", TASK, rng.normal(0, 0.02, (n, 1, source_width)).astype(np.float32), users,
                       create_users=True, alias="production")
    torch.manual_seed(seed)
    phi = Phi(AdapterConfig((source_width,), target_width))
    head = reg.put_artifact("head", f"target/{TASK}", {"w": torch.zeros(target_width)}, task=TASK, target_model="target")
    adapter = reg.put_artifact("adapter", f"source->target/{TASK}", phi.state_dict(), task=TASK, target_model="target",
                               source_models=["source"], config={"adapter": phi.config.to_dict(), "head_id": head.id})
    return reg, adapter.id, users


def raw_round_trip(reg: Registry, n: int, target_width: int) -> float:
    """Read the source rows from the store and write target-width rows, fsynced: the I/O floor."""
    store = reg.store
    source = reg.get_set(f"source/{TASK}@v1")
    started = time.perf_counter()
    rows = store.read_rows(source.store_key, slice(0, n))
    out = np.zeros((n, 1, target_width), dtype=np.float32)
    out[:, :, : min(rows.shape[2], target_width)] = rows[:, :, :target_width]
    key = f"bench-{uuid.uuid4().hex}"
    store.create_array(key, out.shape, "float32")
    store.write_rows(key, 0, out)
    elapsed = time.perf_counter() - started
    store.delete(key)
    return elapsed


def adapter_forward(reg: Registry, adapter_id: int, n: int) -> float:
    _, tensors = reg.load_artifact(adapter_id)
    phi = Phi(AdapterConfig.from_dict(reg.get_artifact(adapter_id).config["adapter"]))
    phi.load_state_dict(tensors)
    phi.eval()
    rows = torch.from_numpy(reg.store.read_rows(reg.get_set(f"source/{TASK}@v1").store_key, slice(0, n)))
    started = time.perf_counter()
    with torch.no_grad():
        for i in range(0, n, APPLY_BATCH_USERS):
            phi(rows[i : i + APPLY_BATCH_USERS])
    return time.perf_counter() - started


def run_backend(name: str, location: str, store: str | None, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    reg, adapter_id, users = build(location, store, work, args.users, args.source_width, args.target_width, args.seed)
    rng = np.random.default_rng(args.seed + 1)
    try:
        full = []
        for repeat in range(args.repeats):
            if repeat:  # a new source version (one user changed), so that apply writes anew instead of
                # returning the version its idempotency key already committed
                reg.import_prompts("source", TASK, rng.normal(0, 0.02, (1, 1, args.source_width)).astype(np.float32),
                                   users[:1], base=f"source/{TASK}@production", alias="production")
            started = time.perf_counter()
            cpu = time.process_time()
            result = reg.apply_adapter(adapter_id, progress=False)
            full.append((time.perf_counter() - started, time.process_time() - cpu))
            assert result.n_users == args.users, result
        incremental = None
        if args.incremental:  # a newer source version adds users; apply maps only them
            new_users = [f"new{i:07d}" for i in range(args.incremental)]
            reg.import_prompts("source", TASK, rng.normal(0, 0.02, (len(new_users), 1, args.source_width)).astype(np.float32),
                               new_users, create_users=True, base=f"source/{TASK}@production", alias="production")
            started = time.perf_counter()
            inc = reg.apply_adapter(adapter_id, users=new_users, progress=False)
            seconds = time.perf_counter() - started
            assert inc.n_users == args.users + len(new_users), inc
            incremental = {"users": len(new_users), "seconds": round(seconds, 4), "prompts_per_s": round(len(new_users) / seconds)}
        raw = min(raw_round_trip(reg, args.users, args.target_width) for _ in range(args.repeats))
        forward = min(adapter_forward(reg, adapter_id, args.users) for _ in range(args.repeats))
    finally:
        reg.close()
    best = min(w for w, _ in full)
    return {
        "backend": name,
        "apply_all": {"seconds_best": round(best, 4), "seconds_median": round(statistics.median(w for w, _ in full), 4),
                      "cpu_seconds": [round(c, 3) for _, c in full], "prompts_per_s": round(args.users / best)},
        "apply_incremental": incremental,
        "baseline": {"raw_store_read_write_s": round(raw, 4), "adapter_forward_s": round(forward, 4)},
        "ratio_vs_raw_io": round(best / raw, 2),
        "ratio_vs_raw_io_plus_forward": round(best / (raw + forward), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--incremental", type=int, default=10_000, help="new users mapped as an incremental version")
    parser.add_argument("--source-width", type=int, default=384)
    parser.add_argument("--target-width", type=int, default=576)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--postgres", action="store_true", help=f"also run on Postgres ({DEFAULT_PG_URL})")
    parser.add_argument("--pg-url", default=os.environ.get("PROMPT_REGISTRY_TEST_PG_URL", DEFAULT_PG_URL))
    parser.add_argument("--workdir", type=Path, default=Path(__file__).resolve().parent / ".work")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    parser.add_argument("--tag", default="", help="suffix of the result files (e.g. _before)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        results.append(run_backend("sqlite", str(work / "registry"), None, work, args))
        if args.postgres:
            schema = f"bench_{uuid.uuid4().hex[:10]}"
            admin = sa.create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
            try:
                sep = "&" if "?" in args.pg_url else "?"
                results.append(run_backend("postgres", f"{args.pg_url}{sep}options=-csearch_path%3D{schema}",
                                           str(work / "pg-store"), work, args))
            finally:
                with admin.connect() as conn:
                    conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
                admin.dispose()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
    report = {"what": "apply_adapter throughput vs a raw store round trip and the adapter's forward pass",
              "machine": {**machine_info(), "load": os.getloadavg()}, "git_head": head,
              "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"bench_apply{args.tag}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    lines = [f"# Apply throughput: {args.users:,} users, width {args.source_width} -> {args.target_width} (git {head})", "",
             f"{args.threads} torch threads, best of {args.repeats}. Baselines in the same process.", "",
             "| backend | apply all (s) | prompts/s | raw store read+write (s) | adapter forward (s) | apply / raw I/O "
             "| apply / (raw I/O + forward) | incremental |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        inc = r["apply_incremental"]
        inc_text = f"{inc['users']:,} users in {inc['seconds']:.2f} s ({inc['prompts_per_s']:,}/s)" if inc else "-"
        lines.append(f"| {r['backend']} | {r['apply_all']['seconds_best']:.2f} | {r['apply_all']['prompts_per_s']:,} | "
                     f"{r['baseline']['raw_store_read_write_s']:.3f} | {r['baseline']['adapter_forward_s']:.3f} | "
                     f"{r['ratio_vs_raw_io']} | {r['ratio_vs_raw_io_plus_forward']} | {inc_text} |")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
