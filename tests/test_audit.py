"""Audit queries, per-user purge, retention and the append-only log, on every catalogue backend.

One scenario serves most tests: model ``a`` has a full version and an incremental one on top;
adapter ``ab`` migrates it to model ``b``, adapter ``bc`` migrates that to model ``c`` (two
migrations away), and ``c`` gets an incremental version of its own::

    s1 a@v1 (u000..u009) <-base- s2 a@v2 (+u000 retrained, +u010)
        <-source [adapter ab]- s3 b@v1 (u000..u010)
        <-source [adapter bc]- s4 c@v1 (u000..u010) <-base- s5 c@v2 (u005 retrained)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib

import numpy as np
import pytest
import sqlalchemy as sa
import torch
from conftest import make_fake_model, prompts, user_ids

import prompt_registry as pr
from prompt_registry import Registry

pytestmark = pytest.mark.registry


@dataclasses.dataclass
class Scenario:
    reg: Registry
    s1: pr.PromptSet
    s2: pr.PromptSet
    s3: pr.PromptSet
    s4: pr.PromptSet
    s5: pr.PromptSet
    ab: pr.Artifact
    bc: pr.Artifact
    data: dict[int, np.ndarray]  # set id -> the rows it wrote, in its users' order


def build_scenario(reg: Registry, model_c_dir) -> Scenario:
    reg.register_model("c", model_c_dir)
    data = {1: prompts(10, seed=1), 2: prompts(2, seed=2), 3: prompts(11, width=24, seed=3),
            4: prompts(11, width=8, seed=4), 5: prompts(1, width=8, seed=5)}
    s1 = reg.import_prompts("a", "rate", data[1], user_ids(10), alias="production", reason="first load")
    s2 = reg.import_prompts("a", "rate", data[2], ["u000", "u010"], base=s1.id)
    reg.set_alias("production", s2.id, reason="refresh")
    sets = {}
    adapters = {}
    for name, src, target, key in (("ab", s2, "b", 3), ("bc", None, "c", 4)):
        source = src if src is not None else sets["ab"]
        run = reg.start_run("migrate", model=target, task="rate", config={"adapter": name})
        adapters[name] = reg.put_artifact("adapter", name, {"w": torch.ones(2)}, task="rate", target_model=target,
                                          source_models=[source.model], run_id=run.id)
        sets[name] = reg.import_prompts(target, "rate", data[key], user_ids(11), run_id=run.id,
                                        adapter=adapters[name].id, sources=[source.id])
        reg.finish_run(run.id, ledger=pr.CostLedger(wall_seconds=2.0, device="cpu", examples_seen=100,
                                                    forward_tokens=1000 * key, backward_tokens=500 * key))
    s5 = reg.import_prompts("c", "rate", data[5], ["u005"], base=sets["bc"].id, alias="production")
    return Scenario(reg, s1, s2, sets["ab"], sets["bc"], s5, adapters["ab"], adapters["bc"], data)


@pytest.fixture
def scenario(populated, tmp_path):
    return build_scenario(populated, make_fake_model(tmp_path / "model-c", 8, seed=3))


def _raw(reg: Registry, sql: str, **times: dt.datetime) -> None:
    """Raw SQL behind the API's back; ``times`` bind as UTC timestamps on either backend."""
    stmt = sa.text(sql).bindparams(*(sa.bindparam(k, v, type_=sa.DateTime(timezone=True)) for k, v in times.items()))
    with reg._ctx.engine.begin() as conn:
        conn.execute(stmt)


# ------------------------------------------------------------------------------ lineage


def test_lineage_up_walks_bases_and_sources_with_adapters_and_runs(scenario):
    sc = scenario
    up = sc.reg.lineage(sc.s5.id)
    assert up.direction == "up"
    assert [(n.set_id, n.depth) for n in up.nodes] == [(sc.s5.id, 0), (sc.s4.id, 1), (sc.s3.id, 2), (sc.s2.id, 3), (sc.s1.id, 4)]
    assert [n.ref for n in up.nodes] == ["c/rate@v2", "c/rate@v1", "b/rate@v1", "a/rate@v2", "a/rate@v1"]
    assert [(e.child_id, e.parent_id, e.role, e.depth) for e in up.edges] == [
        (sc.s5.id, sc.s4.id, "base", 1), (sc.s4.id, sc.s3.id, "source", 2),
        (sc.s3.id, sc.s2.id, "source", 3), (sc.s2.id, sc.s1.id, "base", 4)]
    by_child = {e.child_id: e for e in up.edges}
    assert (by_child[sc.s4.id].adapter_id, by_child[sc.s4.id].run_id) == (sc.bc.id, sc.s4.run_id)
    assert (by_child[sc.s3.id].adapter_id, by_child[sc.s3.id].run_id) == (sc.ab.id, sc.s3.run_id)
    nodes = {n.set_id: n for n in up.nodes}
    assert (nodes[sc.s4.id].adapter, nodes[sc.s4.id].run_kind) == ("bc v1", "migrate")
    assert (nodes[sc.s1.id].adapter, nodes[sc.s1.id].run_kind) == (None, "import")
    assert sc.reg.lineage(sc.s5.id, max_depth=2).nodes[-1].set_id == sc.s3.id


def test_lineage_down_finds_every_descendant(scenario):
    sc = scenario
    down = sc.reg.lineage("a/rate@v1", down=True)
    assert [(n.set_id, n.depth) for n in down.nodes] == [(sc.s1.id, 0), (sc.s2.id, 1), (sc.s3.id, 2), (sc.s4.id, 3), (sc.s5.id, 4)]
    assert sc.reg.lineage(sc.s5.id, down=True).nodes == (sc.reg.lineage(sc.s5.id).nodes[0],)
    with pytest.raises(pr.UnknownSetError):
        sc.reg.lineage(999)


def test_lineage_of_an_aggregation_lists_shared_ancestors_once(populated, model_dirs):
    a1 = populated.import_prompts("a", "rate", prompts(3), user_ids(3))
    a2 = populated.import_prompts("a", "rate", prompts(3, seed=1), user_ids(3), base=a1.id)
    # aggregated migration: two sources, one of them also the other's base (a diamond)
    b1 = populated.import_prompts("b", "rate", prompts(3, width=24), user_ids(3), sources=[a2.id, a1.id])
    up = populated.lineage(b1.id)
    assert [(n.set_id, n.depth) for n in up.nodes] == [(b1.id, 0), (a1.id, 1), (a2.id, 1)]
    assert sorted((e.parent_id, e.role, e.position, e.depth) for e in up.edges) == [
        (a1.id, "base", 0, 2), (a1.id, "source", 1, 1), (a2.id, "source", 0, 1)]


# ------------------------------------------------------------------------------ user history


def test_user_history_lists_written_and_inherited_versions_with_alias_windows(scenario):
    sc = scenario
    hist = sc.reg.user_history("u003")
    assert (hist.user, hist.deleted_at) == ("u003", None)
    assert [(v.ref, v.holder_id, v.inherited) for v in hist.versions] == [
        ("a/rate@v1", sc.s1.id, False), ("a/rate@v2", sc.s1.id, True), ("b/rate@v1", sc.s3.id, False),
        ("c/rate@v1", sc.s4.id, False), ("c/rate@v2", sc.s4.id, True)]
    assert hist.versions[0].row_sha256 == hashlib.sha256(sc.data[1][3].tobytes()).hexdigest()
    v = {x.set_id: x for x in hist.versions}
    assert (v[sc.s3.id].run_kind, v[sc.s3.id].adapter_id, v[sc.s1.id].run_kind) == ("migrate", sc.ab.id, "import")
    s1_windows = v[sc.s1.id].aliases
    assert [(w.name, w.reason, w.actor) for w in s1_windows] == [("production", "first load", "tester")]
    assert s1_windows[0].until == v[sc.s2.id].aliases[0].since and v[sc.s2.id].aliases[0].until is None
    assert [w.name for w in v[sc.s5.id].aliases] == ["production"] and v[sc.s4.id].aliases == ()
    u005 = {x.set_id: x.holder_id for x in sc.reg.user_history("u005").versions}
    assert u005[sc.s5.id] == sc.s5.id  # retrained in c@v2: its own row, not inherited
    u010 = [x.ref for x in sc.reg.user_history("u010").versions]
    assert u010 == ["a/rate@v2", "b/rate@v1", "c/rate@v1", "c/rate@v2"]
    assert sc.reg.user_history("u049").versions == ()
    with pytest.raises(pr.UnknownUserError, match="nobody"):
        sc.reg.user_history("nobody")


# ------------------------------------------------------------------------------ alias timeline


def test_alias_timeline_has_versions_actors_reasons_and_durations(scenario):
    sc = scenario
    sc.reg.delete_alias("production", "a", "rate", reason="retired")
    moves = sc.reg.alias_timeline("production", model="a")
    assert [(m.old_set_id, m.old_version, m.new_set_id, m.new_version, m.reason) for m in moves] == [
        (None, None, sc.s1.id, 1, "first load"), (sc.s1.id, 1, sc.s2.id, 2, "refresh"), (sc.s2.id, 2, None, None, "retired")]
    assert [m.until for m in moves[:-1]] == [m.at for m in moves[1:]] and moves[-1].until is None
    assert {m.actor for m in moves} == {"tester"}
    assert [(m.model, m.new_version) for m in sc.reg.alias_timeline("production", model="c")] == [("c", 2)]
    assert len(sc.reg.alias_timeline("production")) == 4
    with pytest.raises(pr.UnknownAliasError):
        sc.reg.alias_timeline("staging")


# ------------------------------------------------------------------------------ run costs


def test_cost_summary_sums_the_ledger_by_group_and_filters(scenario):
    reg = scenario.reg
    total = reg.cost_summary()
    assert len(total) == 1 and total[0].group is None
    assert (total[0].runs, total[0].succeeded, total[0].examples_seen) == (5, 5, 200)  # 3 imports + 2 migrations
    assert (total[0].forward_tokens, total[0].backward_tokens, total[0].token_passes) == (7000, 3500, 10500)
    by_kind = {c.group: c for c in reg.cost_summary(group_by="kind")}
    assert set(by_kind) == {"import", "migrate"}
    assert (by_kind["migrate"].runs, by_kind["migrate"].wall_seconds, by_kind["import"].runs) == (2, 4.0, 3)
    by_model = {c.group: (c.runs, c.forward_tokens) for c in reg.cost_summary(group_by="model", kind="migrate")}
    assert by_model == {"b": (1, 3000), "c": (1, 4000)}
    assert [(c.group, c.runs) for c in reg.cost_summary(group_by="task")] == [("rate", 5)]
    month = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m")
    assert [(c.group, c.runs) for c in reg.cost_summary(group_by="month")] == [(month, 5)]
    run = reg.start_run("train")  # no model/task: its own group; still running
    assert [(c.group, c.runs, c.running) for c in reg.cost_summary(group_by="model")][-1] == (None, 1, 1)
    assert reg.cost_summary(since=dt.date.today() + dt.timedelta(days=2)) == []
    assert reg.cost_summary(since=dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1))[0].runs == 6
    reg.finish_run(run.id, status="failed", error="oom")
    assert reg.cost_summary(kind="train")[0].failed == 1
    with pytest.raises(pr.InvalidArgumentError, match="group runs by"):
        reg.cost_summary(group_by="week")


def test_cost_summary_by_month_uses_utc_months(populated):
    old = populated.start_run("train")
    _raw(populated, f"UPDATE runs SET started_at = :at WHERE id = {old.id}", at=dt.datetime(2025, 1, 31, 23, 30, tzinfo=dt.timezone.utc))
    populated.start_run("train")
    groups = [c.group for c in populated.cost_summary(group_by="month")]
    assert groups == ["2025-01", dt.datetime.now(dt.timezone.utc).strftime("%Y-%m")]


# ------------------------------------------------------------------------------ blast radius


def test_user_index_runs_union_and_first_ids_agree_with_python_sets():
    from prompt_registry.audit import user_index

    rng = np.random.default_rng(0)
    for _ in range(200):
        sets = []
        for _ in range(int(rng.integers(0, 5))):
            ids = np.unique(rng.integers(0, 60, int(rng.integers(0, 40))))
            # ids -> runs, as the SQL pass makes them
            cut = np.flatnonzero(np.diff(ids) != 1) + 1 if len(ids) else np.zeros(0, dtype=int)
            runs = np.array([[g[0], g[-1] + 1] for g in np.split(ids, cut) if len(g)], dtype=np.int64).reshape(-1, 2)
            assert user_index.size(runs) == len(ids)
            np.testing.assert_array_equal(user_index.decode(user_index.encode(runs)), runs)
            sets.append((set(ids.tolist()), runs))
        expected = sorted(set().union(*[a for a, _ in sets]))
        merged = user_index.union([r for _, r in sets])
        assert user_index.size(merged) == len(expected) and (np.diff(merged[:, 0]) > 0).all()
        limit = int(rng.integers(0, 30))
        assert user_index.first_ids(merged, limit).tolist() == expected[:limit]
        assert user_index.first_ids(merged, None).tolist() == expected


def test_blast_radius_users_come_from_the_set_index_and_a_purge_makes_it_stale(populated):
    reg = populated
    reg.add_users(user_ids(40, start=50))  # 90 users
    everyone = user_ids(90)
    written: dict[int, set[str]] = {}
    root = reg.import_prompts("a", "rate", prompts(60), everyone[:60])
    written[root.id] = set(everyone[:60])
    gappy = [everyone[i] for i in (*range(10, 20), *range(30, 35), 70, 72, 89)]
    child = reg.import_prompts("a", "rate", prompts(len(gappy), seed=2), gappy, base=root.id)  # incremental: its own rows only
    written[child.id] = set(gappy)
    first = reg.blast_radius(set=root.id)
    expected = sorted(written[root.id] | written[child.id], key=everyone.index)
    assert [s.set_id for s in first.sets] == [root.id, child.id]
    assert (first.n_users, first.users) == (len(expected), tuple(expected[:1000]))
    assert reg.blast_radius(set=child.id).users == tuple(sorted(gappy, key=everyone.index))
    with reg._ctx.engine.connect() as conn:  # one entry per set, a few runs each: the full set one run, the gappy one five
        stored = dict(conn.execute(sa.text("SELECT set_id, runs FROM set_user_index")).all())
    assert sorted(stored) == [root.id, child.id] and [len(stored[root.id]) // 16, len(stored[child.id]) // 16] == [1, 5]
    # the stored entry is what answers: swap the child's for another range of the same size, and it is believed
    start = int(np.frombuffer(stored[root.id], dtype="<i8")[0])
    fake = np.array([[start + 60, start + 60 + len(gappy)]], dtype="<i8").tobytes()
    with reg._ctx.engine.begin() as conn:
        conn.execute(sa.text("UPDATE set_user_index SET runs = :r WHERE set_id = :s"), {"r": fake, "s": child.id})
    assert reg.blast_radius(set=child.id).users == tuple(everyone[60 : 60 + len(gappy)])
    with reg._ctx.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM set_user_index WHERE set_id = :s"), {"s": child.id})  # dropped: built again on the next query
    again = reg.blast_radius(set=root.id, user_limit=5)  # from the stored index now
    assert (again.n_users, again.users) == (len(expected), tuple(expected[:5]))
    reg.purge_user(everyone[12], reason="erasure")  # in both sets: the stored entries no longer add up
    after = reg.blast_radius(set=root.id, user_limit=None)
    assert everyone[12] not in after.users and after.n_users == len(expected) - 1
    assert after.users == tuple(u for u in expected if u != everyone[12])



def test_blast_radius_of_an_adapter_reaches_every_derived_set_and_user(scenario):
    sc = scenario
    radius = sc.reg.blast_radius(sc.ab.id)
    assert [(s.set_id, s.depth) for s in radius.sets] == [(sc.s3.id, 0), (sc.s4.id, 1), (sc.s5.id, 2)]
    assert radius.n_users == 11 and radius.users == tuple(user_ids(11)) and not radius.users_truncated
    assert [s.set_id for s in sc.reg.blast_radius(sc.bc.id).sets] == [sc.s4.id, sc.s5.id]
    few = sc.reg.blast_radius(sc.ab.id, user_limit=3)
    assert (few.n_users, few.users, few.users_truncated) == (11, ("u000", "u001", "u002"), True)
    from_set = sc.reg.blast_radius(set=sc.s2.id)
    assert [s.set_id for s in from_set.sets] == [sc.s2.id, sc.s3.id, sc.s4.id, sc.s5.id]
    assert from_set.n_users == 11
    # an incremental version by the adapter on top of a big base touches only its own rows
    assert sc.reg.blast_radius(set=sc.s5.id).users == ("u005",)
    with pytest.raises(pr.UnknownArtifactError):
        sc.reg.blast_radius(999)
    with pytest.raises(pr.InvalidArgumentError):
        sc.reg.blast_radius()


# ------------------------------------------------------------------------------ evaluation diff


def test_diff_evaluations_per_user_and_per_metric(scenario):
    sc = scenario
    reg = sc.reg
    reg.record_evaluation(sc.s1.id, dataset="old-data", split="test", metrics={"rmse": 9.0}, per_user={"u000": {"rmse": 9.0}})
    reg.record_evaluation(sc.s1.id, dataset="ml@1", split="test", metrics={"rmse": 1.0},
                          per_user={"u000": {"rmse": 1.0, "mae": 0.8}, "u001": {"rmse": 0.5, "mae": 0.4}, "u002": {"rmse": 2.0, "mae": 1.0}})
    reg.record_evaluation(sc.s2.id, dataset="ml@1", split="test", metrics={"rmse": 0.9},
                          per_user={"u000": {"rmse": 0.5, "mae": 0.8}, "u001": {"rmse": 0.75, "mae": 0.4}, "u010": {"rmse": 1.0, "mae": 1.0}})
    diff = reg.diff_evaluations(sc.s1.id, sc.s2.id)
    assert (diff.dataset, diff.split, diff.only_a, diff.only_b) == ("ml@1", "test", 1, 1)
    m = {x.metric: x for x in diff.metrics}
    assert (m["rmse"].n_users, m["rmse"].mean_a, m["rmse"].mean_b, m["rmse"].mean_delta) == (2, 0.75, 0.625, -0.125)
    assert (m["rmse"].n_lower, m["rmse"].n_higher, m["rmse"].n_equal) == (1, 1, 0)
    assert (m["mae"].n_equal, m["mae"].mean_delta) == (2, 0.0)
    assert [(u.user, u.metric, u.value_a, u.value_b, u.delta) for u in diff.users[:2]] == [
        ("u000", "rmse", 1.0, 0.5, -0.5), ("u001", "rmse", 0.5, 0.75, 0.25)]
    only_rmse = reg.diff_evaluations("a/rate@v1", "a/rate@v2", metric="rmse", limit=1)
    assert [x.metric for x in only_rmse.metrics] == ["rmse"] and len(only_rmse.users) == 1
    assert reg.diff_evaluations(sc.s1.id, sc.s2.id, dataset="ml@1").evaluation_a == diff.evaluation_a
    with pytest.raises(pr.NotFoundError, match="'old-data'"):
        reg.diff_evaluations(sc.s1.id, sc.s2.id, dataset="old-data")
    with pytest.raises(pr.NotFoundError, match="no evaluation on split 'valid'"):
        reg.diff_evaluations(sc.s1.id, sc.s2.id, split="valid")


# ------------------------------------------------------------------------------ per-user purge


def test_purge_removes_a_user_everywhere_and_keeps_everyone_else(scenario):
    sc = scenario
    reg = sc.reg
    ev = reg.record_evaluation(sc.s4.id, dataset="d", split="test", metrics={"rmse": 1.0},
                               per_user={"u003": {"rmse": 0.5}, "u004": {"rmse": 0.7}})
    before = {s.id: reg.get_prompts(user_ids(11), set=s.id).numpy() for s in (sc.s2, sc.s3, sc.s5)}
    reg.get_prompts(user_ids(11), set=sc.s5.id)  # warm a cache that the purge must drop
    dry = reg.purge_user("u003", dry_run=True)
    assert (dry.dry_run, dry.rows_zeroed, dry.deleted_at) == (True, 3, None)
    assert reg.get_prompt("u003", set=sc.s4.id) is not None  # nothing changed

    report = reg.purge_user("u003", reason="GDPR request 42")
    assert report.sets == (sc.s1.id, sc.s3.id, sc.s4.id) and report.rows_zeroed == 3
    assert report.visible_in == (sc.s1.id, sc.s2.id, sc.s3.id, sc.s4.id, sc.s5.id)
    assert report.metrics_removed == 1 and report.deleted_at is not None
    # gone from every set, the derived set two migrations away (s4) and its increment included
    for s in (sc.s1, sc.s2, sc.s3, sc.s4, sc.s5):
        with pytest.raises(pr.UnknownUserError, match="u003"):
            reg.get_prompt("u003", set=s.id)
    # the bytes themselves are zeros now, in every array that held them
    for s in (sc.s1, sc.s3, sc.s4):
        assert not reg.store.read_rows(s.store_key, np.array([3])).any()
    # everyone else reads back exactly, checksum-verified
    others = [u for u in user_ids(11) if u != "u003"]
    keep = [i for i in range(11) if i != 3]
    for s in (sc.s2, sc.s3, sc.s5):
        np.testing.assert_array_equal(reg.get_prompts(others, set=s.id).numpy(), before[s.id][keep])
    # bookkeeping: visible users drop by one, arrays keep their shape, doctor is clean
    assert [reg.get_set(s.id).n_users for s in (sc.s1, sc.s2, sc.s3, sc.s4, sc.s5)] == [9, 10, 10, 10, 10]
    assert reg.get_set(sc.s1.id).n_rows == 10 and reg.store.array_info(sc.s1.store_key).shape == (10, 1, 16)
    report_doc = reg.doctor()
    assert report_doc.ok, report_doc.problems
    assert reg.get_evaluation(ev.id).per_user == {"u004": {"rmse": 0.7}}
    # the user is marked deleted; their history is empty; the audit log has the event, not the data
    assert "u003" not in [u.external_id for u in reg.list_users(limit=None)]
    deleted = [u for u in reg.list_users(limit=None, include_deleted=True) if u.external_id == "u003"]
    assert deleted[0].deleted_at == report.deleted_at
    hist = reg.user_history("u003")
    assert (hist.versions, hist.deleted_at) == ((), report.deleted_at)
    event = reg.audit_events(object_kind="user", object_id="u003")[0]
    assert (event.action, event.reason, event.actor) == ("purge_user", "GDPR request 42", "tester")
    assert set(event.details) == {"user_id", "sets", "rows_zeroed", "visible_in", "metrics_removed"}
    assert event.details["sets"] == [sc.s1.id, sc.s3.id, sc.s4.id]
    # a new version built on a purged base counts its users right
    v3 = reg.import_prompts("a", "rate", prompts(1, seed=9), ["u020"], base=sc.s2.id)
    assert v3.n_users == 11
    assert reg.purge_user("u003").rows_zeroed == 0  # idempotent


def test_purge_keeps_corruption_detectable(scenario):
    sc = scenario
    reg = sc.reg
    reg.purge_user("u003")
    chunk = reg.store.root / "arrays" / sc.s1.store_key / "c.0.0.0"
    raw = bytearray(chunk.read_bytes())
    raw[4 * 16 * 4 + 1] ^= 0xFF  # a byte of u004's row
    raw[3 * 16 * 4 + 2] = 0x7F  # data written back into the purged row
    chunk.write_bytes(bytes(raw))
    problems = reg.doctor().problems
    assert [(p.kind, p.object) for p in problems] == [("checksum", f"set {sc.s1.id}")]
    assert "u004" in problems[0].message and "row 3" in problems[0].message
    with pytest.raises(pr.ChecksumError, match="u004"):
        reg.get_prompt("u004", set=sc.s1.id)


def test_purge_of_an_unknown_user_and_doctor_counts_purged_rows(scenario):
    reg = scenario.reg
    with pytest.raises(pr.UnknownUserError):
        reg.purge_user("nobody")
    reg.purge_user("u000")
    _raw(reg, f"DELETE FROM purged_rows WHERE set_id = {scenario.s1.id}")
    assert [p.kind for p in reg.doctor(checksums=False).problems] == ["catalogue"]


def test_failed_purge_commits_nothing_and_can_be_rerun(scenario, monkeypatch):
    from prompt_registry.audit import deletion

    sc = scenario

    def boom(*args, **kwargs):
        raise RuntimeError("simulated failure after the bytes were zeroed")

    monkeypatch.setattr(deletion, "visible_sets", boom)
    with pytest.raises(RuntimeError):
        sc.reg.purge_user("u003")
    monkeypatch.undo()
    assert sc.reg.user_history("u003").deleted_at is None
    assert len(sc.reg.user_history("u003").versions) == 5
    sc.reg.purge_user("u003")
    assert sc.reg.doctor().ok


def test_a_purge_interrupted_after_its_commit_leaves_invisible_pending_bytes_that_gc_erases(scenario, monkeypatch):
    """Found by the crash harness (Postgres, SIGKILL inside the purge): the bytes used to be zeroed
    before the commit, so a kill in between left a visible row failing its checksum."""
    from prompt_registry.audit import deletion

    sc = scenario
    held = sc.reg.user_history("u003").versions
    assert held

    def killed(*args, **kwargs):
        raise RuntimeError("simulated kill after the commit, before the erasure")

    monkeypatch.setattr(deletion, "erase_pending", killed)
    with pytest.raises(RuntimeError):
        sc.reg.purge_user("u003")
    monkeypatch.undo()
    assert sc.reg.user_history("u003").deleted_at is not None
    for s in sc.reg.list_sets():  # every visible set reads back and verifies; the user is in none
        who = sc.reg.list_set_users(s.id)
        assert "u003" not in who
        sc.reg.get_prompts(who, set=s.id)
    report = sc.reg.doctor()
    assert [p.kind for p in report.problems] == ["purge-pending"] and "gc" in report.problems[0].fix
    sc.reg.gc()
    assert sc.reg.doctor().ok  # erased: every purged row reads back as zeros


# ------------------------------------------------------------------------------ retention


def _age(reg: Registry, set_id: int, days: float) -> None:
    _raw(reg, f"UPDATE prompt_sets SET created_at = :at WHERE id = {set_id}", at=dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=days))


def test_retention_keeps_last_aliases_and_lineage(populated):
    reg = populated
    v = [reg.import_prompts("a", "rate", prompts(5, seed=i), user_ids(5)) for i in range(4)]  # v1..v4
    v5 = reg.import_prompts("a", "rate", prompts(1, seed=9), ["u009"], base=v[1].id)  # v5 on v2
    reg.set_alias("production", v[0].id)
    derived = reg.import_prompts("b", "rate", prompts(5, width=24), user_ids(5), sources=[v[2].id])  # needs v3
    dry = reg.gc(dry_run=True, keep_last=1)
    # kept: v5 (newest), v2 (its base), v1 (alias), v3 (source of b@v1); v4 goes
    assert (dry.dry_run, dry.removed_sets, dry.removed) == (True, (v[3].id,), (v[3].store_key,))
    assert reg.get_set(v[3].id).status == "committed"
    done = reg.gc(keep_last=1)
    assert done.removed_sets == (v[3].id,) and done.nbytes > 0
    assert not reg.store.exists(v[3].store_key)
    with pytest.raises(pr.UnknownSetError, match="deleted"):
        reg.get_prompt("u000", set=v[3].id)
    with pytest.raises(pr.UnknownSetError, match="is deleted"):
        reg.get_set("a/rate@v4")  # by version it says deleted too, not "no such version"
    assert reg.get_set("a/rate@latest").id == v5.id
    assert reg.doctor().ok
    # history stays: lineage and audit still see the deleted set
    assert [(n.set_id, n.status) for n in reg.lineage(v[3].id).nodes] == [(v[3].id, "deleted")]
    event = reg.audit_events(object_kind="prompt_set", object_id=str(v[3].id))[0]
    assert (event.action, event.details["store_key"], event.details["keep_last"]) == ("retention_delete", v[3].store_key, 1)
    assert [s.id for s in reg.list_sets(model="a")] == [v5.id, v[2].id, v[1].id, v[0].id]
    assert [s.id for s in reg.list_sets(model="a", include_deleted=True)][1] == v[3].id
    np.testing.assert_array_equal(reg.get_prompts(user_ids(5), set=derived.id).numpy(), prompts(5, width=24))
    assert reg.gc(keep_last=1).removed_sets == ()  # nothing more to remove


def test_retention_older_than_keeps_young_sets_and_moves_with_aliases(populated):
    reg = populated
    v = [reg.import_prompts("a", "rate", prompts(3, seed=i), user_ids(3)) for i in range(4)]
    for s, days in zip(v, (60, 45, 10, 1)):
        _age(reg, s.id, days)
    assert reg.gc(dry_run=True, older_than_days=30).removed_sets == (v[0].id, v[1].id)
    assert reg.gc(dry_run=True, older_than_days=30, keep_last=3).removed_sets == (v[0].id,)
    reg.set_alias("production", v[1].id)
    assert reg.gc(older_than_days=30).removed_sets == (v[0].id,)
    assert [s.status for s in reg.list_sets(include_deleted=True)] == ["committed", "committed", "committed", "deleted"]
    with pytest.raises(pr.InvalidArgumentError, match="at least 1"):
        reg.gc(keep_last=0)
    with pytest.raises(pr.InvalidArgumentError):
        reg.gc(older_than_days=-1)


def test_gc_without_retention_options_keeps_every_set(populated):
    for i in range(3):
        populated.import_prompts("a", "rate", prompts(2, seed=i), user_ids(2))
    report = populated.gc(grace_seconds=0)
    assert (report.removed_sets, report.removed) == ((), ())
    assert len(populated.list_sets()) == 3


# ------------------------------------------------------------------------------ append-only log


@pytest.mark.parametrize("table", ["audit_events", "alias_events"])
def test_audit_and_alias_events_are_append_only_in_the_database(populated, table):
    populated.import_prompts("a", "rate", prompts(2), user_ids(2), alias="production")
    for sql in (f"UPDATE {table} SET actor = 'mallory'", f"DELETE FROM {table}"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            _raw(populated, sql)
    assert {e.actor for e in populated.audit_events()} == {"tester"}
    assert len(populated.alias_history("production")) == 1
    populated.set_alias("production", "a/rate@v1")  # inserts still work (a no-op move here)
    populated.delete_alias("production", "a", "rate")
    assert len(populated.alias_history("production")) == 2


def test_registry_api_has_no_way_to_rewrite_the_log():
    public = {name for name in dir(Registry) if not name.startswith("_")}
    assert not {n for n in public if ("audit" in n or "event" in n) and any(v in n for v in ("delete", "update", "edit", "clear"))}


# ------------------------------------------------------------------------------ both backends agree

_TIMES = {"created_at", "at", "until", "since", "deleted_at", "wall_seconds"}  # measured import time too


def _comparable(value):
    """Entities as dicts without wall-clock values (kept as 'set or not')."""
    if hasattr(value, "to_dict"):
        return _comparable(value.to_dict())
    if isinstance(value, dict):
        return {k: (v is not None if k in _TIMES else _comparable(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def _every_query(reg: Registry, sc: Scenario) -> dict:
    reg.record_evaluation(sc.s1.id, dataset="d", split="test", metrics={}, per_user={u: {"rmse": i / 4} for i, u in enumerate(user_ids(10))})
    reg.record_evaluation(sc.s2.id, dataset="d", split="test", metrics={}, per_user={u: {"rmse": (i % 3) / 2} for i, u in enumerate(user_ids(11))})
    out = {
        "up": reg.lineage(sc.s5.id), "down": reg.lineage(sc.s1.id, down=True),
        "users": [reg.user_history(u) for u in ("u000", "u003", "u005", "u010", "u049")],
        "alias": reg.alias_timeline("production"),
        "costs": [reg.cost_summary(group_by=g) for g in (None, "model", "task", "kind", "month")],
        "blast": [reg.blast_radius(sc.ab.id), reg.blast_radius(sc.bc.id, user_limit=4), reg.blast_radius(set=sc.s2.id)],
        "diff": reg.diff_evaluations(sc.s1.id, sc.s2.id, limit=None),
        "purge": reg.purge_user("u004"),
        "after_purge": reg.user_history("u004"),
        "retention": reg.gc(dry_run=True, keep_last=1),
        "doctor": reg.doctor(),
    }
    return _comparable(out)


@pytest.mark.postgres
def test_every_query_gives_identical_results_on_sqlite_and_postgres(pg_url, tmp_path, model_dirs):
    results = []
    for location, store in ((str(tmp_path / "sqlite-reg"), None), (pg_url, str(tmp_path / "pg-store"))):
        with Registry.init(location, store=store, actor="tester") as reg:
            reg.register_model("a", model_dirs["a"])
            reg.register_model("b", model_dirs["b"])
            reg.add_task("rate", "rating")
            reg.add_users(user_ids(50))
            results.append(_every_query(reg, build_scenario(reg, make_fake_model(tmp_path / "model-c", 8, seed=3))))
    sqlite_result, pg_result = results
    assert sqlite_result["diff"]["users"] and sqlite_result["purge"]["rows_zeroed"] == 3
    for key in sqlite_result:
        assert sqlite_result[key] == pg_result[key], key


def test_the_facade_exposes_every_audit_query_with_its_signature():
    import inspect

    from prompt_registry.core.audit import AuditService

    public = [name for name, _ in inspect.getmembers(AuditService, inspect.isfunction) if not name.startswith("_")]
    assert len(public) == 6
    for name in public:
        assert inspect.signature(getattr(Registry, name)) == inspect.signature(getattr(AuditService, name)), name


def test_purged_user_cannot_come_back_through_an_import(populated):
    import numpy as np

    populated.import_prompts("a", "rate", np.ones((2, 1, 16), np.float32), ["u000", "u001"])
    populated.purge_user("u000")
    with pytest.raises(pr.UnknownUserError, match="deleted"):
        populated.import_prompts("a", "rate", np.ones((1, 1, 16), np.float32), ["u000"])
    with pytest.raises(pr.UnknownUserError, match="deleted"):
        populated.import_prompts("a", "rate", np.ones((1, 1, 16), np.float32), ["u000"], create_users=True)


def test_purging_every_user_of_a_chunk_keeps_the_set_readable(populated):
    """The last chunk of this set holds one user only: zeroing it must not lose the chunk file."""
    data = prompts(257)
    users = [f"c{i:03d}" for i in range(257)]
    s = populated.import_prompts("a", "rate", data, users, create_users=True)
    populated.purge_user("c256")
    assert populated.doctor().ok
    np.testing.assert_array_equal(populated.get_prompts(users[:256], set=s.id).numpy(), data[:256])
    with pytest.raises(pr.UnknownUserError):
        populated.get_prompt("c256", set=s.id)


@pytest.mark.registry
@pytest.mark.parametrize("incremental", [False, True])
def test_another_process_sees_a_purge_through_its_cached_manifests(backend, tmp_path, incremental):
    """A long-lived registry cached the version's manifest before another process purged u003:
    it no longer lists u003, and reading u003 says the user has no prompt (not a checksum failure,
    not zeros); everyone else still reads."""
    reg = Registry.init(backend[0], store=backend[1])
    dpo = Registry.open(backend[0], store=backend[1])
    try:
        reg.register_model("m", make_fake_model(tmp_path / "m", 8, seed=1))
        reg.add_task("t", "rating")
        data = prompts(300, 8)
        made = reg.import_prompts("m", "t", data, user_ids(300), create_users=True)
        if incremental:
            made = reg.import_prompts("m", "t", data[:10] + 1, user_ids(10), base=made.id)
        assert "u003" in reg.list_set_users(made.id)
        reg.get_prompts(user_ids(300), set=made.id)  # the full manifest is cached now
        dpo.purge_user("u003", reason="erasure request")
        assert "u003" not in reg.list_set_users(made.id) and len(reg.list_set_users(made.id)) == 299
        for verify in (True, False):
            with pytest.raises(pr.UnknownUserError, match="u003"):
                reg.get_prompts(["u003"], set=made.id, verify=verify)
        np.testing.assert_array_equal(reg.get_prompts(["u200"], set=made.id).numpy()[0], data[200])
    finally:
        dpo.close()
        reg.close()
