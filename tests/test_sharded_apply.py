"""Sharded apply: N processes map chunk-aligned user ranges through one adapter into one set; the
set is visible only once every shard is written, a killed shard leaves nothing visible, and a
rerun reuses the shards already written. On SQLite and Postgres; under torchrun (and SIGKILL) on Postgres."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_fake_model, prompts, user_ids

import prompt_registry as pr
from prompt_registry.migration.puma.config import default_phi

N_USERS = 1000  # 4 chunks of 256: two shards of 2 chunks (512 + 488 rows)


@pytest.fixture
def mapped(backend, tmp_path):
    """A registry with source prompts on ``a`` (width 16) and a stored default-architecture adapter a -> b (24)."""
    reg, adapter, expected = _world(*backend, tmp_path)
    yield reg, adapter, expected, *backend
    reg.close()


@pytest.fixture
def mapped_pg(pg_url, tmp_path):
    """``mapped`` on Postgres only: where ranks on many machines would share a catalogue."""
    reg, adapter, expected = _world(pg_url, str(tmp_path / "store"), tmp_path)
    yield reg, adapter, expected, pg_url, str(tmp_path / "store")
    reg.close()


def _world(location, store, tmp_path):
    reg = pr.Registry.init(location, store=store, actor="tester")
    reg.register_model("a", make_fake_model(tmp_path / "a", 16, seed=1))
    reg.register_model("b", make_fake_model(tmp_path / "b", 24, seed=2))
    reg.add_task("rate", "rating")
    data = prompts(N_USERS, 16, seed=3)
    reg.import_prompts("a", "rate", data, user_ids(N_USERS), create_users=True, alias="production")
    phi = default_phi((16,), 24, seed=4)
    with torch.no_grad():
        phi.log_scale.fill_(0.5)  # not the identity scale: the rows must really go through the map
        expected = phi.eval()(torch.from_numpy(data)).numpy()
    head = reg.put_artifact("head", "b/rate", {"w": torch.zeros(24)}, task="rate", target_model="b")
    adapter = reg.put_artifact("adapter", "a->b", phi.state_dict(), task="rate", target_model="b", source_models=["a"],
                               config={"adapter": phi.config.to_dict(), "head_id": head.id})
    return reg, adapter.id, expected


def _sets_on_b(reg):
    return reg.list_sets(model="b", task="rate")


@pytest.mark.registry
def test_the_set_appears_only_when_every_shard_is_written(mapped):
    reg, adapter, expected, _, _ = mapped
    first = reg.apply_adapter_shard(adapter, 0, 2, progress=False)
    assert (first.rows, first.reused, first.set, first.missing) == ((0, 512), False, None, (1,))
    assert _sets_on_b(reg) == []  # nothing visible yet
    last = reg.apply_adapter_shard(adapter, 1, 2, progress=False)
    assert last.rows == (512, N_USERS) and last.set is not None and last.missing == ()
    assert [s.id for s in _sets_on_b(reg)] == [last.set.id] and last.set.n_rows == N_USERS
    np.testing.assert_allclose(reg.get_prompts(user_ids(N_USERS), set=last.set.id), expected, rtol=1e-5, atol=1e-6)
    assert reg.doctor().ok
    assert not [o for o in reg.store.list_objects() if o.key.startswith("shard-")]  # the shards' digests are gone after the commit
    again = reg.apply_adapter_shard(adapter, 0, 2, progress=False)
    assert again.set.id == last.set.id and again.reused  # idempotent
    assert reg.apply_adapter(adapter, progress=False).id == last.set.id  # the same mapping, however it was split
    runs = [r for r in reg.list_runs(kind="apply") if r.config.get("n_shards") == 2]
    assert sorted(r.config["shard"] for r in runs) == [0, 0, 1] and all(r.status == "succeeded" for r in runs)


@pytest.mark.registry
def test_a_failed_shard_leaves_no_set_and_the_rerun_reuses_the_finished_shards(mapped, monkeypatch):
    reg, adapter, expected, _, _ = mapped
    assert reg.apply_adapter_shard(adapter, 0, 3, progress=False).missing == (1, 2)
    real_put = type(reg.store).put_blob

    def crash(self, key, data):
        if key.startswith("shard-"):
            raise OSError("disk on fire")  # the shard's rows are written, its digests never recorded
        return real_put(self, key, data)

    monkeypatch.setattr(type(reg.store), "put_blob", crash)
    with pytest.raises(OSError, match="disk on fire"):
        reg.apply_adapter_shard(adapter, 1, 3, progress=False)
    monkeypatch.setattr(type(reg.store), "put_blob", real_put)
    assert _sets_on_b(reg) == [] and reg.list_runs(kind="apply")[0].status == "failed"
    produced: list[tuple[int, int]] = []
    from prompt_registry.migration import migrate as migrate_module

    real_producer = migrate_module._producer

    def counting(*args, **kwargs):
        produce = real_producer(*args, **kwargs)

        def wrapped(start, stop):
            produced.append((start, stop))
            return produce(start, stop)

        return wrapped

    monkeypatch.setattr(migrate_module, "_producer", counting)
    reused = reg.apply_adapter_shard(adapter, 0, 3, progress=False)
    assert reused.reused and produced == [] and reused.missing == (1, 2)  # shard 0 is not mapped again
    assert reg.apply_adapter_shard(adapter, 2, 3, progress=False).missing == (1,)
    done = reg.apply_adapter_shard(adapter, 1, 3, progress=False)
    assert done.set is not None and produced == [(512, N_USERS), (256, 512)]  # shard 2, then shard 1 again (its digests were lost)
    np.testing.assert_allclose(reg.get_prompts(user_ids(N_USERS), set=done.set.id), expected, rtol=1e-5, atol=1e-6)
    assert reg.doctor().ok


def _pending(reg):
    """The pending sets (id, rows the shards inserted so far), read from the catalogue directly."""
    from sqlalchemy import func, select

    from prompt_registry.db.engine import read_session
    from prompt_registry.db.schema import PromptRowRow, PromptSetRow

    with read_session(reg._ctx.engine) as session:
        ids = session.scalars(select(PromptSetRow.id).where(PromptSetRow.status == "pending")).all()
        return {i: session.scalar(select(func.count()).select_from(PromptRowRow).where(PromptRowRow.set_id == i)) for i in ids}


@pytest.mark.registry
def test_each_shard_inserts_its_own_rows_into_a_pending_set_no_reader_sees(mapped):
    """The catalogue rows go in with each shard (the commit only checks them and gives the set its
    version): until the last shard, no listing, read, audit or lineage shows the set."""
    reg, adapter, expected, _, _ = mapped
    source = reg.get_set("a/rate@production")
    assert reg.apply_adapter_shard(adapter, 0, 2, progress=False).set is None
    [(pending, rows)] = _pending(reg).items()
    assert rows == 512  # shard 0's users, in with shard 0
    assert _sets_on_b(reg) == [] and reg.list_sets(include_deleted=True) == [source]
    with pytest.raises(pr.UnknownSetError, match="shards are not all in"):
        reg.get_set(pending)
    with pytest.raises(pr.UnknownSetError):
        reg.lineage(pending)
    with pytest.raises(pr.UnknownSetError):
        reg.get_prompts(user_ids(2), set=pending)
    assert [v.set_id for v in reg.user_history(user_ids(1)[0]).versions] == [source.id]
    assert reg.blast_radius(adapter).sets == () and [n.set_id for n in reg.lineage(source, down=True).nodes] == [source.id]
    with pytest.raises(pr.ConflictError, match=f"sharded write of the same inputs is in progress \\(pending set {pending}\\)"):
        reg.apply_adapter(adapter, progress=False)  # the same mapping in one process waits for the shards
    last = reg.apply_adapter_shard(adapter, 1, 2, progress=False)
    assert last.set.id == pending and last.set.version == 1 and _pending(reg) == {}
    assert reg.blast_radius(adapter).n_users == N_USERS and reg.apply_adapter(adapter, progress=False).id == pending


@pytest.mark.registry
def test_a_user_purged_while_the_shards_run_blocks_the_commit_and_loses_its_bytes(backend, tmp_path):
    """Shards given fixed users (an apply would see the purge in its source and map the rest
    under a new key): the purge erases the pending bytes too, and the last shard refuses to commit."""
    reg = pr.Registry.init(backend[0], store=backend[1])
    reg.register_model("a", make_fake_model(tmp_path / "a", 16, seed=1))
    reg.add_task("rate", "rating")
    users = user_ids(600)
    reg.add_users(users)
    data = prompts(600, 16, seed=5)

    def write(shard):
        return reg._s.writes.write_prompt_shard("a", "rate", users, lambda a, b: data[a:b], prompt_len=1, key="ef" * 16,
                                                shard=shard, n_shards=2)

    assert write(0).missing == (1,)
    [pending] = _pending(reg)
    [store_key] = [o.key for o in reg.store.list_objects() if o.key.startswith("set-")]
    assert reg.store.read_rows(store_key, [7]).any()
    report = reg.purge_user(users[7], reason="test")  # row 7: in shard 0's range, already written
    assert report.sets == (pending,) and not reg.store.read_rows(store_key, [7]).any()  # the pending bytes are erased
    with pytest.raises(pr.UnknownUserError, match=f"{users[7]}.*purged while this sharded write ran"):
        write(1)
    assert reg.list_sets(include_deleted=True) == [] and _pending(reg) == {pending: 599}
    assert reg.gc(grace_seconds=0).abandoned_sets == (pending,) and not reg.store.list_objects()
    reg.close()


@pytest.mark.registry
def test_gc_removes_a_sharded_write_no_shard_touched_for_the_grace_period(mapped):
    reg, adapter, expected, _, _ = mapped
    assert reg.apply_adapter_shard(adapter, 0, 2, progress=False).set is None
    [pending] = _pending(reg)
    assert reg.gc().abandoned_sets == () and _pending(reg) == {pending: 512}  # touched just now: kept
    assert reg.gc(grace_seconds=0, dry_run=True).abandoned_sets == (pending,) and _pending(reg) == {pending: 512}
    report = reg.gc(grace_seconds=0)
    assert report.abandoned_sets == (pending,) and _pending(reg) == {}
    assert any(k.startswith("set-") for k in report.removed) and any(k.startswith("shard-") for k in report.removed)
    assert {o.key for o in reg.store.list_objects() if o.key.startswith(("set-", "shard-"))} == {reg.get_set("a/rate@production").store_key}
    first = reg.apply_adapter_shard(adapter, 0, 2, progress=False)
    assert not first.reused  # its digests went with the rest: mapped again
    done = reg.apply_adapter_shard(adapter, 1, 2, progress=False)
    np.testing.assert_allclose(reg.get_prompts(user_ids(N_USERS), set=done.set.id), expected, rtol=1e-5, atol=1e-6)
    assert reg.doctor().ok


def test_bad_shards_are_refused(tmp_path):
    reg = pr.Registry.init(tmp_path / "reg")
    reg.register_model("a", make_fake_model(tmp_path / "a", 16, seed=1))
    reg.add_task("rate", "rating")
    reg.add_users(user_ids(10))
    for shard, n in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(pr.InvalidArgumentError, match="shard"):
            reg._s.writes.write_prompt_shard("a", "rate", user_ids(10), lambda a, b: prompts(b - a), prompt_len=1, key="ab" * 16,
                                             shard=shard, n_shards=n)
    with pytest.raises(pr.InvalidArgumentError, match="at most 1 shards"):
        reg._s.writes.write_prompt_shard("a", "rate", user_ids(10), lambda a, b: prompts(b - a), prompt_len=1, key="ab" * 16,
                                         shard=0, n_shards=2)
    reg.close()


@pytest.mark.registry
def test_a_shard_refuses_unknown_and_deleted_users_before_writing_bytes(backend, tmp_path):
    """The shard's user check counts in the database (no row per user); what it refuses it names."""
    reg = pr.Registry.init(backend[0], store=backend[1])
    reg.register_model("a", make_fake_model(tmp_path / "a", 16, seed=1))
    reg.add_task("rate", "rating")
    users = user_ids(600)
    reg.add_users(users[:-1])  # the last user is unknown
    arrays_before = {o.key for o in reg.store.list_objects()}

    def write(shard):
        return reg._s.writes.write_prompt_shard("a", "rate", users, lambda a, b: prompts(b - a, 16), prompt_len=1, key="cd" * 16,
                                                shard=shard, n_shards=2)

    with pytest.raises(pr.UnknownUserError, match=f"not registered: .*{users[-1]}"):
        write(1)  # the range holding the unknown user
    assert {o.key for o in reg.store.list_objects()} == arrays_before  # refused before any byte was written
    assert write(0).missing == (1,)  # the other range is fine
    reg.add_users(users[-1:])
    reg.purge_user(users[-2], reason="test")
    with pytest.raises(pr.UnknownUserError, match=f"{users[-2]}.* deleted"):
        write(1)
    shard_1 = {o.key for o in reg.store.list_objects() if o.key.startswith("shard-")}
    assert len(shard_1) == 1 and reg.list_sets(model="a") == []  # only shard 0's digests; no set
    reg.close()


CHILD = """
import os, signal, sys
from prompt_registry import Registry
from prompt_registry.store import zarr_store
location, store, adapter = sys.argv[1], sys.argv[2] or None, int(sys.argv[3])
real_put = zarr_store.ZarrStore.put_blob
def killed(self, key, data):
    if key.startswith("shard-"):
        os.kill(os.getpid(), signal.SIGKILL)  # the shard's rows are durable, its digests never stored
    return real_put(self, key, data)
zarr_store.ZarrStore.put_blob = killed
with Registry.open(location, store=store) as reg:
    reg.apply_adapter_shard(adapter, 1, 2, progress=False)
"""


@pytest.mark.postgres
def test_torchrun_ranks_share_an_apply_and_a_sigkilled_rank_leaves_no_set(mapped_pg, tmp_path):
    reg, adapter, expected, location, store = mapped_pg
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.run([sys.executable, str(script), str(location), store or "", str(adapter)], env=env, capture_output=True, text=True,
                           timeout=120)
    assert child.returncode == -9, child.stderr
    assert _sets_on_b(reg) == []  # rank 1 died after its rows, before its digests: nothing is visible
    base = ["--registry", str(location)] + (["--store", store] if store else [])
    ranks = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                            "prompt_registry.cli", *base, "migrate", "apply", "--adapter", str(adapter), "--shard", "auto"],
                           env=env, capture_output=True, text=True, timeout=300)
    assert ranks.returncode == 0, ranks.stdout + ranks.stderr
    assert "is committed" in ranks.stdout, ranks.stdout
    [made] = _sets_on_b(reg)
    assert made.n_rows == N_USERS
    np.testing.assert_allclose(reg.get_prompts(user_ids(N_USERS), set=made.id), expected, rtol=1e-5, atol=1e-6)
    assert reg.doctor().ok


@pytest.mark.registry
def test_a_shard_resolves_only_its_own_window_of_the_source(mapped):
    """A shard of many reads where its own users' rows live, not the whole source version's
    (with N shards on N machines each would otherwise resolve every user)."""
    reg, adapter, expected, location, store = mapped
    source = reg.get_set("a/rate@production").id
    with pr.Registry.open(location, store=store) as fresh:  # nothing cached yet
        assert fresh.apply_adapter_shard(adapter, 1, 2, progress=False).set is None
        assert list(fresh._ctx.caches.manifests) == [(source, "u512", f"u{N_USERS - 1}")]
    done = reg.apply_adapter_shard(adapter, 0, 2, progress=False).set
    np.testing.assert_allclose(reg.get_prompts(user_ids(N_USERS), set=done.id), expected, rtol=1e-5, atol=1e-6)


# names whose order differs between code points and a language-aware collation (Postgres' default)
ODD_NAMES = [f"{p}{i:03d}" for i in range(150) for p in ("A", "a", "a-", "_", "É", "e")][:800]


@pytest.mark.registry
def test_shards_of_an_incremental_source_with_odd_user_names_map_every_user(backend, tmp_path):
    """Windows are taken in code point order (Python's sort; ``COLLATE "C"`` on Postgres), through
    the source's incremental chain: three shards give every user its own mapped row."""
    location, store = backend
    reg = pr.Registry.init(location, store=store, actor="tester")
    if location.startswith("postgresql"):
        _language_collation(reg)
    reg.register_model("a", make_fake_model(tmp_path / "a", 16, seed=1))
    reg.register_model("b", make_fake_model(tmp_path / "b", 24, seed=2))
    reg.add_task("rate", "rating")
    base = reg.import_prompts("a", "rate", prompts(700, 16, seed=3), ODD_NAMES[:700], create_users=True)
    changed = ODD_NAMES[650:]  # 50 users updated, 100 new
    top = reg.import_prompts("a", "rate", prompts(len(changed), 16, seed=5), changed, create_users=True, base=base.id)
    phi = default_phi((16,), 24, seed=4).eval()
    head = reg.put_artifact("head", "b/rate", {"w": torch.zeros(24)}, task="rate", target_model="b")
    adapter = reg.put_artifact("adapter", "a->b", phi.state_dict(), task="rate", target_model="b", source_models=["a"],
                               config={"adapter": phi.config.to_dict(), "head_id": head.id}).id
    everyone = sorted(ODD_NAMES)
    with torch.no_grad():
        expected = phi(reg.get_prompts(everyone, set=top.id)).numpy()
    with pr.Registry.open(location, store=store) as fresh:
        writes = [fresh.apply_adapter_shard(adapter, i, 3, progress=False) for i in (2, 0, 1)]
        windows = {key: manifest.users for key, manifest in fresh._ctx.caches.manifests.items()}
    ranges = [w.rows for w in writes]
    assert windows == {(top.id, everyone[lo], everyone[hi - 1]): tuple(everyone[lo:hi]) for lo, hi in ranges}  # each its users only
    done = writes[-1].set
    assert done is not None and done.n_users == len(ODD_NAMES)
    np.testing.assert_allclose(reg.get_prompts(everyone, set=done.id), expected, rtol=1e-5, atol=1e-6)
    reg.close()


def _language_collation(reg):
    """Give the test schema's user ids an English collation (a database made with a locale has
    one by default; CI's is C.UTF-8, which orders by code point and would hide the difference)."""
    from sqlalchemy import text

    with reg._ctx.engine.begin() as conn:
        if conn.execute(text("SELECT 1 FROM pg_collation WHERE collname = 'en-x-icu'")).first() is None:
            pytest.skip("this Postgres has no ICU collation 'en-x-icu' to order user ids by language")
        conn.execute(text('ALTER TABLE users ALTER COLUMN external_id TYPE varchar(200) COLLATE "en-x-icu"'))
        ordered = conn.execute(text("SELECT x FROM (VALUES ('a-1'), ('a0'), ('A1'), ('_1')) v(x) ORDER BY x COLLATE \"en-x-icu\"")).scalars().all()
    assert ordered != sorted(ordered)  # the collation really orders otherwise than code points


@pytest.mark.registry
def test_a_shards_rows_go_in_batch_by_batch_beside_the_mapping(mapped, monkeypatch):
    """Each durable batch's catalogue rows are inserted on a thread of their own while the next
    batch is mapped; together the inserts cover the shard's rows once, in order, and a failed
    insert fails the shard (nothing visible), which a rerun finishes."""
    import threading

    from prompt_registry.core import writes

    reg, adapter, expected, _, _ = mapped
    monkeypatch.setattr(writes, "WRITE_BATCH_ROWS", 256)  # one chunk: 2 batches a shard
    calls = []
    real = writes.SetWriter._insert_shard_rows
    fail = {"once": True}

    def spy(self, set_id, users, start, stop, digests):
        calls.append((start, stop, threading.current_thread().name))
        if start == 256 and fail.pop("once", False):  # the second batch: the first one's rows are in
            raise OSError("catalogue unreachable")
        return real(self, set_id, users, start, stop, digests)

    monkeypatch.setattr(writes.SetWriter, "_insert_shard_rows", spy)
    with pytest.raises(OSError, match="catalogue unreachable"):
        reg.apply_adapter_shard(adapter, 0, 2, progress=False)
    assert _sets_on_b(reg) == [] and [c[:2] for c in calls] == [(0, 256), (256, 512)]
    assert _pending(reg).popitem()[1] == 256  # a failed shard's first batch: replaced by the rerun
    calls.clear()
    assert reg.apply_adapter_shard(adapter, 0, 2, progress=False).set is None
    assert _pending(reg).popitem()[1] == 512
    ranges = [c[:2] for c in calls]
    assert ranges[0] == (0, 256) and ranges[-1][1] == 512 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert "shard-rows" in calls[0][2]  # the first batch's rows went in beside the mapping of the next
    done = reg.apply_adapter_shard(adapter, 1, 2, progress=False).set
    np.testing.assert_allclose(reg.get_prompts(user_ids(N_USERS), set=done.id), expected, rtol=1e-5, atol=1e-6)
    assert reg.doctor().ok


def test_write_batches_are_bounded_by_bytes_as_well_as_rows():
    from prompt_registry.core.writes import WRITE_BATCH_BYTES, WRITE_BATCH_ROWS, write_batch_rows

    assert write_batch_rows(576 * 4) == WRITE_BATCH_ROWS  # small rows: the row cap
    assert write_batch_rows(20 * 4096 * 4) == 256  # 16,384 such rows would be 5.4 GB: one chunk
    big = write_batch_rows(4096 * 4)
    assert big % 256 == 0 and big * 4096 * 4 <= WRITE_BATCH_BYTES < (big + 256) * 4096 * 4


def test_a_migrations_map_of_wide_prompts_takes_smaller_batches():
    """``migrate`` maps every candidate in ``apply_batch_users`` batches, fewer users a pass when
    their inputs would pass the write batches' byte cap (what a wide real model puts on a GPU)."""
    from prompt_registry.core.writes import WRITE_BATCH_BYTES
    from prompt_registry.migration.migrate import _map_table

    class Sizes:
        def __init__(self):
            self.seen = []

        def to(self, device):
            return self

        def map(self, *inputs):
            self.seen.append([len(t) for t in inputs])
            return inputs[0][:, :1] * 2

    narrow, wide = Sizes(), Sizes()
    small = torch.ones(1000, 1, 8)
    assert torch.equal(_map_table(narrow, [small, small], "cpu", 300), small[:, :1] * 2)
    assert narrow.seen == [[300, 300], [300, 300], [300, 300], [100, 100]]  # the users cap
    per_user = WRITE_BATCH_BYTES // 4 // 3 + 1  # floats: 3 users' inputs pass the cap, 2 do not
    rows = torch.arange(5, dtype=torch.float32)[:, None, None].expand(5, 1, per_user).contiguous()
    mapped = _map_table(wide, [rows], "cpu", 16384)
    assert wide.seen == [[2], [2], [1]] and torch.equal(mapped, rows[:, :1] * 2)


@pytest.mark.registry
def test_a_streaming_write_of_wide_rows_writes_smaller_batches(mapped, monkeypatch):
    """The rows a streaming write (an apply; a shard likewise) produces and writes at once are
    capped in bytes: a 16 KB cap holds 170 rows of 24 float32, less than a chunk, so each write is
    one 256-row chunk, and the set still holds every mapped row."""
    from prompt_registry.core import writes
    from prompt_registry.store.zarr_store import ZarrStore

    reg, adapter, expected, _, _ = mapped
    monkeypatch.setattr(writes, "WRITE_BATCH_BYTES", 16 << 10)
    sizes = []
    original = ZarrStore.write_rows
    monkeypatch.setattr(ZarrStore, "write_rows", lambda self, key, start, data: (sizes.append(len(data)), original(self, key, start, data))[1])
    made = reg.apply_adapter(adapter, progress=False)
    assert sizes == [256, 256, 256, 232]
    np.testing.assert_allclose(reg.get_prompts(user_ids(N_USERS), set=made.id), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.registry
def test_a_window_read_of_a_user_outside_the_window_is_resolved_the_usual_way(mapped):
    reg, _, _, location, store = mapped
    source = reg.get_set("a/rate@production").id
    with pr.Registry.open(location, store=store) as fresh:
        reads = fresh._s.reads
        inside = reads.get_prompts(["u010", "u000"], set=source, window=("u000", "u100"))
        np.testing.assert_array_equal(inside.numpy(), reg.get_prompts(["u010", "u000"], set=source).numpy())
        assert list(fresh._ctx.caches.manifests) == [(source, "u000", "u100")]
        mixed = reads.get_prompts(["u000", "u900"], set=source, window=("u000", "u100"))
        np.testing.assert_array_equal(mixed.numpy(), reg.get_prompts(["u000", "u900"], set=source).numpy())
        with pytest.raises(pr.UnknownUserError, match="nobody"):
            reads.get_prompts(["u000", "nobody"], set=source, window=("u000", "u100"))


@pytest.mark.registry
def test_a_retry_of_a_shard_beside_its_live_run_breaks_neither(mapped, monkeypatch):
    """A scheduler retries shard 0 while its first run is alive (a lease that expired on a slow
    worker): the retry overwrites the live run's rows instead of deleting them first, so the
    live run still commits, and the retry, finding the set committed, returns it untouched."""
    import threading

    from prompt_registry.core import writes
    from prompt_registry.migration import migrate as migrate_module

    reg, adapter, expected, location, store = mapped
    monkeypatch.setattr(writes, "WRITE_BATCH_ROWS", 256)  # 2 batches a shard
    assert reg.apply_adapter_shard(adapter, 1, 2, progress=False).missing == (0,)
    gates = {name: (threading.Event(), threading.Event()) for name in ("live", "retry")}  # (blocked, go)
    real_producer = migrate_module._producer

    def gated(*args, **kwargs):
        produce = real_producer(*args, **kwargs)

        def wrapped(start, stop):
            name = threading.current_thread().name
            if (name == "live" and start == 256) or name == "retry":  # live: after its first batch is in
                blocked, go = gates[name]
                blocked.set()
                assert go.wait(60)
            return produce(start, stop)

        return wrapped

    monkeypatch.setattr(migrate_module, "_producer", gated)
    out = {}

    def run(name):
        with pr.Registry.open(location, store=store) as mine:
            try:
                out[name] = mine.apply_adapter_shard(adapter, 0, 2, progress=False)
            except Exception as exc:  # reported below
                out[name] = exc

    threads = {name: threading.Thread(target=run, args=(name,), name=name) for name in gates}
    threads["live"].start()
    assert gates["live"][0].wait(60)
    threads["retry"].start()
    assert gates["retry"][0].wait(60)
    assert list(_pending(reg).values()) == [488 + 256]  # shard 1's rows and the live run's first batch, none deleted
    gates["live"][1].set()
    threads["live"].join(60)
    live = out["live"]
    assert not isinstance(live, Exception), live
    assert live.set is not None and live.missing == ()
    gates["retry"][1].set()
    threads["retry"].join(60)
    retry = out["retry"]
    assert not isinstance(retry, Exception), retry
    assert retry.set.id == live.set.id and retry.reused
    assert [s.id for s in _sets_on_b(reg)] == [live.set.id]
    np.testing.assert_allclose(reg.get_prompts(user_ids(N_USERS), set=live.set.id), expected, rtol=1e-5, atol=1e-6)
    assert reg.doctor().ok


@pytest.mark.registry
@pytest.mark.parametrize("mode", ["stream", "shard"])
def test_a_user_purged_while_a_write_holds_their_rows_leaves_no_bytes(backend, tmp_path, mode):
    """The purge lands after the write has the user's rows in hand and before it writes them: it
    finds no row of theirs to erase, so the write itself must not leave their bytes behind when
    it refuses the deleted user (the stream discards its array, the shard zeroes their rows)."""
    reg = pr.Registry.init(backend[0], store=backend[1])
    other = pr.Registry.open(backend[0], store=backend[1])
    try:
        reg.register_model("m", make_fake_model(tmp_path / "m", 16, seed=1))
        reg.add_task("t", "rating")
        users = user_ids(600)
        reg.add_users(users)
        data = prompts(600, 16, seed=7)

        def produce(start, stop):
            rows = data[start:stop].copy()
            if start <= 7 < stop:
                other.purge_user(users[7], reason="erasure request")
            return rows

        with pytest.raises(pr.UnknownUserError, match="deleted|purged"):
            if mode == "stream":
                reg.write_prompts("m", "t", users, produce, prompt_len=1)
            else:
                reg._s.writes.write_prompt_shard("m", "t", users, produce, prompt_len=1, key="ab" * 16, shard=0, n_shards=2)
        arrays = [o.key for o in reg.store.list_objects() if o.kind == "array"]
        assert len(arrays) == (0 if mode == "stream" else 1)
        for key in arrays:
            assert not reg.store.read_rows(key, [7]).any()  # zeroed
            np.testing.assert_array_equal(reg.store.read_rows(key, [8])[0], data[8])  # the others stay for a rerun
    finally:
        other.close()
        reg.close()


@pytest.mark.registry
def test_gc_keeps_a_finished_shards_digests_while_its_write_is_pending(mapped):
    """Shard 0 finished long ago, shard 1 is still inserting rows (the pending set was touched
    within the grace period): gc keeps shard 0's digests, and shard 1 commits the set."""
    import datetime as dt

    from prompt_registry._util import utcnow
    from prompt_registry.db.engine import write_session
    from prompt_registry.db.schema import PromptSetRow

    reg, adapter, expected, _, _ = mapped
    assert reg.apply_adapter_shard(adapter, 0, 2, progress=False).missing == (1,)
    later = utcnow() + dt.timedelta(seconds=60)
    [pending] = _pending(reg)
    with write_session(reg._s.ctx.engine) as session:  # shard 1 touched the set just now, a minute after shard 0
        session.get(PromptSetRow, pending).created_at = later
    reg._s.ctx.now = lambda: later + dt.timedelta(seconds=1)
    report = reg.gc(grace_seconds=30)
    assert report.abandoned_sets == () and not [k for k in report.removed if k.startswith("shard-")]
    done = reg.apply_adapter_shard(adapter, 1, 2, progress=False)
    assert done.set is not None and done.missing == ()
    np.testing.assert_allclose(reg.get_prompts(user_ids(N_USERS), set=done.set.id), expected, rtol=1e-5, atol=1e-6)
