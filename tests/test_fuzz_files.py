"""Fuzzing prompt files with Hypothesis: whatever the bytes, loading either succeeds with a numeric
array or raises an error of the tree (``InvalidFileError``/``DTypeError``), and nothing a file
smuggles in is ever executed (a pickle whose unpickling would create a sentinel file)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import prompt_registry as pr
from prompt_registry.dtypes import BFLOAT16
from prompt_registry.fileio import load_prompt_file
from prompt_registry.testing.hostile import npy_header, pickle_payloads, safetensors_bytes

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _load(path: Path) -> None:
    try:
        array, users = load_prompt_file(path)
    except (pr.InvalidFileError, pr.DTypeError):
        return
    # numbers only (numpy's, or bfloat16 from ml_dtypes); import refuses non-float dtypes (DTypeError)
    assert isinstance(array, np.ndarray) and (array.dtype.kind in "fiubc" or array.dtype == BFLOAT16)
    assert users is None or all(isinstance(u, str) for u in users)


@SETTINGS
@given(data=st.binary(max_size=512), suffix=st.sampled_from([".npy", ".safetensors"]))
def test_random_bytes_never_crash_the_loader(tmp_path, data, suffix):
    path = tmp_path / f"f{suffix}"
    path.write_bytes(data)
    _load(path)


@SETTINGS
@given(
    dtype=st.sampled_from(["F32", "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "C64", "XYZ"]),
    shape=st.lists(st.integers(min_value=0, max_value=2**40), min_size=0, max_size=4),
    payload=st.binary(max_size=256),
    users=st.one_of(st.none(), st.text(max_size=20), st.integers(), st.lists(st.one_of(st.text(max_size=5), st.integers(), st.none()), max_size=4)),
    name=st.sampled_from(["prompts", "alice", ""]),
)
def test_mutated_safetensors_headers_are_refused_or_loaded(tmp_path, dtype, shape, payload, users, name):
    header: dict = {name: {"dtype": dtype, "shape": shape, "data_offsets": [0, len(payload)]}}
    if users is not None:
        header["__metadata__"] = {"users": json.dumps(users) if not isinstance(users, str) else users}
    path = tmp_path / "f.safetensors"
    path.write_bytes(safetensors_bytes(header, payload))
    _load(path)


@SETTINGS
@given(
    descr=st.sampled_from(["<f4", "<f2", ">f8", "<i8", "|u1", "|b1", "<c8", "|O", "<U4", "V8"]),
    shape=st.lists(st.integers(min_value=0, max_value=2**50), min_size=0, max_size=4),
    payload=st.binary(max_size=256),
)
def test_npy_headers_declaring_any_shape_are_refused_or_loaded(tmp_path, descr, shape, payload):
    path = tmp_path / "f.npy"
    path.write_bytes(npy_header(descr, shape) + payload)
    _load(path)


@pytest.mark.parametrize("suffix", [".npy", ".safetensors", ".pt", ".bin", ".pkl"])
def test_pickles_under_any_name_never_run(tmp_path, suffix):
    sentinel = tmp_path / "ran"
    for payload in pickle_payloads(sentinel):
        path = tmp_path / f"evil{suffix}"
        path.write_bytes(payload)
        with pytest.raises(pr.PromptRegistryError):
            load_prompt_file(path)
    assert not sentinel.exists()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    dtype=st.sampled_from(["F32", "F16", "BF16", "I64", "C64"]),
    shape=st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=3),
    users=st.one_of(st.none(), st.lists(st.sampled_from(["u000", "u001", "u002", "ghost", "", "x\x00y"]), max_size=4)),
)
def test_a_refused_import_leaves_the_registry_exactly_as_it_was(populated_once, tmp_path, dtype, shape, users):
    reg = populated_once
    itemsize = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "C64": 8}[dtype]
    payload = bytes(int(np.prod(shape)) * itemsize)
    header: dict = {"prompts": {"dtype": dtype, "shape": shape, "data_offsets": [0, len(payload)]}}
    if users is not None:
        header["__metadata__"] = {"users": json.dumps(users)}
    path = tmp_path / "p.safetensors"
    path.write_bytes(safetensors_bytes(header, payload))
    before = (reg.count_users(), [s.id for s in reg.list_sets()], sorted(o.key for o in reg.store.list_objects()))
    try:
        made = reg.import_prompts("a", "rate", path)
    except pr.PromptRegistryError:
        assert (reg.count_users(), [s.id for s in reg.list_sets()], sorted(o.key for o in reg.store.list_objects())) == before
        return
    assert made.n_rows == len(users or []) and made.width == 16


@pytest.fixture
def populated_once(tmp_path):
    from conftest import make_fake_model

    from prompt_registry import Registry

    reg = Registry.init(tmp_path / "reg")
    reg.register_model("a", make_fake_model(tmp_path / "model-a", 16))
    reg.add_task("rate", "rating")
    reg.add_users(["u000", "u001", "u002"])
    yield reg
    reg.close()


def test_an_empty_tensor_with_huge_other_dimensions_is_refused_clearly(tmp_path):
    """Found by the fuzzer: shape (0, 1320808, 1321122, 1321439) made numpy raise a ValueError."""
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "huge.safetensors"
    save_file({"prompts": torch.empty(0, 1320808, 1321122, 1321439)}, str(path))
    with pytest.raises(pr.InvalidFileError, match="numpy cannot hold"):
        load_prompt_file(path)
