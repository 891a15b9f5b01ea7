"""The ``s3://`` store against a local S3-compatible server (moto, on 127.0.0.1, started here).

The contract suite runs on it like on every backend; below it, what only an object store has:
one object per chunk, arrays any Zarr client reads, bucket versioning on purge, gc of orphan
objects, and a whole registry (import, verified reads, purge, gc, doctor) on SQLite and Postgres.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import zarr
from conftest import make_fake_model, prompts, user_ids

from prompt_registry import Registry
from prompt_registry.errors import IntegrityError, InvalidArgumentError, MissingDataError
from prompt_registry.store import s3_store
from prompt_registry.store.keys import new_key
from prompt_registry.store.resolve import open_store
from prompt_registry.store.s3_store import S3Settings, S3Store, parse_s3_url
from prompt_registry.testing.s3server import ACCESS_KEY, REGION, SECRET_KEY, local_s3
from prompt_registry.testing.store_contract import TensorStoreContract

pytestmark = pytest.mark.skipif(s3_store.obstore is None, reason="the s3 extra (obstore) is not installed")


@pytest.fixture(scope="module")
def s3():
    with local_s3() as server:
        yield server


@pytest.fixture(scope="module")
def bucket(s3):
    return s3.make_bucket()


@pytest.fixture
def s3_env(s3, monkeypatch):
    """The AWS variables pointing at the local server, as a deployment would set them."""
    for name, value in s3.environ().items():
        monkeypatch.setenv(name, value)
    return s3


def settings(s3) -> S3Settings:
    return S3Settings(endpoint=s3.endpoint, region=REGION, access_key_id=ACCESS_KEY, secret_access_key=SECRET_KEY)


class TestS3Store(TensorStoreContract):
    @pytest.fixture
    def store(self, s3, bucket):
        return S3Store(f"s3://{bucket}/contract-{uuid.uuid4().hex[:12]}", create=True, settings=settings(s3))

    def reopen(self, store):
        return S3Store(store.location, settings=store.settings)


def test_urls_are_parsed_and_bad_ones_refused():
    assert parse_s3_url("s3://b/x/y/") == ("b", "x/y")
    assert parse_s3_url("S3://b") == ("b", "")
    for bad in ("s3://", "s3:///x", "s3://b/x//y", "s3://b/../y"):
        with pytest.raises(InvalidArgumentError):
            parse_s3_url(bad)


def test_settings_come_from_the_aws_variables():
    got = S3Settings.from_env({"AWS_ENDPOINT_URL": "http://h:1", "AWS_ENDPOINT_URL_S3": "http://s3:2", "AWS_DEFAULT_REGION": "eu-west-3",
                               "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"})
    assert (got.endpoint, got.region, got.access_key_id, got.secret_access_key) == ("http://s3:2", "eu-west-3", "k", "s")
    assert S3Settings.from_env({}).endpoint is None and S3Settings.from_env({}).region == "us-east-1"


def test_open_store_resolves_s3_urls_and_a_missing_store_explains(s3_env, bucket):
    url = f"s3://{bucket}/resolved-{uuid.uuid4().hex[:8]}"
    with pytest.raises(MissingDataError, match="prompt-registry init"):
        open_store(url)
    made = open_store(url, create=True)
    assert isinstance(made, S3Store) and made.persistent and made.local_root is None and made.supports_overwrite
    assert isinstance(open_store(url), S3Store)


def test_a_missing_bucket_is_named_with_what_to_do(s3):
    with pytest.raises(MissingDataError, match="create the bucket 'no-such-bucket' first"):
        S3Store("s3://no-such-bucket/x", create=True, settings=settings(s3))


def test_an_unreachable_server_is_named_with_what_to_check(monkeypatch):
    for name, value in {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(MissingDataError, match="AWS_ENDPOINT_URL"):
        S3Store("s3://nobucket/x", settings=S3Settings(endpoint="http://127.0.0.1:9", access_key_id="x", secret_access_key="x"))


def _store(s3, bucket: str, prefix: str | None = None) -> S3Store:
    return S3Store(f"s3://{bucket}/{prefix or uuid.uuid4().hex[:12]}", create=True, settings=settings(s3))


def test_one_object_per_chunk_and_zarr_reads_the_array(s3, bucket):
    from obstore.store import S3Store as ObjectS3Store

    store = _store(s3, bucket)
    data = prompts(10, width=6, length=2)
    store.create_array("a", data.shape, "float32", 4)
    store.write_rows("a", 0, data)
    keys = sorted(o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix=f"{store.prefix}/arrays/a/")["Contents"])
    assert [k.rsplit("/", 1)[1] for k in keys] == ["c.0.0.0", "c.1.0.0", "c.2.0.0", "zarr.json"]
    raw = ObjectS3Store(bucket, prefix=f"{store.prefix}/arrays", config={"endpoint": s3.endpoint, "region": REGION, "access_key_id": ACCESS_KEY,
                        "secret_access_key": SECRET_KEY}, client_options={"allow_http": True})
    arr = zarr.open_array(store=zarr.storage.ObjectStore(raw, read_only=True), path="a", mode="r")
    np.testing.assert_array_equal(arr[:], data)


def test_reads_of_a_few_rows_are_ranged_and_of_many_are_whole_chunks(s3, bucket, monkeypatch):
    store = _store(s3, bucket)
    data = prompts(64, width=8)
    store.create_array("a", data.shape, "float32", 32)
    store.write_rows("a", 0, data)
    calls = {"get": 0, "get_ranges": 0}
    for name in calls:
        real = getattr(s3_store.obstore, name)

        def counted(*args, _real=real, _name=name, **kw):
            calls[_name] += 1
            return _real(*args, **kw)

        monkeypatch.setattr(s3_store.obstore, name, counted)
    np.testing.assert_array_equal(store.read_rows("a", [40, 3, 3]), data[[40, 3, 3]])
    assert calls == {"get": 0, "get_ranges": 2}  # one ranged request per chunk touched
    np.testing.assert_array_equal(store.read_rows("a", range(0, 20)), data[:20])
    assert calls == {"get": 1, "get_ranges": 2}


def test_a_purge_on_a_versioned_bucket_leaves_no_version_with_the_old_bytes(s3):
    bucket = s3.make_bucket(versioning=True)
    store = _store(s3, bucket)
    data = prompts(8, width=6)
    store.create_array("a", data.shape, "float32", 4)
    store.write_rows("a", 0, data)
    store.write_rows("a", 0, data[:4])  # a rewrite leaves an older version of chunk 0 too
    assert store.versioning() == "Enabled"
    store.overwrite_rows("a", np.array([1]), np.zeros((1, 1, 6), np.float32))
    client = s3.client()
    chunk0 = f"{store.prefix}/arrays/a/c.0.0.0"
    versions = client.list_object_versions(Bucket=bucket, Prefix=chunk0)["Versions"]
    assert len(versions) == 1 and versions[0]["IsLatest"]
    secret = data[1].tobytes()
    for v in versions:
        body = client.get_object(Bucket=bucket, Key=chunk0, VersionId=v["VersionId"])["Body"].read()
        assert secret not in body
    assert not store.read_rows("a", [1]).any()
    np.testing.assert_array_equal(store.read_rows("a", [0, 2, 5]), data[[0, 2, 5]])
    # chunk 1 was not rewritten: its versions are untouched
    assert len(client.list_object_versions(Bucket=bucket, Prefix=f"{store.prefix}/arrays/a/c.1.0.0")["Versions"]) == 1
    # deleting an array removes every version of its objects, not just the current ones
    store.delete("a")
    left = client.list_object_versions(Bucket=bucket, Prefix=f"{store.prefix}/arrays/a/")
    assert not left.get("Versions") and not left.get("DeleteMarkers")


def _versioned_array_whose_old_versions_cannot_be_deleted(s3, monkeypatch):
    """A versioned bucket holding array ``a`` written twice (an old version of its chunk), and a
    versions client that refuses every delete (as without s3:DeleteObjectVersion); returns the
    store, the bucket and the client's real ``delete_objects``."""
    bucket = s3.make_bucket(versioning=True)
    store = _store(s3, bucket)
    store.create_array("a", (4, 1, 6), "float32", 4)
    store.write_rows("a", 0, prompts(4, width=6))
    store.write_rows("a", 0, prompts(4, width=6, seed=1))
    client = store._versions()
    real = client.delete_objects

    def refused(**kw):
        return {"Errors": [{"Key": o["Key"], "Message": "Access Denied"} for o in kw["Delete"]["Objects"]]}

    monkeypatch.setattr(client, "delete_objects", refused)
    return store, bucket, real


def test_a_purge_whose_old_versions_cannot_be_deleted_says_why(s3, monkeypatch):
    store, _, _ = _versioned_array_whose_old_versions_cannot_be_deleted(s3, monkeypatch)
    with pytest.raises(IntegrityError, match="DeleteObjectVersion"):
        store.overwrite_rows("a", np.array([0]), np.zeros((1, 1, 6), np.float32))


def test_a_delete_refused_on_a_versioned_bucket_is_found_again_by_the_next_one(s3, monkeypatch):
    """Old versions that cannot be deleted keep their array listed, so a later delete (gc)
    retries them once the permission is granted, instead of stranding their bytes unlisted."""
    store, bucket, real = _versioned_array_whose_old_versions_cannot_be_deleted(s3, monkeypatch)
    with pytest.raises(IntegrityError, match="DeleteObjectVersion"):
        store.delete("a")
    assert [o.key for o in store.list_objects()] == ["a"]  # still listed: gc will find it again
    monkeypatch.setattr(store._versions(), "delete_objects", real)
    store.delete("a")
    assert store.list_objects() == []
    left = s3.client().list_object_versions(Bucket=bucket, Prefix=f"{store.prefix}/arrays/a/")
    assert not left.get("Versions") and not left.get("DeleteMarkers")


def test_a_lost_chunk_object_is_reported_and_rebuilt(s3, bucket):
    store = _store(s3, bucket)
    data = prompts(8, width=6)
    store.create_array("a", data.shape, "float32", 4)
    store.write_rows("a", 0, data)
    s3.client().delete_object(Bucket=bucket, Key=f"{store.prefix}/arrays/a/c.1.0.0")
    with pytest.raises(MissingDataError, match="doctor --repair"):
        store.read_rows("a", [5])
    [damage] = store.damaged_files("a")
    assert (damage.why, damage.rows) == ("missing", (4, 8))
    assert store.rebuild_files("a") == [damage] and store.damaged_files("a") == []
    assert not store.read_rows("a", [5]).any()
    np.testing.assert_array_equal(store.read_rows("a", [0, 3]), data[[0, 3]])


def test_blobs_and_the_binding_are_created_with_a_conditional_put(s3, bucket):
    first, second = _store(s3, bucket, "race"), S3Store(f"s3://{bucket}/race", settings=settings(s3))
    first.put_blob("b", b"one")
    second._infos.clear()
    with pytest.raises(FileExistsError):
        second._put("blobs/b", b"two", create=True)  # even a writer that skipped the exists check loses
    assert first.get_blob("b") == b"one"
    assert first.bind("a" * 32) == "a" * 32 and second.bind("b" * 32) == "a" * 32


@pytest.mark.registry
def test_a_registry_on_s3_imports_reads_purges_and_collects_garbage(backend, s3_env, tmp_path):
    location, _ = backend
    bucket = s3_env.make_bucket(versioning=True)
    url = f"s3://{bucket}/registry"
    reg = Registry.init(location, store=url, actor="tester")
    try:
        model_dir = make_fake_model(tmp_path / "m", 16, seed=1)
        reg.register_model("a", model_dir)
        reg.add_task("rate", "rating")
        data = prompts(300, width=16)
        users = user_ids(300)
        made = reg.import_prompts("a", "rate", data, users, create_users=True, alias="production")
        np.testing.assert_array_equal(reg.get_prompts(users[::7], "a", "rate", alias="production"), data[::7])
        np.testing.assert_array_equal(reg.get_prompt(users[5], "a", "rate", alias="production"), data[5])
        # purge: the user's bytes leave every version of every object in the versioned bucket
        reg.purge_user(users[5], reason="erasure request")
        client = s3_env.client()
        secret = data[5].tobytes()
        listing = client.list_object_versions(Bucket=bucket, Prefix="registry/arrays/")
        for v in listing["Versions"]:
            body = client.get_object(Bucket=bucket, Key=v["Key"], VersionId=v["VersionId"])["Body"].read()
            assert secret not in body, v["Key"]
        assert reg.doctor().ok
        # gc removes an orphan array (an interrupted write of this catalogue) and all its versions
        store = reg.store
        orphan = new_key(reg.catalog_id, "set")
        store.create_array(orphan, (4, 1, 16), "float32", 4)
        store.write_rows(orphan, 0, prompts(4))
        report = reg.gc(grace_seconds=0)
        assert orphan in report.removed and not store.exists(orphan)
        assert not client.list_object_versions(Bucket=bucket, Prefix=f"registry/arrays/{orphan}/").get("Versions")
        assert made.id in {s.id for s in reg.list_sets()}
        reopened = Registry.open(location, store=url)
        try:
            np.testing.assert_array_equal(reopened.get_prompts(users[:2], "a", "rate", alias="production"), data[:2])
        finally:
            reopened.close()
    finally:
        reg.close()


def test_the_cli_runs_a_registry_on_s3(s3_env, tmp_path):
    from click.testing import CliRunner

    from prompt_registry.cli.main import main

    bucket = s3_env.make_bucket()
    base = ["--registry", str(tmp_path / "reg"), "--store", f"s3://{bucket}/cli", "--actor", "cli-test"]

    def cli(*args: str) -> str:
        result = CliRunner().invoke(main, [*base, *args], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    cli("init")
    cli("model", "add", "a", "--path", str(make_fake_model(tmp_path / "a", 16)))
    cli("task", "add", "rate", "--kind", "rating")
    np.save(tmp_path / "p.npy", prompts(5))
    (tmp_path / "u.csv").write_text("user_id\n" + "\n".join(user_ids(5)) + "\n")
    cli("user", "import", str(tmp_path / "u.csv"))
    cli("prompt", "import", str(tmp_path / "p.npy"), "--model", "a", "--task", "rate", "--users", str(tmp_path / "u.csv"))
    shown = json.loads(cli("prompt", "show", "u003", "--model", "a", "--task", "rate", "--version", "1", "--json"))
    np.testing.assert_allclose(np.asarray(shown["values"], dtype=np.float32), prompts(5)[3])
    assert json.loads(cli("doctor", "--json"))["problems"] == []
    assert s3_env.client().list_objects_v2(Bucket=bucket, Prefix="cli/arrays/")["KeyCount"] >= 2
