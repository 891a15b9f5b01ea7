"""``PromptReader``: pinned versions, request order, resident and LRU modes, missing-user policies,
fingerprint binding, refresh, purge while serving, and no batch mixing versions under threads.
On SQLite and Postgres."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from conftest import prompts, user_ids

import prompt_registry as pr
from prompt_registry.serving import ReaderConfig

pytestmark = pytest.mark.registry

N = 300
RESIDENT = ReaderConfig(check_every_seconds=None)
LRU = ReaderConfig(memory_budget_bytes=0, lru_users=50, check_every_seconds=None)


@pytest.fixture
def served(populated):
    """Model a (width 16), task rate: v1 aliased production, v2 (other values) not aliased yet."""
    reg = populated
    users = user_ids(N)
    reg.add_users(users, exist_ok=True)
    v1 = reg.import_prompts("a", "rate", prompts(N, 16, seed=1), users, alias="production")
    v2 = reg.import_prompts("a", "rate", prompts(N, 16, seed=2), users)
    return reg, users, v1, v2


def _open(reg, config, **kw):
    reader = reg.reader("a", "rate", config=config, **kw)
    reader.wait_resident(timeout=30)
    return reader


@pytest.mark.parametrize("config", [RESIDENT, LRU], ids=["resident", "lru"])
def test_batches_come_in_request_order_from_the_pinned_version(served, config):
    reg, users, v1, v2 = served
    reader = _open(reg, config)
    assert reader.mode == ("resident" if config is RESIDENT else "lru") and reader.set.id == v1.id
    order = [users[7], users[3], users[7], users[299]]
    expected = prompts(N, 16, seed=1)[[7, 3, 7, 299]]
    np.testing.assert_array_equal(reader.batch(order).numpy(), expected)
    big = reader.batch(users[::-1])  # more users than the LRU holds
    np.testing.assert_array_equal(big.numpy(), prompts(N, 16, seed=1)[::-1])
    assert reader.batch([]).shape == (0, 1, 16)
    reg.set_alias("production", v2.id)
    np.testing.assert_array_equal(reader.batch(order).numpy(), expected)  # still v1: pinned until refresh
    assert reader.refresh() and reader.set.id == v2.id
    reader.wait_resident(timeout=30)
    np.testing.assert_array_equal(reader.batch(order).numpy(), prompts(N, 16, seed=2)[[7, 3, 7, 299]])
    assert not reader.refresh()  # nothing changed


def test_device_dtype_and_versions(served):
    reg, users, v1, v2 = served
    half = _open(reg, RESIDENT, version=2, alias=None, dtype=torch.float16)
    got = half.batch(users[:3])
    assert got.dtype == torch.float16 and got.device.type == "cpu" and half.set.id == v2.id
    np.testing.assert_allclose(got.float().numpy(), prompts(N, 16, seed=2)[:3], rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="either an alias or a version"):
        reg.reader("a", "rate", alias="production", version=1)


def test_a_reader_is_bound_to_its_models_fingerprint(served):
    reg, users, _, _ = served
    with pytest.raises(pr.ModelMismatchError, match="fingerprint"):
        reg.reader("a", "rate", fingerprint="f" * 64)
    reader = _open(reg, RESIDENT, fingerprint=reg.get_model("a").fingerprint)
    with pytest.raises(pr.ModelMismatchError, match="serves model 'a'"):
        reader.batch(users[:2], fingerprint=reg.get_model("b").fingerprint)


@pytest.mark.parametrize("config", [RESIDENT, LRU], ids=["resident", "lru"])
def test_missing_users_follow_the_policy(served, config):
    import dataclasses

    reg, users, v1, _ = served
    reg.add_users(["newcomer"])
    data = prompts(N, 16, seed=1)
    with pytest.raises(pr.UnknownUserError, match="newcomer"):
        _open(reg, config).batch([users[0], "newcomer"])
    zeros = _open(reg, dataclasses.replace(config, missing="zeros")).batch([users[0], "newcomer"])
    np.testing.assert_array_equal(zeros.numpy(), np.stack([data[0], np.zeros((1, 16), np.float32)]))
    default = np.full((1, 16), 0.25, np.float32)
    got = _open(reg, dataclasses.replace(config, missing="default"), default=default).batch(["newcomer", users[1]])
    np.testing.assert_array_equal(got.numpy(), np.stack([default, data[1]]))
    centroid = _open(reg, dataclasses.replace(config, missing="centroid")).batch(["newcomer"])
    np.testing.assert_allclose(centroid.numpy()[0], data.mean(axis=0), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="needs the default prompt"):
        reg.reader("a", "rate", config=dataclasses.replace(config, missing="default"))
    with pytest.raises(ValueError, match="shape"):
        reg.reader("a", "rate", config=dataclasses.replace(config, missing="default"), default=np.zeros((2, 16)))
    with pytest.raises(ValueError, match="missing-user policy"):
        ReaderConfig(missing="guess")


@pytest.mark.parametrize("config", [RESIDENT, LRU], ids=["resident", "lru"])
def test_a_user_purged_by_another_process_is_not_served_after_the_next_check(served, backend, config):
    import dataclasses

    reg, users, v1, _ = served
    location, store = backend
    reader = _open(reg, dataclasses.replace(config, check_every_seconds=0.0))  # check the catalogue before every batch
    victim = users[5]
    assert reader.batch([victim]).abs().sum() > 0
    with pr.Registry.open(location, store=store) as other:  # another process's handle: this reader's caches know nothing
        other.purge_user(victim, reason="erasure request")
    with pytest.raises(pr.UnknownUserError, match=victim):
        reader.batch([victim])
    reader.wait_resident(timeout=30)
    with pytest.raises(pr.UnknownUserError, match=victim):
        reader.batch([users[4], victim])
    np.testing.assert_array_equal(reader.batch([users[4], users[6]]).numpy(), prompts(N, 16, seed=1)[[4, 6]])
    lazy = _open(reg, dataclasses.replace(config, missing="zeros"))  # only refresh() checks
    assert not lazy.batch([users[4]]).eq(0).all()
    with pr.Registry.open(location, store=store) as other:
        other.purge_user(users[4])
    assert lazy.refresh()
    lazy.wait_resident(timeout=30)
    assert lazy.batch([users[4]]).eq(0).all()  # the fallback, never the purged bytes


def test_no_batch_mixes_two_versions_while_refreshes_swap_them(served):
    reg, users, v1, v2 = served
    reader = _open(reg, RESIDENT)
    tables = {v1.id: prompts(N, 16, seed=1), v2.id: prompts(N, 16, seed=2)}
    errors: list[str] = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            got = reader.batch(users).numpy()
            if not any(np.array_equal(got, t) for t in tables.values()):
                errors.append("a batch mixed versions")

    threads = [threading.Thread(target=serve) for _ in range(3)]
    for t in threads:
        t.start()
    for target in [v2, v1, v2, v1]:
        reg.set_alias("production", target.id)
        assert reader.refresh()
        reader.wait_resident(timeout=30)
    stop.set()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.registry
def test_a_batch_in_flight_across_a_purge_and_refresh_does_not_put_the_user_back(backend, tmp_path):
    """LRU mode: a batch read u003 before the purge and finishes after the refresh (the purge
    keeps the set id): it must not put u003 into the new state's cache, which would serve it."""
    from conftest import make_fake_model

    reg = pr.Registry.init(backend[0], store=backend[1])
    dpo = pr.Registry.open(backend[0], store=backend[1])
    try:
        reg.register_model("m", make_fake_model(tmp_path / "m", 16, seed=1))
        reg.add_task("t", "rating")
        data = prompts(50, 16)
        reg.import_prompts("m", "t", data, user_ids(50), create_users=True, alias="production")
        reader = reg.reader("m", "t", config=ReaderConfig(memory_budget_bytes=0, check_every_seconds=None))
        real = reader._s.reads.read_members
        inside, go = threading.Event(), threading.Event()

        def slow(set_id, users, **kwargs):
            out = real(set_id, users, **kwargs)  # read before the purge
            if "u003" in users:
                inside.set()
                assert go.wait(30)  # ... and handed back after the refresh
            return out

        reader._s.reads.read_members = slow
        flight = threading.Thread(target=lambda: reader.batch(["u003"]))
        flight.start()
        assert inside.wait(30)
        dpo.purge_user("u003", reason="erasure request")
        assert reader.refresh()
        go.set()
        flight.join(30)
        reader._s.reads.read_members = real
        with pytest.raises(pr.UnknownUserError, match="u003"):
            reader.batch(["u003"])
        np.testing.assert_array_equal(reader.batch(["u004"]).numpy(), data[4:5])
    finally:
        dpo.close()
        reg.close()
