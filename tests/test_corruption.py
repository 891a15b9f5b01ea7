"""Corruption of the store: flipped bytes, truncated, padded and deleted shard files, corrupted
shard indexes, deleted arrays, a corrupted blob. Each is detected on read (naming the set, the users and
the file) and by ``doctor``; the rest of the set stays readable; ``doctor --repair`` restores
every row that another version holds byte for byte, and names what it cannot.

Sets here span three shard files (600 users, 256 per chunk, one chunk per shard).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import prompts, user_ids

import prompt_registry as pr
from prompt_registry.cli.main import main

pytestmark = pytest.mark.registry

N = 600
ROW = 16 * 4  # bytes per row: 1 x 16 float32


@pytest.fixture
def two_versions(populated, monkeypatch):
    """v1 and v2 full versions of 600 users; v2 changed users 0-59 and kept the rest byte for byte."""
    monkeypatch.setattr(populated.store, "shard_chunks", 1)
    users = user_ids(N)
    populated.add_users(users, exist_ok=True)
    p1 = prompts(N)
    p2 = p1.copy()
    p2[:60] = prompts(60, seed=9)
    v1 = populated.import_prompts("a", "rate", p1, users)
    v2 = populated.import_prompts("a", "rate", p2, users)
    return populated, v1, v2, p1, p2


def _file(reg, s, f):
    return reg.store.root / "arrays" / s.store_key / f"c.{f}.0.0"


def _flip(path, offset):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0xFF
    path.write_bytes(bytes(raw))


def _read_v1(reg, user):
    return reg.get_prompt(user, "a", "rate", version=1).numpy()


def test_each_kind_of_damage_is_named_on_read_and_by_doctor_and_the_rest_reads(two_versions):
    reg, v1, _, p1, _ = two_versions
    _flip(_file(reg, v1, 0), 5 * ROW + 3)  # user u005's row
    path1 = _file(reg, v1, 1)
    path1.write_bytes(path1.read_bytes()[:-100])  # truncated: rows 256-511 and the index
    _file(reg, v1, 2).unlink()  # rows 512-599

    with pytest.raises(pr.ChecksumError) as err:
        _read_v1(reg, "u005")
    message = str(err.value)
    assert "'u005'" in message and f"set {v1.id}" in message and str(_file(reg, v1, 0)) in message and "doctor --repair" in message
    with pytest.raises(pr.MissingDataError) as err:
        _read_v1(reg, "u300")
    assert "u300" in str(err.value) and f"set {v1.id}" in str(err.value) and str(path1) in str(err.value)
    with pytest.raises(pr.MissingDataError, match="u550.*missing"):
        _read_v1(reg, "u550")
    np.testing.assert_array_equal(_read_v1(reg, "u006"), p1[6])  # the same file, another row
    np.testing.assert_array_equal(reg.get_prompt("u300", "a", "rate").numpy(), p1[300])  # v2 is intact

    problems = {(p.kind, p.object, p.message.split(":")[0]) for p in reg.doctor().problems}
    assert ("checksum", f"set {v1.id}", "1 row(s) fail their sha256 check (users 'u005')") in problems
    kinds = sorted(p.kind for p in reg.doctor().problems)
    assert kinds == ["checksum", "damaged", "damaged"], kinds
    damaged = [p for p in reg.doctor().problems if p.kind == "damaged"]
    assert any("truncated" in p.message and "rows 256-511" in p.message and "u256" in p.message for p in damaged)
    assert any("missing" in p.message and "rows 512-599" in p.message for p in damaged)
    assert all("doctor --repair" in p.fix for p in reg.doctor().problems)


def test_repair_restores_what_another_version_holds_and_names_what_is_lost(two_versions):
    reg, v1, v2, p1, p2 = two_versions
    _flip(_file(reg, v1, 0), 5 * ROW + 3)  # u005: changed in v2, no copy
    _flip(_file(reg, v1, 0), 100 * ROW)  # u100: v2 holds it
    path1 = _file(reg, v1, 1)
    path1.write_bytes(path1.read_bytes()[:-100])
    _file(reg, v1, 2).unlink()
    before = {p: p.read_bytes() for p in (_file(reg, v1, 0), path1)}

    dry = reg.doctor(repair=True, dry_run=True)
    # a dry run cannot read damaged files: it counts all their rows (the repair keeps what is still on disk)
    assert dry.repair.dry_run and dry.repair.rows_restored == 1 + 256 + 88
    assert dry.repair.lost == {v1.id: ("u005",)}
    assert {p: p.read_bytes() for p in before} == before and not _file(reg, v1, 2).exists()  # changed nothing

    report = reg.doctor(repair=True)
    r = report.repair
    assert set(r.files_rebuilt) == {str(path1), str(_file(reg, v1, 2))}
    # u100, the two rows the truncation cut (80 bytes of data, then the 20-byte index), the deleted file's 88
    assert r.rows_restored == 1 + 2 + 88 and r.rows_lost == 1 and r.lost == {v1.id: ("u005",)}
    assert r.restored[v1.id][:3] == ("u100", "u510", "u511")
    assert [p.kind for p in report.problems] == ["checksum"] and "u005" in report.problems[0].message
    for user in (100, 300, 599, 6):
        np.testing.assert_array_equal(_read_v1(reg, f"u{user:03d}"), p1[user])
    with pytest.raises(pr.ChecksumError, match="u005"):
        _read_v1(reg, "u005")
    np.testing.assert_array_equal(reg.get_prompt("u005", "a", "rate").numpy(), p2[5])
    event = reg.audit_events(object_kind="store", limit=1)[0]
    assert event.action == "repair" and event.details["rows_restored"] == 91 and event.details["rows_lost"] == 1
    assert reg.doctor(repair=True).repair.lost == {v1.id: ("u005",)}  # what is lost stays named; nothing else to do


def test_a_corrupted_shard_index_is_rewritten_and_loses_nothing(two_versions):
    reg, v1, _, p1, _ = two_versions
    path = _file(reg, v1, 0)
    _flip(path, path.stat().st_size - 10)  # inside the index
    with pytest.raises(pr.MissingDataError, match="shard index"):
        _read_v1(reg, "u005")
    r = reg.doctor(repair=True)
    assert r.ok and r.repair.files_rebuilt == (str(path),) and r.repair.rows_restored == 0 and not r.repair.lost
    np.testing.assert_array_equal(_read_v1(reg, "u005"), p1[5])


def test_a_deleted_array_is_recreated_from_the_other_version_and_purged_rows_come_back_as_zeros(two_versions):
    reg, v1, v2, p1, _ = two_versions
    reg.purge_user("u400")
    shutil.rmtree(reg.store.root / "arrays" / v1.store_key)
    report = reg.doctor(repair=True)
    assert report.repair.arrays_recreated == (v1.store_key,)
    assert report.repair.lost == {v1.id: tuple(f"u{i:03d}" for i in range(60))}  # v2 changed them
    assert report.repair.rows_restored == N - 60 - 1  # from v2; u400's purged row is zeros as recreated
    assert sorted({p.kind for p in report.problems}) == ["checksum"]
    np.testing.assert_array_equal(_read_v1(reg, "u401"), p1[401])
    assert not reg.store.read_rows(v1.store_key, np.asarray([400])).any()


def test_a_corrupted_blob_is_reported_and_repair_leaves_it_to_a_backup(populated):
    art = populated.put_artifact("head", "h", {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}, task="rate", target_model="a")
    blob = populated.store.root / "blobs" / art.store_key
    _flip(blob, len(blob.read_bytes()) - 1)
    for report in (populated.doctor(), populated.doctor(repair=True)):
        assert [(p.kind, p.object) for p in report.problems] == [("checksum", f"head {art.id}")]
    assert populated.doctor(repair=True).repair.nothing_to_do
    with pytest.raises(pr.IntegrityError):
        populated.load_artifact(art.id)


def test_doctor_repair_on_the_cli(two_versions, backend):
    reg, v1, _, _, _ = two_versions
    _flip(_file(reg, v1, 0), 5 * ROW + 3)
    _flip(_file(reg, v1, 0), 100 * ROW)
    location, store = backend
    base = ["--registry", location, *(["--store", store] if store else [])]
    runner = CliRunner()
    out = runner.invoke(main, [*base, "doctor", "--repair", "--dry-run"])
    assert out.exit_code == 1 and f"would restore 1 row(s) of set {v1.id}" in out.output and "LOST 1 row(s)" in out.output
    out = runner.invoke(main, [*base, "doctor", "--repair", "--json"])
    assert out.exit_code == 1, out.output
    data = json.loads(out.output)
    assert data["repair"]["rows_restored"] == 1 and data["repair"]["lost"] == {str(v1.id): ["u005"]}
    out = runner.invoke(main, [*base, "doctor", "--dry-run"])
    assert out.exit_code != 0 and "--repair" in out.output and "Traceback" not in out.output


def test_a_missing_file_error_names_the_users_in_that_file_not_the_others_asked(two_versions):
    reg, v1, _, _, _ = two_versions
    _file(reg, v1, 1).unlink()  # rows 256-511
    with pytest.raises(pr.MissingDataError) as err:
        reg.get_prompts(["u006", "u007", "u300"], "a", "rate", version=1)
    assert "u300" in str(err.value) and "u006" not in str(err.value)


def test_repair_leaves_alone_an_array_the_catalogue_does_not_describe(two_versions):
    reg, v1, _, _, _ = two_versions
    meta = reg.store.root / "arrays" / v1.store_key / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["shape"][0] += 1  # the metadata now disagrees with the catalogue
    meta.write_text(json.dumps(doc))
    reg.store._layouts.clear()
    before = {p.name: p.read_bytes() for p in meta.parent.iterdir()}
    report = reg.doctor(repair=True)
    assert any(f"set {v1.id}" in line and "catalogue says" in line for line in report.repair.unreadable), report.repair
    assert {p.name: p.read_bytes() for p in meta.parent.iterdir()} == before  # nothing written


def test_repair_does_not_rewrite_a_valid_shard_another_writer_laid_out(two_versions):
    import google_crc32c

    reg, v1, _, _, _ = two_versions
    path = _file(reg, v1, 2)  # rows 512-599 in one 256-row chunk: stored as written by a writer that moved the chunk
    raw = path.read_bytes()
    chunk = raw[: 256 * ROW]
    index = np.array([[16, 256 * ROW]], dtype="<u8").tobytes()
    path.write_bytes(bytes(16) + chunk + index + google_crc32c.value(index).to_bytes(4, "little"))
    before = path.read_bytes()
    report = reg.doctor(repair=True)
    assert any("laid out differently" in line for line in report.repair.unreadable), report.repair
    assert path.read_bytes() == before


def test_a_missing_chunk_under_a_purged_row_does_not_block_the_erasure_of_the_rest_or_gc(two_versions):
    """The chunk under u550's row of v1 is gone: the purge still zeroes every other row of u550
    (v2's) and the next purges' rows, and gc runs; the lost chunk held no bytes to erase."""
    reg, v1, v2, p1, _ = two_versions
    _file(reg, v1, 2).unlink()  # rows 512-599 of v1
    report = reg.purge_user("u550", reason="gdpr")
    assert sorted(report.sets) == sorted([v1.id, v2.id])
    assert not reg.store.read_rows(v2.store_key, [550]).any()  # v2's copy is erased
    reg.purge_user("u100", reason="gdpr")  # a later purge is not held up by v1's damage
    assert not reg.store.read_rows(v1.store_key, [100]).any() and not reg.store.read_rows(v2.store_key, [100]).any()
    reg.gc(grace_seconds=0)
    assert [p.kind for p in reg.doctor().problems] == ["damaged"]  # the lost file is still reported
    np.testing.assert_array_equal(_read_v1(reg, "u101"), p1[101])
