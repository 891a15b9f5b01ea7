"""The crash harness's short version (``benchmarks/reliability.py``): every write operation
SIGKILLed at one seeded point on SQLite and one on Postgres; after each kill doctor finds only
orphans and the dead run, every visible set verifies, nothing that existed changed, a rerun
completes and gc leaves doctor clean. The full run (50 points per operation) is one documented
command."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import pg_unreachable_reason

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reliability  # noqa: E402


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_sigkill_at_seeded_points_of_every_write_operation_loses_nothing(kind, tmp_path):
    if kind == "postgres" and pg_unreachable_reason() is not None:
        pytest.skip(f"POSTGRES SKIPPED: {pg_unreachable_reason()}")
    report = reliability.run([kind], list(reliability.OPERATIONS), points=1, seed=1, workdir=tmp_path, say=lambda *a, **k: None)
    assert report["lost"] == 0 and report["failures"] == 0, reliability.markdown({"command": "test", "seed": 1, **report})
    for entry in report["kills"].values():
        assert entry["points_tried"] == 1 and entry["events"] > 20, entry


def test_corruption_is_detected_and_repaired_and_hostile_inputs_keep_the_rule(tmp_path):
    """The faults and inputs sections, short: each fault kind once on SQLite, 15 examples per target."""
    report = reliability.run_all(["sqlite"], [], 0, faults=6, inputs=15, seed=2, workdir=tmp_path, only=["faults", "inputs"], say=lambda *a, **k: None)
    faults = report["faults"]["sqlite"]
    assert faults["injected"] == faults["detected"] == 6 and faults["lost"] == 0 and not faults["failures"], faults
    assert faults["rows_repaired"] > 0 and all(n == 1 for n in faults["by_kind"].values())
    assert report["lost"] == 0 and all(v["examples"] >= 15 for v in report["inputs"].values()), report["inputs"]
    assert "Corruption injected" in reliability.markdown({"command": "test", "seed": 2, **report})
