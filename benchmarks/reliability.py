"""Crash consistency: every write operation SIGKILLed at many points, on SQLite and Postgres.

    python benchmarks/reliability.py                      # 50 kill points per operation, both backends (long)
    python benchmarks/reliability.py --points 4 --backend sqlite --name reliability-short

Operations: ``import`` (a new version), ``incremental`` (rows on top of a version, moving its
alias), ``apply`` (a streamed write through a stored adapter), ``alias`` (ten alias moves),
``purge`` (three users removed everywhere, one after the other), ``gc`` (retention keep-last-1
over three versions, and eight orphan blobs), ``plan`` (a stored plan's reuse step, run with ``resume``). Each runs in a child process that counts the
events it goes through (SQL statements before and after they run, commits, store row writes
and deletes, fsyncs, renames; store write batches are made small so a streamed write has many) and kills
itself with SIGKILL at event N. A dry run counts the events; the kill points are drawn from them
with the seed (all of them when there are fewer than ``--points``).

After each kill the parent checks: ``doctor`` finds nothing but orphan bytes, the dead run and
(for a purge) bytes whose erasure is pending;
every visible set reads back and verifies (every row's checksum); no set that existed before and
that the operation must not touch changed or vanished (else it is counted as ``lost``); the
operation rerun completes; ``gc`` then removes the orphans and ``doctor`` is clean.

Two more sections run after the kills (``--only`` picks sections):

* ``faults`` (``reliability_faults.py``, ``--faults`` per backend): store corruption (flipped
  bytes, a corrupted shard index, truncated, padded and deleted shard files, a deleted array)
  injected, detected by ``doctor`` and on read, and restored by ``doctor --repair`` from the other
  version wherever it holds the bytes;
* ``inputs`` (``reliability_inputs.py``, ``--inputs`` examples per target): hostile prompt files,
  pickles, CSVs, references and names fuzzed with Hypothesis.

Results: benchmarks/results/<name>.{json,md} with top-level ``kills``, ``faults``, ``inputs`` and
``lost`` (rows or sets the registry lost, over kills and faults: must be 0).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
OPERATIONS = ("import", "incremental", "apply", "alias", "purge", "gc", "plan")
PG_URL = os.environ.get("PROMPT_REGISTRY_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
N_USERS, WIDTH_A, WIDTH_B = 2000, 16, 24
PURGED = ("u00007", "u00008", "u00009")
GC_ORPHANS = 8

CHILD = textwrap.dedent(
    """
    import json, os, signal, sys
    location, store, op, workdir, kill_at = sys.argv[1:6]
    kill_at, count = int(kill_at), [0]

    def tick():
        count[0] += 1
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    event.listen(Engine, "before_cursor_execute", lambda *a, **k: tick())
    event.listen(Engine, "after_cursor_execute", lambda *a, **k: tick())
    event.listen(Engine, "commit", lambda *a, **k: tick())
    real_fsync, real_replace = os.fsync, os.replace
    def fsync(fd):
        tick(); real_fsync(fd)
    def replace(a, b):
        real_replace(a, b); tick()
    os.fsync, os.replace = fsync, replace
    from prompt_registry.store.zarr_store import ZarrStore
    real_write = ZarrStore.write_rows
    def write_rows(self, key, start, data):
        tick(); real_write(self, key, start, data); tick()
    ZarrStore.write_rows = write_rows
    real_delete = ZarrStore.delete
    def delete(self, key):
        tick(); real_delete(self, key); tick()
    ZarrStore.delete = delete
    import prompt_registry.core.writes as writes
    writes.WRITE_BATCH_ROWS = 256  # one chunk: a streamed write of 2,000 users makes 8 batches, each a kill point

    sys.path.insert(0, os.path.dirname(sys.argv[0]))
    from reliability import run_operation
    from prompt_registry import Registry
    with Registry.open(location, store=store or None, actor="doomed") as reg:
        run_operation(reg, op, workdir)
    with open(os.path.join(workdir, "events.json"), "w") as fh:
        json.dump({"events": count[0]}, fh)
    """
)


# ------------------------------------------------------------------------------------- the world
def prompts(n: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 1, width)).astype(np.float32)


def users(n: int, prefix: str = "u") -> list[str]:
    return [f"{prefix}{i:05d}" for i in range(n)]


def prepare(reg: Any, models: dict[str, Path], workdir: Path) -> dict[str, Any]:
    """Two models, a task, three versions on ``a`` (the newest is ``production``), an adapter
    a -> b and a plan that reuses it; returns what the operations need."""
    import torch

    from prompt_registry.data.synthetic import make_synthetic
    from prompt_registry.migration.puma.adapter import AdapterConfig, Phi

    for name, path in models.items():
        reg.register_model(name, path)
    reg.add_task("t", "rating")
    first = reg.import_prompts("a", "t", prompts(N_USERS, WIDTH_A, 1), users(N_USERS), create_users=True)
    second = reg.import_prompts("a", "t", prompts(50, WIDTH_A, 2), users(50), base=first.id)
    third = reg.import_prompts("a", "t", prompts(50, WIDTH_A, 3), users(50, "v"), base=second.id, create_users=True, alias="production")
    torch.manual_seed(0)
    phi = Phi(AdapterConfig((WIDTH_A,), WIDTH_B, hidden=32))
    head = reg.put_artifact("head", "b/t", {"w": torch.zeros(WIDTH_B)}, task="t", target_model="b")
    adapter = reg.put_artifact("adapter", "a->b/t", phi.state_dict(), task="t", target_model="b", source_models=["a"],
                               config={"adapter": phi.config.to_dict(), "head_id": head.id})
    make_synthetic(workdir / "data", n_users=5, n_items=5, per_user=4, seed=0)  # a plan run loads a data set
    plan = reg.planner.plan("b", "t", sources=["a"], reuse_only=True)
    state = {"sets": [first.id, second.id, third.id], "adapter": adapter.id, "plan": plan.id}
    (workdir / "state.json").write_text(json.dumps(state))
    return state


def leave_orphans(reg: Any, n: int) -> None:
    """What ``n`` interrupted artifact writes leave: blobs under this catalogue's keys that no row
    names (gc's retention removes two sets; deleting these as well gives it 50+ kill points)."""
    from prompt_registry.store import keys

    for i in range(n):
        reg.store.put_blob(keys.new_key(reg.catalog_id, "artifact"), f"orphan {i}".encode())


def run_operation(reg: Any, op: str, workdir: str | Path) -> None:
    """The operation under test (run by the child, and rerun by the parent after a kill)."""
    workdir = Path(workdir)
    state = json.loads((workdir / "state.json").read_text())
    if op == "import":
        reg.import_prompts("a", "t", prompts(3000, WIDTH_A, 7), users(3000, "n"), create_users=True)
    elif op == "incremental":
        reg.import_prompts("a", "t", prompts(500, WIDTH_A, 8), users(500), base=state["sets"][-1], alias="production")
    elif op == "apply":
        reg.apply_adapter(state["adapter"], progress=False)
    elif op == "alias":
        for i in range(10):
            reg.set_alias("staging", state["sets"][i % 3], reason=f"move {i}")
    elif op == "purge":
        for user in PURGED:
            if user in reg.list_set_users(state["sets"][0]):  # a rerun after a kill skips the ones already purged
                reg.purge_user(user, reason="harness")
    elif op == "gc":
        reg.gc(keep_last=1, grace_seconds=0)
    elif op == "plan":
        reg.planner.run(state["plan"], workdir / "data", resume=True)
    else:
        raise ValueError(op)


def snapshot(reg: Any) -> dict[int, str]:
    """Every visible set's id -> its sha256 after reading every row back with verification."""
    out = {}
    for s in reg.list_sets():
        who = reg.list_set_users(s.id)
        if who:
            reg.get_prompts(who, set=s.id)  # verify=True: every row's checksum
        assert len(who) == s.n_users, (s.id, len(who), s.n_users)
        out[s.id] = s.sha256
    return out


def untouchable(op: str, before: dict[int, str], state: dict[str, Any]) -> set[int]:
    """The sets that existed before and that ``op`` must leave exactly as they were."""
    if op == "purge":
        return set()  # every set holding a purged user is rewritten (their rows zeroed); checked after the rerun
    if op == "gc":
        return {state["sets"][-1]}  # retention keeps the newest version
    return set(before)


# ------------------------------------------------------------------------------------- backends
@contextmanager
def backend(kind: str, root: Path) -> Iterator[tuple[str, str | None]]:
    if kind == "sqlite":
        yield str(root / "registry"), None
        return
    import sqlalchemy as sa

    engine = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    schema = f"rel_{uuid.uuid4().hex[:12]}"
    with engine.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        sep = "&" if "?" in PG_URL else "?"
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}", str(root / "store")
    finally:
        with engine.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


def child(location: str, store: str | None, op: str, workdir: Path, kill_at: int) -> subprocess.CompletedProcess[str]:
    script = workdir / "child.py"
    script.write_text(CHILD)
    shutil.copy(Path(__file__), workdir / "reliability.py")
    return subprocess.run([sys.executable, str(script), location, store or "", op, str(workdir), str(kill_at)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)


def trial(kind: str, op: str, models: dict[str, Path], root: Path, kill_at: int) -> dict[str, Any]:
    """Prepare a fresh registry, run ``op`` in a child killed at event ``kill_at`` (0: never), check."""
    from prompt_registry import Registry

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    with backend(kind, root) as (location, store):
        with Registry.init(location, store=store, actor="harness") as reg:
            state = prepare(reg, models, root)
            if op == "gc":
                leave_orphans(reg, GC_ORPHANS)
            before = snapshot(reg)
        proc = child(location, store, op, root, kill_at)
        out: dict[str, Any] = {"kill_at": kill_at, "killed": proc.returncode == -9}
        if kill_at == 0:
            if proc.returncode != 0:
                raise RuntimeError(f"{op} on {kind} failed without a kill:\n{proc.stderr[-3000:]}")
            out["events"] = json.loads((root / "events.json").read_text())["events"]
            return out
        if proc.returncode not in (-9, 0):
            raise RuntimeError(f"{op} on {kind}, kill at {kill_at}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
        problems: list[str] = []
        with Registry.open(location, store=store, actor="harness") as reg:
            report = reg.doctor()
            allowed = ("orphan", "stale-run", "purge-pending")  # what a kill may leave: all three are finished by a rerun or gc
            problems += [f"doctor: {p.kind} {p.object}: {p.message}" for p in report.problems if p.kind not in allowed]
            try:
                after = snapshot(reg)
            except Exception as exc:  # a visible set that does not read back is a lost set
                problems.append(f"visible set does not read back: {type(exc).__name__}: {exc}")
                after = {}
            lost = [i for i in untouchable(op, before, state) if after.get(i) != before[i]]
            problems += [f"set {i} changed or vanished" for i in lost]
            try:
                run_operation(reg, op, root)
            except Exception as exc:
                problems.append(f"rerun failed: {type(exc).__name__}: {exc}")
            reg.gc(grace_seconds=0)
            final = reg.doctor()
            problems += [f"after rerun + gc: {p.kind} {p.object}: {p.message}" for p in final.problems]
            if op == "purge":
                still = [u for s in reg.list_sets() for u in PURGED if u in set(reg.list_set_users(s.id))]
                if still:
                    problems.append(f"purged users still visible after the rerun: {sorted(set(still))}")
            if op == "alias" and reg.get_alias("staging", "a", "t").set_id != state["sets"][9 % 3]:
                problems.append("the alias did not end where the rerun moved it")
        out.update(lost=len(lost), problems=problems, survived=not problems)
        return out


def run(kinds: list[str], ops: list[str], points: int, seed: int, workdir: Path, say: Any = print) -> dict[str, Any]:
    from prompt_registry.testing.models import build_tiny_llama

    workdir.mkdir(parents=True, exist_ok=True)
    models = {"a": build_tiny_llama(workdir / "model-a", hidden_size=WIDTH_A, seed=1),
              "b": build_tiny_llama(workdir / "model-b", hidden_size=WIDTH_B, seed=2)}
    rng = np.random.default_rng(seed)
    kills: dict[str, Any] = {}
    for kind in kinds:
        for op in ops:
            started = time.perf_counter()
            events = trial(kind, op, models, workdir / "trial", 0)["events"]
            chosen = sorted(rng.choice(np.arange(1, events + 1), size=min(points, events), replace=False).tolist())
            results = [trial(kind, op, models, workdir / "trial", int(k)) for k in chosen]
            failed = [r for r in results if not r["survived"]]
            kills[f"{op}/{kind}"] = {"operation": op, "backend": kind, "events": events, "points_tried": len(results),
                                     "killed": sum(r["killed"] for r in results), "survived": len(results) - len(failed),
                                     "lost": sum(r["lost"] for r in results), "points": chosen,
                                     "failures": [{"kill_at": r["kill_at"], "problems": r["problems"]} for r in failed],
                                     "seconds": round(time.perf_counter() - started, 1)}
            k = kills[f"{op}/{kind}"]
            say(f"{op:<12} {kind:<8} {events:>4} events, {k['points_tried']:>3} kill points, {k['survived']:>3} survived, "
                f"lost {k['lost']}, {k['seconds']:.0f} s", flush=True)
    return {"kills": kills, "lost": sum(k["lost"] for k in kills.values()), "failures": sum(len(k["failures"]) for k in kills.values())}


def run_all(kinds: list[str], ops: list[str], points: int, faults: int, inputs: int, seed: int, workdir: Path,
            only: list[str] | None = None, say: Any = print) -> dict[str, Any]:
    """The sections asked for (default all): kills, faults, inputs."""
    import reliability_faults
    import reliability_inputs

    from prompt_registry.testing.models import build_tiny_llama

    only = only or ["kills", "faults", "inputs"]
    report: dict[str, Any] = {"kills": {}, "faults": {}, "inputs": {}, "lost": 0, "failures": 0}
    if "kills" in only:
        report.update(run(kinds, ops, points, seed, workdir, say))
    if "faults" in only:
        workdir.mkdir(parents=True, exist_ok=True)
        model = build_tiny_llama(workdir / "model-faults", hidden_size=16, seed=3)
        report["faults"] = reliability_faults.run(kinds, backend, model, workdir, faults, seed)
        for f in report["faults"].values():
            say(f"faults       {f['backend']:<8} {f['injected']:>3} injected, {f['detected']:>3} detected, {f['rows_repaired']} rows repaired, "
                f"{f['rows_unrecoverable']} unrecoverable, lost {f['lost']}, {f['seconds']:.0f} s", flush=True)
        report["lost"] += sum(f["lost"] for f in report["faults"].values())
        report["failures"] += sum(len(f["failures"]) for f in report["faults"].values())
    if "inputs" in only:
        report["inputs"] = reliability_inputs.run(inputs, seed)
        say(f"inputs       {sum(v['examples'] for v in report['inputs'].values())} fuzzed, none broke the rule", flush=True)
    return report


def markdown(report: dict[str, Any]) -> str:
    lines = ["# Reliability: crashes, corruption and hostile inputs", "", f"Command: `{report['command']}` (seed {report['seed']})."]
    if report["kills"]:
        lines += ["", "## SIGKILL at many points of every write operation", "",
                  "| operation | backend | events | kill points | killed | survived | lost | s |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for k in report["kills"].values():
        lines.append(f"| {k['operation']} | {k['backend']} | {k['events']} | {k['points_tried']} | {k['killed']} | {k['survived']} | "
                     f"{k['lost']} | {k['seconds']:.0f} |")
    for k in report["kills"].values():
        for f in k["failures"]:
            lines.append(f"- {k['operation']}/{k['backend']} kill at {f['kill_at']}: {'; '.join(f['problems'])[:500]}")
    if report.get("faults"):
        lines += ["", "## Corruption injected, detected and repaired", "",
                  "| backend | injected | detected | by kind | rows destroyed | rows repaired | rows no copy held | lost | s |",
                  "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
        for f in report["faults"].values():
            kinds = ", ".join(f"{k} {n}" for k, n in f["by_kind"].items())
            lines.append(f"| {f['backend']} | {f['injected']} | {f['detected']} | {kinds} | {f['rows_destroyed']} | {f['rows_repaired']} | "
                         f"{f['rows_unrecoverable']} | {f['lost']} | {f['seconds']:.0f} |")
            for fail in f["failures"]:
                lines.append(f"- {f['backend']} seed {fail['seed']} ({fail['kind']}: {fail['what']}): {'; '.join(fail['problems'])[:500]}")
        lines += ["", "Rows no copy held: destroyed rows of users the other version had changed; `doctor --repair` names them "
                  "(restore from backup). Lost counts what the registry should have restored or read back and did not."]
    if report.get("inputs"):
        lines += ["", "## Hostile inputs fuzzed", "", "| target | examples | accepted | refused | s |", "|---|---:|---:|---:|---:|"]
        for name, v in report["inputs"].items():
            lines.append(f"| {name} | {v['examples']} | {v['accepted']} | {v['refused']} | {v.get('seconds', 0):.0f} |")
        lines += ["", "Every input was accepted correctly or refused with one of our errors (a short message), leaving the registry as "
                  "it was; no pickle ran."]
    lines += ["", f"Data lost: {report['lost']}. Checks failed: {report['failures']}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", action="append", choices=("sqlite", "postgres"), help="repeatable; default both")
    parser.add_argument("--op", action="append", choices=OPERATIONS, help="repeatable; default all")
    parser.add_argument("--points", type=int, default=50, help="kill points per operation and backend")
    parser.add_argument("--faults", type=int, default=60, help="corruptions injected per backend (the six kinds in turn)")
    parser.add_argument("--inputs", type=int, default=500, help="Hypothesis examples per fuzzed target")
    parser.add_argument("--only", action="append", choices=("kills", "faults", "inputs"), help="repeatable; default all")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=HERE / ".work" / "reliability")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--name", default="reliability")
    args = parser.parse_args()
    report = run_all(args.backend or ["sqlite", "postgres"], args.op or list(OPERATIONS), args.points, args.faults, args.inputs, args.seed,
                     args.workdir, args.only)
    report = {"command": "python benchmarks/reliability.py " + " ".join(sys.argv[1:]), "seed": args.seed, **report}
    from bench_store import write_results  # here, not at the top: the child imports this module from its work folder

    write_results(args.out, args.name, report, markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
