"""Workers sharing stored plans through Postgres: SKIP LOCKED claims, leases with a heartbeat and
an expiry, take-over of a SIGKILLed worker's step, each step completed once. SQLite refuses."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner
from conftest import make_fake_model, prompts, user_ids

import prompt_registry as pr
from prompt_registry.cli.main import main
from prompt_registry.db.engine import write_session
from prompt_registry.db.schema import PlanStepRow
from prompt_registry.planning.worker import WorkerConfig

WIDTHS = {"a": 16, "b": 24, "c": 32}


def _fake_world(location, store, tmp_path):
    reg = pr.Registry.init(location, store=store, actor="planner")
    for i, (name, width) in enumerate(WIDTHS.items()):
        reg.register_model(name, make_fake_model(tmp_path / name, width, seed=i + 1))
    reg.add_task("rate", "rating")
    reg.import_prompts("a", "rate", prompts(50, 16), user_ids(50), create_users=True, alias="production")
    return reg


def test_sqlite_says_worker_mode_needs_postgres(tmp_path):
    from prompt_registry.data.synthetic import make_synthetic

    reg = _fake_world(tmp_path / "reg", None, tmp_path)
    data = make_synthetic(tmp_path / "data", n_users=10, n_items=10, per_user=5, seed=0)
    reg.planner.plan("b", "rate", sources=["a"], strategy="direct")
    with pytest.raises(pr.ConflictError, match="worker mode needs a Postgres catalogue"):
        reg.planner.work(data)
    result = CliRunner().invoke(main, ["--registry", str(tmp_path / "reg"), "worker", "--data", str(data)])
    assert result.exit_code == 1 and "needs a Postgres catalogue" in result.stderr and "migrate run --plan" in result.stderr
    assert reg.planner.list()[0].steps[0].status == "pending"  # nothing was claimed
    reg.close()


def test_worker_settings_are_checked():
    with pytest.raises(ValueError, match="positive"):
        WorkerConfig(lease_seconds=0)
    with pytest.raises(ValueError, match="max_steps"):
        WorkerConfig(max_steps=0)


@pytest.mark.postgres
def test_claims_skip_locked_steps_follow_plan_order_and_leases_expire(pg_url, tmp_path):
    reg = _fake_world(pg_url, str(tmp_path / "store"), tmp_path)
    try:
        chain = reg.planner.plan("c", "rate", sources=["a"], via="b", strategy="chain")
        direct = reg.planner.plan("b", "rate", sources=["a"], strategy="direct")
        plans = reg._s.plans
        first = plans.claim_step("w1", 60)
        second = plans.claim_step("w2", 60)
        assert (first[0].id, first[1], first[2]) == (chain.id, 0, False)
        assert (second[0].id, second[1]) == (direct.id, 0)  # the chain's step 1 waits for its step 0
        assert plans.claim_step("w3", 60) is None and plans.steps_left() == 3
        assert plans.renew_step(chain.id, 0, "w1", 60) and not plans.renew_step(chain.id, 0, "w3", 60)
        from prompt_registry.data.synthetic import make_synthetic

        data = make_synthetic(tmp_path / "data", n_users=10, n_items=10, per_user=5, seed=0)
        with pytest.raises(pr.ConflictError, match="being run by worker w1"):
            reg.planner.run(chain.id, data)  # a single-process run respects the workers' lease
        # w1 dies: its lease runs out, w3 takes the step over; w1's late finish is refused
        with write_session(reg._s.ctx.engine) as session:
            session.get(PlanStepRow, (chain.id, 0)).lease_expires_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
        taken = plans.claim_step("w3", 60)
        assert (taken[0].id, taken[1], taken[2]) == (chain.id, 0, True)
        assert not plans.finish_step(chain.id, 0, "w1", "done", result={"set_id": 1}) and not plans.renew_step(chain.id, 0, "w1", 60)
        assert plans.finish_step(chain.id, 0, "w3", "done", result={"set_id": 1})
        assert not plans.finish_step(chain.id, 0, "w3", "done", result={"set_id": 2})  # once
        nxt = plans.claim_step("w1", 60)
        assert (nxt[0].id, nxt[1]) == (chain.id, 1)
        assert plans.finish_step(chain.id, 1, "w1", "done", result={"set_id": 1}) and reg.planner.get(chain.id).status == "done"
        assert plans.finish_step(direct.id, 0, "w2", "failed", result={"error": "x"}) and reg.planner.get(direct.id).status == "failed"
        assert plans.claim_step("w1", 60) is None and plans.steps_left() == 0
        with write_session(reg._s.ctx.engine) as session:
            assert session.get(PlanStepRow, (chain.id, 0)).attempts == 2
    finally:
        reg.close()


WORKER = """
import json, sys
import torch
torch.set_num_threads(1)
from prompt_registry import Registry
from prompt_registry.migration.config import MigrationConfig
from prompt_registry.migration.selection import SelectionConfig
from prompt_registry.planning.worker import WorkerConfig
location, store, data = sys.argv[1:4]
config = MigrationConfig(lr=3e-3, head_lr=1e-2, min_steps=60, max_fit_epochs=None, valid_every=30, selection=SelectionConfig(budget=20),
                         cost_budget=None)  # each step ends with its mapped set
with Registry.open(location, store=store, actor="worker") as reg:
    report = reg.planner.work(data, config=config, worker=WorkerConfig(lease_seconds=5, poll_seconds=0.2))
print(json.dumps(report.to_dict()))
"""


@pytest.mark.postgres
def test_three_workers_share_plans_and_a_sigkilled_workers_step_is_finished_by_another(pg_url, tmp_path):
    from prompt_registry.data.synthetic import make_synthetic
    from prompt_registry.testing.models import build_tiny_bert, build_tiny_llama
    from prompt_registry.training.config import TrainConfig

    torch.set_num_threads(1)
    store = str(tmp_path / "store")
    reg = pr.Registry.init(pg_url, store=store, actor="planner")
    try:
        data = make_synthetic(tmp_path / "data", n_users=60, n_items=60, per_user=20, seed=5)
        reg.register_model("bert16", build_tiny_bert(tmp_path / "bert16", hidden_size=16, seed=1))
        reg.register_model("bert24", build_tiny_bert(tmp_path / "bert24", hidden_size=24, seed=2))
        reg.register_model("llama32", build_tiny_llama(tmp_path / "llama32", hidden_size=32, seed=3))
        reg.train_prompts("bert16", "rate", data, config=TrainConfig(epochs=4, lr=5e-3), progress=False)
        plans = [reg.planner.plan("llama32", "rate", sources=["bert16"], via="bert24", strategy="chain"),
                 reg.planner.plan("bert24", "rate", sources=["bert16"], strategy="direct"),
                 reg.planner.plan("llama32", "rate", sources=["bert16"], strategy="direct")]
        script = tmp_path / "worker.py"
        script.write_text(WORKER)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        workers = [subprocess.Popen([sys.executable, str(script), pg_url, store, str(data)], env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for _ in range(3)]
        by_pid = {w.pid: w for w in workers}
        deadline = time.monotonic() + 120
        victim = None
        while victim is None:  # kill the first worker seen holding a lease, inside its step
            assert time.monotonic() < deadline, "no worker claimed a step"
            with write_session(reg._s.ctx.engine) as session:
                held = session.query(PlanStepRow).filter(PlanStepRow.lease_token.is_not(None)).first()
                if held is not None:
                    victim = (held.plan_id, held.position, int(held.lease_token.split("/")[1]))
            time.sleep(0.05)
        os.kill(victim[2], signal.SIGKILL)
        outputs = {}
        for pid, proc in by_pid.items():
            out, err = proc.communicate(timeout=300)
            outputs[pid] = (proc.returncode, out, err)
        assert outputs[victim[2]][0] == -9
        reports = []
        for pid, (code, out, err) in outputs.items():
            if pid != victim[2]:
                assert code == 0, err
                reports.append(json.loads(out.strip().splitlines()[-1]))
        finished = [reg.planner.get(p.id) for p in plans]
        assert all(p.status == "done" for p in finished) and all(s.status == "done" for p in finished for s in p.steps)
        done = [(s["plan_id"], s["position"]) for r in reports for s in r["steps"] if s["status"] == "done"]
        assert sorted(done) == sorted((p.id, s.position) for p in finished for s in p.steps)  # every step completed exactly once
        taken = [s for r in reports for s in r["steps"] if (s["plan_id"], s["position"]) == victim[:2]]
        assert [s["taken_over"] for s in taken] == [True]  # the killed worker's step, taken over by a live one
        events = [e for e in reg.audit_events(object_kind="plan", limit=1000) if e.action == "plan_step" and e.details.get("status") == "done"]
        assert len(events) == len(done)
        with write_session(reg._s.ctx.engine) as session:
            assert session.get(PlanStepRow, victim[:2]).attempts == 2
        chain = finished[0]
        assert reg.get_set(chain.steps[1].result["set_id"]).parents == (chain.steps[0].result["set_id"],)  # the chain read its first hop
        print("workers:", [(r["worker"], [(s["plan_id"], s["position"], s["status"], s["taken_over"]) for s in r["steps"]], r["seconds"])
                           for r in reports], "killed:", victim)
    finally:
        for proc in [w for w in locals().get("workers", []) if w.poll() is None]:
            proc.kill()
        reg.close()


def _skewed(reg, seconds):
    """``reg``'s clock moved ``seconds`` away from the database's (a worker on another machine)."""
    from prompt_registry._util import utcnow

    reg._s.ctx.now = lambda: utcnow() + dt.timedelta(seconds=seconds)
    return reg


@pytest.mark.postgres
def test_leases_are_reckoned_by_the_databases_clock_not_the_workers(pg_url, tmp_path):
    """Workers on machines whose clocks disagree by more than a lease: one 90 s ahead does not
    take a live 60 s lease, one 90 s behind keeps its own lease alive by renewing it."""
    reg = _fake_world(pg_url, str(tmp_path / "store"), tmp_path)
    try:
        plan = reg.planner.plan("b", "rate", sources=["a"], strategy="direct")
        plans = reg._s.plans
        with pr.Registry.open(pg_url, store=str(tmp_path / "store")) as ahead, pr.Registry.open(pg_url, store=str(tmp_path / "store")) as behind:
            _skewed(ahead, 90)
            _skewed(behind, -90)
            assert behind._s.plans.claim_step("slow-clock", 60)[1] == 0
            assert ahead._s.plans.claim_step("fast-clock", 60) is None  # the lease is live by the database's clock
            assert behind._s.plans.renew_step(plan.id, 0, "slow-clock", 60)
            assert ahead._s.plans.claim_step("fast-clock", 60) is None and plans.claim_step("w", 60) is None
            with write_session(reg._s.ctx.engine) as session:  # the worker dies: its lease runs out by the database's clock
                session.get(PlanStepRow, (plan.id, 0)).lease_expires_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
            assert ahead._s.plans.claim_step("fast-clock", 60)[2]  # taken over
    finally:
        reg.close()


@pytest.mark.postgres
def test_a_plan_run_and_the_workers_never_both_record_a_step(pg_url, tmp_path):
    """A worker stalled past its lease cannot record the step once a resumed plan run took the
    plan; a plan run that refuses (no --resume) leaves the workers' plan as it was; a plan run
    judged gone whose plan the workers took over records nothing."""
    from prompt_registry.data.synthetic import make_synthetic

    reg = _fake_world(pg_url, str(tmp_path / "store"), tmp_path)
    try:
        chain = reg.planner.plan("c", "rate", sources=["a"], via="b", strategy="chain")
        plans = reg._s.plans
        data = make_synthetic(tmp_path / "data", n_users=10, n_items=10, per_user=5, seed=0)
        assert plans.claim_step("w1", 60)[1] == 0 and plans.finish_step(chain.id, 0, "w1", "done", result={"set_id": 1})
        before = reg.planner.get(chain.id)
        with pytest.raises(pr.ConflictError, match="rerun with --resume"):
            reg.planner.run(chain.id, data)  # step 0 is done: refused, and the plan stays the workers'
        after = reg.planner.get(chain.id)
        assert after.status == before.status == "running" and plans.steps_left(plan_id=chain.id) == 1
        assert plans.claim_step("w2", 60)[1] == 1  # w2 stalls on step 1 past its lease
        with write_session(reg._s.ctx.engine) as session:
            session.get(PlanStepRow, (chain.id, 1)).lease_expires_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
        run = reg._s.runs.start_run("plan", model="c", task="rate", config={"plan_id": chain.id})
        plans.acquire(chain.id, run.id)  # a resumed plan run takes the plan
        assert not plans.renew_step(chain.id, 1, "w2", 60) and not plans.finish_step(chain.id, 1, "w2", "done", result={"set_id": 7})
        assert plans.claim_step("w3", 60) is None  # the plan run is alive
        # the plan run is judged gone (its run finished without releasing): a worker takes the plan over
        reg._s.runs.finish_run(run.id, status="failed", error="lost")
        assert plans.claim_step("w3", 60)[1] == 1
        with pytest.raises(pr.ConflictError, match=f"no longer held by run {run.id}"):
            plans.mark_step(chain.id, 1, "done", holder=run.id, result={"set_id": 8})
        assert plans.finish_step(chain.id, 1, "w3", "done", result={"set_id": 9})
        final = reg.planner.get(chain.id)
        assert final.status == "done" and final.steps[1].result == {"set_id": 9}
    finally:
        reg.close()


@pytest.mark.postgres
def test_an_interrupted_workers_heartbeat_stops(pg_url, tmp_path, monkeypatch):
    """A KeyboardInterrupt inside a step (a notebook, a service that goes on) stops the lease's
    heartbeat: the step's lease runs out and another worker can take it."""
    import threading

    from prompt_registry.data.synthetic import make_synthetic
    from prompt_registry.planning import worker as worker_module

    reg = _fake_world(pg_url, str(tmp_path / "store"), tmp_path)
    try:
        plan = reg.planner.plan("b", "rate", sources=["a"], strategy="direct")
        data = make_synthetic(tmp_path / "data", n_users=10, n_items=10, per_user=5, seed=0)

        def interrupted(*args, **kwargs):
            time.sleep(0.6)  # a few heartbeats
            raise KeyboardInterrupt

        monkeypatch.setattr(worker_module, "execute_step", interrupted)
        with pytest.raises(KeyboardInterrupt):
            reg.planner.work(data, plan_id=plan.id, worker=WorkerConfig(lease_seconds=0.6, poll_seconds=0.1))
        assert not [t for t in threading.enumerate() if t.name.startswith("prompt-registry-lease")]
        time.sleep(0.8)
        taken = reg._s.plans.claim_step("w2", 60)
        assert taken is not None and taken[2]  # the lease ran out: taken over
    finally:
        reg.close()


@pytest.mark.postgres
def test_a_step_whose_workers_keep_dying_is_failed_not_handed_on(pg_url, tmp_path):
    """Each claimer of the step vanishes (its lease runs out): after max_attempts claims the next
    claim fails the step and its plan, saying what to do, instead of taking down another worker."""
    reg = _fake_world(pg_url, str(tmp_path / "store"), tmp_path)
    try:
        plan = reg.planner.plan("b", "rate", sources=["a"], strategy="direct")
        plans = reg._s.plans

        def expire():
            with write_session(reg._s.ctx.engine) as session:
                session.get(PlanStepRow, (plan.id, 0)).lease_expires_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)

        for attempt in range(3):
            claimed = plans.claim_step(f"w{attempt}", 60, max_attempts=3)
            assert claimed is not None and claimed[2] == (attempt > 0)
            expire()
        assert plans.claim_step("w3", 60, max_attempts=3) is None
        failed = reg.planner.get(plan.id)
        assert failed.status == "failed" and failed.steps[0].status == "failed"
        assert "stopped without finishing it 3 times" in failed.steps[0].result["error"] and "--resume" in failed.steps[0].result["error"]
        assert plans.steps_left() == 0  # the workers stop serving it
    finally:
        reg.close()


@pytest.mark.postgres
def test_a_plan_run_acquiring_while_a_worker_finishes_waits_instead_of_deadlocking(pg_url, tmp_path):
    """finish_step locks the plan row before the step, in the order acquire does: a plan run
    acquiring the plan while the worker records its last step waits, then finds the plan done."""
    import threading

    reg = _fake_world(pg_url, str(tmp_path / "store"), tmp_path)
    try:
        plan = reg.planner.plan("b", "rate", sources=["a"], strategy="direct")
        plans = reg._s.plans
        assert plans.claim_step("w1", 60)[1] == 0
        real_audit = plans.ctx.audit

        def slow_audit(session, action, *args, **kwargs):
            if action == "plan_step":
                time.sleep(1.0)  # inside finish_step's transaction, its locks held
            return real_audit(session, action, *args, **kwargs)

        plans.ctx.audit = slow_audit
        out = {}

        def finish():
            try:
                out["finish"] = plans.finish_step(plan.id, 0, "w1", "done", result={"set_id": 1})
            except BaseException as exc:  # reported below
                out["finish"] = exc

        run = reg._s.runs.start_run("plan", model="b", task="rate", config={"plan_id": plan.id})
        worker = threading.Thread(target=finish)
        worker.start()
        time.sleep(0.3)
        with pytest.raises(pr.ConflictError, match="is done"):
            plans.acquire(plan.id, run.id)
        worker.join(30)
        assert out["finish"] is True
    finally:
        reg.close()


@pytest.mark.postgres
def test_a_worker_records_its_step_again_when_the_catalogue_was_busy(pg_url, tmp_path, monkeypatch):
    """The step's work is done and recording it is refused once as busy (a deadlock Postgres
    resolved by aborting the worker's transaction): the worker tries again instead of dying."""
    from prompt_registry.data.synthetic import make_synthetic
    from prompt_registry.planning import worker as worker_module

    reg = _fake_world(pg_url, str(tmp_path / "store"), tmp_path)
    try:
        plan = reg.planner.plan("b", "rate", sources=["a"], strategy="direct")
        data = make_synthetic(tmp_path / "data", n_users=10, n_items=10, per_user=5, seed=0)
        monkeypatch.setattr(worker_module, "execute_step", lambda *args, **kwargs: {"set_id": 1, "run_id": None})
        plans = reg._s.plans
        real = plans.finish_step
        calls = []

        def busy_once(*args, **kwargs):
            calls.append(args)
            if len(calls) == 1:
                raise pr.BusyError("the catalogue was busy: deadlock detected; run it again")
            return real(*args, **kwargs)

        monkeypatch.setattr(plans, "finish_step", busy_once)
        report = reg.planner.work(data, plan_id=plan.id, worker=WorkerConfig(lease_seconds=5, poll_seconds=0.1))
        assert [(s["status"], s["recorded"]) for s in report.steps] == [("done", True)] and len(calls) == 2
        assert reg.planner.get(plan.id).status == "done"
    finally:
        reg.close()
