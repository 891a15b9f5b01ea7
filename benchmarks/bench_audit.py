"""Audit benchmark: the catalogue at 1,000,000 users x 10 versions, and the audit queries on it.

What is built, on each catalogue backend (Postgres: a fresh schema via ``Registry.init``, dropped
at the end; SQLite: a fresh registry directory), with the real schema (Alembic head):

* ``--versions`` base models ``m01``..``m10`` and one task; ``--users`` users (``add_users``);
* a migration chain: ``m01@v1`` (a training run) holds a prompt row for every user; each next
  model's ``v1`` is migrated from the previous one by an adapter (``put_artifact``; one source
  edge, one migration run) and holds a row for every user too; the last model gets an incremental
  ``v2`` (``--increment`` retrained users) on top: a lineage of ``versions`` hops, and
  ``users x versions`` prompt rows;
* ``production`` aliases (moved once on the last model), ``--runs`` extra finished runs spread
  over 12 months for the cost ledger, and an evaluation of the last two versions with a per-user
  metric for ``--eval-users`` users;
* history around it, so that no table the queries walk is trivially small: ``--history-sets``
  older versions of a second task (incremental chains of 100, one base edge each) and
  ``--alias-moves`` moves of a ``staging`` alias over them.

Only catalogue rows are written: **no tensor bytes** (the audit queries never read them; sets
have no store key). Prompt rows go in by internal user id through a bulk path of this script
(``insert_rows``: COPY on Postgres, one driver executemany on SQLite), users through
``add_users``; per-user metrics by COPY/executemany. Baseline in the same run: 100,000 prompt rows
inserted three ways (ORM ``add_all``, Core ``executemany``, COPY/driver executemany), rolled back.

Then, p50/p99 over ``--repeats`` calls (slow queries: ``--slow-repeats``): ``user_history`` of
random users (``audit user``), ``lineage`` up the whole chain and down from its root (``audit
lineage``), ``blast_radius`` of the first adapter (every user, ``audit blast-radius``; the first
1,000 users listed, and once with every user listed), ``alias_timeline``, ``cost_summary`` by
month, ``diff_evaluations``, a retention dry run, and ``purge_user`` (catalogue side) of a few
users, last (it changes the data). ``EXPLAIN`` (Postgres: ``ANALYZE, BUFFERS``; SQLite: ``QUERY
PLAN``) of every statement that ``user_history`` and ``lineage`` send is saved, with a check that
no big table is scanned sequentially.

The build's own objects (a million user ids) are frozen out of Python's cyclic garbage collector
before the queries run (``gc.freeze``), so that full collections of the harness's heap are not
charged to them.

Targets (issue 6): ``audit user`` and ``audit lineage`` p99 < 50 ms on Postgres.

Results: ``benchmarks/results/bench_audit.json`` (machine, versions, load average, config, every
figure, plans) and ``benchmarks/results/bench_audit.md``.

Run::

    python benchmarks/bench_audit.py                       # Postgres 1,000,000 x 10, SQLite 100,000 x 10
    python benchmarks/bench_audit.py --users 20000 --sqlite-users 5000 --skip-postgres
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import itertools
import json
import os
import re
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from bench_store import check_postgres, loadavg, machine_info, package_state, postgres_schema_url
from sqlalchemy import bindparam, event, insert, select, update
from sqlalchemy.orm import Session

from prompt_registry import Registry
from prompt_registry.db.engine import write_session
from prompt_registry.db.schema import AliasEventRow, EvaluationRow, PromptRowRow, PromptSetParentRow, PromptSetRow, RunRow, UserRow

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
TASK = "rate"
WIDTH = 8
TARGET_P99_MS = 50.0
BASELINE_ROWS = 100_000
BIG_TABLES = ("prompt_rows", "users", "user_metrics")  # rows grow with the users; the others are small here
SEQ_SCAN = re.compile(r"(?:Seq Scan on|^SCAN) (\w+)")


def insert_rows(session: Session, set_id: int, user_ids: list[int], digests: list[bytes]) -> None:
    """Bulk-insert one set's prompt rows by internal user id: COPY on Postgres, one driver
    executemany on SQLite (the audit catalogue has no external ids to resolve)."""
    rows = zip(itertools.repeat(set_id), user_ids, range(len(user_ids)), digests)
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        with conn.connection.driver_connection.cursor() as cur:  # same transaction
            with cur.copy("COPY prompt_rows (set_id, user_id, row_index, sha256) FROM STDIN") as copy:
                for record in rows:
                    copy.write_row(record)
    else:
        conn.exec_driver_sql("INSERT INTO prompt_rows (set_id, user_id, row_index, sha256) VALUES (?, ?, ?, ?)", list(rows))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=1_000_000, help="Users on Postgres.")
    p.add_argument("--sqlite-users", type=int, default=100_000, help="Users on SQLite (the smaller run).")
    p.add_argument("--versions", type=int, default=10, help="Models in the migration chain (full versions); the chain has this many hops.")
    p.add_argument("--increment", type=int, default=1_000, help="Users retrained in the incremental version at the end.")
    p.add_argument("--runs", type=int, default=10_000, help="Extra finished runs for the cost ledger.")
    p.add_argument("--eval-users", type=int, default=None, help="Users with per-user metrics in each of the two evaluations (default: all).")
    p.add_argument("--history-sets", type=int, default=20_000, help="Extra versions (of another task) around the measured chain.")
    p.add_argument("--alias-moves", type=int, default=20_000, help="Extra alias events over the history sets.")
    p.add_argument("--keep", action="store_true", help="Keep the Postgres schema / SQLite directory for inspection (prints where).")
    p.add_argument("--repeats", type=int, default=200, help="Calls per fast query (p50/p99).")
    p.add_argument("--slow-repeats", type=int, default=7, help="Calls per query that touches every user.")
    p.add_argument("--purges", type=int, default=5)
    p.add_argument("--pg-url", default=os.environ.get("PROMPT_REGISTRY_TEST_PG_URL", DEFAULT_PG_URL))
    p.add_argument("--skip-postgres", action="store_true")
    p.add_argument("--skip-sqlite", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="Where the SQLite registry and stores go (default: a temp dir).")
    p.add_argument("--out", type=Path, default=RESULTS_DIR)
    return p.parse_args(argv)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def latency(fn: Callable[[int], Any], n: int) -> tuple[dict[str, Any], Any]:
    """p50/p99/max in ms of ``n`` calls ``fn(0..n-1)``, and the result of an untimed warm-up
    call ``fn(-1)``."""
    warm = fn(-1)
    times = []
    for i in range(n):
        start = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - start) * 1000)
    arr = np.array(times)
    return {"n": n, "p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99)),
            "mean_ms": float(arr.mean()), "max_ms": float(arr.max())}, warm


# ---------------------------------------------------------------------------------------- backends


@contextlib.contextmanager
def postgres_registry(scratch: Path, url: str, keep: bool) -> Iterator[tuple[str, str | None]]:
    """A fresh schema, dropped afterwards (unless ``keep``)."""
    schema = f"bench_audit_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    location = postgres_schema_url(url, schema)
    try:
        yield location, str(scratch / f"store-{schema}")
    finally:
        if keep:
            log(f"kept: {location}")
        else:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


@contextlib.contextmanager
def sqlite_registry(scratch: Path, keep: bool) -> Iterator[tuple[str, str | None]]:
    folder = scratch / f"sqlite-{uuid.uuid4().hex[:8]}"
    try:
        yield str(folder), None
    finally:
        if keep:
            log(f"kept: {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def bulk_insert(session: Session, table: str, columns: tuple[str, ...], rows: Any) -> None:
    """COPY on Postgres, one driver-level executemany on SQLite (the registry's own technique)."""
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        with conn.connection.driver_connection.cursor() as cur:
            with cur.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
    else:
        marks = ", ".join("?" for _ in columns)
        conn.exec_driver_sql(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", list(rows))


def analyze(registry: Registry) -> float:
    """The steady state autovacuum would leave after a bulk load (Postgres: ``VACUUM ANALYZE``, which
    also sets the visibility map that index-only scans use); SQLite: ``ANALYZE``."""
    engine = registry._ctx.engine
    statement = "VACUUM (ANALYZE)" if engine.dialect.name == "postgresql" else "ANALYZE"
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        seconds, _ = timed(lambda: conn.exec_driver_sql(statement))
    return seconds


# ---------------------------------------------------------------------------------------- building


def make_model_dirs(folder: Path, n: int) -> list[Path]:
    from safetensors.numpy import save_file

    dirs = []
    for i in range(n):
        path = folder / f"m{i + 1:02d}"
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": WIDTH, "vocab_size": 10}))
        save_file({"embed": np.full((10, WIDTH), i, np.float32)}, str(path / "model.safetensors"))
        dirs.append(path)
    return dirs


def new_run(session: Session, kind: str, model_id: int, task_id: int, now: dt.datetime) -> int:
    return session.execute(insert(RunRow).values(
        kind=kind, status="succeeded", model_id=model_id, task_id=task_id, config={"bench": True}, seeds={"torch": 0},
        started_at=now, finished_at=now, wall_seconds=60.0, device="cpu", examples_seen=1000,
        forward_tokens=10**6, backward_tokens=5 * 10**5, cost={}, actor="bench",
    ).returning(RunRow.id)).scalar_one()


def new_set(session: Session, model_id: int, task_id: int, version: int, n_users: int, n_rows: int, run_id: int | None,
            now: dt.datetime, base_id: int | None = None, adapter_id: int | None = None) -> int:
    return session.execute(insert(PromptSetRow).values(
        model_id=model_id, task_id=task_id, version=version, base_id=base_id, prompt_len=1, width=WIDTH, dtype="float32",
        n_users=n_users, n_rows=n_rows, store_key=None, sha256=uuid.uuid4().hex * 2, status="committed", run_id=run_id,
        adapter_id=adapter_id, head_id=None, note="bench_audit: catalogue rows only, no tensor bytes", created_at=now, created_by="bench",
    ).returning(PromptSetRow.id)).scalar_one()


def build(registry: Registry, scratch: Path, n_users: int, args: argparse.Namespace) -> dict[str, Any]:
    """The catalogue described in the module docstring; returns its ids and every load timing."""
    import torch

    rng = np.random.default_rng(args.seed)
    figures: dict[str, Any] = {}
    models = [registry.register_model(f"m{i + 1:02d}", d).id for i, d in enumerate(make_model_dirs(scratch / "models", args.versions))]
    task_id = registry.add_task(TASK, "rating").id
    users = [f"user-{i:07d}" for i in range(n_users)]
    figures["add_users_s"], _ = timed(lambda: registry.add_users(users))
    with registry._ctx.engine.connect() as conn:
        user_ids = np.array([uid for _, uid in sorted(conn.execute(select(UserRow.external_id, UserRow.id)).all())], dtype=np.int64)
    adapters = [None] + [
        registry.put_artifact("adapter", f"phi-{i + 1:02d}", {"w": torch.zeros(2)}, task=TASK, target_model=f"m{i + 1:02d}",
                              source_models=[f"m{i:02d}"]).id
        for i in range(1, args.versions)
    ]
    now = dt.datetime.now(dt.timezone.utc)
    all_ids = user_ids.tolist()
    sets: list[int] = []
    rows_s = 0.0
    for i in range(args.versions):
        with write_session(registry._ctx.engine) as session:
            run = new_run(session, "train" if i == 0 else "migrate", models[i], task_id, now)
            set_id = new_set(session, models[i], task_id, 1, n_users, n_users, run, now, adapter_id=adapters[i])
            if sets:
                session.execute(insert(PromptSetParentRow).values(set_id=set_id, parent_id=sets[-1], role="source", position=0))
            digests = _digests(rng, n_users)
            seconds, _ = timed(lambda: insert_rows(session, set_id, all_ids, digests))
            rows_s += seconds
        sets.append(set_id)
        log(f"  set {set_id}: {n_users:,} prompt rows in {seconds:.1f} s ({n_users / seconds:,.0f} rows/s), load {loadavg()}")
    increment = np.sort(rng.choice(n_users, size=min(args.increment, n_users), replace=False))
    with write_session(registry._ctx.engine) as session:
        run = new_run(session, "train", models[-1], task_id, now)
        tip = new_set(session, models[-1], task_id, 2, n_users, len(increment), run, now, base_id=sets[-1])
        session.execute(insert(PromptSetParentRow).values(set_id=tip, parent_id=sets[-1], role="base", position=0))
        insert_rows(session, tip, user_ids[increment].tolist(), _digests(rng, len(increment)))
    for i, set_id in enumerate(sets):
        registry.set_alias("production", set_id, reason=f"bench: {i + 1}")
    registry.set_alias("production", tip, reason="bench: increment")
    figures["prompt_rows"] = args.versions * n_users + len(increment)
    figures["prompt_rows_load_s"] = rows_s
    figures["prompt_rows_per_s"] = args.versions * n_users / rows_s
    figures["extra_runs_load_s"], _ = timed(lambda: add_runs(registry, models, task_id, args.runs, rng))
    figures["history_load_s"], _ = timed(lambda: add_history(registry, models, args.history_sets, args.alias_moves, rng))
    eval_users = n_users if args.eval_users is None else min(args.eval_users, n_users)
    figures["user_metrics"] = 2 * eval_users
    figures["user_metrics_load_s"], _ = timed(lambda: add_evaluations(registry, (sets[-1], tip), user_ids[:eval_users], rng))
    return {"models": models, "task_id": task_id, "sets": sets, "tip": tip, "adapters": adapters[1:], "users": users,
            "increment_users": [users[i] for i in increment], "load": figures}


def _digests(rng: np.random.Generator, n: int) -> list[bytes]:
    """``n`` random 32-byte row digests (what an import computes from the tensor rows)."""
    raw = rng.bytes(32 * n)
    return [raw[j * 32:(j + 1) * 32] for j in range(n)]


def add_runs(registry: Registry, models: list[int], task_id: int, n: int, rng: np.random.Generator) -> None:
    start = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=365)
    kinds = ("train", "migrate", "apply", "eval")
    rows = [
        {"kind": kinds[int(k)], "status": "succeeded", "model_id": models[int(m)], "task_id": task_id, "config": {}, "seeds": {},
         "started_at": start + dt.timedelta(seconds=float(s)), "finished_at": start + dt.timedelta(seconds=float(s) + 60),
         "wall_seconds": float(w), "device": "cpu", "examples_seen": int(e), "forward_tokens": int(e) * 50,
         "backward_tokens": int(e) * 25, "cost": {}, "actor": "bench"}
        for k, m, s, w, e in zip(rng.integers(0, 4, n), rng.integers(0, len(models), n), rng.uniform(0, 365 * 86400, n),
                                 rng.uniform(1, 3600, n), rng.integers(100, 100_000, n))
    ]
    with write_session(registry._ctx.engine) as session:
        session.execute(insert(RunRow), rows)


def add_history(registry: Registry, models: list[int], n_sets: int, n_moves: int, rng: np.random.Generator) -> None:
    """Older versions of another task in incremental chains of 100, and alias moves over them."""
    if n_sets <= 0:
        return
    task_id = registry.add_task("history", "click").id
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=400)
    rows = [
        {"model_id": models[i % len(models)], "task_id": task_id, "version": i // len(models) + 1, "prompt_len": 1, "width": WIDTH,
         "dtype": "float32", "n_users": 0, "n_rows": 0, "store_key": None, "sha256": "0" * 64, "status": "committed",
         "created_at": now, "created_by": "bench"}
        for i in range(n_sets)
    ]
    with write_session(registry._ctx.engine) as session:
        ids = session.scalars(insert(PromptSetRow).returning(PromptSetRow.id, sort_by_parameter_order=True), rows).all()
        chains = [(ids[i], ids[i - len(models)]) for i in range(len(models), n_sets) if (i // len(models)) % 100]
        session.execute(insert(PromptSetParentRow), [{"set_id": c, "parent_id": p, "role": "base", "position": 0} for c, p in chains])
        sets = PromptSetRow.__table__
        session.execute(update(sets).where(sets.c.id == bindparam("child")).values(base_id=bindparam("parent")),
                        [{"child": c, "parent": p} for c, p in chains])
        picks = rng.integers(0, n_sets, n_moves)
        session.execute(insert(AliasEventRow), [
            {"name": "staging", "model_id": rows[int(j)]["model_id"], "task_id": task_id, "old_set_id": None,
             "new_set_id": ids[int(j)], "at": now + dt.timedelta(minutes=k), "actor": "bench", "reason": None}
            for k, j in enumerate(picks)
        ])


def add_evaluations(registry: Registry, set_ids: tuple[int, int], user_ids: np.ndarray, rng: np.random.Generator) -> None:
    now = dt.datetime.now(dt.timezone.utc)
    with write_session(registry._ctx.engine) as session:
        for set_id in set_ids:
            ev = session.execute(insert(EvaluationRow).values(
                set_id=set_id, run_id=None, dataset="bench@1", split="test", metrics={"rmse": 1.0}, created_at=now, created_by="bench",
            ).returning(EvaluationRow.id)).scalar_one()
            values = rng.uniform(0.5, 1.5, len(user_ids)).round(4).tolist()
            bulk_insert(session, "user_metrics", ("evaluation_id", "user_id", "metric", "value"),
                        zip([ev] * len(user_ids), user_ids.tolist(), ["rmse"] * len(user_ids), values))


def insert_baselines(registry: Registry, built: dict[str, Any], user_ids: list[int]) -> dict[str, float]:
    """Seconds to insert the same prompt rows into a new set through the ORM, Core and the
    registry's bulk path (COPY / driver executemany); each in a transaction rolled back."""
    digests = [os.urandom(32) for _ in user_ids]
    now = dt.datetime.now(dt.timezone.utc)
    out = {}

    def orm(session: Session, set_id: int) -> None:
        session.add_all([PromptRowRow(set_id=set_id, user_id=u, row_index=i, sha256=d) for i, (u, d) in enumerate(zip(user_ids, digests))])
        session.flush()

    def core(session: Session, set_id: int) -> None:
        rows = [{"set_id": set_id, "user_id": u, "row_index": i, "sha256": d} for i, (u, d) in enumerate(zip(user_ids, digests))]
        session.execute(insert(PromptRowRow), rows)

    ways = {"orm_add_all": orm, "core_executemany": core,
            "copy_or_driver_executemany": lambda session, set_id: insert_rows(session, set_id, user_ids, digests)}
    for name, way in ways.items():
        with registry._ctx.engine.connect() as conn:
            trans = conn.begin()
            with Session(bind=conn, autoflush=False) as session:
                set_id = new_set(session, built["models"][0], built["task_id"], 999, len(user_ids), len(user_ids), None, now)
                out[name], _ = timed(lambda w=way, s=session: w(s, set_id))
            trans.rollback()
    return out


# ---------------------------------------------------------------------------------------- plans


@contextlib.contextmanager
def captured(engine: sa.Engine) -> Iterator[list[tuple[str, Any]]]:
    statements: list[tuple[str, Any]] = []

    def grab(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", grab)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", grab)


def explain(registry: Registry, call: Callable[[], Any]) -> list[dict[str, Any]]:
    """The plan of every SELECT that ``call`` sends, and the big tables it scans sequentially."""
    engine = registry._ctx.engine
    with captured(engine) as statements:
        call()
    prefix = "EXPLAIN (ANALYZE, BUFFERS) " if engine.dialect.name == "postgresql" else "EXPLAIN QUERY PLAN "
    plans = []
    with engine.connect() as conn:
        for statement, params in statements:
            rows = conn.exec_driver_sql(prefix + statement, params).all()
            text = [r[0] for r in rows] if engine.dialect.name == "postgresql" else [r[-1] for r in rows]
            seq = sorted({m.group(1) for line in text for m in [SEQ_SCAN.search(line.strip())] if m and m.group(1) in BIG_TABLES})
            plans.append({"statement": " ".join(statement.split())[:400], "plan": text, "seq_scans_of_big_tables": seq,
                          "uses_index": any("Index" in line or "USING" in line for line in text)})
        conn.rollback()
    return plans


# ---------------------------------------------------------------------------------------- queries


def run_queries(registry: Registry, built: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    rng = np.random.default_rng(args.seed + 1)
    users = built["users"]
    picks = [users[int(i)] for i in rng.integers(0, len(users), args.repeats + 1)]
    tip, root, first_adapter = built["tip"], built["sets"][0], built["adapters"][0]
    out: dict[str, Any] = {}

    def measure(name: str, fn: Callable[[int], Any], n: int, check: Callable[[Any], None] | None = None) -> None:
        log(f"  {name} x{n}")
        out[name], warm = latency(fn, n)
        if check is not None:
            check(warm)
        log(f"    p50 {out[name]['p50_ms']:.2f} ms, p99 {out[name]['p99_ms']:.2f} ms")

    hops = len(built["sets"])
    measure("audit user (user_history)", lambda i: registry.user_history(picks[i]), args.repeats,
            lambda h: _expect(len(h.versions) == hops + 1, f"{len(h.versions)} versions"))
    measure("audit user, a retrained user", lambda i: registry.user_history(built["increment_users"][i % len(built["increment_users"])]),
            min(args.repeats, 50), lambda h: _expect(h.versions[-1].holder_id == tip, "own row in the increment"))
    measure(f"audit lineage, {hops} hops up", lambda i: registry.lineage(tip), args.repeats,
            lambda lin: _expect(len(lin.nodes) == hops + 1 and lin.nodes[-1].depth == hops, f"{len(lin.nodes)} nodes"))
    measure(f"audit lineage --down, {hops} hops", lambda i: registry.lineage(root, down=True), args.repeats,
            lambda lin: _expect(len(lin.nodes) == hops + 1, f"{len(lin.nodes)} nodes"))
    measure("audit alias production", lambda i: registry.alias_timeline("production"), args.repeats,
            lambda moves: _expect(len(moves) == hops + 1, f"{len(moves)} moves"))
    measure(f"audit runs --group-by month ({args.runs + hops + 1:,} runs)", lambda i: registry.cost_summary(group_by="month"),
            min(args.repeats, 50), lambda costs: _expect(sum(c.runs for c in costs) >= args.runs, "all runs"))
    measure("audit blast-radius (first adapter, 1,000 users listed)", lambda i: registry.blast_radius(first_adapter),
            args.slow_repeats, lambda r: _expect(r.n_users == len(users) and len(r.sets) == hops, f"{r.n_users} users"))
    out["audit blast-radius --all-users, s"], radius = timed(lambda: registry.blast_radius(first_adapter, user_limit=None))
    _expect(len(radius.users) == len(users), "every user listed")
    measure("audit diff (per-metric summary + top 100 users)", lambda i: registry.diff_evaluations(built["sets"][-1], tip),
            args.slow_repeats, lambda d: _expect(d.metrics[0].n_users == built["load"]["user_metrics"] // 2, "all evaluated users"))
    # retention keeps the measured chain (aliased, or lineage of kept sets) and, per model, the
    # newest history chain of 100; every other history version would go
    per_model = [len(range(m, args.history_sets, len(built["models"]))) for m in range(len(built["models"]))]
    doomed = sum(n - ((n - 1) % 100 + 1) for n in per_model if n)
    measure("gc --dry-run --keep-last 1 (retention plan)", lambda i: registry.gc(dry_run=True, keep_last=1), min(args.repeats, 20),
            lambda r: _expect(len(r.removed_sets) == doomed and not set(r.removed_sets) & {*built["sets"], tip}, f"{len(r.removed_sets)} sets"))
    victims = [users[int(i)] for i in rng.choice(len(users), args.purges, replace=False)]
    measure("user delete --purge (catalogue side; no bytes here)", lambda i: registry.purge_user(victims[i], dry_run=i < 0),
            args.purges, lambda r: _expect(r.dry_run and r.rows_zeroed >= hops, f"{r.rows_zeroed} rows"))
    return out


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise AssertionError(f"benchmark result check failed: {what}")


# ---------------------------------------------------------------------------------------- report


def bench_backend(name: str, fresh: Callable[[], contextlib.AbstractContextManager[tuple[str, str | None]]],
                  n_users: int, scratch: Path, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"users": n_users, "loadavg_before": loadavg()}
    with fresh() as (location, store):
        registry = Registry.init(location, store=store, actor="bench")
        try:
            log(f"{name}: building {n_users:,} users x {args.versions} versions")
            result["build_s"], built = timed(lambda: build(registry, scratch / name, n_users, args))
            result["load"] = built["load"]
            # the harness's own objects (a million user ids) must not make Python's cyclic GC
            # charge full collections (~150 ms each) to the queries being timed
            gc.collect()
            gc.freeze()
            result["load"]["analyze_s"] = analyze(registry)
            log(f"{name}: insert baselines ({BASELINE_ROWS:,} rows, rolled back)")
            result["insert_baselines_s"] = insert_baselines(registry, built, list(range(1, min(BASELINE_ROWS, n_users) + 1)))
            result["insert_baseline_rows"] = min(BASELINE_ROWS, n_users)
            result["queries"] = run_queries(registry, built, args)
            log(f"{name}: plans")
            result["plans"] = {
                "audit user": explain(registry, lambda: registry.user_history(built["users"][n_users // 2])),
                "audit lineage": explain(registry, lambda: registry.lineage(built["tip"])),
            }
            result["table_rows"] = table_rows(registry)
        finally:
            registry.close()
            gc.unfreeze()
    result["loadavg_after"] = loadavg()
    return result


def table_rows(registry: Registry) -> dict[str, int]:
    with registry._ctx.engine.connect() as conn:
        tables = ("users", "prompt_sets", "prompt_rows", "runs", "alias_events", "user_metrics")
        return {t: conn.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one() for t in tables}


def markdown(report: dict[str, Any]) -> str:
    cfg, backends = report["config"], report["backends"]
    names = list(backends)
    lines = [
        "# bench_audit",
        "",
        f"Catalogue rows only (no tensor bytes: audit queries never read them). {cfg['versions']} full versions in a migration "
        f"chain + 1 incremental version ({cfg['increment']:,} users); {cfg['runs']:,} extra runs; p50/p99 over {cfg['repeats']} calls "
        f"({cfg['slow_repeats']} for queries over every user). Run {report['started_at']}, {report['machine']['cpu_count']} CPUs, "
        f"load average {report['loadavg_before']} before, {report['loadavg_after']} after. Command: `{report['command']}`.",
        "",
        "| figure | " + " | ".join(f"{n} ({backends[n]['users']:,} users)" for n in names) + " |",
        "|---|" + "---:|" * len(names),
    ]

    def row(label: str, fmt: Callable[[dict[str, Any]], str]) -> None:
        lines.append(f"| {label} | " + " | ".join(fmt(backends[n]) for n in names) + " |")

    row("table rows: users / prompt_rows / user_metrics",
        lambda b: f"{b['table_rows']['users']:,} / {b['table_rows']['prompt_rows']:,} / {b['table_rows']['user_metrics']:,}")
    row("build, total s", lambda b: f"{b['build_s']:.1f}")
    row("add_users, s (rows/s)", lambda b: f"{b['load']['add_users_s']:.1f} ({b['users'] / b['load']['add_users_s']:,.0f})")
    row("prompt rows (COPY / driver executemany by user id), s (rows/s)",
        lambda b: f"{b['load']['prompt_rows_load_s']:.1f} ({b['load']['prompt_rows_per_s']:,.0f})")
    row("user_metrics (COPY / executemany), s", lambda b: f"{b['load']['user_metrics_load_s']:.1f}")
    row("ANALYZE, s", lambda b: f"{b['load']['analyze_s']:.1f}")
    for way in ("orm_add_all", "core_executemany", "copy_or_driver_executemany"):
        row(f"baseline: {BASELINE_ROWS:,} prompt rows via {way}, s", lambda b, w=way: f"{b['insert_baselines_s'][w]:.2f}")
    for query in backends[names[0]]["queries"]:
        value = backends[names[0]]["queries"][query]
        if isinstance(value, dict):
            row(f"{query}: p50 / p99 ms", lambda b, q=query: f"{b['queries'][q]['p50_ms']:.1f} / {b['queries'][q]['p99_ms']:.1f}")
        else:
            row(query, lambda b, q=query: f"{b['queries'][q]:.2f}")
    row("plans: sequential scans of big tables (audit user, lineage)",
        lambda b: ", ".join(sorted({t for plans in b["plans"].values() for p in plans for t in p["seq_scans_of_big_tables"]})) or "none")
    row("load average before / after", lambda b: f"{b['loadavg_before']} / {b['loadavg_after']}")
    lines += ["", "## Targets", "", "| target | value | result |", "|---|---:|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {t['value']:.1f} ms | {'PASS' if t['pass'] else 'FAIL'} |")
    for name, why in report["skipped"].items():
        lines += ["", f"**{name} SKIPPED**: {why}"]
    return "\n".join(lines) + "\n"


def targets(backends: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    checks = []
    pg = backends.get("postgres")
    if pg is not None:
        for query in pg["queries"]:
            if query.startswith(("audit user (", "audit lineage,")):
                value = pg["queries"][query]["p99_ms"]
                checks.append({"target": f"postgres: {query} p99 < {TARGET_P99_MS:g} ms", "value": value, "pass": value < TARGET_P99_MS})
    return checks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(1)
    report: dict[str, Any] = {
        "benchmark": "bench_audit",
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": machine_info(),
        "package_state": package_state(),
        "loadavg_before": loadavg(),
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "pg_url"},
        "skipped": {},
        "backends": {},
    }
    scratch = Path(tempfile.mkdtemp(prefix="bench_audit-", dir=args.workdir))
    try:
        if not args.skip_postgres:
            why = check_postgres(args.pg_url)
            if why is None:
                report["backends"]["postgres"] = bench_backend("postgres", lambda: postgres_registry(scratch, args.pg_url, args.keep), args.users,
                    scratch, args)
            else:
                report["skipped"]["postgres"] = why
        if not args.skip_sqlite:
            report["backends"]["sqlite"] = bench_backend("sqlite", lambda: sqlite_registry(scratch, args.keep), args.sqlite_users, scratch, args)
    finally:
        if not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
    report["loadavg_after"] = loadavg()
    report["targets"] = targets(report["backends"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_audit.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (args.out / "bench_audit.md").write_text(markdown(report))
    print(markdown(report))
    return 0 if all(t["pass"] for t in report["targets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
