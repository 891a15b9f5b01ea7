"""bfloat16 prompts (issue 18 part 5): stored, verified, read, served, purged, exported and imported
as bfloat16, bit for bit; safetensors BF16 in and out; npy (which has no bfloat16) refused with
what to do instead. On SQLite and Postgres."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import prompts, user_ids
from safetensors.torch import save_file

import prompt_registry as pr
from prompt_registry.cli.main import main
from prompt_registry.dtypes import BFLOAT16
from prompt_registry.serving import ReaderConfig

pytestmark = pytest.mark.registry
N = 40


def _bf16(n: int = N, seed: int = 0, length: int = 2) -> torch.Tensor:
    return torch.from_numpy(prompts(n, 16, length=length, seed=seed)).to(torch.bfloat16)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype == torch.bfloat16 and torch.equal(a.view(torch.int16), b.view(torch.int16))


def _header(path) -> dict:
    raw = path.read_bytes()
    return json.loads(raw[8 : 8 + struct.unpack("<Q", raw[:8])[0]])


@pytest.fixture
def bf16_set(populated):
    users = user_ids(N)
    data = _bf16()
    made = populated.import_prompts("a", "rate", data, users, alias="production")
    return populated, users, data, made


def test_bfloat16_is_stored_verified_and_read_back_bit_for_bit(bf16_set, backend):
    reg, users, data, made = bf16_set
    assert made.dtype == "bfloat16"  # no dtype given: bf16 stays bf16 (float32 would double the bytes)
    back = reg.get_prompts(users[::-1], set=made.id)
    assert _same_bits(back, data.flip(0))
    # the Zarr array is uint16 words with an attribute saying they are bfloat16
    store_root = backend[1] or f"{backend[0]}/store"
    meta = json.loads(open(f"{store_root}/arrays/{made.store_key}/zarr.json").read())
    assert meta["data_type"] == "uint16" and meta["attributes"]["prompt_registry.dtype"] == "bfloat16"
    # a float32 input asked to be bfloat16 is rounded as torch rounds it; an incremental version keeps the base's dtype
    wide = prompts(N, 16, length=2, seed=3)
    cast = reg.import_prompts("a", "rate", wide, users, dtype="bfloat16")
    assert _same_bits(reg.get_prompts(users, set=cast.id), torch.from_numpy(wide).to(torch.bfloat16))
    more = reg.import_prompts("a", "rate", wide[:2], users[:2], base=made.id)
    assert more.dtype == "bfloat16" and _same_bits(reg.get_prompts(users[:3], set=more.id)[2:], data[2:3])
    with pytest.raises(pr.DTypeError, match="same dtype"):
        reg.import_prompts("a", "rate", wide[:2], users[:2], base=made.id, dtype="float32")
    assert reg.doctor().ok


def test_bfloat16_is_served_resident_and_lru_and_upcast_exactly(bf16_set):
    reg, users, data, made = bf16_set
    order = [users[5], users[0], users[5]]
    for config in (ReaderConfig(check_every_seconds=None), ReaderConfig(memory_budget_bytes=0, lru_users=8, check_every_seconds=None)):
        reader = reg.reader("a", "rate", config=config)
        reader.wait_resident(timeout=30)
        assert reader.dtype == torch.bfloat16 and _same_bits(reader.batch(order), data[[5, 0, 5]])
    wide = reg.reader("a", "rate", dtype=torch.float32, config=ReaderConfig(missing="centroid", check_every_seconds=None))
    wide.wait_resident(timeout=30)
    assert torch.equal(wide.batch(order), data[[5, 0, 5]].float())  # every bfloat16 is a float32
    centroid = wide.batch(["nobody"])[0]
    assert torch.allclose(centroid, data.float().mean(0), atol=1e-6)


def test_a_purged_bfloat16_row_is_zeroed_and_the_set_still_verifies(bf16_set):
    reg, users, data, made = bf16_set
    reg.purge_user(users[3], reason="erasure request")
    assert users[3] not in reg.list_set_users(made.id)
    assert _same_bits(reg.get_prompts([users[2], users[4]], set=made.id), data[[2, 4]])
    assert reg.doctor().ok


def test_safetensors_bf16_in_and_out_and_npy_refused_with_the_way_out(bf16_set, tmp_path):
    reg, users, data, made = bf16_set
    out = tmp_path / "out.safetensors"
    reg.export_prompts(made.id, out)
    assert _header(out)["prompts"]["dtype"] == "BF16"
    back = reg.import_prompts("a", "rate", out)  # users from the file's metadata
    assert back.dtype == "bfloat16" and _same_bits(reg.get_prompts(users, set=back.id), data)
    with pytest.raises(pr.InvalidFileError, match="npy has no bfloat16"):
        reg.export_prompts(made.id, tmp_path / "out.npy")
    assert not (tmp_path / "out.npy").exists()
    np.save(tmp_path / "words.npy", data.view(torch.int16).numpy().view(BFLOAT16))  # numpy writes it as raw 2-byte voids
    with pytest.raises(pr.DTypeError, match="npy has no bfloat16"):
        reg.import_prompts("a", "rate", tmp_path / "words.npy", users)
    torch_file = tmp_path / "torch.safetensors"
    save_file({u: data[i] for i, u in enumerate(users)}, str(torch_file))  # per-user tensors, as torch writes them
    per_user = reg.import_prompts("a", "rate", torch_file)
    assert per_user.dtype == "bfloat16" and _same_bits(reg.get_prompts(users, set=per_user.id), data)


def test_peft_folders_carry_bf16_both_ways(bf16_set, tmp_path):
    reg, users, data, made = bf16_set
    reg.export_prompts(made.id, tmp_path / "peft", format="peft", users=users[:3])
    assert _header(tmp_path / "peft" / users[1] / "adapter_model.safetensors")["prompt_embeddings"]["dtype"] == "BF16"
    back = reg.import_prompts("a", "rate", tmp_path / "peft")
    assert back.dtype == "bfloat16" and _same_bits(reg.get_prompts(users[:3], set=back.id), data[:3])


def test_the_cli_imports_float32_as_bfloat16(populated, backend, tmp_path):
    location, store = backend
    wide = prompts(N, 16, length=1, seed=7)
    np.save(tmp_path / "p.npy", wide)
    (tmp_path / "users.csv").write_text("user_id\n" + "\n".join(user_ids(N)) + "\n")
    args = ["--registry", location, *(["--store", store] if store else []), "prompt", "import", str(tmp_path / "p.npy"),
            "--users", str(tmp_path / "users.csv"), "--model", "a", "--task", "rate", "--dtype", "bfloat16", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    made = json.loads(result.output)
    assert made["dtype"] == "bfloat16"
    assert _same_bits(populated.get_prompts(user_ids(N), set=made["id"]), torch.from_numpy(wide).to(torch.bfloat16))
