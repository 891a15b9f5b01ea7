"""The migration graph and planner on constructed catalogues (fake models, stored adapters), the
cost model's calibration on a real tiny migration, and the CLI; on SQLite and Postgres."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_fake_model, prompts, user_ids

import prompt_registry as pr
from prompt_registry.cli import plan_cmds
from prompt_registry.cli.main import main
from prompt_registry.planning import STRATEGIES, PlanRequest
from prompt_registry.planning.graph import SCRATCH, build_graph
from prompt_registry.planning.planner import make_plan

WIDTHS = {"a": 16, "b": 24, "c": 32, "d": 8}


@pytest.fixture
def world(registry, tmp_path):
    """Models a, b, c, d; prompts for task ``rate`` on a (50 users) and d (40 of them + 5 others)."""
    for i, (name, width) in enumerate(WIDTHS.items()):
        registry.register_model(name, make_fake_model(tmp_path / name, width, seed=i + 1))
    registry.add_task("rate", "rating")
    registry.import_prompts("a", "rate", prompts(50, 16), user_ids(50), create_users=True, alias="production")
    registry.import_prompts("d", "rate", prompts(45, 8), user_ids(40) + user_ids(5, 100), create_users=True)
    return registry


def adapter(reg, sources, target, method="puma"):
    return reg.put_artifact("adapter", f"{'+'.join(sources)}->{target}", {"w": torch.zeros(2)}, task="rate", target_model=target,
                            source_models=sources, config={"method": method})


def test_the_graph_holds_models_prompts_stored_adapters_and_combinations(world):
    ab = adapter(world, ["a"], "b")
    agg = adapter(world, ["a", "d"], "c")
    graph = build_graph(world._s, "rate")
    assert graph.nodes["a"]["users"] == 50 and graph.nodes["a"]["aliases"] == ["production"] and graph.nodes["b"]["users"] == 0
    assert graph.has_edge("a", "b", key=f"adapter:{ab.id}") and graph.has_edge(SCRATCH, "c", key="retrain")
    assert graph.nodes["a+d"]["kind"] == "combo" and graph.has_edge("a+d", "c", key=f"adapter:{agg.id}")
    assert graph.has_edge("a", "a+d", key="member") and graph.has_edge("d", "a+d", key="member")
    assert not graph.has_edge("a", "c", key=f"adapter:{agg.id}")  # an aggregate is a hyperedge, never a chain
    from prompt_registry.migration.base import available_methods

    assert {"puma", "anchor-ridge"} <= set(available_methods())
    fits = sum(1 for _, _, d in graph.edges(data=True) if d["kind"] == "fit")
    assert fits == 4 * 3 * len(available_methods())  # ordered pairs x registered methods
    described = world.planner.graph("rate")
    assert {e["adapter_id"] for e in described["edges"] if e["kind"] == "reuse"} == {ab.id, agg.id}


def test_reuse_beats_fit_and_chains_reuse_stored_adapters(world):
    fit = world.planner.plan("c", "rate", sources=["a"], strategy="direct", save=False)
    assert fit.kind == "direct" and [s.kind for s in fit.steps] == ["fit"] and fit.steps[0].estimate["basis"] == "prior"
    assert fit.estimate["token_passes"] > 0 and fit.estimate["users"] == 50
    ab, bc = adapter(world, ["a"], "b"), adapter(world, ["b"], "c")
    auto = world.planner.plan("c", "rate", sources=["a"], save=False)
    assert auto.kind == "chain" and [(s.kind, s.adapter_id) for s in auto.steps] == [("reuse", ab.id), ("reuse", bc.id)]
    assert auto.estimate["token_passes"] == 0 and auto.estimate["path"] == ["a", "b", "c"]
    assert {a["kind"] for a in auto.estimate["alternatives"]} >= {"direct", "retrain"}
    ac = adapter(world, ["a"], "c")
    direct = world.planner.plan("c", "rate", sources=["a"], save=False)
    assert direct.kind == "direct" and direct.steps[0].adapter_id == ac.id  # one reuse beats two


def test_every_constraint_is_respected_and_impossible_plans_say_what_is_missing(world):
    adapter(world, ["a"], "b")
    adapter(world, ["b"], "c")
    with pytest.raises(pr.NoPlanError, match="no stored adapter a -> d"):
        world.planner.plan("d", "rate", sources=["a"], reuse_only=True, strategy="direct")
    excluded = world.planner.plan("c", "rate", sources=["a"], exclude=["b"], save=False)
    assert "b" not in excluded.estimate["path"] and excluded.kind == "direct"
    with pytest.raises(pr.NoPlanError, match="no chain"):
        world.planner.plan("c", "rate", sources=["a"], strategy="chain", exclude=["b"], reuse_only=True)
    via = world.planner.plan("c", "rate", sources=["a"], via="d", save=False)
    assert via.kind == "chain" and via.estimate["path"] == ["a", "d", "c"] and [s.kind for s in via.steps] == ["fit", "fit"]
    with pytest.raises(pr.NoPlanError, match="no chain of 2..1 hops"):
        world.planner.plan("c", "rate", sources=["a"], strategy="chain", max_hops=1)
    with pytest.raises(pr.NoPlanError, match="over the budget 10"):
        world.planner.plan("d", "rate", sources=["a"], max_token_passes=10)
    assert world.planner.plan("c", "rate", sources=["a"], reuse_only=True, max_token_passes=0, save=False).kind == "chain"
    with pytest.raises(pr.NoPlanError, match="hold no prompts"):
        world.planner.plan("a", "rate", sources=["b"])
    with pytest.raises(pr.NoPlanError, match="not allowed with reuse_only"):
        world.planner.plan("c", "rate", strategy="retrain", reuse_only=True)
    for bad in (dict(strategy="teleport"), dict(max_hops=0), dict(via="b", strategy="direct"), dict(method="ghost")):
        with pytest.raises(pr.InvalidArgumentError):
            PlanRequest("c", "rate", **bad)
    with pytest.raises(pr.UnknownModelError):
        world.planner.plan("zeta", "rate")
    with pytest.raises(pr.UnknownTaskError, match="unknown task 'rank'"):
        world.planner.plan("c", "rank")


def test_aggregates_count_uncovered_users_and_reuse_a_stored_combination(world):
    fit = world.planner.plan("c", "rate", sources=["a", "d"], strategy="aggregate", save=False)
    step = fit.steps[0]
    assert fit.kind == "aggregate" and step.sources == ("a", "d") and step.kind == "fit"
    # 40 on both, 10 only on a, 5 only on d: imputed by default, all 55 mapped
    assert fit.estimate["users"] == 55 and fit.estimate["coverage"]["full"] == 40 and fit.estimate["coverage"]["partial"] == 15
    assert "mean prompt" in step.estimate["details"]["uncovered_policy"] and fit.inputs["request"]["coverage"] == "impute"
    common = world.planner.plan("c", "rate", sources=["a", "d"], strategy="aggregate", coverage="common", save=False)
    assert common.estimate["users"] == 40 and common.estimate["uncovered_users"] == 15
    assert common.estimate["token_passes"] < fit.estimate["token_passes"]
    direct = world.planner.plan("c", "rate", sources=["a"], strategy="direct", save=False)
    assert direct.estimate["coverage"]["none"] == 5 and direct.estimate["coverage"]["none_sample"] == user_ids(5, 100)
    with pytest.raises(pr.InvalidArgumentError, match="unknown cold_start"):
        world.planner.plan("c", "rate", cold_start="mean", save=False)
    agg = adapter(world, ["a", "d"], "c")
    reused = world.planner.plan("c", "rate", sources=["a", "d"], strategy="aggregate", save=False)
    assert reused.steps[0].kind == "reuse" and reused.steps[0].adapter_id == agg.id and reused.estimate["token_passes"] == 0
    retrain = world.planner.plan("c", "rate", sources=["a"], strategy="retrain", save=False)
    assert retrain.kind == "retrain" and retrain.steps[0].sources == () and retrain.estimate["token_passes"] > fit.estimate["token_passes"]


def test_a_plan_is_stored_explained_and_reproducible_from_its_inputs(world):
    adapter(world, ["a"], "b")
    made = world.planner.plan("c", "rate", sources=["a"])
    assert made.id is not None and made.status == "planned" and all(s.status == "pending" for s in made.steps)
    again = world.planner.get(made.id)
    assert again == made and [p.id for p in world.planner.list(task="rate")] == [made.id]
    assert world.planner.list(target="b") == []
    request = PlanRequest(**{**made.inputs["request"], "sources": tuple(made.inputs["request"]["sources"]),
                             "exclude": tuple(made.inputs["request"]["exclude"])})
    replanned = make_plan(world._s, request)
    assert replanned.steps == made.steps and replanned.inputs["graph"] == made.inputs["graph"]
    assert made.inputs["graph"]["sets"]["a"] is not None and made.inputs["graph"]["sets"]["c"] is None
    assert made.estimate["quality"]["recorded"] is False and "unknown" in made.estimate["quality"]["note"]
    with pytest.raises(pr.UnknownPlanError, match="no migration plan with id 999"):
        world.planner.get(999)
    dot = world.planner.dot("rate", plan_id=made.id)
    assert dot.startswith("digraph") and '"a" -> "b"' in dot and "color=red" in dot
    # possible fits (from models with prompts, where no adapter is stored) are drawn apart: dotted grey
    assert '"d" -> "c" [style=dotted' in dot and '"b" -> "a" [style=dotted' not in dot  # b holds no prompts


def test_the_cli_plans_shows_lists_and_draws(world, backend, tmp_path):
    location, store = backend
    base = ["--registry", location] + (["--store", store] if store else [])
    adapter(world, ["a"], "b")
    runner = CliRunner()
    res = runner.invoke(main, [*base, "migrate", "plan", "--to", "c", "--task", "rate", "--from", "a", "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["id"] and out["kind"] in ("chain", "direct") and out["estimate"]["token_passes"] > 0
    shown = runner.invoke(main, [*base, "migrate", "plan", "show", str(out["id"])])
    assert shown.exit_code == 0 and f"plan {out['id']}" in shown.stdout and "token-passes" in shown.stdout
    listed = json.loads(runner.invoke(main, [*base, "migrate", "plan", "list", "--json"]).stdout)
    assert [p["id"] for p in listed] == [out["id"]]
    graph = json.loads(runner.invoke(main, [*base, "graph", "show", "--task", "rate", "--json"]).stdout)
    assert {n["name"] for n in graph["nodes"]} >= set(WIDTHS)
    text = runner.invoke(main, [*base, "graph", "show", "--task", "rate"])
    assert text.exit_code == 0 and "stored adapters:" in text.stdout
    dot = tmp_path / "graph.dot"
    assert runner.invoke(main, [*base, "graph", "show", "--task", "rate", "--dot", str(dot), "--plan", str(out["id"])]).exit_code == 0
    assert dot.read_text().startswith("digraph")
    png = tmp_path / "graph.png"
    assert runner.invoke(main, [*base, "graph", "show", "--task", "rate", "--png", str(png), "--plan", str(out["id"])]).exit_code == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = runner.invoke(main, [*base, "migrate", "plan", "--to", "a", "--task", "rate", "--from", "b"])
    assert bad.exit_code == 1 and "hold no prompts" in bad.stderr
    usage = runner.invoke(main, [*base, "migrate", "plan", "--task", "rate"])
    assert usage.exit_code == 2
    assert plan_cmds._STRATEGIES == STRATEGIES
    dry = runner.invoke(main, [*base, "migrate", "run", "--plan", str(out["id"]), "--data", str(tmp_path), "--dry-run"])
    assert dry.exit_code == 0 and "would run" in dry.stdout
    mixed = runner.invoke(main, [*base, "migrate", "run", "--plan", str(out["id"]), "--from", "a", "--data", str(tmp_path)])
    assert mixed.exit_code == 2 and "leave out --from" in mixed.stderr
    assert runner.invoke(main, [*base, "migrate", "run", "--data", str(tmp_path)]).exit_code == 2


def test_after_one_recorded_migration_the_estimate_of_that_edge_matches_its_ledger(tmp_path):
    from prompt_registry import Registry
    from prompt_registry.data.synthetic import make_synthetic
    from prompt_registry.migration.config import MigrationConfig
    from prompt_registry.migration.selection import SelectionConfig
    from prompt_registry.testing.models import build_tiny_bert
    from prompt_registry.training.config import TrainConfig

    torch.set_num_threads(1)
    data = make_synthetic(tmp_path / "data", n_users=40, n_items=40, per_user=12, seed=3)
    with Registry.init(tmp_path / "reg") as reg:
        reg.register_model("src", build_tiny_bert(tmp_path / "src", hidden_size=16, seed=1))
        reg.register_model("dst", build_tiny_bert(tmp_path / "dst", hidden_size=24, seed=2))
        reg.train_prompts("src", "rate", data, config=TrainConfig(epochs=1), progress=False, alias="production")
        prior = reg.planner.plan("dst", "rate", sources=["src"], strategy="direct", save=False).steps[0].estimate
        result = reg.migrate(["src"], "dst", "rate", data, config=MigrationConfig(min_steps=20, selection=SelectionConfig(budget=10)),
                             progress=False, evaluate=False)
        ledger = result.run.forward_tokens + result.run.backward_tokens
        assert reg.planner.plan("dst", "rate", sources=["src"], strategy="direct", save=False).steps[0].kind == "reuse"  # now stored
        from prompt_registry.planning.cost import CostModel

        calibrated = CostModel(reg._s, "rate").fit(["src"], "dst", 40, "puma")  # the same edge, were it fitted again
        assert calibrated["basis"] == f"calibrated from run {result.run.id} (scaled by users)" and prior["basis"] == "prior"
        assert abs(calibrated["token_passes"] - ledger) <= 0.25 * ledger, (calibrated, ledger)
        assert np.isfinite(calibrated["seconds"]) and "calibrated" in calibrated["seconds_basis"]


# ------------------------------------------------------------------------------ execution


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Three tiny real backbones (two encoder widths and a decoder), synthetic users, source prompts."""
    from prompt_registry import Registry
    from prompt_registry.data.synthetic import make_synthetic
    from prompt_registry.testing.models import build_tiny_bert, build_tiny_llama
    from prompt_registry.training.config import TrainConfig

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("plans")
    data = make_synthetic(root / "data", n_users=60, n_items=60, per_user=20, seed=5)
    reg = Registry.init(root / "reg", actor="planner")
    reg.register_model("bert16", build_tiny_bert(root / "bert16", hidden_size=16, seed=1))
    reg.register_model("bert24", build_tiny_bert(root / "bert24", hidden_size=24, seed=2))
    reg.register_model("llama32", build_tiny_llama(root / "llama32", hidden_size=32, seed=3))
    reg.train_prompts("bert16", "rate", data, config=TrainConfig(epochs=8, lr=5e-3), progress=False, alias="production")
    yield reg, data
    reg.close()


def _fast_config():
    from prompt_registry.migration.config import MigrationConfig
    from prompt_registry.migration.selection import SelectionConfig

    return MigrationConfig(lr=3e-3, head_lr=1e-2, min_steps=60, max_fit_epochs=None, valid_every=30, selection=SelectionConfig(budget=20),
                           cost_budget=None)  # the map alone: each step's set is the mapped one (no refined version on top)


def test_a_two_hop_chain_runs_step_by_step_and_a_rerun_redoes_nothing(tiny):
    reg, data = tiny
    plan = reg.planner.plan("llama32", "rate", sources=["bert16"], via="bert24")
    assert plan.kind == "chain" and [s.kind for s in plan.steps] == ["fit", "fit"]
    done = reg.planner.run(plan.id, data, config=_fast_config(), alias="production")
    assert done.status == "done" and [s.status for s in done.steps] == ["done", "done"]
    first, second = (reg.get_set(s.result["set_id"]) for s in done.steps)
    assert first.model == "bert24" and second.model == "llama32" and second.parents == (first.id,)  # lineage through the chain
    assert reg.get_alias("production", "llama32", "rate").set_id == second.id
    rand = reg.train_prompts("llama32", "rate", data, config=_train(freeze=True), progress=False, evaluate_split="test")
    chained = reg.evaluate(second.id, data)
    assert chained.metrics["rmse"] < rand.evaluation.metrics["rmse"], (chained.metrics, rand.evaluation.metrics)
    runs = [s.run_id for s in done.steps]
    with pytest.raises(pr.ConflictError, match="is done"):
        reg.planner.run(plan.id, data, config=_fast_config())
    assert reg.planner.run(plan.id, data, resume=True).status == "done"  # resuming a done plan: nothing to do
    assert [s.run_id for s in reg.planner.get(plan.id).steps] == runs


def _train(freeze: bool = False):
    from prompt_registry.training.config import TrainConfig

    return TrainConfig(epochs=8, lr=5e-3, freeze_prompts=freeze)


def test_a_failed_step_is_resumed_and_finished_steps_are_never_redone(tiny, monkeypatch):
    import prompt_registry.planning.execute as execute

    reg, data = tiny
    plan = reg.planner.plan("bert24", "rate", sources=["bert16"], via="llama32")  # not the stored chain: two fits
    assert [s.kind for s in plan.steps] == ["fit", "fit"]
    real, calls = execute.migrate, []

    def flaky(*args, **kwargs):
        calls.append(args[2])
        if len(calls) == 2:
            raise RuntimeError("killed in step 1")
        return real(*args, **kwargs)

    monkeypatch.setattr(execute, "migrate", flaky)
    with pytest.raises(RuntimeError, match="killed in step 1"):
        reg.planner.run(plan.id, data, config=_fast_config())
    failed = reg.planner.get(plan.id)
    assert failed.status == "failed" and [s.status for s in failed.steps] == ["done", "failed"]
    assert "killed in step 1" in failed.steps[1].result["error"]
    first_run = failed.steps[0].run_id
    with pytest.raises(pr.ConflictError, match=r"stopped at step 1 \(failed: RuntimeError: killed in step 1\); rerun with --resume"):
        reg.planner.run(plan.id, data, config=_fast_config())
    assert calls == ["llama32", "bert24"]  # refused before running anything
    resumed = reg.planner.run(plan.id, data, config=_fast_config(), resume=True)
    assert resumed.status == "done" and resumed.steps[0].run_id == first_run  # step 0 not redone
    assert calls == ["llama32", "bert24", "bert24"]


def test_a_plan_being_run_by_a_live_process_is_refused(world):
    plan = world.planner.plan("b", "rate", sources=["a"])
    holder = world.start_run("plan", model="b", task="rate", config={"plan_id": plan.id})
    world._s.plans.acquire(plan.id, holder.id)  # this (live) process holds the lease
    other = world.start_run("plan", model="b", task="rate", config={"plan_id": plan.id})
    with pytest.raises(pr.ConflictError, match=f"being run by run {holder.id}"):
        world._s.plans.acquire(plan.id, other.id)
    world.finish_run(holder.id, status="failed")  # its holder is gone: the lease is taken over
    assert world._s.plans.acquire(plan.id, other.id).status == "running"


PLAN_CHILD = """
import os, signal, sys, time, torch
import prompt_registry.core.plans as plans
import prompt_registry.migration.migrate as migrate
import prompt_registry.planning.execute as execute
from prompt_registry import Registry
from prompt_registry.migration.config import MigrationConfig
from prompt_registry.migration.selection import SelectionConfig

location, store, plan_id, data, point = sys.argv[1:6]
torch.set_num_threads(1)
die = lambda: os.kill(os.getpid(), signal.SIGKILL)
real_mark, real_map = plans.PlanService.mark_step, migrate.map_users
def mark_step(self, plan_id, position, status, **kwargs):
    real_mark(self, plan_id, position, status, **kwargs)
    if (point, position, status) in (("between", 0, "done"), ("step1-start", 1, "running"), ("before-release", 1, "done")):
        die()
def map_users(*args, **kwargs):
    if point == "fit-stored":
        die()  # inside step 0: its adapter and head are stored, no prompt mapped yet
    return real_map(*args, **kwargs)
def hold(*args, **kwargs):
    open(point, "w").close()  # point names a ready file here: the lease is held, step 0 running
    time.sleep(120)
plans.PlanService.mark_step, migrate.map_users = mark_step, map_users
if point.endswith(".ready"):
    execute.migrate = execute.apply_adapter_run = hold
config = MigrationConfig(lr=3e-3, head_lr=1e-2, min_steps=60, max_fit_epochs=None, valid_every=30, selection=SelectionConfig(budget=20))
with Registry.open(location, store=store or None) as reg:
    reg.planner.run(int(plan_id), data, config=config)
"""


def _child(tmp_path, location, store, plan_id, data, point):
    import os
    import subprocess
    import sys

    script = tmp_path / "child.py"
    script.write_text(PLAN_CHILD)
    return subprocess.Popen([sys.executable, str(script), str(location), store or "", str(plan_id), str(data), str(point)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)


# (kill point, statuses it leaves, steps the resume runs): a killed step was not finished and runs again
KILL_POINTS = [("fit-stored", ["running", "pending"], [0, 1]), ("between", ["done", "pending"], [1]),
               ("step1-start", ["done", "running"], [1]), ("before-release", ["done", "done"], [])]


def test_sigkill_at_every_point_of_a_plan_then_resume_never_redoes_a_finished_step(tiny, tmp_path):
    from prompt_registry import Registry

    shared, data = tiny
    reg = Registry.init(tmp_path / "reg", actor="planner")  # a registry of its own: no adapter stored by the other tests
    for name in ("bert16", "bert24", "llama32"):
        reg.register_model(name, shared.get_model(name).source)
    reg.train_prompts("bert16", "rate", data, config=_train(), progress=False)
    figures, fitted = [], []
    for point, left, reruns in KILL_POINTS:
        # the first plan fits both hops (killed inside the first fit); later ones reuse what it stored
        plan = reg.planner.plan("llama32", "rate", sources=["bert16"], via="bert24")
        assert [s.kind for s in plan.steps] == (["fit", "fit"] if point == "fit-stored" else ["reuse", "reuse"])
        if point != "fit-stored":  # the adapter the killed fit had stored is never offered: its run did not succeed
            assert [s.adapter_id for s in plan.steps] == fitted
        proc = _child(tmp_path, reg.where, None, plan.id, data, point)
        assert proc.wait(timeout=240) == -9, proc.stderr.read()
        killed = reg.planner.get(plan.id)
        assert killed.status == "running" and [s.status for s in killed.steps] == left, point
        finished = {s.position: s.run_id for s in killed.steps if s.status == "done"}
        with pytest.raises(pr.ConflictError, match="rerun with --resume"):
            reg.planner.run(plan.id, data, config=_fast_config())  # the dead child's lease is free, but a restart must say resume
        resumed = reg.planner.run(plan.id, data, config=_fast_config(), resume=True)
        assert resumed.status == "done" and [s.status for s in resumed.steps] == ["done", "done"], point
        assert {p: resumed.steps[p].run_id for p in finished} == finished, point  # finished steps were not redone
        plan_run = max(reg.list_runs(kind="plan"), key=lambda r: r.id)
        assert plan_run.cost["results"]["steps_run"] == reruns, point
        figures.append((point, left, plan_run.cost["results"]["steps_run"], len(finished)))
        if point == "fit-stored":
            fitted = [s.result["adapter_id"] for s in resumed.steps]
            orphans = [a.id for a in reg.list_artifacts(kind="adapter") if a.id not in fitted]
            assert len(orphans) == 1 and reg.get_run(reg.get_artifact(orphans[0]).run_id).status != "succeeded"  # the dead run (reaped)
    print("kill points (point, statuses left, steps the resume ran, finished steps kept):", figures)
    reg.close()


@pytest.mark.parametrize("backend_name", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_two_processes_running_one_plan_one_runs_the_other_is_told(request, backend_name, tmp_path):
    import time

    from prompt_registry.data.synthetic import make_synthetic

    location, store = (str(tmp_path / "reg"), None) if backend_name == "sqlite" else (request.getfixturevalue("pg_url"), str(tmp_path / "store"))
    reg = pr.Registry.init(location, store=store, actor="planner")
    for i, (name, width) in enumerate(WIDTHS.items()):
        reg.register_model(name, make_fake_model(tmp_path / name, width, seed=i + 1))
    reg.add_task("rate", "rating")
    reg.import_prompts("a", "rate", prompts(50, 16), user_ids(50), create_users=True, alias="production")
    data = make_synthetic(tmp_path / "data", n_users=10, n_items=10, per_user=5, seed=0)
    plan = reg.planner.plan("b", "rate", sources=["a"], strategy="direct")
    ready = tmp_path / "step0.ready"
    proc = _child(tmp_path, location, store, plan.id, data, ready)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        base = ["--registry", location] + (["--store", store] if store else [])
        second = CliRunner().invoke(main, [*base, "migrate", "run", "--plan", str(plan.id), "--data", str(data)])
        assert second.exit_code == 1 and f"plan {plan.id} is being run by run" in second.stderr, second.output
        assert "finished steps are never redone" in second.stderr
        assert reg.planner.get(plan.id).steps[0].status == "running"  # the second process changed nothing
    finally:
        proc.kill()
        proc.wait(timeout=30)
    reg.close()


def test_a_three_source_aggregate_and_a_three_hop_chain_are_planned_and_run(tiny, tmp_path):
    from prompt_registry import Registry
    from prompt_registry.testing.models import build_tiny_llama

    shared, data = tiny
    reg = Registry.init(tmp_path / "reg", actor="planner")
    for name in ("bert16", "bert24", "llama32"):
        reg.register_model(name, shared.get_model(name).source)
    reg.register_model("llama40", build_tiny_llama(tmp_path / "llama40", hidden_size=40, seed=7))
    for name in ("bert16", "bert24", "llama32"):
        reg.train_prompts(name, "rate", data, config=_train(), progress=False)
    rand = reg.train_prompts("llama40", "rate", data, config=_train(freeze=True), progress=False, evaluate_split="test")
    floor = rand.evaluation.metrics["rmse"]
    # three sources (two encoders, a decoder; three widths) -> one adapter over their concatenated prompts
    aggregate = reg.planner.plan("llama40", "rate", sources=["bert16", "bert24", "llama32"], strategy="aggregate")
    assert aggregate.steps[0].kind == "fit" and aggregate.steps[0].sources == ("bert16", "bert24", "llama32")
    merged = reg.get_set(reg.planner.run(aggregate.id, data, config=_fast_config()).steps[0].result["set_id"])
    assert merged.model == "llama40" and len(merged.parents) == 3
    assert reg.evaluate(merged.id, data).metrics["rmse"] < floor
    # one hop at a time, each fitted by its own plan on the set the hop before made (errors compound
    # over three hops: each gets 200 steps); then bert16 -> llama40 reuses all three: a 3-hop chain
    import dataclasses

    for source, target in (("bert16", "bert24"), ("bert24", "llama32"), ("llama32", "llama40")):
        hop = reg.planner.plan(target, "rate", sources=[source], strategy="direct")
        assert hop.steps[0].kind == "fit"
        reg.planner.run(hop.id, data, config=dataclasses.replace(_fast_config(), min_steps=200))
    chain = reg.planner.plan("llama40", "rate", sources=["bert16"], reuse_only=True, exclude=())
    assert chain.kind == "chain" and chain.estimate["path"] == ["bert16", "bert24", "llama32", "llama40"]
    assert [s.kind for s in chain.steps] == ["reuse"] * 3 and chain.estimate["token_passes"] == 0
    # the final set moves an alias only through the gate, against a retrain: -1 (beat it by 1.0 RMSE) refuses, 1.0 lets it through
    reg.train_prompts("llama40", "rate", data, config=_train(), progress=False)
    done = reg.planner.run(chain.id, data, alias="production", gate=-1.0)
    final = reg.get_set(done.steps[-1].result["set_id"])
    assert final.model == "llama40" and final.parents == (done.steps[1].result["set_id"],)
    assert reg.evaluate(final.id, data).metrics["rmse"] < floor
    gated = done.steps[-1].result["alias"]
    assert gated["moved"] is False and "worse than retrain" in gated["why"]
    with pytest.raises(pr.UnknownAliasError):
        reg.get_alias("production", "llama40", "rate")
    again = reg.planner.run(reg.planner.plan("llama40", "rate", sources=["bert16"], reuse_only=True).id, data, alias="production", gate=1.0)
    assert again.steps[-1].result["alias"]["moved"] and reg.get_alias("production", "llama40", "rate").set_id == final.id
    # apply runs are in the catalogue now (their config names set ids): costing a fit still works
    assert reg.planner.plan("llama40", "rate", sources=["bert16", "bert24"], strategy="aggregate", save=False).steps[0].kind == "fit"
    reg.close()


def test_a_quality_floor_rules_out_plans_whose_recorded_evaluations_are_worse(world):
    ac = adapter(world, ["a"], "c")
    users = user_ids(50)
    made = world.write_prompts("c", "rate", users, lambda lo, hi: prompts(hi - lo, 32), prompt_len=1, adapter=ac.id, sources=["a/rate@production"])
    world.record_evaluation(made.id, dataset="synthetic", split="test", metrics={"rmse": 0.9, "n": 100})
    reused = world.planner.plan("c", "rate", sources=["a"], save=False)
    assert reused.steps[0].adapter_id == ac.id and reused.estimate["quality"]["metrics"]["rmse"] == 0.9
    assert world.planner.plan("c", "rate", sources=["a"], quality_floor=0.95, save=False).steps[0].adapter_id == ac.id
    strict = world.planner.plan("c", "rate", sources=["a"], quality_floor=0.85, save=False)
    assert strict.steps[-1].adapter_id != ac.id and strict.estimate["quality"]["recorded"] is False  # unknown quality is kept, and said
    with pytest.raises(pr.NoPlanError, match="recorded 0.9000 .* worse than the floor 0.85"):
        world.planner.plan("c", "rate", sources=["a"], quality_floor=0.85, reuse_only=True, strategy="direct")
