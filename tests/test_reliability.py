"""The crash harness's short version (``benchmarks/reliability.py``): every write operation
SIGKILLed at a few seeded points on SQLite and Postgres; after each kill doctor finds only orphans
and the dead run, every visible set verifies, nothing that existed changed, a rerun completes and
gc leaves doctor clean. The full run (50 points per operation) is one documented command."""

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
    report = reliability.run([kind], list(reliability.OPERATIONS), points=2, seed=1, workdir=tmp_path, say=lambda *a, **k: None)
    assert report["lost"] == 0 and report["failures"] == 0, reliability.markdown({"command": "test", "seed": 1, **report})
    for entry in report["kills"].values():
        assert entry["points_tried"] == 2 and entry["events"] > 20, entry
