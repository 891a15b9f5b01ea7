"""Prompt files are read without ever unpickling, and recognised by content, not by luck."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
from safetensors.numpy import save_file

from prompt_registry import InvalidFileError
from prompt_registry.fileio import load_prompt_file, read_users_csv


def test_safetensors_whose_header_length_starts_like_a_pickle(tmp_path):
    # safetensors starts with its header length (u64 little endian); 0x80 as first byte is also
    # the pickle protocol marker. Pad metadata until that happens and make sure we still load it.
    path = tmp_path / "p.safetensors"
    data = np.ones((2, 1, 4), np.float32)
    for pad in range(300):
        save_file({"prompts": data}, str(path), metadata={"users": '["a", "b"]', "pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    array, users = load_prompt_file(path)
    assert users == ["a", "b"] and np.array_equal(array, data)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickles_are_refused_under_any_name(tmp_path, protocol):
    for name in ("p.safetensors", "p.npy", "p.pt"):
        path = tmp_path / name
        path.write_bytes(pickle.dumps(np.ones(3), protocol=protocol))
        with pytest.raises(InvalidFileError, match="never unpickles|not a valid"):
            load_prompt_file(path)


def test_torch_save_archive_is_refused(tmp_path):
    import torch

    path = tmp_path / "prompts.pt"
    torch.save({"u": torch.ones(2)}, path)
    with pytest.raises(InvalidFileError, match="pickle"):
        load_prompt_file(path)


def test_header_length_lies(tmp_path):
    path = tmp_path / "p.safetensors"
    path.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(InvalidFileError, match="safetensors"):
        load_prompt_file(path)


def test_users_csv_errors_name_the_line(tmp_path):
    path = tmp_path / "u.csv"
    path.write_text("user_id\na\n\nb\n ,\n")
    with pytest.raises(InvalidFileError, match=r"u.csv:5: empty user_id"):
        read_users_csv(path)
    with pytest.raises(InvalidFileError, match="does not exist"):
        read_users_csv(tmp_path / "missing.csv")
