"""The Registry API on every catalogue backend: models, users, versions, reads, aliases, errors."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from conftest import make_fake_model, prompts, user_ids
from safetensors.numpy import save_file

import prompt_registry as pr
from prompt_registry import Registry, ingest
from prompt_registry.core import writes as registry_module
from prompt_registry.db import bulk
from prompt_registry.store import keys

pytestmark = pytest.mark.registry


# ------------------------------------------------------------------------------ models and tasks


def test_register_model_reads_config_and_fingerprints_weights(registry, model_dirs):
    info = registry.register_model("a", model_dirs["a"], revision="r1")
    assert (info.architecture, info.hidden_size, info.vocab_size, info.revision) == ("LlamaForCausalLM", 16, 100, "r1")
    assert set(info.files) == {"config.json", "model.safetensors"}
    expected_file = hashlib.sha256((model_dirs["a"] / "model.safetensors").read_bytes()).hexdigest()
    assert info.files["model.safetensors"] == expected_file
    assert registry.get_model("a") == info
    assert [m.name for m in registry.list_models()] == ["a"]


def test_register_model_is_idempotent_for_same_fingerprint(registry, model_dirs, tmp_path):
    first = registry.register_model("a", model_dirs["a"])
    copy = make_fake_model(tmp_path / "copy-of-a", 16, seed=1)  # same bytes elsewhere
    assert registry.register_model("a", copy) == first
    assert len(registry.list_models()) == 1


def test_same_name_with_other_weights_is_a_conflict(registry, model_dirs, tmp_path):
    registry.register_model("a", model_dirs["a"])
    changed = make_fake_model(tmp_path / "a-retrained", 16, seed=99)
    with pytest.raises(pr.ModelConflictError, match="new name") as err:
        registry.register_model("a", changed)
    assert isinstance(err.value, ValueError)


def test_model_folder_errors(registry, tmp_path):
    with pytest.raises(pr.InvalidFileError, match="does not exist"):
        registry.register_model("x", tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(pr.InvalidFileError, match="config.json"):
        registry.register_model("x", tmp_path / "empty")


def test_tasks_are_idempotent_and_kinds_checked(registry):
    task = registry.add_task("rate", "rating")
    assert registry.add_task("rate", "rating") == task
    with pytest.raises(pr.ConflictError, match="kind"):
        registry.add_task("rate", "click")
    with pytest.raises(pr.InvalidArgumentError, match="unknown task kind"):
        registry.add_task("other", "regression")


# ------------------------------------------------------------------------------ users


def test_users_add_list_duplicates(registry):
    assert registry.add_users(["x", "y", "z"]) == 3
    assert [u.external_id for u in registry.list_users()] == ["x", "y", "z"]
    with pytest.raises(pr.DuplicateUserError, match="more than once"):
        registry.add_users(["p", "p"])
    with pytest.raises(pr.DuplicateUserError, match="already exist"):
        registry.add_users(["x", "new"])
    assert registry.count_users() == 3  # nothing written by the failed call
    assert registry.add_users(["x", "new"], exist_ok=True) == 1
    assert registry.count_users() == 4


# ------------------------------------------------------------------------------ import and read


def test_import_array_and_read_back_exactly(populated):
    data = prompts(50)
    s = populated.import_prompts("a", "rate", data, user_ids(50))
    assert (s.version, s.n_users, s.n_rows, s.prompt_len, s.width, s.dtype) == (1, 50, 50, 1, 16, "float32")
    assert s.ref == "a/rate@v1" and s.run_id is not None
    one = populated.get_prompt("u007", "a", "rate")
    assert isinstance(one, torch.Tensor) and one.shape == (1, 16)
    np.testing.assert_array_equal(one.numpy(), data[7])
    batch = populated.get_prompts(["u010", "u003", "u010", "u049"], "a", "rate", version=1)
    np.testing.assert_array_equal(batch.numpy(), data[[10, 3, 10, 49]])


def test_import_forms_mapping_2d_and_torch(populated):
    data = prompts(3, length=2)
    s1 = populated.import_prompts("a", "rate", {u: torch.from_numpy(data[i]) for i, u in enumerate(user_ids(3))})
    assert s1.prompt_len == 2
    flat = prompts(3)[:, 0, :]  # users x width means prompt length 1
    s2 = populated.import_prompts("a", "rate", flat, user_ids(3))
    assert s2.prompt_len == 1
    np.testing.assert_array_equal(populated.get_prompt("u001", set=s2.id).numpy()[0], flat[1])
    s3 = populated.import_prompts("a", "rate", torch.from_numpy(data).to(torch.bfloat16), user_ids(3))
    assert s3.dtype == "bfloat16" and populated.get_prompt("u000", set=s3.id).dtype == torch.bfloat16  # bf16 stays bf16
    s4 = populated.import_prompts("a", "rate", data.astype(np.float64), user_ids(3), dtype="float16")
    assert populated.get_prompt("u000", set=s4.id).dtype == torch.float16


def test_import_files_safetensors_npy_and_export_round_trip(populated, tmp_path):
    data = prompts(20)
    npy = tmp_path / "p.npy"
    np.save(npy, data)
    (tmp_path / "users.csv").write_text("user_id,extra\n" + "\n".join(f"{u},1" for u in user_ids(20)) + "\n")
    s1 = populated.import_prompts("a", "rate", npy, tmp_path / "users.csv")
    per_user = tmp_path / "per_user.safetensors"
    save_file({u: data[i] for i, u in enumerate(user_ids(20))}, str(per_user))
    s2 = populated.import_prompts("a", "rate", per_user)
    out = populated.export_prompts(s2.id, tmp_path / "export.safetensors")
    assert (out.n_users, out.format) == (20, "safetensors")
    s3 = populated.import_prompts("a", "rate", tmp_path / "export.safetensors")  # users from metadata
    exp_npy = populated.export_prompts(s1.id, tmp_path / "export.npy")
    assert exp_npy.users_path.endswith("export.users.csv")
    s4 = populated.import_prompts("a", "rate", tmp_path / "export.npy")  # users from the sibling csv
    for s in (s1, s2, s3, s4):
        np.testing.assert_array_equal(populated.get_prompts(user_ids(20), set=s.id).numpy(), data)
    assert s1.sha256 == s2.sha256 == s3.sha256 == s4.sha256  # content-addressed


def test_versions_are_immutable_and_latest_moves(populated):
    v1 = populated.import_prompts("a", "rate", prompts(5, seed=1), user_ids(5))
    v2 = populated.import_prompts("a", "rate", prompts(5, seed=2), user_ids(5))
    assert (v1.version, v2.version) == (1, 2)
    np.testing.assert_array_equal(populated.get_prompt("u001", "a", "rate").numpy(), prompts(5, seed=2)[1])
    np.testing.assert_array_equal(populated.get_prompt("u001", "a", "rate", version=1).numpy(), prompts(5, seed=1)[1])
    assert populated.get_set("a/rate@latest").id == v2.id
    assert populated.get_set("a/rate@v1").id == v1.id
    assert populated.get_set(str(v1.id)).id == v1.id


def test_incremental_version_shares_rows_with_its_base(populated):
    base_data = prompts(40)
    v1 = populated.import_prompts("a", "rate", base_data, user_ids(40))
    changed = prompts(3, seed=7)
    v2 = populated.import_prompts("a", "rate", changed, ["u000", "u041", "u042"], base=v1.id)
    assert (v2.base_id, v2.parents, v2.n_rows, v2.n_users) == (v1.id, (v1.id,), 3, 42)
    got = populated.get_prompts(["u000", "u001", "u039", "u041", "u042"], "a", "rate").numpy()
    np.testing.assert_array_equal(got, np.stack([changed[0], base_data[1], base_data[39], changed[1], changed[2]]))
    # the base is untouched and still resolves the old value
    np.testing.assert_array_equal(populated.get_prompt("u000", set=v1.id).numpy(), base_data[0])
    with pytest.raises(pr.UnknownUserError):
        populated.get_prompt("u041", set=v1.id)
    # a chain of increments resolves through every level
    v3 = populated.import_prompts("a", "rate", prompts(1, seed=9), ["u043"], base="a/rate@latest")
    assert v3.n_users == 43 and v3.n_rows == 1
    np.testing.assert_array_equal(populated.get_prompt("u041", set=v3.id).numpy(), changed[1])
    np.testing.assert_array_equal(populated.get_prompt("u002", set=v3.id).numpy(), base_data[2])
    # the store holds only the rows each version wrote
    sizes = {o.key: o.nbytes for o in populated.store.list_objects()}
    assert populated.store.array_info(v3.store_key).shape == (1, 1, 16)
    assert len(sizes) == 3
    everyone = populated.get_prompts(user_ids(40) + ["u041", "u042", "u043"], set=v3.id)
    assert everyone.shape == (43, 1, 16)


def test_incremental_version_must_match_its_base(populated):
    v1 = populated.import_prompts("a", "rate", prompts(5, length=2), user_ids(5))
    with pytest.raises(pr.ShapeError, match="length"):
        populated.import_prompts("a", "rate", prompts(1, length=3), ["u010"], base=v1.id)
    with pytest.raises(pr.ModelMismatchError):
        populated.import_prompts("b", "rate", prompts(1, width=24, length=2), ["u010"], base=v1.id)


def test_create_users_on_import(populated):
    s = populated.import_prompts("a", "rate", prompts(2), ["brand-new-1", "brand-new-2"], create_users=True)
    assert s.n_users == 2
    assert {"brand-new-1", "brand-new-2"} <= {u.external_id for u in populated.list_users(limit=None)}


# ------------------------------------------------------------------------------ aliases, tags, listing


def test_aliases_move_with_history_and_resolve(populated):
    v1 = populated.import_prompts("a", "rate", prompts(5, seed=1), user_ids(5), alias="production")
    v2 = populated.import_prompts("a", "rate", prompts(5, seed=2), user_ids(5))
    assert populated.get_alias("production", "a", "rate").set_id == v1.id
    np.testing.assert_array_equal(populated.get_prompt("u000", "a", "rate", alias="production").numpy(), prompts(5, seed=1)[0])
    populated.set_alias("production", "a/rate@v2", reason="better RMSE")
    populated.set_alias("production", v2.id)  # no-op: already there, no event
    assert populated.get_set("a/rate@production").id == v2.id
    populated.delete_alias("production", "a", "rate", reason="retired")
    history = populated.alias_history("production")
    assert [(e.old_set_id, e.new_set_id, e.reason) for e in history] == [
        (None, v1.id, None), (v1.id, v2.id, "better RMSE"), (v2.id, None, "retired")]
    assert all(e.actor == "tester" for e in history)
    with pytest.raises(pr.UnknownAliasError, match="alias set"):
        populated.get_prompt("u000", "a", "rate", alias="production")
    with pytest.raises(pr.InvalidArgumentError, match="reserved"):
        populated.set_alias("latest", v1.id)
    with pytest.raises(pr.InvalidArgumentError, match="reserved"):
        populated.set_alias("v3", v1.id)


def test_aliases_are_per_model_and_task(populated):
    a1 = populated.import_prompts("a", "rate", prompts(3), user_ids(3), alias="production")
    b1 = populated.import_prompts("b", "rate", prompts(3, width=24), user_ids(3), alias="production")
    aliases = {(a.model, a.task): a.set_id for a in populated.list_aliases()}
    assert aliases == {("a", "rate"): a1.id, ("b", "rate"): b1.id}
    assert [a.set_id for a in populated.list_aliases(model="b")] == [b1.id]


def test_tags_and_list_filters(populated):
    v1 = populated.import_prompts("a", "rate", prompts(3), user_ids(3), tags={"source": "import"})
    v2 = populated.import_prompts("a", "rate", prompts(3), user_ids(3), alias="production")
    b1 = populated.import_prompts("b", "rate", prompts(3, width=24), user_ids(3))
    populated.tag(v2.id, "reviewed", "alice")
    assert [s.id for s in populated.list_sets()] == [b1.id, v2.id, v1.id]
    assert [s.id for s in populated.list_sets(model="a")] == [v2.id, v1.id]
    assert [s.id for s in populated.list_sets(tag="reviewed")] == [v2.id]
    assert [s.id for s in populated.list_sets(tag="source")] == [v1.id]
    assert [s.id for s in populated.list_sets(alias="production")] == [v2.id]
    assert populated.get_set(v2.id).tags == {"reviewed": "alice"}
    assert populated.untag(v2.id, "reviewed").tags == {}


# ------------------------------------------------------------------------------ model binding


def test_prompts_are_refused_on_another_model(populated):
    s = populated.import_prompts("a", "rate", prompts(3), user_ids(3))
    with pytest.raises(pr.ModelMismatchError, match="migrate"):
        populated.get_prompt("u000", "b", "rate", set=s.id)
    other = populated.get_model("b").fingerprint
    with pytest.raises(pr.ModelMismatchError, match="fingerprint"):
        populated.get_prompt("u000", "a", "rate", fingerprint=other)
    own = populated.get_model("a").fingerprint
    assert populated.get_prompt("u000", "a", "rate", fingerprint=own).shape == (1, 16)


# ------------------------------------------------------------------------------ bad input writes nothing


def _assert_nothing_written(registry):
    assert registry.list_sets() == []
    assert registry.store.list_objects() == []


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: (prompts(3, width=15), user_ids(3)), pr.ShapeError, "hidden size 16"),
        (lambda: (prompts(3)[:, :, :, None], user_ids(3)), pr.ShapeError, "expected"),
        (lambda: (prompts(3), user_ids(2)), pr.ShapeError, "3 prompt rows for 2 users"),
        (lambda: (prompts(3).astype(np.int32), user_ids(3)), pr.DTypeError, "floating point"),
        (lambda: (np.where(np.arange(3)[:, None, None] == 1, np.nan, prompts(3)), user_ids(3)), pr.NonFiniteError, "u001"),
        (lambda: (np.where(np.arange(3)[:, None, None] == 2, np.inf, prompts(3)), user_ids(3)), pr.NonFiniteError, "u002"),
        (lambda: (np.full((3, 1, 16), 1e300), user_ids(3)), pr.NonFiniteError, "overflow"),
        (lambda: (prompts(3), ["u000", "u001", "u000"]), pr.DuplicateUserError, "more than once"),
        (lambda: (prompts(3), ["u000", "u001", "ghost"]), pr.UnknownUserError, "ghost"),
        (lambda: ([[0.0] * 16], ["u000"]), pr.DTypeError, "torch.Tensor or numpy"),
    ],
    ids=["width", "ndim", "count", "dtype", "nan", "inf", "overflow", "dupe-user", "unknown-user", "list"],
)
def test_bad_prompts_are_refused_and_nothing_is_written(populated, make, error, match):
    data, users = make()
    with pytest.raises(error, match=match) as err:
        populated.import_prompts("a", "rate", data, users)
    assert isinstance(err.value, pr.PromptRegistryError)
    _assert_nothing_written(populated)


def test_huge_finite_values_are_not_mistaken_for_overflow(populated):
    data = np.full((3, 1, 16), 3e38, dtype=np.float32)  # finite, but each row sums to inf
    data[1] *= -1
    s = populated.import_prompts("a", "rate", data, user_ids(3))
    np.testing.assert_array_equal(populated.get_prompts(user_ids(3), set=s.id).numpy(), data)


@pytest.mark.parametrize("bad", ["unknown", "deleted"])
def test_unusable_user_in_a_later_batch_rolls_back_everything(populated, monkeypatch, bad):
    monkeypatch.setattr(ingest, "INSERT_BATCH_ROWS", 4)  # rows are hashed and inserted 4 at a time
    users = user_ids(11)
    if bad == "unknown":
        users[9] = "ghost"
    else:
        populated.purge_user(users[9], reason="test")
    with pytest.raises(pr.UnknownUserError, match="ghost" if bad == "unknown" else "were deleted") as err:
        populated.import_prompts("a", "rate", prompts(11), users)
    assert repr(users[9]) in str(err.value)
    _assert_nothing_written(populated)
    assert populated.list_runs(kind="import") == []


def test_wrong_prompt_length_and_unknown_names(populated):
    with pytest.raises(pr.ShapeError, match="length 1, expected 4"):
        populated.import_prompts("a", "rate", prompts(2), user_ids(2), prompt_len=4)
    with pytest.raises(pr.UnknownModelError, match="model add") as err:
        populated.import_prompts("nope", "rate", prompts(2), user_ids(2))
    assert isinstance(err.value, LookupError)
    with pytest.raises(pr.UnknownTaskError, match="task add"):
        populated.import_prompts("a", "nope", prompts(2), user_ids(2))
    with pytest.raises(pr.UnknownAliasError):
        populated.get_prompt("u000", "a", "rate", alias="staging")
    with pytest.raises(pr.UnknownSetError):
        populated.get_prompt("u000", "a", "rate")  # no sets yet
    with pytest.raises(pr.UnknownSetError, match="cannot parse"):
        populated.get_set("a-rate-production")
    _assert_nothing_written(populated)


def test_bad_files_are_refused(populated, tmp_path):
    import pickle

    pkl = tmp_path / "prompts.pt"
    pkl.write_bytes(pickle.dumps({"u000": [0.0] * 16}))
    with pytest.raises(pr.InvalidFileError, match="pickle"):
        populated.import_prompts("a", "rate", pkl, user_ids(1))
    obj_npy = tmp_path / "obj.npy"
    np.save(obj_npy, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(pr.InvalidFileError, match="numeric"):
        populated.import_prompts("a", "rate", obj_npy, user_ids(1))
    good = tmp_path / "good.npy"
    np.save(good, prompts(4))
    truncated = tmp_path / "truncated.npy"
    truncated.write_bytes(good.read_bytes()[:-20])
    with pytest.raises(pr.InvalidFileError):
        populated.import_prompts("a", "rate", truncated, user_ids(4))
    st = tmp_path / "good.safetensors"
    save_file({"prompts": prompts(4)}, str(st))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(st.read_bytes()[:-9])
    with pytest.raises(pr.InvalidFileError, match="safetensors"):
        populated.import_prompts("a", "rate", cut, user_ids(4))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(pr.InvalidFileError):
        populated.import_prompts("a", "rate", garbage, user_ids(4))
    with pytest.raises(pr.InvalidFileError, match="--users"):
        populated.import_prompts("a", "rate", st)  # rows not tied to users
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("id\nu000\n")
    with pytest.raises(pr.InvalidFileError, match="user_id"):
        populated.import_prompts("a", "rate", good, bad_csv)
    _assert_nothing_written(populated)


# ------------------------------------------------------------------------------ integrity


def _corrupt_first_chunk(registry, set_):
    chunk = registry.store.root / "arrays" / set_.store_key / "c.0.0.0"
    raw = bytearray(chunk.read_bytes())
    raw[5 * 16 * 4 + 3] ^= 0xFF  # one byte of user u005's row
    chunk.write_bytes(bytes(raw))


def test_corrupted_chunk_fails_checksum_and_doctor_reports_it(populated):
    s = populated.import_prompts("a", "rate", prompts(10), user_ids(10))
    _corrupt_first_chunk(populated, s)
    with pytest.raises(pr.ChecksumError, match="u005") as err:
        populated.get_prompt("u005", "a", "rate")
    assert isinstance(err.value, OSError)
    np.testing.assert_array_equal(populated.get_prompt("u004", "a", "rate").numpy(), prompts(10)[4])
    assert populated.get_prompt("u005", "a", "rate", verify=False).shape == (1, 16)  # explicit opt-out
    report = populated.doctor()
    assert not report.ok and [p.kind for p in report.problems] == ["checksum"]
    assert "u005" in report.problems[0].message and "re-import" in report.problems[0].fix
    with pytest.raises(pr.ChecksumError):
        populated.export_prompts(s.id, populated.store.root.parent / "x.npy")


def test_doctor_finds_missing_bytes_and_orphans(populated):
    s = populated.import_prompts("a", "rate", prompts(10), user_ids(10))
    assert populated.doctor().ok
    populated.store.create_array(keys.new_key(populated.catalog_id, "set"), (4, 1, 16), "float32")
    populated.store.delete(s.store_key)
    kinds = sorted(p.kind for p in populated.doctor().problems)
    assert kinds == ["missing", "orphan"]
    with pytest.raises(pr.MissingDataError):
        populated.get_prompt("u001", "a", "rate")


def test_gc_removes_only_orphans_and_respects_grace(populated):
    s = populated.import_prompts("a", "rate", prompts(10), user_ids(10))
    orphans = {keys.new_key(populated.catalog_id, "set"), keys.new_key(populated.catalog_id, "artifact")}
    set_orphan, blob_orphan = sorted(orphans, key=lambda k: not k.startswith("set-"))
    populated.store.create_array(set_orphan, (4, 1, 16), "float32")
    populated.store.put_blob(blob_orphan, b"x")
    young = populated.gc()  # default grace keeps fresh orphans (a write may be in flight)
    assert young.removed == () and set(young.skipped_young) == orphans
    dry = populated.gc(dry_run=True, grace_seconds=0)
    assert set(dry.removed) == orphans
    assert len(populated.store.list_objects()) == 3
    done = populated.gc(grace_seconds=0)
    assert set(done.removed) == orphans and done.nbytes > 0
    assert [o.key for o in populated.store.list_objects()] == [s.store_key]
    assert populated.doctor().ok
    assert populated.audit_events(object_kind="store")[0].action == "gc"


def test_failed_commit_removes_bytes_and_rows(populated, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("simulated failure while inserting rows")

    monkeypatch.setattr(registry_module, "insert_prompt_rows", boom)
    with pytest.raises(RuntimeError, match="simulated"):
        populated.import_prompts("a", "rate", prompts(10), user_ids(10), alias="production")
    monkeypatch.undo()
    _assert_nothing_written(populated)
    assert populated.list_aliases() == []
    assert populated.list_runs(kind="import") == []


# ------------------------------------------------------------------------------ artifacts and audit


def test_artifacts_round_trip_and_are_bound_to_fingerprints(populated):
    weights = {"w": torch.randn(4, 3), "b": torch.zeros(3)}
    art = populated.put_artifact("adapter", "phi", weights, task="rate", target_model="b", source_models=["a"], config={"hidden": 64})
    assert (art.version, art.source_models, art.target_model, art.config) == (1, ("a",), "b", {"hidden": 64})
    fp_b, fp_a = populated.get_model("b").fingerprint, populated.get_model("a").fingerprint
    loaded_meta, tensors = populated.load_artifact(art.id, fingerprint=fp_b, source_fingerprints=[fp_a])
    assert loaded_meta == art and torch.equal(tensors["w"], weights["w"])
    with pytest.raises(pr.ModelMismatchError, match="train a new one"):
        populated.load_artifact(art.id, fingerprint=fp_a)
    with pytest.raises(pr.ModelMismatchError):
        populated.load_artifact(art.id, source_fingerprints=[fp_b])
    assert populated.put_artifact("adapter", "phi", weights, task="rate", target_model="b", source_models=["a"]).version == 2
    assert [a.version for a in populated.list_artifacts(kind="adapter")] == [2, 1]
    head = populated.put_artifact("head", "rating-head", {"w": torch.ones(2)}, task="rate", target_model="a")
    assert head.source_models == () and populated.list_artifacts(kind="head") == [head]
    blob = populated.store.root / "blobs" / art.store_key
    blob.write_bytes(blob.read_bytes()[:-1] + b"\x00")
    with pytest.raises(pr.ChecksumError):
        populated.load_artifact(art.id)
    assert [p.kind for p in populated.doctor().problems] == ["checksum"]
    with pytest.raises(pr.UnknownArtifactError):
        populated.get_artifact(999)


def test_every_write_is_audited_with_its_actor(populated):
    s = populated.import_prompts("a", "rate", prompts(3), user_ids(3), alias="production", reason="initial load")
    actions = [e.action for e in populated.audit_events(limit=1000)][::-1]
    assert actions == ["init", "register_model", "register_model", "add_task", "add_users", "import_prompts", "set_alias"]
    event = populated.audit_events(object_kind="prompt_set", object_id=str(s.id))[0]
    assert (event.actor, event.reason, event.details["n_rows"]) == ("tester", "initial load", 3)
    run = populated.get_run(s.run_id)
    assert (run.kind, run.status, run.model, run.task, run.config["n_rows"]) == ("import", "succeeded", "a", "rate", 3)
    assert run.wall_seconds is not None and run.wall_seconds > 0


# ------------------------------------------------------------------------------ batch reads (manifests)


def test_batch_reads_use_cached_manifests_and_stay_exact(populated):
    from prompt_registry._context import MANIFEST_MIN_USERS

    n = MANIFEST_MIN_USERS + 300
    users = [f"big{i:05d}" for i in range(n)]
    data = prompts(n, seed=11)
    v1 = populated.import_prompts("a", "rate", data, users, create_users=True)
    order = list(np.random.default_rng(0).permutation(n))
    got = populated.get_prompts([users[i] for i in order], set=v1.id)  # loads the full manifest
    np.testing.assert_array_equal(got.numpy(), data[order])
    assert v1.id in populated._ctx.caches.manifests
    # an incremental version overlays its own rows on the cached base manifest
    changed = prompts(4, seed=12)
    v2 = populated.import_prompts("a", "rate", changed, [users[0], users[5], "fresh1", "fresh2"], base=v1.id, create_users=True)
    everyone = users + ["fresh1", "fresh2"]
    expected = np.concatenate([data, changed[2:]])
    expected[0], expected[5] = changed[0], changed[1]
    np.testing.assert_array_equal(populated.get_prompts(everyone, set=v2.id).numpy(), expected)
    np.testing.assert_array_equal(populated.get_prompts(users, set=v1.id).numpy(), data)  # base unchanged
    # the overlay equals a manifest built from scratch through SQL
    fresh = Registry.open(populated.where, store=str(populated.store.root) if hasattr(populated.store, "root") else None)
    try:
        np.testing.assert_array_equal(fresh.get_prompts(everyone, set=v2.id).numpy(), expected)
    finally:
        fresh.close()
    with pytest.raises(pr.UnknownUserError, match="'nobody'"):
        populated.get_prompts(users + ["nobody"], set=v2.id)


def test_batch_read_detects_corruption(populated):
    from prompt_registry._context import MANIFEST_MIN_USERS

    n = MANIFEST_MIN_USERS + 10
    users = [f"big{i:05d}" for i in range(n)]
    s = populated.import_prompts("a", "rate", prompts(n), users, create_users=True)
    _corrupt_first_chunk(populated, s)
    with pytest.raises(pr.ChecksumError, match="big00005"):
        populated.get_prompts(users, set=s.id)
    assert populated.get_prompts(users, set=s.id, verify=False).shape == (n, 1, 16)


# ------------------------------------------------------------------------------ runs and lineage


def test_runs_ledger_and_lineage_of_derived_sets(populated):
    src = populated.import_prompts("a", "rate", prompts(4), user_ids(4))
    run = populated.start_run("migrate", model="b", task="rate", config={"lr": 1e-4, "budget": 2}, seeds={"torch": 7})
    assert (run.status, run.model, run.config["lr"], run.seeds) == ("running", "b", 1e-4, {"torch": 7})
    adapter = populated.put_artifact("adapter", "phi", {"w": torch.ones(2)}, task="rate", target_model="b", source_models=["a"], run_id=run.id)
    head = populated.put_artifact("head", "h", {"w": torch.ones(2)}, task="rate", target_model="b", run_id=run.id)
    derived = populated.import_prompts("b", "rate", prompts(4, width=24), user_ids(4), run_id=run.id,
                                       head=head.id, adapter=adapter.id, sources=[src.id])
    assert (derived.run_id, derived.head_id, derived.adapter_id, derived.parents) == (run.id, head.id, adapter.id, (src.id,))
    ledger = pr.CostLedger(wall_seconds=1.5, device="cpu", examples_seen=100, forward_tokens=2500, backward_tokens=2500, extra={"epochs": 2})
    done = populated.finish_run(run.id, ledger=ledger, results={"rmse": 0.9})
    assert (done.status, done.examples_seen, done.forward_tokens, done.cost) == ("succeeded", 100, 2500, {"epochs": 2, "results": {"rmse": 0.9}})
    assert ledger.token_passes == 5000
    with pytest.raises(pr.ConflictError, match="already finished"):
        populated.finish_run(run.id)
    with pytest.raises(pr.UnknownRunError):
        populated.get_run(12345)
    # a head made for model a cannot be attached to prompts of model b
    head_a = populated.put_artifact("head", "h", {"w": torch.ones(2)}, task="rate", target_model="a")
    with pytest.raises(pr.ModelMismatchError):
        populated.import_prompts("b", "rate", prompts(1, width=24), ["u000"], head=head_a.id)
    assert len(populated.list_sets(model="b")) == 1


def test_evaluations_store_overall_and_per_user_metrics(populated):
    s = populated.import_prompts("a", "rate", prompts(3), user_ids(3))
    run = populated.start_run("eval", model="a", task="rate")
    ev = populated.record_evaluation(s.id, dataset="ml-100k@abc", split="test", metrics={"rmse": 0.93, "n": 30},
                                     per_user={"u000": {"rmse": 0.5, "n": 10}, "u001": {"rmse": 1.2, "n": 20}}, run_id=run.id)
    assert (ev.metrics, ev.per_user, ev.run_id) == ({"rmse": 0.93, "n": 30}, None, run.id)
    full = populated.get_evaluation(ev.id)
    assert full.per_user == {"u000": {"rmse": 0.5, "n": 10.0}, "u001": {"rmse": 1.2, "n": 20.0}}
    assert [e.id for e in populated.list_evaluations(s.id, split="test")] == [ev.id]
    assert populated.list_evaluations(s.id, split="valid") == []
    with pytest.raises(pr.UnknownUserError):
        populated.record_evaluation(s.id, dataset="d", split="test", metrics={}, per_user={"ghost": {"rmse": 1.0}})


@pytest.mark.parametrize("batch", [1, 3, 7, 100])
def test_content_hash_fed_in_batches_equals_the_whole(batch):
    """Imports hash the users' JSON batch by batch; the value is the one over all users at once."""
    from prompt_registry.db.bulk import users_json
    from prompt_registry.manifest import ContentHash, content_sha256

    users = [f"user-{i}" for i in range(10)] + ["ünï \"quoted\"", "中文", ", ]"]
    rows = os.urandom(32 * len(users))
    for base in (None, "ab" * 32):
        fed = ContentHash(base)
        for start in range(0, len(users), batch):
            fed.update(users_json(users[start : start + batch]), rows[32 * start : 32 * (start + batch)])
        # the definition, spelled out with hashlib (docs/design.md)
        expected = hashlib.sha256((base or "").encode() + b"\n")
        expected.update(hashlib.sha256(json.dumps(users, ensure_ascii=False).encode()).digest())
        expected.update(hashlib.sha256(rows).digest())
        assert fed.hexdigest() == content_sha256(base, users, hashlib.sha256(rows).digest()) == expected.hexdigest()
    assert content_sha256(None, users, rows) != content_sha256(None, users[::-1], rows)


def test_imported_set_hash_is_the_content_hash_over_all_batches(populated, monkeypatch):
    from prompt_registry.manifest import content_sha256, row_digests

    monkeypatch.setattr(ingest, "INSERT_BATCH_ROWS", 3)  # several batches
    data = prompts(10)
    made = populated.import_prompts("a", "rate", data, user_ids(10))
    assert made.sha256 == content_sha256(None, user_ids(10), hashlib.sha256(b"".join(row_digests(data))).digest())


def test_insert_prompt_rows_refuses_digests_that_do_not_match_the_users(populated):
    with populated._ctx.engine.begin() as conn, pytest.raises(ValueError, match="digest bytes"):
        bulk.insert_prompt_rows(conn, 1, ["u0", "u1"], 0, b"x" * 32)


def test_manifest_of_a_full_version_equals_the_chain_merge():
    from prompt_registry.manifest import Manifest

    records = [(f"u{i}", 7, i, os.urandom(32)) for i in range(50)]
    records = records[25:] + records[:25]  # the order the database returns is not the users' order
    fast, merged = Manifest.resolve(7, [7], records), Manifest.resolve(7, [7, 3], records)
    assert fast.users == merged.users == tuple(sorted(u for u, *_ in records))
    assert fast.index == merged.index
    for field in ("holder", "rows", "digests"):
        np.testing.assert_array_equal(getattr(fast, field), getattr(merged, field))
    assert len(Manifest.resolve(7, [7], [])) == 0


@pytest.mark.parametrize("pool_busy", [False, True])
def test_digest_batches_are_the_row_digests_whoever_hashes_them(pool_busy, monkeypatch):
    """Pieces the hashing thread has not started are hashed by the caller; the result is the same
    (here with the hashing thread blocked, so the caller hashes every piece itself)."""
    import threading

    from prompt_registry.manifest import row_digests

    monkeypatch.setattr(ingest, "INSERT_BATCH_ROWS", 10)
    monkeypatch.setattr(ingest, "HASH_PIECE_ROWS", 3)
    data = np.random.default_rng(7).normal(size=(47, 2, 5)).astype(np.float32)
    release = threading.Event()
    if pool_busy:
        ingest.hash_pool().submit(release.wait, 10)
    try:
        got = list(ingest.digest_batches(data))
    finally:
        release.set()
    assert [(start, stop) for start, stop, _ in got] == [(s, min(s + 10, 47)) for s in range(0, 47, 10)]
    assert b"".join(blob for _, _, blob in got) == b"".join(row_digests(data))
