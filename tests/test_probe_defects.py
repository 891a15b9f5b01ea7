"""Regression tests for the five defects a hostile probe found on 475e28c (issue 11).

1. Two registries sharing one tensor store destroyed each other's data (``gc`` of one took the
   other's committed arrays for orphans). Stores are now bound to one catalogue, and ``gc``
   deletes only keys this catalogue can prove it wrote.
2. A forked child inherited the module-level thread pools without their threads and hung inside
   its import, holding SQLite's write lock.
3. ``apply_adapter`` rebuilt ``set(everyone)`` once per user: quadratic in users.
4. Racing creators of a new alias on Postgres got a raw ``IntegrityError``.
5. A killed ``migrate apply`` left its run ``running`` forever.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import prompts, user_ids

import prompt_registry as pr
from prompt_registry import Registry
from prompt_registry.migration import migrate as migrate_module
from prompt_registry.migration.puma.adapter import AdapterConfig, Phi
from prompt_registry.store import keys

pytestmark = pytest.mark.registry


# ------------------------------------------------------------------------------ 1. shared stores


def test_a_store_serves_one_catalogue_and_another_is_refused(registry, populated, tmp_path, monkeypatch):
    kept = populated.import_prompts("a", "rate", prompts(10), user_ids(10))
    store_root = str(populated.store.root)
    # the careless operator: PROMPT_REGISTRY_STORE set once (for the Postgres registry) and a
    # directory registry created afterwards picks it up
    monkeypatch.setenv("PROMPT_REGISTRY_STORE", store_root)
    other = str(tmp_path / "other")
    with pytest.raises(pr.StoreBindingError, match="belongs to another catalogue") as refused:
        Registry.init(other)
    assert store_root in str(refused.value) and "--store" in str(refused.value)
    with pytest.raises(pr.StoreBindingError):
        Registry.init(other, store=store_root)
    assert not Path(other).exists()  # refused before anything was created
    # nothing the refused registry could have done touched the first one's data
    assert populated.doctor().ok
    np.testing.assert_array_equal(populated.get_prompts(user_ids(10), set=kept.id).numpy(), prompts(10))
    monkeypatch.delenv("PROMPT_REGISTRY_STORE")
    Registry.init(other).close()  # on a store of its own it works
    # an existing registry opened on a store that is not its own is refused too
    with pytest.raises(pr.StoreBindingError, match="belongs to another catalogue"):
        Registry.open(other, store=store_root)
    with Registry.open(other) as own:
        assert own.doctor().ok and own.catalog_id != populated.catalog_id
    assert populated.doctor().ok


def test_gc_deletes_only_its_own_orphans_never_foreign_objects(populated):
    kept = populated.import_prompts("a", "rate", prompts(10), user_ids(10))
    root = Path(populated.store.root)
    # an operator's directories and files inside the store, and objects of the old key format
    # (written before stores were bound, possibly by another registry sharing the store)
    (root / "arrays" / "operator-backup").mkdir()
    (root / "arrays" / "operator-backup" / "notes.txt").write_text("do not delete")
    (root / "blobs" / "README.txt").write_text("mine")
    populated.store.create_array("set-0123456789abcdef0123456789abcdef", (4, 1, 16), "float32")
    populated.store.put_blob("artifact-0123456789abcdef0123456789abcdef.safetensors", b"x")
    # a genuine orphan of this registry: bytes of an interrupted write, named as it names them
    orphan = keys.new_key(populated.catalog_id, "set")
    populated.store.create_array(orphan, (4, 1, 16), "float32")

    report = populated.doctor()
    assert [p.kind for p in report.problems] == ["orphan"] and orphan in report.problems[0].message
    assert set(report.foreign) == {"operator-backup", "README.txt", "set-0123456789abcdef0123456789abcdef",
                                   "artifact-0123456789abcdef0123456789abcdef.safetensors"}
    done = populated.gc(grace_seconds=0)
    assert done.removed == (orphan,)
    assert set(done.foreign) == set(report.foreign)
    assert (root / "arrays" / "operator-backup" / "notes.txt").read_text() == "do not delete"
    assert (root / "blobs" / "README.txt").exists()
    assert populated.store.exists("set-0123456789abcdef0123456789abcdef")
    assert populated.doctor().ok
    np.testing.assert_array_equal(populated.get_prompts(user_ids(10), set=kept.id).numpy(), prompts(10))


def test_store_keys_carry_the_catalogue_id(populated):
    s = populated.import_prompts("a", "rate", prompts(3), user_ids(3))
    art = populated.put_artifact("head", "a/rate", {"w": torch.zeros(2)}, task="rate", target_model="a")
    for key in (s.store_key, art.store_key):
        assert keys.owner(key) == populated.catalog_id
    assert keys.owner("set-" + "0" * 32) is None and keys.owner("operator-backup") is None


# ------------------------------------------------------------------------------ 2. fork safety

_INHERITED: Registry | None = None


def _child_import(location: str, store: str | None, seed: int, use_inherited: bool) -> None:
    reg = _INHERITED if use_inherited else Registry.open(location, store=store, actor="child")
    assert reg is not None
    s = reg.import_prompts("a", "rate", prompts(600, seed=seed), [f"c{seed}-{i}" for i in range(600)], create_users=True)
    assert s.n_users == 600
    reg.get_prompts([f"c{seed}-0"], set=s.id)
    os._exit(0)  # a forked child leaves without running the parent's atexit hooks (pools, engines)


@pytest.mark.parametrize("how", ["fork-inherited", "fork-reopened", "spawn"])
def test_a_child_process_imports_after_the_parent_did(backend, model_dirs, how):
    global _INHERITED
    location, store = backend
    reg = Registry.init(location, store=store, actor="parent")
    try:
        reg.register_model("a", model_dirs["a"])
        reg.add_task("rate", "rating")
        # the parent's own import starts the hashing and I/O pools a child inherits when forked
        reg.import_prompts("a", "rate", prompts(600), [f"p{i}" for i in range(600)], create_users=True)
        _INHERITED = reg
        ctx = multiprocessing.get_context("spawn" if how == "spawn" else "fork")
        child = ctx.Process(target=_child_import, args=(location, store, 7, how == "fork-inherited"))
        child.start()
        child.join(120)
        if child.is_alive():
            child.kill()
            child.join()
            pytest.fail(f"the {how} child hung inside its import")
        assert child.exitcode == 0
        # the parent still works, and sees the child's version
        assert [s.version for s in reg.list_sets(model="a")] == [2, 1]
        after = reg.import_prompts("a", "rate", prompts(600, seed=9), [f"p{i}" for i in range(600)])
        assert after.version == 3 and reg.doctor().ok
    finally:
        _INHERITED = None
        reg.close()


# ------------------------------------------------------------------------------ 3 and 5: apply


def _adapter(reg: Registry) -> int:
    """A stored adapter a -> b (random weights: apply does not care what it learned)."""
    torch.manual_seed(0)
    phi = Phi(AdapterConfig((16,), 24, hidden=32))
    head = reg.put_artifact("head", "b/rate", {"w": torch.zeros(24)}, task="rate", target_model="b")
    adapter = reg.put_artifact("adapter", "a->b/rate", phi.state_dict(), task="rate", target_model="b",
                               source_models=["a"], config={"adapter": phi.config.to_dict(), "head_id": head.id})
    return adapter.id


class _CountingList(list):
    """A list that counts how often it is iterated from start to end."""

    iterations = 0

    def __iter__(self):
        type(self).iterations += 1
        return super().__iter__()


def test_apply_looks_at_the_user_list_a_bounded_number_of_times(populated, monkeypatch):
    n = 3000
    users = [f"x{i}" for i in range(n)]
    populated.import_prompts("a", "rate", prompts(n), users, create_users=True, alias="production")
    adapter_id = _adapter(populated)
    original = migrate_module.plan_coverage

    def counting(*a, **k):
        cover = original(*a, **k)
        cover.mapped = _CountingList(cover.mapped)
        return cover

    monkeypatch.setattr(migrate_module, "plan_coverage", counting)
    _CountingList.iterations = 0
    result = populated.apply_adapter(adapter_id, progress=False)
    assert result.n_users == n
    # quadratic before the fix: set(everyone) was rebuilt for every user (n + a few iterations)
    assert _CountingList.iterations < 20
    _CountingList.iterations = 0
    new = [f"y{i}" for i in range(500)]
    populated.import_prompts("a", "rate", prompts(500, seed=3), new, create_users=True, base="a/rate@production",
                             alias="production")
    inc = populated.apply_adapter(adapter_id, users=new, progress=False)
    assert inc.n_users == n + 500 and _CountingList.iterations < 20


APPLY_CHILD = textwrap.dedent(
    """
    import sys, time
    from prompt_registry import Registry
    from prompt_registry.core.writes import SetWriter

    location, store, adapter_id, ready = sys.argv[1:5]
    store = None if store == "-" else store

    def hang(*args, **kwargs):  # inside the apply, after its run started
        open(ready, "w").close()
        time.sleep(120)  # the parent kills us here

    SetWriter.write_prompts = hang
    with Registry.open(location, store=store, actor="doomed") as reg:
        reg.apply_adapter(int(adapter_id), progress=False)
    """
)


def _kill_an_apply(populated, backend, tmp_path) -> int:
    location, store = backend
    populated.import_prompts("a", "rate", prompts(20), user_ids(20), alias="production")
    adapter_id = _adapter(populated)
    script, ready = tmp_path / "apply_child.py", tmp_path / "ready"
    script.write_text(APPLY_CHILD)
    proc = subprocess.Popen([sys.executable, str(script), location, store or "-", str(adapter_id), str(ready)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ready.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited early: {proc.stderr.read()}")
        assert time.monotonic() < deadline, "child never reached the kill point"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return adapter_id


def test_a_killed_apply_run_is_reported_stale_and_gc_closes_it(populated, backend, tmp_path):
    _kill_an_apply(populated, backend, tmp_path)
    (run,) = populated.list_runs(kind="apply")
    assert run.status == "running"
    report = populated.doctor()
    assert [p.kind for p in report.problems] == ["stale-run"]
    assert f"run {run.id}" in report.problems[0].object and "gc" in report.problems[0].fix
    assert populated.gc(dry_run=True).closed_runs == (run.id,)
    assert populated.get_run(run.id).status == "running"  # a dry run changes nothing
    closed = populated.gc()
    assert closed.closed_runs == (run.id,)
    after = populated.get_run(run.id)
    assert after.status == "failed" and "stale" in after.error and after.finished_at is not None
    assert populated.doctor().ok


def test_a_rerun_closes_the_killed_run_as_failed(populated, backend, tmp_path):
    adapter_id = _kill_an_apply(populated, backend, tmp_path)
    (dead,) = populated.list_runs(kind="apply")
    result = populated.apply_adapter(adapter_id, progress=False)
    assert result.n_users == 20
    runs = {r.id: r for r in populated.list_runs(kind="apply")}
    assert runs[dead.id].status == "failed" and "stale" in runs[dead.id].error
    assert [r.status for r in runs.values() if r.id != dead.id] == ["succeeded"]
    assert populated.doctor().ok


def test_a_live_run_is_not_stale(populated):
    run = populated.start_run("apply", model="b", task="rate")
    assert populated.doctor().ok  # our own process is alive
    assert populated.gc().closed_runs == ()
    assert populated.get_run(run.id).status == "running"
    populated.finish_run(run.id)


# ------------------------------------------------------------------------------ 4. alias race


def test_racing_creators_of_a_new_alias_all_succeed_and_history_has_no_gap(populated, backend):
    location, store = backend
    sets = [populated.import_prompts("a", "rate", prompts(5, seed=i), user_ids(5)) for i in range(12)]
    for round_ in range(3):
        name = f"race{round_}"
        n = len(sets) + 4
        barrier = threading.Barrier(n)
        errors: list[BaseException] = []
        regs = [Registry.open(location, store=store, actor=f"racer{i}") for i in range(n)]

        def race(i: int) -> None:
            try:
                barrier.wait()
                if i < len(sets):
                    regs[i].set_alias(name, sets[i].id, reason=f"racer {i}")
                else:  # `prompt import --alias NEW` racing the others
                    regs[i].import_prompts("a", "rate", prompts(5, seed=100 + i), user_ids(5), alias=name)
            except BaseException as exc:  # noqa: BLE001 - collected and asserted below
                errors.append(exc)

        threads = [threading.Thread(target=race, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        for reg in regs:
            reg.close()
        assert errors == []
        history = populated.alias_history(name)
        assert len(history) == n
        assert history[0].old_set_id is None
        assert all(later.old_set_id == earlier.new_set_id for earlier, later in zip(history, history[1:]))
        assert populated.get_alias(name, "a", "rate").set_id == history[-1].new_set_id
        sets = sets[:12]
    assert populated.doctor().ok


def test_a_catalogue_downgraded_and_upgraded_takes_its_own_store_back(backend, model_dirs):
    from alembic import command

    from prompt_registry.db import migrations
    from prompt_registry.db.engine import make_engine
    from prompt_registry.location import resolve_location

    location, store = backend
    with Registry.init(location, store=store) as reg:
        reg.register_model("a", model_dirs["a"])
        reg.add_task("rate", "rating")
        s = reg.import_prompts("a", "rate", prompts(4), user_ids(4), create_users=True)
        first_id = reg.catalog_id
    engine = make_engine(resolve_location(location, store).db_url)
    command.downgrade(migrations.alembic_config(engine), "0005")  # an older release: no catalogue id
    migrations.upgrade(engine)  # ... and back: a new random id
    engine.dispose()
    with Registry.open(location, store=store) as reg:
        # its sets' keys carry the id the store is bound to: proof that this is the same catalogue
        assert reg.catalog_id == first_id
        np.testing.assert_array_equal(reg.get_prompts(user_ids(4), set=s.id).numpy(), prompts(4))
        assert reg.audit_events(object_kind="registry")[0].action == "restore_catalog_id"
        assert reg.doctor().ok


def test_stale_rule_for_runs_of_other_hosts_and_of_this_one():
    import datetime as dt

    from prompt_registry import liveness
    from prompt_registry.db.schema import RunRow

    now = dt.datetime.now(dt.timezone.utc)
    me = liveness.current()
    assert me.pid == os.getpid() and me.token  # Linux: boot id + start time

    def run(**kw):
        return RunRow(status="running", started_at=now - dt.timedelta(hours=2), **kw)

    assert liveness.stale_reason(run(host=me.host, pid=me.pid, process_token=me.token), now) is None
    # the same pid, but another process (pid reuse): its start time differs
    boot = me.token.split("/")[0]
    assert "gone" in liveness.stale_reason(run(host=me.host, pid=me.pid, process_token=f"{boot}/1"), now)
    assert "rebooted" in liveness.stale_reason(run(host=me.host, pid=me.pid, process_token=f"other-boot/{me.token.split('/')[1]}"), now)
    # another host: judged by its heartbeat
    fresh = run(host="elsewhere", pid=1, process_token="x/1", heartbeat_at=now - dt.timedelta(seconds=30))
    old = run(host="elsewhere", pid=1, process_token="x/1", heartbeat_at=now - dt.timedelta(seconds=3600))
    assert liveness.stale_reason(fresh, now) is None
    assert "no sign of life" in liveness.stale_reason(old, now)
    assert liveness.stale_reason(old, now, stale_after=7200) is None
    assert "recorded no identity" in liveness.stale_reason(run(), now)  # a run from before revision 0006


def test_open_runs_beat(populated):
    import datetime as dt

    from sqlalchemy import select

    from prompt_registry import liveness
    from prompt_registry.db.engine import read_session
    from prompt_registry.db.schema import RunRow

    engine = populated._ctx.engine  # the heartbeat writes through the registry's engine
    beat = liveness.Heartbeat(engine, lambda: dt.datetime.now(dt.timezone.utc), interval=0.05)
    run = populated.start_run("apply", model="b", task="rate")

    def stamp():
        with read_session(engine) as session:
            return session.scalar(select(RunRow.heartbeat_at).where(RunRow.id == run.id))

    started = stamp()
    beat.add(run.id)
    deadline = time.monotonic() + 10
    while stamp() == started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stamp() != started
    beat.discard(run.id)
    beat.stop()
    populated.finish_run(run.id)
