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

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.usefixtures("one_torch_thread")]


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
    # an evaluation of its own loads the backbone at its precision (fp32 by default)
    again = reg.evaluate(result.set.id, assets["rating"])
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


def test_auto_is_bf16_only_where_the_cpu_has_bf16_instructions(monkeypatch):
    """oneDNN runs bf16 on any AVX512 CPU, emulated and slower than fp32: not a reason to pick it."""
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert not loader.native_bf16("cpu") and resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: True)
    assert loader.native_bf16("cpu") and resolve_precision("auto", "cpu") == "bf16"


def test_a_decoders_answer_logits_leave_the_bf16_backbone_in_fp32(reg):
    """The answer projection is the decoder head's whole input: done in bf16 it would round every
    feature to bf16 (8 bits of mantissa), several times the error of the backbone's own passes."""
    info = reg.get_model("llama")
    exact, half = load_backbone(info, precision="fp32"), load_backbone(info, precision="bf16")
    texts = [Template().suffix(f"movie number {i}") for i in range(8)]
    got = []
    for backbone in (exact, half):
        encoder = PromptEncoder(backbone, Template(), prompt_len=1, task_kind="rating")
        prompts = torch.randn(8, 1, info.hidden_size, generator=torch.Generator().manual_seed(1)) * backbone.token_norm
        with torch.no_grad():
            got.append(encoder.features(prompts, encoder.collate(encoder.tokenize(texts))))
    f32, f16 = got
    assert not torch.equal(f16, f16.bfloat16().float())  # not bf16 values cast up
    assert float((f32 - f16).abs().max() / f32.abs().max()) < 0.02


def test_checkpoint_keys_read_the_resolved_precision_and_keep_fp32_keys_as_they_were():
    from prompt_registry.training.trainer import keyed_config

    plain = {k: v for k, v in TrainConfig().to_dict().items() if k != "precision"}
    assert keyed_config(TrainConfig().to_dict(), "fp32") == plain  # a checkpoint from before precision resumes
    assert keyed_config(TrainConfig(precision="auto").to_dict(), "fp32") == plain
    assert keyed_config(TrainConfig(precision="auto").to_dict(), "bf16") == keyed_config(TrainConfig(precision="bf16").to_dict(), "bf16")
    assert keyed_config(TrainConfig(precision="bf16").to_dict(), "bf16") != plain


def test_a_plans_steps_run_at_the_precision_given(reg, assets):
    from prompt_registry.migration.puma.selection import SelectionConfig as Selection

    reg.train_prompts("bert", "rate", assets["rating"], config=TrainConfig(epochs=2, lr=5e-3), progress=False, alias="production")
    fit = reg.planner.plan("llama", "rate", sources=["bert"], strategy="direct")
    config = MigrationConfig(epochs=1, min_steps=10, selection=Selection(budget=20), cost_budget=None)
    done = reg.planner.run(fit.id, assets["rating"], config=config, precision="bf16")
    assert reg.get_run(done.steps[0].run_id).cost["precision"] == "bf16"
    retrain = reg.planner.plan("llama", "rate", strategy="retrain")
    done = reg.planner.run(retrain.id, assets["rating"], train_config=TrainConfig(epochs=1), precision="bf16")
    assert reg.get_run(done.steps[0].run_id).cost["precision"] == "bf16"
    again = reg.planner.plan("llama", "rate", strategy="retrain")
    done = reg.planner.run(again.id, assets["rating"], train_config=TrainConfig(epochs=1))  # no precision given: the config's
    assert reg.get_run(done.steps[0].run_id).cost["precision"] == "fp32"


def test_an_evaluation_at_a_precision_keeps_the_split_the_set_was_trained_on(reg, assets):
    trained = reg.train_prompts("bert", "rate", assets["rating"], config=TrainConfig(epochs=2, lr=5e-3, test_fraction=0.3),
                                progress=False, evaluate_split="test")
    again = reg.evaluate(trained.set.id, assets["rating"], precision="bf16")
    assert reg.get_run(again.run_id).config["precision"] == "bf16" and reg.get_run(again.run_id).config["test_fraction"] == 0.3
    assert again.metrics["n"] == trained.evaluation.metrics["n"]


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
