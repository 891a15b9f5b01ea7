"""UI benchmark: how long each page (and its JSON) takes to render for a registry of ``--users``
users and ``--sets`` sets (issue 19: 100,000 and 50).

The registry (SQLite + local Zarr, built here): two models, one rating task; the sets alternate
between the models: every fifth a full version of all users, the others incremental versions of
``--delta`` users on the last full one (so a user is in many versions, as after months of
refinement); ``production`` moved ``--moves`` times per model; a stored plan; a train run, a
random-init run and a migration run with test evaluations carrying per-user metrics for every
user (what a real evaluation stores), and a purged user.

Each page is requested ``--repeats`` times through Starlette's test client (the whole ASGI app:
routing, the views over the public API, rendering; no network), after one warm-up request; p50 and
p99 per page in milliseconds. The baseline, in the same process: the public API calls a page makes,
without rendering, for the set page (``get_set`` + both lineage walks + ``list_evaluations``).

Results: ``benchmarks/results/bench_ui.{json,md,png}``.

    python benchmarks/bench_ui.py                 # 100,000 users, 50 sets
    python benchmarks/bench_ui.py --users 5000    # a quick look
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
    return {"n": len(times), "p50_ms": round(float(np.percentile(arr, 50)), 2), "p99_ms": round(float(np.percentile(arr, 99)), 2)}


def build(root: Path, args: argparse.Namespace, say: Any) -> dict[str, Any]:
    from prompt_registry import CostLedger, Registry

    rng = np.random.default_rng(0)
    reg = Registry.init(root / "reg", actor="bench")
    widths = {"old": 64, "new": 96}
    for name, width in widths.items():
        reg.register_model(name, make_model_dir(root / name, width))
    reg.add_task("rate", "rating")
    users = [f"user-{i:07d}" for i in range(args.users)]
    reg.add_users(users)
    last_full: dict[str, int] = {}
    made: list[Any] = []
    started = time.perf_counter()
    for i in range(args.sets):
        model = "old" if i % 2 == 0 else "new"
        width = widths[model]
        if model not in last_full or i % 5 in (0, 1):
            s = reg.import_prompts(model, "rate", rng.standard_normal((args.users, 1, width), dtype=np.float32), users)
            last_full[model] = s.id
        else:
            picks = sorted(rng.choice(args.users, args.delta, replace=False).tolist())
            s = reg.import_prompts(model, "rate", rng.standard_normal((args.delta, 1, width), dtype=np.float32), [users[j] for j in picks],
                                   base=last_full[model])
        made.append(s)
    say(f"{args.sets} sets in {time.perf_counter() - started:.0f} s")
    per_model = {m: [s for s in made if s.model == m] for m in widths}
    for m, sets in per_model.items():
        for k in range(args.moves):
            reg.set_alias("production", sets[int(rng.integers(len(sets)))].id, reason=f"move {k}")
    new_sets = per_model["new"]
    runs = {}
    for kind, frozen, target in (("train", False, new_sets[0]), ("train", True, new_sets[1]), ("migrate", None, new_sets[2])):
        config: dict[str, Any] = {"freeze_prompts": frozen} if kind == "train" else {
            "method": "puma", "sources": [{"set_id": per_model["old"][0].id, "model": "old"}], "selected_users": users[: args.users // 50]}
        run = reg.start_run(kind, model="new", task="rate", config=config)
        cost = {"train": 2_000_000 if not frozen else 400_000, "migrate": 60_000}[kind]
        results = {"mapped_set": target.id} if kind == "migrate" else {}
        reg.finish_run(run.id, ledger=CostLedger(12.0, "cpu", cost // 10, cost // 2, cost // 2), results=results)
        runs[kind if kind == "migrate" else ("random-init" if frozen else "retrain")] = run.id
        members = reg.list_set_users(target.id)
        per_user = {u: {"rmse": float(rng.uniform(0.7, 1.3)), "n": 4.0} for u in members}
        reg.record_evaluation(target.id, dataset="bench#0", split="test", metrics={"rmse": float(rng.uniform(0.9, 1.1)), "n": 4.0 * len(members)},
                              per_user=per_user, run_id=run.id)
    try:
        plan = reg.planner.plan("new", "rate", strategy="retrain")
        plan_id = plan.id
    except Exception as exc:  # noqa: BLE001 - the plan page is then left out, and the report says why
        say(f"no plan ({exc})")
        plan_id = None
    reg.purge_user(users[1], reason="bench")
    focus = next(s for s in reversed(made) if s.base_id is not None)
    return {"reg": reg, "users": users, "sets": made, "runs": runs, "plan": plan_id, "focus": focus}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--sets", type=int, default=50)
    p.add_argument("--delta", type=int, default=5_000, help="Users in each incremental version.")
    p.add_argument("--moves", type=int, default=30, help="Moves of production per model.")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--name", default="bench_ui")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    from starlette.testclient import TestClient

    from prompt_registry.ui import create_app

    report: dict[str, Any] = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "command": "python benchmarks/bench_ui.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                              "machine": machine_info(), "args": args_record(args)}
    with tempfile.TemporaryDirectory(prefix="bench-ui-") as tmp:
        built = build(Path(tmp), args, lambda m: print(m, flush=True))
        reg, focus, users = built["reg"], built["focus"], built["users"]
        client = TestClient(create_app(reg))
        user = users[7]
        pages = {"overview": "/", "sets (first page)": "/sets", "set": f"/sets/{focus.id}", "alias timeline": "/aliases/production?model=new&task=rate",
                 "migration": f"/migrations/{built['runs']['migrate']}", "user": f"/users/{user}", "runs": "/runs",
                 **({"plan": f"/plans/{built['plan']}"} if built["plan"] is not None else {})}
        api = {"overview": "/api/overview", "sets (first page)": "/api/sets", "set": f"/api/sets/{focus.id}",
               "alias timeline": "/api/aliases/production/history?model=new&task=rate", "migration": f"/api/migrations/{built['runs']['migrate']}",
               "user": f"/api/users/{user}/audit", "runs": "/api/runs", "users (page)": "/api/users?limit=100&offset=50000",
               **({"plan": f"/api/plans/{built['plan']}"} if built["plan"] is not None else {})}
        timings: dict[str, Any] = {"pages": {}, "api": {}}
        for group, paths in (("pages", pages), ("api", api)):
            for name, path in paths.items():
                first = client.get(path)
                assert first.status_code == 200, (path, first.text[:300])
                times = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    response = client.get(path)
                    times.append(time.perf_counter() - start)
                    assert response.status_code == 200
                timings[group][name] = {**percentiles(times), "bytes": len(first.content)}
                print(f"{group} {name}: p50 {timings[group][name]['p50_ms']:.1f} ms, p99 {timings[group][name]['p99_ms']:.1f} ms", flush=True)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            reg.get_set(focus.id), reg.lineage(focus.id), reg.lineage(focus.id, down=True), reg.list_evaluations(focus.id)
            times.append(time.perf_counter() - start)
        timings["baseline_set_page_api_calls"] = percentiles(times)
        report["timings"] = timings
        report["registry"] = {"users": len(users), "sets": len(built["sets"]), "plan": built["plan"] is not None}
        reg.close()
    publish(args.out, args.name, report, markdown(report), plot)
    return 0


def plot(r: dict[str, Any], path: Path) -> None:
    """p50 and p99 per page (HTML), as horizontal bars."""
    plt = pyplot()
    pages = r["timings"]["pages"]
    names = list(pages)
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    y = np.arange(len(names))
    ax.barh(y + 0.2, [pages[n]["p50_ms"] for n in names], 0.4, label="p50")
    ax.barh(y - 0.2, [pages[n]["p99_ms"] for n in names], 0.4, label="p99")
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("ms per page (HTML)")
    ax.set_title(f"UI pages, {r['args']['users']:,} users x {r['args']['sets']} sets")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(r: dict[str, Any]) -> str:
    a, t = r["args"], r["timings"]
    lines = ["# bench_ui", "", f"Run {r['started']}; command: `{r['command']}`. A registry of {a['users']:,} users and {a['sets']} sets "
             f"(every fifth full, the rest incremental versions of {a['delta']:,} users), production moved {a['moves']} times per model, "
             "evaluations with per-user metrics for every user; SQLite + local Zarr; Starlette's test client, "
             f"{a['repeats']} requests per page after a warm-up.", "",
             "| page | HTML p50 / p99 ms | HTML KB | JSON p50 / p99 ms | JSON KB |", "|---|---:|---:|---:|---:|"]
    for name in t["api"]:
        page = t["pages"].get(name)
        html = f"{page['p50_ms']:.1f} / {page['p99_ms']:.1f} | {page['bytes'] / 1000:.0f}" if page else "— | —"
        lines.append(f"| {name} | {html} | {t['api'][name]['p50_ms']:.1f} / {t['api'][name]['p99_ms']:.1f} | {t['api'][name]['bytes'] / 1000:.0f} |")
    b = t["baseline_set_page_api_calls"]
    lines += ["", f"Baseline (same process): the public API calls behind the set page alone, {b['p50_ms']:.1f} / {b['p99_ms']:.1f} ms (p50 / p99)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
