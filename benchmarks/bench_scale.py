"""Scale-out benchmark: sharded apply in 1 and 2 processes, the s3:// store against the local Zarr
store, and the audit queries on a catalogue of ``--catalogue-users`` users on Postgres.

1. **Apply** (``--apply-users`` users x 1 x 576 -> 384, the default PUMA architecture, SQLite +
   local Zarr): the same stored adapter applied with ``migrate apply --shard`` by one process
   (1 torch thread, then 2 threads) and by two processes of one thread each, started together.
   Each process times its own ``apply_adapter_shard`` call after its imports; the figure is the
   span from the first start to the last end. Every run maps into a fresh registry copy (written
   back to disk with ``os.sync``, then 3 s for the kernel to reclaim the previous run's copy, before the
   clock starts), so no run reuses another's shards; 5 runs of each side, interleaved. ``apply_speedup_2proc`` = 1-process (1 thread) seconds / 2-process
   seconds. Then the same on **Postgres** + local Zarr (the catalogue many workers share; each run
   in a fresh database made from a template, ``CREATE DATABASE ... TEMPLATE``, and a fresh copy of
   the store): ``apply_speedup_2proc_postgres``. Skipped, loudly, when Postgres is unreachable.
   Beside them, the machine's own 2-process ceilings: sha256 in cache (the cores) and large array
   copies (the memory bandwidth the cores share).
2. **S3** (``--s3-users`` x 1 x 576): ``import_prompts`` and a verified batch read of every user
   (``get_prompts``) into a registry whose store is ``s3://`` on a local moto server (127.0.0.1,
   started here), and into one on a local Zarr directory, in the same process; ratios S3 / local.
3. **Catalogue** (``--catalogue-users`` users on Postgres, built by ``bench_audit.build``: users
   through ``add_users``, prompt rows through the registry's bulk path; ``--versions`` full
   versions in a migration chain plus a small increment): ``user_history`` p99, ``lineage`` p99 and
   ``blast_radius`` of the first adapter (count + first 1,000 users) p99, with the build time.

Targets (issue 17): 2-process apply >= 1.6x one process; at 10M users, audit user p99 < 20 ms
and blast radius p99 < 200 ms.

Results: ``benchmarks/results/bench_scale.{json,md}``.

    python benchmarks/bench_scale.py                                   # 200k apply, 100k s3, 10M catalogue
    python benchmarks/bench_scale.py --catalogue-users 100000 --apply-users 20000 --s3-users 20000   # a quick look
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_store import args_record, machine_info, make_model_dir, write_results  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
WIDTH_A, WIDTH_B = 576, 384
SETTLE_S = 3.0

CHILD = """
import json, sys, time
import torch
torch.set_num_threads(int(sys.argv[5]))
from prompt_registry import Registry
location, adapter, shard, n_shards = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
with Registry.open(location, store=sys.argv[8] or None) as reg:
    open(sys.argv[6], "w").close()  # ready
    while not __import__("os").path.exists(sys.argv[7]):
        time.sleep(0.005)
    cpu = __import__("resource").getrusage(__import__("resource").RUSAGE_SELF)
    start = time.time()
    written = reg.apply_adapter_shard(adapter, shard, n_shards, progress=False)
    end = time.time()
    after = __import__("resource").getrusage(__import__("resource").RUSAGE_SELF)
cpu_s = (after.ru_utime + after.ru_stime) - (cpu.ru_utime + cpu.ru_stime)  # every thread of the process (zarr writers too)
print(json.dumps({"start": start, "end": end, "cpu_s": cpu_s, "rows": list(written.rows), "committed": written.set is not None}))
"""


CEILING = """
import hashlib, os, sys, time
import numpy as np
n, kind = int(sys.argv[1]), sys.argv[4]
block = os.urandom(1 << 20)
src = np.frombuffer(os.urandom(256 << 20), dtype=np.uint8) if kind == "copy" else None
dst = np.empty_like(src) if kind == "copy" else None
open(sys.argv[2], "w").close()
while not os.path.exists(sys.argv[3]):
    time.sleep(0.005)
start = time.time()
for _ in range(n):
    if kind == "copy":
        np.copyto(dst, src)  # 256 MB, far past the caches: memory bandwidth
    else:
        hashlib.sha256(block).digest()  # 1 MB, in cache: the cores alone
print(start, time.time())
"""


def parallel_ceiling(scratch: Path, total_mb: int = 1500, kind: str = "sha256") -> dict[str, Any]:
    """What two processes gain over one on this machine for work split in two halves: ``sha256``
    of ``total_mb`` MB (a 1 MB block, in cache: the cores alone), or ``copy``, ``total_mb`` / 256
    copies of a 256 MB array (memory bandwidth, which the cores share). An apply streams every
    source row and every mapped row through memory several times, so it runs into both."""
    script = scratch / "ceiling.py"
    script.write_text(CEILING)
    n = total_mb if kind == "sha256" else total_mb // 256
    spans = {}
    for processes in (1, 2, 1, 2):
        go = scratch / f"ceiling-go-{processes}"
        go.unlink(missing_ok=True)
        readies = [scratch / f"ceiling-ready-{processes}-{i}" for i in range(processes)]
        for r in readies:
            r.unlink(missing_ok=True)
        procs = [subprocess.Popen([sys.executable, str(script), str(n // processes), str(r), str(go), kind], stdout=subprocess.PIPE, text=True)
                 for r in readies]
        while not all(r.exists() for r in readies):
            time.sleep(0.01)
        go.touch()
        times = [tuple(map(float, p.communicate(timeout=600)[0].split())) for p in procs]
        span = max(t[1] for t in times) - min(t[0] for t in times)
        spans[processes] = min(spans.get(processes, span), span)
    work = f"sha256 of {total_mb} MB" if kind == "sha256" else f"{n} copies of a 256 MB array"
    return {"work": work, "one_process_s": round(spans[1], 3), "two_processes_s": round(spans[2], 3),
            "speedup": round(spans[1] / spans[2], 3)}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def apply_registry(folder: Path, n: int, pg: str | None = None) -> int:
    """A registry with ``n`` source prompts on A and a stored default-architecture adapter A -> B:
    in ``folder`` (SQLite), or on the Postgres URL ``pg`` with its store in ``folder``."""
    import torch

    from prompt_registry import Registry
    from prompt_registry.migration.puma.config import default_phi

    with (Registry.init(pg, store=str(folder), actor="bench") if pg else Registry.init(folder, actor="bench")) as reg:
        reg.register_model("A", make_model_dir(folder.parent / "model-a", WIDTH_A))
        reg.register_model("B", make_model_dir(folder.parent / "model-b", WIDTH_B))
        reg.add_task("rate", "rating")
        data = np.random.default_rng(0).normal(size=(n, 1, WIDTH_A)).astype(np.float32)
        reg.import_prompts("A", "rate", data, [f"u{i:08d}" for i in range(n)], create_users=True)
        phi = default_phi((WIDTH_A,), WIDTH_B)
        head = reg.put_artifact("head", "B/rate", {"w": torch.zeros(WIDTH_B)}, task="rate", target_model="B")
        return reg.put_artifact("adapter", "A->B", phi.state_dict(), task="rate", target_model="B", source_models=["A"],
                                config={"adapter": phi.config.to_dict(), "head_id": head.id}).id


def run_apply(base: Path, scratch: Path, adapter: int, processes: int, threads: int, pg: PgCopies | None = None) -> dict[str, Any]:
    folder = scratch / f"apply-{processes}x{threads}"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(base, folder)  # a fresh copy: no shard of an earlier run to reuse
    location, store = (pg.fresh(), str(folder)) if pg else (str(folder), "")
    os.sync()  # the copy's dirty pages written back now, not inside the timed apply (its fsyncs would wait on them)
    time.sleep(SETTLE_S)  # and the previous run's deleted folder (800 MB) reclaimed by the kernel before the clock starts
    script = scratch / "child.py"
    script.write_text(CHILD)
    go = scratch / f"go-{processes}x{threads}"
    go.unlink(missing_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    readies = [scratch / f"ready-{processes}x{threads}-{i}" for i in range(processes)]
    procs = [subprocess.Popen([sys.executable, str(script), location, str(adapter), str(i), str(processes), str(threads), str(readies[i]), str(go), store],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(processes)]
    while not all(r.exists() for r in readies):
        if any(p.poll() not in (None, 0) for p in procs):
            raise RuntimeError(procs[0].stderr.read() if procs[0].stderr else "child failed")
        time.sleep(0.01)
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=1800)
        if p.returncode != 0:
            raise RuntimeError(err)
        outs.append(json.loads(out.strip().splitlines()[-1]))
    span = max(o["end"] for o in outs) - min(o["start"] for o in outs)
    if sum(o["committed"] for o in outs) < 1:
        raise AssertionError("no process committed the set")
    shutil.rmtree(folder)
    cpu = sum(o["cpu_s"] for o in outs)
    return {"processes": processes, "threads_each": threads, "seconds": round(span, 3),
            "per_process_s": [round(o["end"] - o["start"], 3) for o in outs],
            "cpu_s": round(cpu, 3), "cores_busy": round(cpu / span, 2)}  # CPU seconds of every thread / wall: the cores it used


class PgCopies:
    """Fresh Postgres catalogues for the apply runs: a template database, copied per run."""

    def __init__(self, url: str, prefix: str = "bench_scale_apply") -> None:
        from sqlalchemy.engine import make_url

        self.url, self.prefix, self.n = make_url(url), prefix, 0
        self.admin = self.url.set(drivername="postgresql").render_as_string(hide_password=False)

    def _sql(self, *statements: str) -> None:
        import psycopg

        with psycopg.connect(self.admin, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    def template(self) -> str:
        self._sql(f"DROP DATABASE IF EXISTS {self.prefix}_base", f"CREATE DATABASE {self.prefix}_base")
        return self.url.set(database=f"{self.prefix}_base").render_as_string(hide_password=False)

    def fresh(self) -> str:
        self._sql(f"DROP DATABASE IF EXISTS {self.prefix}_run", f"CREATE DATABASE {self.prefix}_run TEMPLATE {self.prefix}_base")
        return self.url.set(database=f"{self.prefix}_run").render_as_string(hide_password=False)

    def drop(self) -> None:
        self._sql(f"DROP DATABASE IF EXISTS {self.prefix}_run", f"DROP DATABASE IF EXISTS {self.prefix}_base")


def pg_reachable(url: str) -> bool:
    try:
        PgCopies(url)._sql("SELECT 1")
        return True
    except Exception as exc:  # noqa: BLE001  (any failure to connect: say so and skip)
        log(f"apply on Postgres SKIPPED: {url} is unreachable ({type(exc).__name__}: {exc})")
        return False


def apply_runs(base: Path, scratch: Path, adapter: int, sides: tuple[tuple[int, int], ...], pg: PgCopies | None) -> dict[str, Any]:
    runs = []
    for processes, threads in sides:
        figure = run_apply(base, scratch, adapter, processes, threads, pg)
        log(f"  {'postgres' if pg else 'sqlite'}: {processes} process(es) x {threads} thread(s): {figure['seconds']:.2f} s")
        runs.append(figure)

    def best(p: int, t: int) -> float:
        return min(r["seconds"] for r in runs if (r["processes"], r["threads_each"]) == (p, t))

    one, two = best(1, 1), best(2, 1)
    out = {"runs": runs, "one_process_s": one, "two_processes_s": two, "speedup_2proc": round(one / two, 3),
           "speedup_2proc_median": median_speedup(runs)}
    if any(r["threads_each"] == 2 for r in runs):
        out.update(one_process_2_threads_s=best(1, 2), speedup_2proc_vs_2_threads=round(best(1, 2) / two, 3))
    return out


def median_speedup(runs: list[dict[str, Any]]) -> float:
    """Median 1 x 1 seconds / median 2 x 1 seconds: steadier than best / best, which has moved by
    0.3 between two runs of the same code on this machine."""
    import statistics

    def med(p: int) -> float:
        return statistics.median(r["seconds"] for r in runs if r["processes"] == p and r["threads_each"] == 1)

    return round(med(1) / med(2), 3)


def bench_apply(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    log(f"apply: building a registry with {args.apply_users:,} source prompts")
    base = scratch / "apply-base" / "reg"
    adapter = apply_registry(base, args.apply_users)
    # the two that make the ratio: 5 runs each, interleaved (one pair of runs of the same code has differed by 20% on this machine)
    out = apply_runs(base, scratch, adapter, ((1, 1), (1, 2), (2, 1), *(((1, 1), (2, 1)) * 4)), None)
    shutil.rmtree(base.parent)
    if pg_reachable(args.pg_url):
        pg = PgCopies(args.pg_url)
        try:
            log(f"apply on Postgres: building a catalogue with {args.apply_users:,} source prompts")
            pg_base = scratch / "apply-pg" / "store"
            pg_adapter = apply_registry(pg_base, args.apply_users, pg=pg.template())
            out["postgres"] = apply_runs(pg_base, scratch, pg_adapter, ((1, 1), (2, 1)) * 5, pg)
        finally:
            pg.drop()
    ceiling = parallel_ceiling(scratch)
    log(f"  pure CPU work (sha256), 2 processes vs 1: {ceiling['speedup']}x")
    memory = parallel_ceiling(scratch, 256 * 64, "copy")
    log(f"  memory streaming (array copies), 2 processes vs 1: {memory['speedup']}x")
    return {"machine_2proc_ceiling": ceiling, "machine_2proc_memory_ceiling": memory, "users": args.apply_users, "widths": [WIDTH_A, WIDTH_B], **out,
            "users_per_s_1proc": round(args.apply_users / out["one_process_s"]), "users_per_s_2proc": round(args.apply_users / out["two_processes_s"])}


def bench_s3(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    from prompt_registry import Registry
    from prompt_registry.testing.s3server import local_s3

    n = args.s3_users
    data = np.random.default_rng(1).normal(size=(n, 1, WIDTH_A)).astype(np.float32)
    users = [f"s{i:08d}" for i in range(n)]
    out: dict[str, Any] = {"users": n, "width": WIDTH_A, "nbytes": int(data.nbytes)}
    with local_s3() as server:
        for name, value in server.environ().items():
            os.environ[name] = value
        bucket = server.make_bucket()
        model = make_model_dir(scratch / "model-s3bench", WIDTH_A)
        for kind, store in (("local", None), ("s3", f"s3://{bucket}/bench")):
            folder = scratch / f"s3bench-{kind}"
            reg = Registry.init(folder, store=store, actor="bench")
            reg.register_model("A", model)
            reg.add_task("rate", "rating")
            reg.add_users(users)
            start = time.perf_counter()
            made = reg.import_prompts("A", "rate", data, users)
            imported = time.perf_counter() - start
            reg.close()
            reg = Registry.open(folder, store=store)  # a cold reader: nothing cached from the import
            start = time.perf_counter()
            back = reg.get_prompts(users, set=made.id)
            read = time.perf_counter() - start
            if not np.array_equal(back, data):
                raise AssertionError(f"{kind}: rows read back differ")
            reg.close()
            out[kind] = {"import_s": round(imported, 3), "read_verified_s": round(read, 3),
                         "import_mb_s": round(data.nbytes / imported / 1e6, 1), "read_mb_s": round(data.nbytes / read / 1e6, 1)}
            log(f"  {kind}: import {imported:.2f} s, verified read of every user {read:.2f} s")
    out["import_ratio"] = round(out["s3"]["import_s"] / out["local"]["import_s"], 2)
    out["read_ratio"] = round(out["s3"]["read_verified_s"] / out["local"]["read_verified_s"], 2)
    return out


def bench_catalogue(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    import gc

    import bench_audit

    from prompt_registry import Registry

    audit_args = bench_audit.parse_args(["--versions", str(args.versions), "--increment", "1000", "--runs", "1000", "--history-sets", "1000",
                                         "--alias-moves", "1000", "--eval-users", "1000", "--pg-url", args.pg_url])
    n = args.catalogue_users
    with bench_audit.postgres_registry(scratch, args.pg_url, keep=False) as (location, store):
        registry = Registry.init(location, store=store, actor="bench")
        try:
            log(f"catalogue: building {n:,} users x {args.versions} versions on Postgres")
            start = time.perf_counter()
            built = bench_audit.build(registry, scratch, n, audit_args)
            analyze_s = bench_audit.analyze(registry)
            build_s = time.perf_counter() - start
            log(f"  built in {build_s:.0f} s")
            gc.freeze()
            rng = np.random.default_rng(2)
            users = built["users"]
            picks = [users[int(i)] for i in rng.integers(0, len(users), args.repeats + 1)]
            first_adapter, tip = built["adapters"][0], built["tip"]
            history, _ = bench_audit.latency(lambda i: registry.user_history(picks[i]), args.repeats)
            lineage, _ = bench_audit.latency(lambda i: registry.lineage(tip), args.repeats)
            start = time.perf_counter()
            registry.blast_radius(first_adapter)  # the first query builds the per-set user index (audit.user_index)
            radius_first_ms = (time.perf_counter() - start) * 1000
            radius, warm = bench_audit.latency(lambda i: registry.blast_radius(first_adapter), args.slow_repeats)
            radius["first_query_ms"] = round(radius_first_ms, 1)
            if warm.n_users != n or len(warm.users) != 1000:
                raise AssertionError(f"blast radius found {warm.n_users} users")
            log(f"  user_history p99 {history['p99_ms']:.1f} ms; lineage p99 {lineage['p99_ms']:.1f} ms; "
                f"blast radius p99 {radius['p99_ms']:.0f} ms (first query, building the index: {radius_first_ms:.0f} ms)")
            return {"users": n, "versions": args.versions, "prompt_rows": built["load"]["prompt_rows"], "build_s": round(build_s, 1),
                    "load": built["load"], "analyze_s": analyze_s, "user_history": history, "lineage": lineage, "blast_radius": radius}
        finally:
            gc.unfreeze()
            registry.close()


def markdown(report: dict[str, Any]) -> str:
    lines = ["# bench_scale", "", f"Run {report['started']}; command: `{report['command']}`.", ""]
    a = report.get("apply")
    if a:
        lines += [f"## Sharded apply ({a['users']:,} users x 1 x {a['widths'][0]} -> {a['widths'][1]}, default PUMA architecture)", "",
                  "| catalogue: processes x torch threads | seconds (each run) | cores busy (CPU s of every thread / wall) |", "|---|---|---|"]
        for backend, section in (("SQLite", a), ("Postgres", a.get("postgres"))):
            for p, t in ((1, 1), (1, 2), (2, 1)):
                runs = [r for r in (section or {}).get("runs", []) if (r["processes"], r["threads_each"]) == (p, t)]
                if runs:
                    lines.append(f"| {backend}: {p} x {t} | {', '.join(str(r['seconds']) for r in runs)} | "
                                 f"{', '.join(str(r.get('cores_busy', '-')) for r in runs)} |")
        c0 = a["machine_2proc_ceiling"]
        pg = a.get("postgres")
        def med(section: dict[str, Any]) -> str:
            return f"median / median {section['speedup_2proc_median']}" if "speedup_2proc_median" in section else "no median recorded"

        lines += ["", f"`apply_speedup_2proc` (SQLite + local Zarr) = {a['speedup_2proc']} (best 1 x 1 / best 2 x 1; {med(a)}); against one "
                  f"process with 2 threads: {a['speedup_2proc_vs_2_threads']}. `apply_speedup_2proc_postgres` (Postgres + local Zarr) = "
                  + (f"{pg['speedup_2proc']} ({med(pg)})" if pg else "not run (Postgres unreachable)")
                  + f". The machine's own ceiling for 2 processes, pure CPU work split in two ({c0['work']}): {c0['one_process_s']} s in one "
                  f"process, {c0['two_processes_s']} s in two, **{c0['speedup']}x**"
                  + (f"; memory streaming split in two ({m0['work']}): {m0['one_process_s']} s in one, {m0['two_processes_s']} s in two, "
                     f"**{m0['speedup']}x**" if (m0 := a.get("machine_2proc_memory_ceiling")) else "") + ".", ""]
    s = report.get("s3")
    if s:
        lines += [f"## s3:// store on a local moto server vs the local Zarr store ({s['users']:,} x 1 x {s['width']}, "
                  f"{s['nbytes'] / 1e6:.0f} MB)", "", *([f"(Carried over from the run of {s['from_run']}.)", ""] if s.get("from_run") else []),
                  "| | local Zarr | s3 (moto) | ratio |", "|---|---:|---:|---:|",
                  f"| import, s | {s['local']['import_s']} | {s['s3']['import_s']} | {s['import_ratio']} |",
                  f"| verified read of every user, s | {s['local']['read_verified_s']} | {s['s3']['read_verified_s']} | {s['read_ratio']} |", ""]
    c = report.get("catalogue")
    if c:
        lines += [f"## Catalogue on Postgres: {c['users']:,} users x {c['versions']} versions ({c['prompt_rows']:,} prompt rows)", "",
                  *([f"(Carried over from the run of {c['from_run']}.)", ""] if c.get("from_run") else []),
                  f"Build {c['build_s']} s (add_users {c['load']['add_users_s']:.0f} s, prompt rows {c['load']['prompt_rows_load_s']:.0f} s).", "",
                  "| query | p50 ms | p99 ms |", "|---|---:|---:|",
                  f"| audit user (user_history) | {c['user_history']['p50_ms']:.1f} | {c['user_history']['p99_ms']:.1f} |",
                  f"| audit lineage | {c['lineage']['p50_ms']:.1f} | {c['lineage']['p99_ms']:.1f} |",
                  f"| blast radius (count + first 1,000 users) | {c['blast_radius']['p50_ms']:.0f} | {c['blast_radius']['p99_ms']:.0f} |", "",
                  f"The first blast-radius query builds the per-set user index: {c['blast_radius'].get('first_query_ms', float('nan')):.0f} ms.", ""]
    lines += ["## Targets", "", "| target | value | goal | met |", "|---|---:|---|---|"]
    lines += [f"| {t['name']} | {t['value']} | {t['goal']} | {'yes' if t['met'] else 'NO'} |" for t in report["targets"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--apply-users", type=int, default=200_000)
    p.add_argument("--s3-users", type=int, default=100_000)
    p.add_argument("--catalogue-users", type=int, default=10_000_000)
    p.add_argument("--versions", type=int, default=2, help="Full versions in the catalogue's migration chain.")
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--slow-repeats", type=int, default=5)
    p.add_argument("--pg-url", default=os.environ.get("PROMPT_REGISTRY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"))
    p.add_argument("--skip", nargs="*", default=[], choices=["apply", "s3", "catalogue"],
                   help="Sections not to run; their figures are carried over from the last results file (marked from_run).")
    p.add_argument("--name", default="bench_scale")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    report: dict[str, Any] = {"started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                              "command": "python benchmarks/bench_scale.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                              "machine": machine_info(), "args": args_record(args)}
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        scratch = Path(tmp)
        if "apply" not in args.skip:
            report["apply"] = bench_apply(args, scratch)
        if "s3" not in args.skip:
            log(f"s3: {args.s3_users:,} prompts")
            report["s3"] = bench_s3(args, scratch)
        if "catalogue" not in args.skip:
            report["catalogue"] = bench_catalogue(args, scratch)
    previous = args.out / f"{args.name}.json"
    if args.skip and previous.exists():  # keep the sections not rerun from the last results, saying so
        old = json.loads(previous.read_text())
        for section in args.skip:
            if section in old:
                report[section] = {**old[section], "from_run": old[section].get("from_run", old.get("started"))}  # the run that measured it
    c = report.get("catalogue", {})
    report["apply_speedup_2proc"] = report.get("apply", {}).get("speedup_2proc")
    report["apply_speedup_2proc_postgres"] = report.get("apply", {}).get("postgres", {}).get("speedup_2proc")
    report["audit_user_p99_ms_10m"] = c.get("user_history", {}).get("p99_ms") if c.get("users") == 10_000_000 else None
    report["blast_radius_p99_ms_10m"] = c.get("blast_radius", {}).get("p99_ms") if c.get("users") == 10_000_000 else None
    report["users"] = c.get("users")
    report["targets"] = [
        {"name": "2-process apply >= 1.6x one process (SQLite + local Zarr)", "value": report["apply_speedup_2proc"], "goal": ">= 1.6",
         "met": report["apply_speedup_2proc"] is not None and report["apply_speedup_2proc"] >= 1.6},
        {"name": "2-process apply >= 1.6x one process (Postgres + local Zarr)", "value": report["apply_speedup_2proc_postgres"],
         "goal": ">= 1.6", "met": report["apply_speedup_2proc_postgres"] is not None and report["apply_speedup_2proc_postgres"] >= 1.6},
        {"name": f"audit user p99 < 20 ms at {c.get('users') or 0:,} users", "value": c.get("user_history", {}).get("p99_ms"),
         "goal": "< 20 ms at 10M", "met": bool(c) and c["users"] >= 10_000_000 and c["user_history"]["p99_ms"] < 20},
        {"name": f"blast radius p99 < 200 ms at {c.get('users') or 0:,} users", "value": c.get("blast_radius", {}).get("p99_ms"),
         "goal": "< 200 ms at 10M", "met": bool(c) and c["users"] >= 10_000_000 and c["blast_radius"]["p99_ms"] < 200},
    ]
    write_results(args.out, args.name, report, markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
