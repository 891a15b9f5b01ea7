"""``prompt-registry bench paper --scale smoke`` (issue 15): the whole report is produced on tiny
local models, every figure in it is finite, and the tables name each of our rows beside the
paper's. At this scale the claims are not expected to hold; the cpu scale is where they are tested."""

from __future__ import annotations

import json
import math

from click.testing import CliRunner

from prompt_registry.cli.main import main


def _numbers(value):
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield float(value)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _numbers(v)
    elif isinstance(value, list):
        for v in value:
            yield from _numbers(v)


def test_the_smoke_scale_writes_a_complete_finite_report(tmp_path):
    out = tmp_path / "results"
    result = CliRunner().invoke(main, ["bench", "paper", "--scale", "smoke", "--seeds", "2", "--out", str(out), "--workdir", str(tmp_path / "work"), "--json"])
    assert result.exit_code == 0, result.output[-2000:]
    report = json.loads((out / "paper_smoke.json").read_text())
    assert len(report["seeds"]) == 2 and report["seconds"] < 300  # the benchmark runs 3 seeds; 2 keep the suite short
    numbers = list(_numbers({k: v for k, v in report.items() if k != "paper"}))
    assert numbers and all(math.isfinite(x) for x in numbers)
    rows = report["summary"]["rows"]
    for name in ("retrain", "random-init", "default migration A->B (group)", "random selection, same budget",
                 "random selection, 3x the budget", "anchor-ridge A->B (group)", "single source C->B",
                 "chain A->C->B hop 1 (A->C)", "chain A->C->B hop 2 (C->B)", "aggregate A+C->B hop 1 (A+C->B)"):
        assert name in rows and len(rows[name]["rmse"]) == 2, name
    assert rows["chain A->C->B hop 1 (A->C)"]["model"] == "C" and rows["chain A->C->B hop 2 (C->B)"]["model"] == "B"
    assert all(len(r["vs_retrain"]) == 2 for n, r in rows.items() if r["model"] == "B" and n != "retrain")
    ratio = report["puma_vs_retrain"]
    assert ratio["quality_ratio"] > 0 and 0 < ratio["cost_ratio"] < 5
    assert report["registry"]["apply_prompts_per_second"] > 0 and report["registry"]["import_over_raw_write"] > 0
    verdicts = {c["claim"]: c["verdict"] for c in report["claims"]}
    assert len(verdicts) >= 9 and all(v in ("holds", "fails", "not resolved", "beyond it: the migration beats the retrain") for v in verdicts.values())
    tested = [c for c in report["claims"] if c["test"]]
    assert all(c["test"]["seeds"] == 2 and c["test"]["se"] > 0 for c in tested)
    md = (out / "paper_smoke.md").read_text()
    assert "The claims, judged on this run" in md and "paired SEs" in md
    assert "Table 2" in md and "Table 4" in md and "0.9414" in md and "Chain" in md and "Aggregate" in md
    assert all((out / p.split("/")[-1]).exists() for p in report["plots"])


def test_a_claim_needs_two_paired_standard_errors():
    from prompt_registry.paper.report import _verdict

    assert _verdict(-0.03, 0.01, want="lower") == "holds"
    assert _verdict(-0.01, 0.01, want="lower") == "not resolved"
    assert _verdict(0.03, 0.01, want="lower") == "fails"
    assert _verdict(0.03, 0.01, want="not higher", margin=0.011) == "fails"
    assert _verdict(0.01, 0.01, want="not higher", margin=0.011) == "not resolved"  # no significant loss is not equivalence
    assert _verdict(-0.02, 0.005, want="not higher", margin=0.011) == "holds"
    assert _verdict(0.001, 0.004, want="not higher", margin=0.011) == "holds"


def test_a_run_resumes_with_its_sources_and_finished_seeds_and_refuses_another_configuration(tmp_path):
    """The cpu scale runs for an hour or more: an interrupted run continues where it stopped. Here a
    tiny scale with shared sources (as cpu's): seed 0 is run, then a resumed run of 2 seeds keeps
    the sources and seed 0 exactly and runs only seed 1."""
    import dataclasses

    import pytest

    from prompt_registry.errors import InvalidArgumentError
    from prompt_registry.paper import SCALES, run_paper

    tiny = dataclasses.replace(SCALES["smoke"], name="tiny", users=24, per_user=12, items=30, train_epochs=1, source_epochs=1,
                               apply_prompts=300, shared_sources=True)
    said: list[str] = []
    first = run_paper(tiny, seeds=1, out=tmp_path / "out", workdir=tmp_path / "work", say=said.append)
    assert not first["resumed"] and first["seeds"] == [0]
    said.clear()
    second = run_paper(tiny, seeds=2, out=tmp_path / "out", workdir=tmp_path / "work", resume=True, say=said.append)
    assert said[0] == "resuming: seeds [0] done, sources trained" and second["resumed"]
    assert not any("source prompts on A" in line for line in said)  # the sources were not trained again
    assert [line for line in said if "[seed 0]" in line] == []  # nor seed 0
    assert second["per_seed"][0] == first["per_seed"][0] and second["seeds"] == [0, 1]
    rows = second["summary"]["rows"]
    assert rows["source prompts on A"]["rmse"][0] == rows["source prompts on A"]["rmse"][1] and len(rows["retrain"]["rmse"]) == 2
    with pytest.raises(InvalidArgumentError, match="another configuration"):
        run_paper(dataclasses.replace(tiny, users=30), seeds=1, out=tmp_path / "out", workdir=tmp_path / "work", resume=True, say=None)
    with pytest.raises(InvalidArgumentError, match="workdir"):
        run_paper(tiny, resume=True, out=tmp_path / "out", say=None)
