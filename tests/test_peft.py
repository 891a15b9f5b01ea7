"""PEFT prompt-tuning folders out and in: layout and metadata, round trip, refusals, and the real
``peft`` package loading an export on a tiny Llama with the same output as our injection."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import make_fake_model, prompts, user_ids

import prompt_registry as pr
from prompt_registry import peftio

ODD = ["plain-user_1.ok", "a/b", "émile", ".hidden", "x" * 100]


@pytest.fixture
def exported(populated, tmp_path):
    reg = populated
    reg.add_users(ODD)
    data = prompts(len(ODD), 16, length=2, seed=4)
    made = reg.import_prompts("a", "rate", data, ODD)
    result = reg.export_prompts(made.id, tmp_path / "peft", format="peft")
    return reg, made, data, tmp_path / "peft", result


@pytest.mark.registry
def test_an_export_is_one_peft_folder_per_user_with_our_fingerprint(exported):
    reg, made, data, folder, result = exported
    assert (result.format, result.n_users) == ("peft", len(ODD))
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == len(ODD) and "plain-user_1.ok" in names and all("/" not in n and not n.startswith(".") for n in names)
    config = json.loads((folder / "plain-user_1.ok" / "adapter_config.json").read_text())
    model = reg.get_model("a")
    assert config["peft_type"] == "PROMPT_TUNING" and config["num_virtual_tokens"] == 2 and config["token_dim"] == 16
    assert config["base_model_name_or_path"] == model.source and config["revision"] == model.revision
    assert config["task_type"] == "CAUSAL_LM"  # the fake model is a Llama: a decoder
    from safetensors import safe_open

    with safe_open(str(folder / "plain-user_1.ok" / "adapter_model.safetensors"), framework="numpy") as fh:
        assert list(fh.keys()) == ["prompt_embeddings"]
        np.testing.assert_array_equal(fh.get_tensor("prompt_embeddings"), data[0])
        meta = fh.metadata()
    assert meta["prompt_registry.fingerprint"] == model.fingerprint and meta["prompt_registry.set"] == str(made.id)
    assert meta["prompt_registry.user"] == "plain-user_1.ok"
    one = reg.export_prompts(made.id, folder.parent / "some", format="peft", users=["a/b"])
    assert one.n_users == 1 and len(list((folder.parent / "some").iterdir())) == 1
    with pytest.raises(ValueError, match="unknown export format"):
        reg.export_prompts(made.id, folder.parent / "x", format="onnx")


@pytest.mark.registry
def test_peft_folders_come_back_as_a_new_version(exported):
    reg, made, data, folder, _ = exported
    back = reg.import_prompts("a", "rate", folder)  # a parent of many folders; users from the metadata
    assert back.id != made.id and back.n_rows == len(ODD) and back.prompt_len == 2
    np.testing.assert_array_equal(reg.get_prompts(ODD, set=back.id), data)
    single = reg.import_prompts("a", "rate", folder / peftio.safe_dirname("a/b"))  # one folder
    np.testing.assert_array_equal(reg.get_prompts(["a/b"], set=single.id), data[[1]])


@pytest.mark.registry
def test_bad_peft_folders_are_refused_with_what_is_wrong(exported, model_dirs, tmp_path):
    reg, made, data, folder, _ = exported
    with pytest.raises(pr.ModelMismatchError, match="exported for model fingerprint"):
        reg.import_prompts("b", "rate", folder)  # another model's prompts (b is 24 wide, but the fingerprint speaks first)
    victim = folder / "plain-user_1.ok"
    config = json.loads((victim / "adapter_config.json").read_text())
    for change, message in (({"peft_type": "LORA"}, "not PROMPT_TUNING"), ({"num_virtual_tokens": 3}, "the config says"),
                            ({"num_transformer_submodules": 2}, "the config says")):
        (victim / "adapter_config.json").write_text(json.dumps({**config, **change}))
        with pytest.raises(pr.InvalidFileError, match=message):
            reg.import_prompts("a", "rate", victim)
    (victim / "adapter_config.json").write_text(json.dumps(config))
    (victim / "adapter_model.safetensors").unlink()
    (victim / "adapter_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(pr.InvalidFileError, match="never read"):
        reg.import_prompts("a", "rate", victim)
    with pytest.raises(pr.InvalidFileError, match="no PEFT folder"):
        reg.import_prompts("a", "rate", tmp_path / "model-a")
    wide = tmp_path / "wide"
    peftio.write_folder(wide / "u000", np.zeros((2, 24), np.float32), peftio.peft_config(
        base_model="x", revision=None, num_virtual_tokens=2, token_dim=24, decoder=True), {})
    with pytest.raises(pr.ShapeError):
        reg.import_prompts("a", "rate", wide)  # token_dim 24 on a 16-wide model
    assert reg.list_sets(model="a") and all(s.id <= made.id for s in reg.list_sets(model="a"))  # nothing was written


def test_the_cli_exports_and_imports_peft_folders(tmp_path):
    from click.testing import CliRunner

    from prompt_registry.cli.main import main

    base = ["--registry", str(tmp_path / "reg")]

    def cli(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(main, [*base, *map(str, args)])
        assert result.exit_code == code, result.output
        return result.stdout

    cli("init")
    cli("model", "add", "a", "--path", make_fake_model(tmp_path / "a", 16))
    cli("task", "add", "rate", "--kind", "rating")
    (tmp_path / "u.csv").write_text("user_id\n" + "\n".join(user_ids(4)) + "\n")
    cli("user", "import", tmp_path / "u.csv")
    np.save(tmp_path / "p.npy", prompts(4))
    cli("prompt", "import", tmp_path / "p.npy", "--model", "a", "--task", "rate", "--users", tmp_path / "u.csv")
    (tmp_path / "two.csv").write_text("user_id\nu001\nu003\n")
    out = json.loads(cli("prompt", "export", "1", tmp_path / "out", "--format", "peft", "--users", tmp_path / "two.csv", "--json"))
    assert out["n_users"] == 2 and sorted(p.name for p in (tmp_path / "out").iterdir()) == ["u001", "u003"]
    made = json.loads(cli("prompt", "import", tmp_path / "out", "--format", "peft", "--model", "a", "--task", "rate", "--json"))
    assert made["n_rows"] == 2
    cli("prompt", "import", tmp_path / "out", "--model", "a", "--task", "rate", code=2)  # a folder needs --format peft


def test_peft_loads_an_export_and_its_output_equals_our_injection(tmp_path):
    """The real ``peft`` package on a tiny Llama: PEFT puts the virtual tokens in front of the whole
    input; our injection puts the prompt where the template's ``<user>`` is. With ``<user>`` first
    (and no special token before it), the two give the same logits."""
    peft = pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from prompt_registry.backbones.loader import load_backbone
    from prompt_registry.backbones.prompting import PromptEncoder, Template
    from prompt_registry.testing.models import build_tiny_llama

    torch.manual_seed(0)
    path = build_tiny_llama(tmp_path / "llama", hidden_size=32, seed=3)
    with pr.Registry.init(tmp_path / "reg") as reg:
        reg.register_model("llama", path)
        reg.add_task("rate", "rating")
        scale = float(load_backbone(reg.get_model("llama"), device="cpu").model.get_input_embeddings().weight.norm(dim=-1).mean())
        data = (prompts(2, 32, length=3, seed=7) * scale / np.sqrt(32)).astype(np.float32)  # on the scale of the token embeddings
        made = reg.import_prompts("llama", "rate", data, ["u0", "u1"], create_users=True)
        reg.export_prompts(made.id, tmp_path / "peft", format="peft")
        backbone = load_backbone(reg.get_model("llama"), device="cpu")
    encoder = PromptEncoder(backbone, Template("<user> Rating of {item}:"), 3, "rating")
    suffix = encoder.tokenize([" Rating of movie 7:"])[0] + list(encoder.trail)
    # our injection with the prompt first: the slot at position 0, then the text (no special token before it)
    batch = {"input_ids": torch.tensor([[encoder.pad_id] * 3 + suffix]), "attention_mask": torch.ones(1, 3 + len(suffix), dtype=torch.long),
             "slot_start": torch.tensor([0])}
    with torch.no_grad():
        ours = encoder.features(torch.from_numpy(data[[1]]), batch)[0]
        base = AutoModelForCausalLM.from_pretrained(path)
        model = peft.PeftModel.from_pretrained(base, tmp_path / "peft" / "u1")
        model.eval()
        logits = model(input_ids=torch.tensor([suffix]), attention_mask=torch.ones(1, len(suffix), dtype=torch.long)).logits
    theirs = logits[0, -1, encoder.answer_ids]
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-4, atol=1e-5)
    other = peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(path), tmp_path / "peft" / "u0")
    with torch.no_grad():
        differs = other(input_ids=torch.tensor([suffix])).logits[0, -1, encoder.answer_ids]
    assert not torch.allclose(differs, theirs)  # each user's folder carries that user's prompt
