"""Prompt training and evaluation with tiny random backbones on synthetic users with real structure.

A frozen random backbone mostly lets a prompt carry the user's bias, so trained prompts must beat
the global mean (popularity for clicks) clearly and come close to the per-user mean.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import prompt_registry as pr
from prompt_registry import Registry
from prompt_registry.backbones.heads import TaskHead
from prompt_registry.data.synthetic import make_synthetic
from prompt_registry.testing.models import build_tiny_bert, build_tiny_llama
from prompt_registry.training.config import TrainConfig

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"), pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("training-assets")
    return {
        "llama": build_tiny_llama(root / "tiny-llama", hidden_size=32),
        "bert": build_tiny_bert(root / "tiny-bert", hidden_size=48),
        "rating": make_synthetic(root / "rating-data", n_users=60, n_items=80, per_user=30, seed=0),
        "click": make_synthetic(root / "click-data", n_users=60, n_items=80, per_user=30, seed=1, kind="click"),
    }


@pytest.fixture
def reg(tmp_path, assets):
    with Registry.init(tmp_path / "reg", actor="trainer") as registry:
        registry.register_model("llama", assets["llama"])
        registry.register_model("bert", assets["bert"])
        yield registry


@pytest.mark.parametrize(
    ("model", "epochs", "lr", "close_to_user_mean"),
    [("bert", 20, 5e-3, 0.06), ("llama", 30, 1e-2, 0.15)],
)
def test_trained_rating_prompts_beat_global_mean_and_approach_user_mean(reg, assets, model, epochs, lr, close_to_user_mean):
    result = reg.train_prompts(model, "rate", assets["rating"], config=TrainConfig(epochs=epochs, lr=lr), progress=False, evaluate_split="test")
    m = result.evaluation.metrics
    global_mean, user_mean = m["baselines"]["global_mean"]["rmse"], m["baselines"]["user_mean"]["rmse"]
    assert m["rmse"] < global_mean - 0.2, m
    assert m["rmse"] < user_mean + close_to_user_mean, m
    # what was written: 60 users' prompts with a head, a run with its ledger, an evaluation
    s = result.set
    assert (s.n_users, s.prompt_len, s.width, s.head_id) == (60, 1, reg.get_model(model).hidden_size, result.head_id)
    run = result.run
    n_train = run.config["n_train"]
    assert run.status == "succeeded" and run.examples_seen == n_train * run.cost["epochs_run"]
    assert run.forward_tokens > run.backward_tokens > n_train * 5  # validation passes add forward tokens
    assert run.wall_seconds > 0 and run.device == "cpu"
    ev = reg.get_evaluation(result.evaluation.id)
    assert len(ev.per_user) == 60 and ev.split == "test"
    assert np.isclose(np.mean([u["n"] for u in ev.per_user.values()]), m["n"] / 60)


@pytest.mark.parametrize("model", ["bert", "llama"])
def test_trained_click_prompts_beat_popularity(reg, assets, model):
    result = reg.train_prompts(model, "click", assets["click"], config=TrainConfig(epochs=15, lr=1e-2), progress=False, evaluate_split="test")
    m = result.evaluation.metrics
    assert m["auc"] > m["baselines"]["popularity"]["auc"] + 0.2, m
    assert 0 <= m["uauc"] <= 1


def test_best_epoch_is_kept_and_evaluation_can_be_rerun(reg, assets):
    cfg = TrainConfig(epochs=4, lr=5e-3, seed=3)
    result = reg.train_prompts("bert", "rate", assets["rating"], config=cfg, progress=False)
    valid = [h["valid_rmse"] for h in result.history]
    assert result.best_epoch == int(np.argmin(valid)) + 1
    assert reg.get_run(result.run.id).cost["results"]["best_epoch"] == result.best_epoch
    again = reg.evaluate(result.set.id, assets["rating"], split="valid")
    assert np.isclose(again.metrics["rmse"], min(valid), atol=1e-5)  # the kept prompts are the best epoch's


def test_resume_after_interruption_matches_uninterrupted_run(reg, assets, tmp_path):
    cfg = TrainConfig(epochs=3, lr=5e-3, seed=5, checkpoint_every=7)
    straight = reg.train_prompts("llama", "rate", assets["rating"], config=cfg, progress=False)

    class Crash(Exception):
        pass

    def crash_at_17(step):
        if step == 17:  # mid-epoch, after a checkpoint at step 14
            raise Crash

    with pytest.raises(Crash):
        reg.train_prompts("llama", "rate", assets["rating"], config=cfg, progress=False, on_step=crash_at_17)
    failed = reg.list_runs(kind="train")[0]
    assert failed.status == "failed" and "Crash" in failed.error
    resumed = reg.train_prompts("llama", "rate", assets["rating"], config=cfg, progress=False, resume=True)
    assert resumed.run.config["resumed_from_step"] == 14
    users = reg.list_set_users(straight.set.id)
    a = reg.get_prompts(users, set=straight.set.id)
    b = reg.get_prompts(users, set=resumed.set.id)
    assert torch.equal(a, b)
    assert resumed.run.examples_seen == straight.run.examples_seen
    assert not list((reg.scratch_dir() / "checkpoints").glob("*.safetensors"))  # cleaned after success


def test_task_kind_must_match_the_data(reg, assets):
    reg.add_task("rate", "rating")
    with pytest.raises(pr.ConflictError, match="click labels"):
        reg.train_prompts("bert", "rate", assets["click"], config=TrainConfig(epochs=1), progress=False)


def test_changed_weights_are_refused_at_load(reg, assets, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    copy = tmp_path / "llama-copy"
    shutil.copytree(assets["llama"], copy)
    reg.register_model("llama-copy", copy)
    weights = load_file(str(copy / "model.safetensors"))
    first = next(iter(weights))
    weights[first] = weights[first] + 1.0
    save_file(weights, str(copy / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(pr.ModelMismatchError, match="changed since registration"):
        reg.train_prompts("llama-copy", "rate", assets["rating"], config=TrainConfig(epochs=1), progress=False)


def test_config_validation():
    with pytest.raises(pr.InvalidArgumentError, match="epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(pr.InvalidFileError, match="placeholder"):
        TrainConfig(template="no placeholder {item}")
    assert TrainConfig(history_len=3).template_obj().history_len == 3


def test_history_template_trains(reg, assets):
    result = reg.train_prompts("bert", "rate", assets["rating"], config=TrainConfig(epochs=2, history_len=2), progress=False, evaluate_split="test")
    assert result.evaluation.metrics["rmse"] < result.evaluation.metrics["baselines"]["global_mean"]["rmse"]
    assert result.run.config["history_len"] == 2


def test_train_and_eval_through_the_cli(tmp_path, assets):
    import json

    from click.testing import CliRunner

    from prompt_registry.cli.main import main

    base = ["--registry", str(tmp_path / "cli-reg")]
    runner = CliRunner()
    assert runner.invoke(main, [*base, "init"]).exit_code == 0
    assert runner.invoke(main, [*base, "model", "add", "bert", "--path", str(assets["bert"])]).exit_code == 0
    users = tmp_path / "users.csv"
    users.write_text("user_id\n" + "\n".join(f"user{i:04d}" for i in range(20)) + "\n")
    res = runner.invoke(main, [*base, "prompt", "train", "--model", "bert", "--task", "rate", "--data", str(assets["rating"]),
                               "--users", str(users), "--epochs", "3", "--lr", "5e-3", "--alias", "production", "--json"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["set"]["n_users"] == 20 and out["set"]["aliases"] == ["production"]
    assert out["run"]["forward_tokens"] > 0 and out["evaluation"]["metrics"]["users"] == 20
    table = runner.invoke(main, [*base, "eval", "bert/rate@production", "--data", str(assets["rating"]), "--split", "valid"])
    assert table.exit_code == 0 and "baseline: user_mean" in table.stdout and "RMSE" in table.stdout
    text = runner.invoke(main, [*base, "prompt", "train", "--model", "bert", "--task", "rate", "--data", str(assets["rating"]),
                                "--users", str(users), "--epochs", "1", "--no-eval"])
    assert text.exit_code == 0 and "token-passes" in text.stdout
    bad = runner.invoke(main, [*base, "prompt", "train", "--model", "nope", "--task", "rate", "--data", str(assets["rating"])])
    assert bad.exit_code == 1 and "unknown model 'nope'" in bad.stderr


@pytest.mark.parametrize("model", ["llama", "bert"])
def test_injected_prompt_equals_the_token_it_copies(reg, model):
    """A prompt equal to a token's embedding must give exactly what that token gives via input_ids,
    in a padded batch mixing texts of different lengths (padding side, positions, masks)."""
    from prompt_registry.backbones.loader import load_backbone
    from prompt_registry.backbones.prompting import PromptEncoder, Template

    backbone = load_backbone(reg.get_model(model))
    encoder = PromptEncoder(backbone, Template(), prompt_len=1, task_kind="rating")
    token = backbone.tokenizer("drama", add_special_tokens=False)["input_ids"][0]
    texts = [Template().suffix("comedy movie"), Template().suffix("space crime night war story movie")]
    batch = encoder.collate(encoder.tokenize(texts))
    prompts = backbone.embed(torch.tensor([[token], [token]]))
    with torch.no_grad():
        got = encoder.features(prompts, batch)
        for i, text in enumerate(texts):
            ids = torch.tensor([encoder.lead + encoder.prefix_ids + [token] + encoder.tokenize([text])[0] + encoder.trail])
            if backbone.decoder:
                logits = backbone.model(input_ids=ids).logits[0, -1, encoder.answer_ids]
                torch.testing.assert_close(got[i], logits, rtol=1e-4, atol=1e-4)
            else:
                hidden = backbone.model(input_ids=ids).last_hidden_state[0].mean(dim=0)
                torch.testing.assert_close(got[i], hidden, rtol=1e-4, atol=1e-4)


def test_the_loop_budgets_steps_warms_up_and_never_decays_to_zero():
    from prompt_registry.training.loop import LoopConfig

    config = LoopConfig(epochs=4, batch_size=32, eval_batch_size=64, seed=0, checkpoint_every=100, patience=None,
                        min_steps=1000, warmup_steps=100, schedule="cosine", final_lr=0.1)
    assert config.total_epochs(25) == 40 and config.total_epochs(400) == 4  # steps, not epochs, when epochs are short
    factor = config.lr_factor(1000)
    assert factor(0) == pytest.approx(0.01) and factor(99) == pytest.approx(1.0) and factor(100) == pytest.approx(1.0)
    assert factor(550) == pytest.approx(0.55) and factor(1000) == pytest.approx(0.1) and factor(5000) == pytest.approx(0.1)
    assert min(factor(s) for s in range(1200)) >= 0.01
    constant = LoopConfig(epochs=1, batch_size=1, eval_batch_size=1, seed=0, checkpoint_every=1, patience=None)
    assert constant.lr_factor(10)(7) == 1.0
    with pytest.raises(pr.InvalidArgumentError, match="unknown schedule"):
        LoopConfig(epochs=1, batch_size=1, eval_batch_size=1, seed=0, checkpoint_every=1, patience=None, schedule="step")


def test_min_steps_and_sparse_validation_are_recorded(reg, assets):
    config = TrainConfig(epochs=1, lr=5e-3, min_steps=200, valid_every=60, warmup_steps=10, schedule="cosine")
    result = reg.train_prompts("bert", "rate", assets["rating"], config=config, progress=False)
    cost = result.run.cost
    assert cost["steps"] >= 200 and cost["epochs_run"] > 1
    steps = [h["step"] for h in result.history]
    assert steps[0] >= 60 and steps[-1] == cost["steps"] and all(b - a >= 60 for a, b in zip(steps[:-2], steps[1:-1]))
    assert cost["validations"] == len(steps) < cost["epochs_run"]


def test_on_realistic_clicks_the_default_head_beats_popularity_and_starts_from_it(tmp_path, reg):
    """make_clicks: Zipf popularity, taste over genres, unclicked impressions as negatives; the
    default click head (item prior + candidate scoring) starts as popularity and adds the user."""
    from prompt_registry.data import make_clicks
    from prompt_registry.data.dataset import Dataset
    from prompt_registry.training import metrics
    from prompt_registry.training.examples import item_priors

    data = make_clicks(tmp_path / "clicks", n_users=200, impressions=30, seed=0)
    d = Dataset.load(data)
    split = d.split(test_fraction=0.2, valid_fraction=0.1)
    # the prior column is exactly the popularity baseline's score, and an untrained prior head predicts it
    prior = item_priors(d, split.train, "click")
    head = TaskHead("click", False, 48 + 2 * 48 + 1, 0.5, prior=True, scoring_width=48)
    features = torch.cat([torch.randn(len(split.test), 48 * 3), torch.as_tensor(prior(d.items[split.test]))[:, None]], dim=1)
    baseline = metrics.baselines(d.users[split.train], d.items[split.train], d.labels[split.train], d.users[split.test],
                                 d.items[split.test], d.labels[split.test], "click")["popularity"]
    untrained = metrics.summarize(d.users[split.test], head.predict(features).detach().numpy(), d.labels[split.test], "click")
    assert abs(untrained["auc"] - baseline["auc"]) < 1e-6 and abs(untrained["uauc"] - baseline["uauc"]) < 1e-6
    result = reg.train_prompts("bert", "click", data, config=TrainConfig(epochs=15, lr=5e-3, patience=3), progress=False, evaluate_split="test")
    m = result.evaluation.metrics
    assert m["uauc"] > m["baselines"]["popularity"]["uauc"] + 0.03, m
    meta = reg.get_artifact(result.head_id).config
    assert meta["prior"] and meta["scoring_width"] == 48 and meta["click_mlp"]


def test_a_click_head_stored_before_the_mlp_loads_as_the_linear_head_it_was():
    old = {"task_kind": "click", "decoder": False, "feature_size": 8, "label_mean": 0.4, "hidden": 64}
    tensors = {"linear.weight": torch.ones(1, 8), "linear.bias": torch.zeros(1)}
    head = TaskHead.from_artifact(old, tensors)
    assert not head.click_mlp and torch.allclose(head.predict(torch.ones(2, 8)), torch.sigmoid(torch.tensor([8.0, 8.0])))
