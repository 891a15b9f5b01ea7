"""Crash safety and concurrent writers, with real child processes, on every catalogue backend.

* A writer SIGKILLed while writing bytes, or inside its open transaction, leaves no visible
  half-version; ``doctor`` reports the orphan bytes and ``gc`` removes them.
* Two processes importing at the same time both succeed (SQLite serialises them with
  ``BEGIN IMMEDIATE`` + busy timeout; Postgres with a row lock on the model).
* Four writers (two importers, a migrator applying a stored adapter, an alias mover) and two
  readers at once lose and duplicate nothing, on both backends.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_fake_model

from prompt_registry import Registry

pytestmark = pytest.mark.registry

N_USERS = 40_000  # three store write batches, so a kill can land between them
WIDTH = 16

CHILD = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from prompt_registry import Registry
    from prompt_registry.store.zarr_store import ZarrStore

    location, store, mode, ready, go, seed = sys.argv[1:7]
    store = None if store == "-" else store

    def signal_and_hang():
        open(ready, "w").close()
        time.sleep(120)  # the parent kills us here

    if mode == "bytes":  # die after the first batch of bytes hit the disk
        original = ZarrStore.write_rows
        def write_rows(self, key, start, data):
            original(self, key, start, data)
            signal_and_hang()
        ZarrStore.write_rows = write_rows
    elif mode == "commit":  # die inside the transaction, rows inserted but not committed
        import prompt_registry.core.writes as registry_module
        original = registry_module.insert_prompt_rows
        def insert_rows(*args, **kwargs):
            inserted = original(*args, **kwargs)
            signal_and_hang()
            return inserted
        registry_module.insert_prompt_rows = insert_rows

    n, width = int(os.environ["N_USERS"]), int(os.environ["WIDTH"])
    data = np.random.default_rng(int(seed)).normal(size=(n, 1, width)).astype(np.float32)
    users = [f"user{i}" for i in range(n)]
    with Registry.open(location, store=store, actor=f"child-{seed}") as reg:
        if go != "-":
            open(ready, "w").close()
            while not os.path.exists(go):
                time.sleep(0.01)
        s = reg.import_prompts("m", "rate", data, users)
        print(s.id, s.version, flush=True)
    """
)


@pytest.fixture
def prepared(backend, tmp_path):
    location, store = backend
    with Registry.init(location, store=store) as reg:
        reg.register_model("m", make_fake_model(tmp_path / "model", WIDTH))
        reg.add_task("rate", "rating")
        reg.add_users([f"user{i}" for i in range(N_USERS)])
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    return location, store, script


def _spawn(prepared, mode, ready, go="-", seed=0):
    location, store, script = prepared
    env = {**os.environ, "N_USERS": str(N_USERS), "WIDTH": str(WIDTH), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, str(script), location, store or "-", mode, str(ready), str(go), str(seed)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("child never reached the kill point")
        time.sleep(0.02)


@pytest.mark.parametrize("mode", ["bytes", "commit"])
def test_sigkill_mid_import_leaves_no_half_version_and_gc_cleans(prepared, tmp_path, mode):
    location, store, _ = prepared
    ready = tmp_path / "ready"
    proc = _spawn(prepared, mode, ready)
    _wait_for(ready, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL

    with Registry.open(location, store=store) as reg:
        assert reg.list_sets() == []  # nothing visible
        assert reg.list_runs(kind="import") == []
        report = reg.doctor()
        assert [p.kind for p in report.problems] == ["orphan"]
        objects = reg.store.list_objects()
        assert len(objects) == 1 and objects[0].key.startswith("set-")
        assert reg.gc(grace_seconds=3600).removed == ()  # too young: could be a live writer
        cleaned = reg.gc(grace_seconds=0)
        assert cleaned.removed == (objects[0].key,)
        assert reg.store.list_objects() == [] and reg.doctor().ok
        # the lock the dead writer held is gone: the registry takes writes again
        data = np.ones((2, 1, WIDTH), np.float32)
        assert reg.import_prompts("m", "rate", data, ["user0", "user1"]).version == 1


def test_two_processes_import_concurrently_and_nothing_is_lost(prepared, tmp_path):
    location, store, _ = prepared
    go = tmp_path / "go"
    procs = [_spawn(prepared, "plain", tmp_path / f"ready{i}", go=go, seed=i + 1) for i in range(2)]
    for i, proc in enumerate(procs):
        _wait_for(tmp_path / f"ready{i}", proc)
    go.touch()  # release both at once
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        outputs.append(out.split())
    assert sorted(int(v) for _, v in outputs) == [1, 2]
    with Registry.open(location, store=store) as reg:
        sets = {s.id: s for s in reg.list_sets()}
        assert len(sets) == 2 and all(s.n_users == N_USERS for s in sets.values())
        probe = [f"user{i}" for i in (0, 123, N_USERS - 1)]
        for (set_id, _), seed in zip(outputs, (1, 2)):
            expected = np.random.default_rng(seed).normal(size=(N_USERS, 1, WIDTH)).astype(np.float32)
            np.testing.assert_array_equal(reg.get_prompts(probe, set=int(set_id)).numpy(), expected[[0, 123, N_USERS - 1]])
        assert reg.doctor().ok


MIXED_CHILD = textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from prompt_registry import Registry

    location, store, role, index, go, out = sys.argv[1:7]
    store = None if store == "-" else store
    index = int(index)
    while not os.path.exists(go):
        time.sleep(0.01)
    made, reads = [], 0
    with Registry.open(location, store=store, actor=f"{role}-{index}") as reg:
        if role == "importer":  # five incremental versions on top of whatever production is, each moving it
            while os.environ.get("ADAPTER") and not os.path.exists(go + ".migrated"):
                time.sleep(0.01)  # the migrator's first apply first: its next ones then race the imports
            for k in range(5):
                users = [f"w{index}-{k}-{i}" for i in range(50)]
                rows = np.full((50, 1, 4), index * 100 + k, dtype=np.float32)
                made.append(reg.import_prompts("m", "rate", rows, users, base="m/rate@production", create_users=True,
                                               alias="production", reason=f"{role}-{index}-{k}").id)
        elif role == "migrator":  # three applies of a stored adapter to whatever production is, each moving `migrated`
            for k in range(3):
                made.append(reg.apply_adapter(int(os.environ["ADAPTER"]), sources=["m/rate@production"], alias="migrated",
                                              progress=False).id)
                source = reg.get_set(made[-1]).parents[0]
                open(go + ".migrated", "a").close()
                deadline = time.monotonic() + 30
                while reg.get_set("m/rate@production").id == source and time.monotonic() < deadline:
                    time.sleep(0.05)  # the next apply maps a newer version (the same one would be the same set)
        elif role == "mover":  # ten moves of another alias among the first versions
            for k in range(10):
                reg.set_alias("staging", 1 + k % 2, reason=f"move {k}")
        else:  # a reader: production is always a whole, verified version
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline:
                s = reg.get_set("m/rate@production")
                users = reg.list_set_users(s.id)
                assert len(users) == s.n_users, (s.id, len(users), s.n_users)
                reg.get_prompts(users, set=s.id)  # every row verified
                reads += 1
    with open(out, "w") as fh:
        fh.write(" ".join(map(str, made)) + f" reads={reads}")
    """
)


def test_four_writers_and_two_readers_at_once_lose_nothing(prepared, tmp_path):
    """Two importers (five incremental versions each, each moving ``production``), a migrator (three
    applies of a stored adapter to whatever ``production`` is, each moving ``migrated`` on the target
    model), an alias mover and two readers, all at once: 13 new versions, none lost or duplicated;
    every alias history has every move; each migrated set maps exactly the source version it read;
    readers only ever see whole versions; no lock or serialization error reaches anyone."""
    import torch

    from prompt_registry.migration.puma.adapter import AdapterConfig, Phi

    location, store, _ = prepared
    with Registry.open(location, store=store) as reg:
        first = reg.import_prompts("m", "rate", np.zeros((10, 1, WIDTH), np.float32), [f"user{i}" for i in range(10)], alias="production")
        reg.import_prompts("m", "rate", np.ones((10, 1, WIDTH), np.float32), [f"user{i}" for i in range(10)])
        reg.register_model("b", make_fake_model(tmp_path / "model-b", 24, seed=3))
        torch.manual_seed(0)
        phi = Phi(AdapterConfig((WIDTH,), 24, hidden=8))
        head = reg.put_artifact("head", "b/rate", {"w": torch.zeros(24)}, task="rate", target_model="b")
        adapter = reg.put_artifact("adapter", "m->b/rate", phi.state_dict(), task="rate", target_model="b", source_models=["m"],
                                   config={"adapter": phi.config.to_dict(), "head_id": head.id})
    assert first.id == 1
    script, go = tmp_path / "mixed.py", tmp_path / "go-mixed"
    script.write_text(MIXED_CHILD.replace("(50, 1, 4)", f"(50, 1, {WIDTH})"))
    roles = [("importer", i) for i in range(2)] + [("migrator", 0), ("mover", 0)] + [("reader", i) for i in range(2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ADAPTER": str(adapter.id)}
    procs = [subprocess.Popen([sys.executable, str(script), location, store or "-", role, str(i), str(go), str(tmp_path / f"{role}{i}.out")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for role, i in roles]
    time.sleep(1.0)
    go.touch()
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert "locked" not in err and "serializ" not in err.lower(), err
    def ids(name):
        return [int(x) for x in (tmp_path / f"{name}.out").read_text().split() if not x.startswith("reads")]

    made = ids("importer0") + ids("importer1")
    migrated = ids("migrator0")
    reads = [int((tmp_path / f"reader{i}.out").read_text().split("reads=")[1]) for i in range(2)]
    assert len(made) == len(set(made)) == 10 and len(migrated) == 3 and min(reads) > 0
    with Registry.open(location, store=store) as reg:
        sets = {s.id: s for s in reg.list_sets(model="m", task="rate")}
        assert set(made) <= set(sets) and len(sets) == 12
        assert sorted(s.version for s in sets.values()) == list(range(1, 13))  # no version number lost or taken twice
        assert len(reg.alias_history("production", model="m", task="rate")) == 11  # the first set + 10 moves, none lost
        assert len(reg.alias_history("staging", model="m", task="rate")) == 10
        targets = {s.id: s for s in reg.list_sets(model="b", task="rate")}
        assert sorted(targets) == sorted(set(migrated)) and sorted(s.version for s in targets.values()) == list(range(1, len(targets) + 1))
        assert len({t.parents for t in targets.values()}) == len(targets)  # one set per source version: an apply is idempotent
        assert len(targets) >= 2, "every apply read the same production: the migrator never raced an import"
        assert len(reg.alias_history("migrated", model="b", task="rate")) == len(targets)
        for set_id in targets:  # each maps exactly the whole source version it read, row for row
            target = targets[set_id]
            (source,) = target.parents
            assert reg.list_set_users(set_id) == reg.list_set_users(source) and target.n_users == sets[source].n_users
            reg.get_prompts(reg.list_set_users(set_id), set=set_id)  # every row verified
        # every importer's rows are in the final production version: each import built on the one before
        final = reg.get_set("m/rate@production")
        users = set(reg.list_set_users(final.id))
        assert all(f"w{i}-{k}-0" in users for i in range(2) for k in range(5)) and final.n_users == 10 + 10 * 50
        assert reg.doctor().ok


def test_a_writer_locked_out_past_the_wait_gets_a_busy_error_and_nothing_half_written(backend, tmp_path, monkeypatch):
    """Another writer holds the lock (SQLite's write lock, Postgres's model row) past the wait: the
    blocked import fails with one BusyError saying it was rolled back, and works once the lock goes."""
    import sqlalchemy as sa

    import prompt_registry as pr
    from prompt_registry.db import engine as engine_module

    location, store = backend
    with Registry.init(location, store=store) as reg:
        reg.register_model("m", make_fake_model(tmp_path / "model", WIDTH))
        reg.add_task("rate", "rating")
        url = str(reg.where) if "://" in str(reg.where) else f"sqlite:///{Path(location) / 'registry.db'}"
    monkeypatch.setattr(engine_module, "SQLITE_BUSY_TIMEOUT_MS", 300)
    holder = sa.create_engine(url)
    with holder.connect() as conn:
        if conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.exec_driver_sql("BEGIN")
            conn.exec_driver_sql("SELECT id FROM base_models FOR UPDATE")
        with Registry.open(location, store=store) as reg:
            started = time.monotonic()
            with pytest.raises(pr.BusyError, match="rolled back.*run it again"):
                reg.import_prompts("m", "rate", np.zeros((3, 1, WIDTH), np.float32), ["x1", "x2", "x3"], create_users=True)
            assert time.monotonic() - started < 30
            conn.rollback()
            assert reg.list_sets() == [] and reg.count_users() == 0
            reg.import_prompts("m", "rate", np.zeros((3, 1, WIDTH), np.float32), ["x1", "x2", "x3"], create_users=True)
            reg.gc(grace_seconds=0)
            assert reg.doctor().ok
    holder.dispose()
