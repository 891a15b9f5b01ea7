"""Mixed precision: the backbone's passes under bf16 autocast (``TrainConfig.precision``,
``MigrationConfig.precision``, ``--precision``), with prompts, heads and their gradients in fp32;
``auto`` picks bf16 only where the device has it natively. Tiny random backbones, synthetic users."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

import prompt_registry as pr
from prompt_registry import Registry
from prompt_registry.backbones import loader
from prompt_registry.backbones.loader import load_backbone, resolve_precision
from prompt_registry.backbones.prompting import PromptEncoder, Template
from prompt_registry.cli.main import main
from prompt_registry.data.synthetic import make_synthetic
from prompt_registry.migration.config import MigrationConfig
from prompt_registry.migration.puma.selection import SelectionConfig
from prompt_registry.testing.models import build_tiny_bert, build_tiny_llama
from prompt_registry.training.config import TrainConfig

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module", autouse=True)
def _threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision-assets")
    return {
        "bert": build_tiny_bert(root / "tiny-bert", hidden_size=48),
        "llama": build_tiny_llama(root / "tiny-llama", hidden_size=32),
        "rating": make_synthetic(root / "rating-data", n_users=60, n_items=80, per_user=30, seed=0),
    }


@pytest.fixture
def reg(tmp_path, assets):
    with Registry.init(tmp_path / "reg", actor="precision") as registry:
        registry.register_model("bert", assets["bert"])
        registry.register_model("llama", assets["llama"])
        yield registry


def test_precision_is_validated_and_auto_follows_the_hardware(monkeypatch):
    for make in (lambda: TrainConfig(precision="fp16"), lambda: MigrationConfig(precision="half")):
        with pytest.raises(pr.InvalidArgumentError, match="precision must be one of fp32, bf16, auto"):
            make()
    with pytest.raises(pr.InvalidArgumentError, match="unknown precision 'int8'"):
        resolve_precision("int8", "cpu")
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    monkeypatch.setattr(loader, "native_bf16", lambda device: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(loader, "native_bf16", lambda device: True)
    assert resolve_precision("auto", "cpu") == "bf16"


@pytest.mark.parametrize("model", ["bert", "llama"])
def test_bf16_features_are_fp32_close_to_fp32_and_differentiable_in_the_prompts(reg, model):
    info = reg.get_model(model)
    exact, half = load_backbone(info, precision="fp32"), load_backbone(info, precision="bf16")
    assert (exact.precision, half.precision) == ("fp32", "bf16")
    texts = [Template().suffix("comedy movie"), Template().suffix("space crime night war story movie")]
    out = []
    for backbone in (exact, half):
        encoder = PromptEncoder(backbone, Template(), prompt_len=2, task_kind="rating")
        prompts = (torch.randn(2, 2, info.hidden_size, generator=torch.Generator().manual_seed(0)) * backbone.token_norm).requires_grad_(True)
        features = encoder.features(prompts, encoder.collate(encoder.tokenize(texts)))
        features.square().sum().backward()
        assert features.dtype == torch.float32 and prompts.grad is not None and prompts.grad.dtype == torch.float32
        assert float(prompts.grad.abs().sum()) > 0
        out.append((features.detach(), prompts.grad))
    (f32, g32), (f16, g16) = out
    assert not torch.equal(f32, f16)  # bf16 really ran
    scale = f32.abs().max()
    assert float((f32 - f16).abs().max() / scale) < 0.05  # bf16 keeps ~3 significant digits
    assert float(torch.nn.functional.cosine_similarity(g32.flatten(), g16.flatten(), dim=0)) > 0.98


def test_bf16_training_learns_records_its_precision_and_evaluates_at_it(reg, assets):
    config = TrainConfig(epochs=20, lr=5e-3, precision="bf16")
    result = reg.train_prompts("bert", "rate", assets["rating"], config=config, progress=False, evaluate_split="test")
    m = result.evaluation.metrics
    assert m["rmse"] < m["baselines"]["global_mean"]["rmse"] - 0.2, m  # it learns as fp32 does (test_training)
    assert result.run.cost["precision"] == "bf16" and result.run.config["precision"] == "bf16"
    ev_run = reg.get_run(result.evaluation.run_id)
    assert ev_run.config["precision"] == "bf16"
    # an evaluation of its own loads the backbone at the config's precision (fp32 by default)
    again = reg.evaluate(result.set.id, assets["rating"], config=TrainConfig(precision="fp32"))
    assert reg.get_run(again.run_id).config["precision"] == "fp32"
    assert abs(again.metrics["rmse"] - m["rmse"]) < 0.02


def test_a_bf16_migration_records_it_and_its_report_does_not_reuse_fp32_evaluations(reg, assets):
    source = reg.train_prompts("bert", "rate", assets["rating"], config=TrainConfig(epochs=6, lr=5e-3), progress=False,
                               evaluate_split="test")
    reg.train_prompts("llama", "rate", assets["rating"], config=TrainConfig(epochs=2, lr=5e-3), progress=False, evaluate_split="test")
    config = MigrationConfig(precision="bf16", epochs=2, min_steps=20, selection=SelectionConfig(budget=0.5))
    result = reg.migrate(["bert"], "llama", "rate", assets["rating"], config=config, progress=False)
    assert result.run.cost["precision"] == "bf16" and result.run.config["precision"] == "bf16"
    # the report evaluated the source at bf16 rather than reusing its fp32 evaluation
    source_evals = reg.list_evaluations(source.set.id, split="test")
    assert sorted(reg.get_run(e.run_id).config["precision"] for e in source_evals) == ["bf16", "fp32"]
    for e in reg.list_evaluations(result.final.id, split="test"):
        assert reg.get_run(e.run_id).config["precision"] == "bf16"


def test_the_cli_takes_precision(tmp_path, assets):
    base = ["--registry", str(tmp_path / "cli-reg")]
    runner = CliRunner()
    assert runner.invoke(main, [*base, "init"]).exit_code == 0
    assert runner.invoke(main, [*base, "model", "add", "bert", "--path", str(assets["bert"])]).exit_code == 0
    bad = runner.invoke(main, [*base, "prompt", "train", "--model", "bert", "--task", "rate", "--data", str(assets["rating"]),
                               "--precision", "fp16"])
    assert bad.exit_code != 0 and "fp16" in bad.output
    done = runner.invoke(main, [*base, "prompt", "train", "--model", "bert", "--task", "rate", "--data", str(assets["rating"]),
                                "--epochs", "1", "--precision", "bf16", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout)["run"]["config"]["precision"] == "bf16"
