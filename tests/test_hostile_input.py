"""Hostile arguments get one clear error line and a non-zero exit, never a traceback, and the same
answer on SQLite and Postgres (validated once, before the database: ``prompt_registry.validation``).

The cases are the ones a hostile probe of 475e28c found raising tracebacks or passing on one backend
and failing on the other: ids beyond 64 bits, a non-ASCII digit as an id, NaN and infinite
durations, negative limits, NUL in user ids, over-long tag names and actors, 10,000-character ids
echoed back whole.
"""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_fake_model, prompts, user_ids

import prompt_registry as pr
from prompt_registry import Registry
from prompt_registry.cli.main import main

HUGE = "99999999999999999999"  # beyond 2**63 - 1
LONG = "x" * 10_000

CLI_CASES = [
    ("prompt", "show", "u001", "--model", "a", "--task", "rate", "--version", HUGE),
    ("alias", "set", "production", HUGE),
    ("audit", "lineage", HUGE),
    ("audit", "blast-radius", HUGE),
    ("user", "list", "--limit", HUGE),
    ("user", "list", "--limit", "-5"),
    ("prompt", "export", "²", "out.npy"),
    ("prompt", "export", "a/rate@v²", "out.npy"),
    ("gc", "--older-than", "nan"),
    ("gc", "--older-than", "inf"),
    ("gc", "--grace", "nan"),
    ("gc", "--keep-last", HUGE),
    ("prompt", "tag", "1", "t" * 300),
    ("prompt", "show", LONG, "--model", "a", "--task", "rate"),
    ("audit", "user", LONG),
    ("adapter", "show", HUGE),
]


@pytest.fixture
def hostile(tmp_path):
    base = ["--registry", str(tmp_path / "reg"), "--actor", "probe"]
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(main, [*base, *args], catch_exceptions=True)

    assert run("init").exit_code == 0
    assert run("model", "add", "a", "--path", str(make_fake_model(tmp_path / "a", 16))).exit_code == 0
    assert run("task", "add", "rate", "--kind", "rating").exit_code == 0
    with Registry.open(tmp_path / "reg") as reg:
        reg.import_prompts("a", "rate", prompts(3), user_ids(3), create_users=True)
    return run


@pytest.mark.parametrize("args", CLI_CASES, ids=lambda a: " ".join(x[:12] for x in a))
def test_hostile_cli_arguments_get_one_error_line(hostile, args):
    result = hostile(*args)
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code != 0, output
    assert "Traceback" not in output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) <= 3 and all(len(line) < 400 for line in lines), output[:500]


@pytest.mark.registry
@pytest.mark.parametrize("call, match", [
    (lambda r: r.add_users(["ok", "nul\x00byte"]), "control characters"),
    (lambda r: r.add_users(["tab\tinside"]), "control characters"),
    (lambda r: r.import_prompts("a", "rate", prompts(1), ["new\nline"], create_users=True), "control characters"),
    (lambda r: r.tag("a/rate@v1", "t" * 300), "1-100 characters"),
    (lambda r: r.list_users(limit=-1), "between 0 and"),
    (lambda r: r.list_users(offset=-1), "between 0 and"),
    (lambda r: r.list_runs(limit=2**64), "between 0 and"),
    (lambda r: r.get_run(2**64), "between 1 and"),
    (lambda r: r.get_set(2**64), "between 1 and"),
    (lambda r: r.get_set("a/rate@v" + HUGE), "between 1 and"),
    (lambda r: r.get_artifact("²"), "digits 0-9"),
    (lambda r: r.gc(older_than_days=float("nan")), "finite"),
    (lambda r: r.gc(grace_seconds=float("-inf")), "finite"),
    (lambda r: r.lineage("a/rate@v1", max_depth=-3), "between 0 and"),
])
def test_hostile_api_arguments_are_refused_the_same_on_every_backend(populated, call, match):
    populated.import_prompts("a", "rate", prompts(3), user_ids(3))
    before = (populated.count_users(), len(populated.list_sets()), len(populated.list_runs()))
    with pytest.raises(pr.InvalidArgumentError, match=match):
        call(populated)
    assert (populated.count_users(), len(populated.list_sets()), len(populated.list_runs())) == before


@pytest.mark.registry
def test_long_hostile_ids_are_not_echoed_whole(populated):
    populated.import_prompts("a", "rate", prompts(3), user_ids(3))
    for call, error in ((lambda: populated.import_prompts("a", "rate", prompts(1), [LONG]), pr.InvalidArgumentError),
                        (lambda: populated.get_prompt(LONG, "a", "rate"), pr.UnknownUserError),
                        (lambda: populated.user_history(LONG), pr.UnknownUserError),
                        (lambda: populated.get_model(LONG), pr.UnknownModelError)):
        with pytest.raises(error) as err:
            call()
        assert len(str(err.value)) < 400 and "10000 characters" in str(err.value), str(err.value)[:200]


@pytest.mark.registry
def test_an_over_long_actor_is_refused(backend):
    location, store = backend
    Registry.init(location, store=store).close()
    with pytest.raises(pr.InvalidArgumentError, match="actor"):
        Registry.open(location, store=store, actor="a" * 201)
    with Registry.open(location, store=store, actor="a" * 200) as reg:
        assert reg.actor == "a" * 200


def test_spaces_and_unicode_in_user_ids_stay_accepted(tmp_path):
    with Registry.init(tmp_path / "reg") as reg:
        reg.register_model("a", make_fake_model(tmp_path / "a", 16))
        reg.add_task("rate", "rating")
        ids = ["Zoë Ünïcode", "用户 7", "a b c"]
        s = reg.import_prompts("a", "rate", prompts(3), ids, create_users=True)
        np.testing.assert_array_equal(reg.get_prompts(ids, set=s.id).numpy(), prompts(3))


# ------------------------------------------------------------------------------ files


def test_a_users_csv_with_a_byte_order_mark_is_read(tmp_path):
    from prompt_registry.fileio import read_users_csv

    path = tmp_path / "excel.csv"
    path.write_bytes("\ufeffuser_id,name\nalice,A\nbob,B\n".encode())
    assert read_users_csv(path) == ["alice", "bob"]


@pytest.mark.parametrize("users_meta", ['"abcd"', "7", "null", '{"a": 1}', '[["nested"]]', "[true]", "not json"])
def test_safetensors_metadata_users_must_be_a_list_of_ids(tmp_path, users_meta):
    from safetensors.numpy import save_file

    from prompt_registry.fileio import load_prompt_file

    path = tmp_path / "p.safetensors"
    save_file({"prompts": prompts(4)}, str(path), metadata={"users": users_meta})
    with pytest.raises(pr.InvalidFileError, match="list of user ids"):
        load_prompt_file(path)


def test_float8_prompts_load_exactly_as_float32_and_bfloat16_as_bfloat16(tmp_path):
    import torch
    from safetensors.torch import save_file

    from prompt_registry.dtypes import BFLOAT16
    from prompt_registry.fileio import load_prompt_file

    data = torch.tensor(prompts(3, width=4))
    for dtype, loaded in ((torch.float8_e4m3fn, np.float32), (torch.bfloat16, BFLOAT16)):
        path = tmp_path / f"p-{dtype}.safetensors"
        save_file({"prompts": data.to(dtype)}, str(path), metadata={"users": '["a", "b", "c"]'})
        array, users = load_prompt_file(path)
        assert users == ["a", "b", "c"] and array.dtype == loaded
        np.testing.assert_array_equal(array.astype(np.float32), data.to(dtype).to(torch.float32).numpy())


def test_an_npy_of_strings_or_dates_is_refused_as_a_dtype_error(tmp_path):
    from prompt_registry.fileio import load_prompt_file

    for name, array in (("text", np.array([], dtype="<U4")), ("dates", np.zeros(3, dtype="datetime64[s]")),
                        ("bytes", np.array([b"ab"], dtype="S2"))):  # the first: found by Hypothesis
        np.save(tmp_path / f"{name}.npy", array)
        with pytest.raises(pr.DTypeError, match="not numbers"):
            load_prompt_file(tmp_path / f"{name}.npy")


def test_an_npy_header_declaring_a_petabyte_is_refused_without_allocating(tmp_path):
    from prompt_registry.fileio import load_prompt_file

    path = tmp_path / "huge.npy"
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**12, 1, 1024)}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(b"\0" * 64)
    with pytest.raises(pr.InvalidFileError, match="declares"):
        load_prompt_file(path)
    truncated = tmp_path / "short.npy"
    np.save(truncated, prompts(10))
    truncated.write_bytes(truncated.read_bytes()[:-8])
    with pytest.raises(pr.InvalidFileError, match="truncated"):
        load_prompt_file(truncated)


# ------------------------------------------------------------------------------ system errors


def test_system_and_database_errors_reach_the_cli_as_one_line(hostile, monkeypatch, tmp_path):
    import errno

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "reg" / "store"))

    monkeypatch.setattr(Registry, "add_users", disk_full)
    users = tmp_path / "u.csv"
    users.write_text("user_id\nzed\n")
    result = hostile("user", "import", str(users))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "disk is full" in result.stderr and len(result.stderr.strip().splitlines()) == 1

    runner = CliRunner()
    down = runner.invoke(main, ["--registry", "postgresql+psycopg://postgres@127.0.0.1:1/none", "--store", str(tmp_path / "s"),
                                "model", "list"])
    assert down.exit_code == 1 and "Traceback" not in down.output and len(down.stderr.strip().splitlines()) == 1


@pytest.mark.registry
@pytest.mark.parametrize("call", [
    lambda r: r.set_alias("production", "a/rate@v1", reason="why\x00not"),
    lambda r: r.import_prompts("a", "rate", prompts(3), user_ids(3), note="n\x00te"),
    lambda r: r.tag("a/rate@v1", "reviewed", "by\x00me"),
    lambda r: r.purge_user("u000", reason="\x00"),
])
def test_nul_in_free_text_is_refused_on_both_backends(populated, call):
    populated.import_prompts("a", "rate", prompts(3), user_ids(3))
    objects = len(populated.store.list_objects())
    with pytest.raises(pr.InvalidArgumentError, match="NUL"):
        call(populated)
    assert len(populated.list_sets()) == 1 and populated.list_aliases() == [] and len(populated.store.list_objects()) == objects
    assert populated.get_set("a/rate@v1").tags == {} and populated.doctor().ok


def test_db_upgrade_of_a_newer_schema_names_the_fix(tmp_path):
    import sqlalchemy as sa

    Registry.init(tmp_path / "reg").close()
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'reg' / 'registry.db'}")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(pr.SchemaError, match="does not know .* upgrade the package"):
        Registry.upgrade(tmp_path / "reg")
    result = CliRunner().invoke(main, ["--registry", str(tmp_path / "reg"), "db", "upgrade"])
    assert result.exit_code == 1 and "Traceback" not in result.output and "upgrade the package" in result.stderr


def test_a_failed_export_leaves_no_temporary_file(tmp_path, monkeypatch):
    import os

    from prompt_registry import fileio

    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError):
        fileio.save_prompt_file(tmp_path / "out.npy", prompts(3), user_ids(3), {})
    assert sorted(p.name for p in tmp_path.iterdir()) == []
