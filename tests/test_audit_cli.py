"""The audit CLI verbs, `user delete --purge` and `gc` retention through Click's runner."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
from conftest import make_fake_model
from test_audit import build_scenario
from test_cli import Cli, _commands

from prompt_registry import Registry
from prompt_registry.cli.main import main

AUDIT_READING = {"audit lineage", "audit user", "audit alias", "audit runs", "audit blast-radius", "audit diff"}


def _scenario_registry(folder) -> Cli:
    """A SQLite registry holding the test_audit scenario (set ids 1..5, adapters 1 and 2) and two
    evaluations."""
    location = str(folder / "reg")
    with Registry.init(location, actor="cli-test") as reg:
        reg.register_model("a", make_fake_model(folder / "model-a", 16, seed=1))
        reg.register_model("b", make_fake_model(folder / "model-b", 24, seed=2, architecture="Qwen2ForCausalLM"))
        reg.add_task("rate", "rating")
        reg.add_users([f"u{i:03d}" for i in range(50)])
        sc = build_scenario(reg, make_fake_model(folder / "model-c", 8, seed=3))
        assert (sc.s1.id, sc.s5.id, sc.ab.id) == (1, 5, 1)
        reg.record_evaluation(1, dataset="ml", split="test", metrics={}, per_user={"u000": {"rmse": 1.0}, "u001": {"rmse": 0.5}})
        reg.record_evaluation(2, dataset="ml", split="test", metrics={}, per_user={"u000": {"rmse": 0.25}, "u001": {"rmse": 0.5}})
    return Cli(location)


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    """Shared by the read-only tests (built once)."""
    return _scenario_registry(tmp_path_factory.mktemp("audited"))


@pytest.fixture
def writable(tmp_path):
    """A private copy for tests that purge or remove."""
    return _scenario_registry(tmp_path)


def test_audit_verbs_have_json_and_are_registered():
    commands = dict(_commands(main))
    assert AUDIT_READING | {"user delete"} <= set(commands)
    for name in AUDIT_READING | {"user delete", "gc"}:
        assert any(p.name == "as_json" for p in commands[name].params), f"`{name}` lacks --json"


def test_audit_lineage(audited):
    up = audited.json("audit", "lineage", "5")
    assert [(n["set_id"], n["depth"]) for n in up["nodes"]] == [(5, 0), (4, 1), (3, 2), (2, 3), (1, 4)]
    assert [(e["child_id"], e["role"], e["adapter_id"]) for e in up["edges"]] == [(5, "base", None), (4, "source", 2), (3, "source", 1), (2, "base", None)]
    down = audited.json("audit", "lineage", "a/rate@v1", "--down", "--max-depth", "2")
    assert [n["set_id"] for n in down["nodes"]] == [1, 2, 3]
    table = audited("audit", "lineage", "5").stdout
    assert "c/rate@v1" in table and "bc v1" in table and "CHILD_ID" in table


def test_audit_user(audited):
    hist = audited.json("audit", "user", "u003")
    versions = [(v["set_id"], v["holder_id"], v["inherited"]) for v in hist["versions"]]
    assert versions == [(1, 1, False), (2, 1, True), (3, 3, False), (4, 4, False), (5, 4, True)]
    assert [w["name"] for w in hist["versions"][0]["aliases"]] == ["production"]
    out = audited("audit", "user", "u003").stdout
    assert "a/rate@v2" in out and "production" in out and "versions    5" in out
    assert "no user 'ghost'" in audited("audit", "user", "ghost", code=1).stderr


def test_audit_alias(audited):
    moves = audited.json("audit", "alias", "production", "--model", "a")
    assert [(m["old_set_id"], m["new_set_id"], m["reason"]) for m in moves] == [(None, 1, "first load"), (1, 2, "refresh")]
    assert moves[0]["until"] == moves[1]["at"]
    out = audited("audit", "alias", "production").stdout
    assert "1 (v1)" in out and "2 (v2)" in out and "refresh" in out


def test_audit_runs(audited):
    total = audited.json("audit", "runs")
    assert (total[0]["runs"], total[0]["token_passes"]) == (5, 10500)
    by_kind = {c["group"]: c["runs"] for c in audited.json("audit", "runs", "--group-by", "kind")}
    assert by_kind == {"import": 3, "migrate": 2}
    tomorrow = (dt.date.today() + dt.timedelta(days=2)).isoformat()
    assert audited.json("audit", "runs", "--since", tomorrow) == []
    assert audited.json("audit", "runs", "--kind", "migrate", "--group-by", "model")[0]["group"] == "b"
    assert "TOKEN_PASSES" in audited("audit", "runs", "--group-by", "month").stdout
    audited("audit", "runs", "--group-by", "week", code=2)


def test_audit_blast_radius(audited):
    radius = audited.json("audit", "blast-radius", "1")
    assert [s["set_id"] for s in radius["sets"]] == [3, 4, 5] and radius["n_users"] == 11
    assert radius["users_truncated"] is False and len(radius["users"]) == 11
    out = audited("audit", "blast-radius", "1", "--limit", "2").stdout
    assert "3 set(s), 11 user(s) (first 2 listed" in out and "u001" in out and "u002" not in out
    assert len(audited.json("audit", "blast-radius", "--set", "4", "--all-users")["users"]) == 11
    assert "ADAPTER" in audited("audit", "blast-radius", code=2).stderr
    assert "no adapter with id 9" in audited("audit", "blast-radius", "9", code=1).stderr


def test_audit_diff(audited):
    diff = audited.json("audit", "diff", "1", "2")
    assert diff["metrics"][0] == {"metric": "rmse", "n_users": 2, "mean_a": 0.75, "mean_b": 0.375, "mean_delta": -0.375,
                                  "n_lower": 1, "n_higher": 0, "n_equal": 1}
    assert diff["users"][0] == {"user": "u000", "metric": "rmse", "value_a": 1.0, "value_b": 0.25, "delta": -0.75}
    out = audited("audit", "diff", "1", "2", "--limit", "1").stdout
    assert "on ml [test]" in out and "u000" in out and "u001" not in out
    assert "no evaluation on split 'valid'" in audited("audit", "diff", "1", "2", "--split", "valid", code=1).stderr


def test_user_delete_needs_purge_then_erases(writable, tmp_path):
    preview = writable("user", "delete", "u003").stdout
    assert preview.startswith("would purge (pass --purge to do it) u003: 3 row(s) zeroed in set(s) 1,3,4")
    assert writable.json("audit", "user", "u003")["deleted_at"] is None
    done = writable.json("user", "delete", "u003", "--purge", "--reason", "request 7")
    assert (done["dry_run"], done["sets"], done["metrics_removed"]) == (False, [1, 3, 4], 0)
    assert writable.json("audit", "user", "u003")["versions"] == []
    assert [u["external_id"] for u in writable.json("user", "list", "--include-deleted", "--limit", "50") if u["deleted_at"]] == ["u003"]
    assert writable("doctor").stdout.strip().endswith("ok")
    res = writable("prompt", "show", "u003", "--model", "a", "--task", "rate", "--version", "1", code=1)
    assert "no prompt for 1 user(s): 'u003'" in res.stderr
    with Registry.open(tmp_path / "reg") as reg:
        assert reg.audit_events(object_kind="user", object_id="u003")[0].reason == "request 7"
        np.testing.assert_array_equal(reg.store.read_rows(reg.get_set(4).store_key, np.array([3])), 0)


def test_gc_retention_options(writable, tmp_path):
    with Registry.open(tmp_path / "reg") as reg:
        reg.import_prompts("a", "rate", np.ones((2, 1, 16), np.float32), ["u000", "u001"])  # a@v3
        reg.import_prompts("a", "rate", np.ones((2, 1, 16), np.float32), ["u000", "u001"])  # a@v4
    dry = writable.json("gc", "--dry-run", "--keep-last", "1")
    assert dry["removed_sets"] == [6]  # a@v3; v1 <- v2 are aliased/lineage of kept sets
    out = writable("gc", "--keep-last", "1", "--older-than", "0").stdout
    assert "removed 1 prompt set(s) no alias or kept lineage needs: 6" in out and "bytes of removed sets" in out
    assert "is deleted" in writable("prompt", "export", "6", tmp_path / "x.npy", code=1).stderr
    assert "at least 1" in writable("gc", "--keep-last", "0", code=1).stderr
    assert writable.json("gc", "--keep-last", "1")["removed_sets"] == []
