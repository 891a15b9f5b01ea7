"""Resources (issue 16 part 6): a full disk during import and apply, a registry on a read-only
file system, a catalogue whose schema is newer than the package.

The disk is a real tmpfs of a few MiB that the test mounts (it runs as root in CI); where
mounting is not allowed the tests are skipped, saying so. On SQLite the whole registry (catalogue
and store) is on the small disk; on Postgres the store is.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_fake_model

import prompt_registry as pr
from prompt_registry import Registry
from prompt_registry.cli.main import main

pytestmark = pytest.mark.registry


@contextlib.contextmanager
def _tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (CI runs as root)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def _remount(path: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def _open(backend, disk: Path):
    location, store = backend
    if store is None:  # SQLite: all of the registry on the small disk
        return str(disk / "reg"), None
    return location, str(disk / "store")


def _populate(reg, tmp_path):
    reg.register_model("a", make_fake_model(tmp_path / "model-a", 16))
    reg.register_model("b", make_fake_model(tmp_path / "model-b", 64, seed=2))
    reg.add_task("t", "rating")
    first = reg.import_prompts("a", "t", np.ones((100, 1, 16), dtype=np.float32), [f"u{i:05d}" for i in range(100)], create_users=True)
    return first


def _visible(reg):
    return [(s.id, s.n_users) for s in reg.list_sets()], reg.count_users(), [a.id for a in reg.list_artifacts()]


def _fill(disk: Path, leave: int) -> Path:
    """Write a filler file so that about ``leave`` bytes stay free."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        fh.write(b"\0" * max(free - leave, 0))
    return filler


@pytest.mark.parametrize("op", ["import", "apply"])
def test_a_full_disk_fails_clearly_shows_nothing_and_leaves_only_collectable_orphans(backend, tmp_path, op):
    with _tmpfs(tmp_path / "disk", "16m") as disk:
        location, store = _open(backend, disk)
        with Registry.init(location, store=store, actor="t") as reg:
            first = _populate(reg, tmp_path)
            torch.manual_seed(0)
            from prompt_registry.migration.puma.adapter import AdapterConfig, Phi

            phi = Phi(AdapterConfig((16,), 64, hidden=8))
            head = reg.put_artifact("head", "b/t", {"w": torch.zeros(64)}, task="t", target_model="b")
            adapter = reg.put_artifact("adapter", "a->b/t", phi.state_dict(), task="t", target_model="b", source_models=["a"],
                                       config={"adapter": phi.config.to_dict(), "head_id": head.id})
            big = reg.import_prompts("a", "t", np.ones((20_000, 1, 16), dtype=np.float32),
                                     [f"v{i:05d}" for i in range(20_000)], create_users=True, base=first.id)
            before = _visible(reg)
            filler = _fill(disk, 600_000)  # the 20,100 x 64 floats of an apply (5 MB) or the import (4.5 MB) do not fit
            with pytest.raises(OSError) as err:
                if op == "import":
                    reg.import_prompts("a", "t", np.ones((70_000, 1, 16), dtype=np.float32), [f"w{i:05d}" for i in range(70_000)],
                                       create_users=True)
                else:
                    reg.apply_adapter(adapter.id, sources=[big.id], progress=False)
            assert err.value.errno in (errno.ENOSPC, errno.EDQUOT) or "full" in str(err.value)
            assert _visible(reg) == before  # nothing half-visible
            filler.unlink()
            report = reg.doctor()
            assert {p.kind for p in report.problems} <= {"orphan", "stale-run"}, report.problems
            reg.gc(grace_seconds=0)
            assert reg.doctor().ok
            np.testing.assert_array_equal(reg.get_prompt("v00007", "a", "t").numpy(), np.ones((1, 16), dtype=np.float32))


def test_the_cli_says_the_disk_is_full_in_one_line(tmp_path):
    with _tmpfs(tmp_path / "disk", "4m") as disk:
        with Registry.init(disk / "reg", actor="t") as reg:
            _populate(reg, tmp_path)
        np.save(tmp_path / "big.npy", np.ones((40_000, 1, 16), dtype=np.float32))
        (tmp_path / "big.csv").write_text("user_id\n" + "".join(f"w{i:05d}\n" for i in range(40_000)))
        _fill(disk, 300_000)
        result = CliRunner().invoke(main, ["--registry", str(disk / "reg"), "prompt", "import", str(tmp_path / "big.npy"), "--model", "a",
                                           "--task", "t", "--users", str(tmp_path / "big.csv"), "--create-users"])
        assert result.exit_code == 1 and "Traceback" not in result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and ("disk is full" in lines[0] or "full" in lines[0]), result.output


def test_a_registry_on_a_read_only_file_system_reads_and_refuses_writes_clearly(tmp_path):
    with _tmpfs(tmp_path / "disk", "16m") as disk:
        with Registry.init(disk / "reg", actor="t") as reg:
            first = _populate(reg, tmp_path)
            reg.set_alias("production", first.id)
        _remount(disk, "ro")
        with Registry.open(disk / "reg", actor="t") as reg:
            np.testing.assert_array_equal(reg.get_prompt("u00003", "a", "t", alias="production").numpy(), np.ones((1, 16), np.float32))
            assert [s.id for s in reg.list_sets()] == [first.id] and reg.doctor().ok
            assert reg.doctor(repair=True, dry_run=True).repair.nothing_to_do  # a dry run only reads
            reg.export_prompts(first.id, tmp_path / "out.npy")  # an export elsewhere works
            with pytest.raises(OSError) as err:
                reg.import_prompts("a", "t", np.ones((2, 1, 16), dtype=np.float32), ["x1", "x2"], create_users=True)
            assert err.value.errno == errno.EROFS, err.value
        runner = CliRunner()
        base = ["--registry", str(disk / "reg")]
        shown = runner.invoke(main, [*base, "prompt", "list", "--json"])
        assert shown.exit_code == 0, shown.output
        for args in (["alias", "set", "staging", "1"], ["user", "delete", "u00001", "--purge"], ["gc"]):
            result = runner.invoke(main, [*base, *args])
            lines = [line for line in result.output.splitlines() if line.strip()]
            assert result.exit_code == 1 and "Traceback" not in result.output and len(lines) == 1, (args, result.output)
            assert "read-only" in lines[0], (args, lines)
        _remount(disk, "rw")
        with Registry.open(disk / "reg") as reg:
            assert reg.doctor().ok and [s.id for s in reg.list_sets()] == [first.id]


def test_a_catalogue_newer_than_the_package_is_refused_with_the_advice(backend):
    import sqlalchemy as sa

    location, store = backend
    Registry.init(location, store=store).close()
    with Registry.open(location, store=store) as reg:
        url = reg.where if "://" in str(reg.where) else f"sqlite:///{Path(location) / 'registry.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(pr.SchemaError) as err:
        Registry.open(location, store=store)
    assert "9999" in str(err.value) and "upgrade the package" in str(err.value) and "downgrade" in str(err.value)
    args = ["--registry", location, *(["--store", store] if store else [])]
    for verb in (["model", "list"], ["db", "upgrade"]):
        result = CliRunner().invoke(main, [*args, *verb])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1 and "Traceback" not in result.output and len(lines) == 1 and "upgrade the package" in lines[0], result.output


def test_a_read_only_copy_whose_write_ahead_log_holds_commits_is_refused_not_read_stale(tmp_path):
    import shutil
    import sqlite3

    with _tmpfs(tmp_path / "disk", "16m") as disk:
        with Registry.init(tmp_path / "reg", actor="t") as reg:
            _populate(reg, tmp_path)
        held = sqlite3.connect(tmp_path / "reg" / "registry.db")
        held.execute("PRAGMA wal_autocheckpoint=0")
        held.execute("INSERT INTO users (external_id, created_at) VALUES ('late', '2026-01-01 00:00:00')")
        held.commit()  # in the -wal only: nothing checkpoints it while this connection is open
        shutil.copytree(tmp_path / "reg", disk / "reg")
        held.close()
        assert (disk / "reg" / "registry.db-wal").stat().st_size > 0
        _remount(disk, "ro")
        with pytest.raises(pr.SchemaError, match="write-ahead log .* not yet in the database file"):
            Registry.open(disk / "reg")
