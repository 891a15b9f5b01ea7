"""Fuzzing with Hypothesis (issue 16 part 5), beyond prompt files (``test_fuzz_files.py``): users
CSVs and data set CSVs, set references, names and free text, numeric CLI options. Each input
either succeeds correctly or is refused with one of our errors, and a refusal leaves the
registry exactly as it was (``prompt_registry.testing.hostile``). ``benchmarks/reliability.py
--inputs N`` runs the same targets with many more examples and counts them in its report.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_fake_model
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prompt_registry import Registry
from prompt_registry.cli.main import main
from prompt_registry.testing import hostile

EXAMPLES = int(os.environ.get("PROMPT_REGISTRY_FUZZ_EXAMPLES", "60"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    reg = Registry.init(root / "reg", actor="fuzzer")
    reg.register_model("a", make_fake_model(root / "model-a", 16))
    reg.add_task("rate", "rating")
    reg.import_prompts("a", "rate", np.zeros((3, 1, 16), dtype=np.float32), ["u000", "u001", "u002"], create_users=True)
    yield reg
    reg.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("inputs")


@SETTINGS
@given(raw=hostile.csv_files())
def test_users_csvs_import_exactly_their_users_or_are_refused_cleanly(reg, workdir, raw):
    hostile.import_with_users_csv(reg, workdir, raw)


@SETTINGS
@given(raw=hostile.csv_files())
def test_user_import_csvs_add_their_users_or_are_refused_cleanly(reg, workdir, raw):
    hostile.add_users_from_csv(reg, workdir, raw)


@SETTINGS
@given(interactions=hostile.csv_files(("user_id", "item_id", "label", "timestamp")), items=hostile.csv_files(("item_id", "text")))
def test_data_set_csvs_load_or_are_refused_cleanly(workdir, interactions, items):
    hostile.load_data_folder(workdir, interactions, items)


@SETTINGS
@given(ref=hostile.refs)
def test_set_references_resolve_or_are_refused_cleanly(reg, ref):
    hostile.reference(reg, ref)


@SETTINGS
@given(text=hostile.texts)
def test_names_and_free_text_are_stored_exactly_or_refused_cleanly(reg, text):
    hostile.name(reg, text)


def test_a_bom_and_a_well_formed_csv_import_the_same_users(reg, workdir):
    plain = hostile.well_formed_users_csv(["bom1", "bom2"])
    assert hostile.add_users_from_csv(reg, workdir, b"\xef\xbb\xbf" + plain) == "accepted"
    assert {"bom1", "bom2"} <= {u.external_id for u in reg.list_users(limit=None)}


NUMERIC_OPTIONS = [
    ("user", "list", "--limit"), ("user", "list", "--offset"), ("gc", "--dry-run", "--grace"), ("gc", "--dry-run", "--keep-last"),
    ("gc", "--dry-run", "--older-than"), ("prompt", "show", "u000", "--model", "a", "--task", "rate", "--version"),
    ("audit", "lineage", "1", "--max-depth"), ("audit", "blast-radius", "1", "--limit"), ("adapter", "show"), ("migrate", "plan", "show"),
    ("audit", "lineage"),
]


@settings(max_examples=max(EXAMPLES // 2, 10), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(NUMERIC_OPTIONS), value=hostile.numbers)
def test_numeric_options_are_used_or_refused_with_one_line(reg, option, value):
    result = CliRunner().invoke(main, ["--registry", str(reg.where), *option, value])
    output = result.output  # stdout and stderr as the user sees them
    assert result.exit_code in (0, 1, 2), (option, value, output[-500:])
    assert result.exception is None or isinstance(result.exception, SystemExit), (option, value, repr(result.exception))
    assert "Traceback" not in output
    if result.exit_code:
        lines = [line for line in output.splitlines() if line.strip()]
        assert 1 <= len(lines) <= 3 and all(len(line) <= 1100 for line in lines), (option, value, output[:600])
