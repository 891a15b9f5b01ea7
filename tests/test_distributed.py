"""Data-parallel training: the training loop under torchrun with 2 gloo processes takes the same
steps as one process on the same global batch (same seed): loss curve, validation and weights
agree within float summation order."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

CHILD = """
import json, os, sys
import torch
torch.set_num_threads(1)
import torch.distributed as dist
from prompt_registry import Registry
from prompt_registry.backbones.heads import TaskHead
from prompt_registry.backbones.loader import load_backbone
from prompt_registry.backbones.prompting import PromptEncoder
from prompt_registry.data.dataset import Dataset
from prompt_registry.training.config import TrainConfig
from prompt_registry.training.loop import LoopConfig, TrainingLoop
from prompt_registry.training.trainer import prepare_examples

reg_dir, data_dir, out = sys.argv[1:4]
world = int(os.environ.get("WORLD_SIZE", "1"))
if world > 1:
    dist.init_process_group("gloo")
with Registry.open(reg_dir) as reg:
    info = reg.get_model("bert16")
backbone = load_backbone(info, device="cpu")
config = TrainConfig()
dataset = Dataset.load(data_dir)
split = dataset.split(test_fraction=config.test_fraction, valid_fraction=config.valid_fraction)
users = list(dict.fromkeys(dataset.users[split.train].tolist()))
template = config.template_obj()
encoder = PromptEncoder(backbone, template, 1, "rating", config.max_length, item_prior=config.uses_item_prior("rating"),
                        scoring=config.uses_scoring("rating"))
train, valid = prepare_examples(dataset, split, users, encoder, template)
torch.manual_seed(0)
sources = torch.randn(len(users), 1, 8)  # frozen source prompts, the same on every rank


class Adapter(torch.nn.Module):  # what a migration fits: a map from frozen source prompts
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, backbone.hidden_size)

    def forward(self, index):
        return self.lin(sources[index])


provider = Adapter()
head = TaskHead("rating", backbone.decoder, encoder.feature_size, float(train.labels.mean()), prior=encoder.item_prior, scoring_width=0)
optimizers = {"all": torch.optim.AdamW([*provider.parameters(), *head.parameters()], lr=3e-3)}
loop = TrainingLoop(encoder=encoder, head=head, provider=provider, optimizers=optimizers, schedulers={}, train=train, valid=valid,
                    config=LoopConfig(epochs=3, batch_size=16, eval_batch_size=64, seed=0, checkpoint_every=10**9, patience=None,
                                      distributed=world > 1), task_kind="rating", checkpoint=None)
losses = []
real_step = loop.step
def step(positions):
    losses.append(real_step(positions))
    return losses[-1]
loop.step = step
loop.fit()
ledger = loop.ledger("cpu")
# then a whole migration in the same process group: every rank fits, rank 0 stores
from prompt_registry.migration.config import MigrationConfig
from prompt_registry.migration.selection import SelectionConfig
config = MigrationConfig(distributed=world > 1, min_steps=60, warmup_steps=0, head_lr=1e-2, lr=3e-3, selection=SelectionConfig(budget=20),
                         cost_budget=None)  # the data-parallel fit and map alone (a budget refinement would run on rank 0 only)
with Registry.open(reg_dir) as reg:
    result = reg.migrate(["bert16"], "bert24", "rate", data_dir, config=config, evaluate=False, progress=False)
# then prompt training from scratch: the per-user table's sparse rows, synchronised by the loop (on a
# task that does not exist yet: rank 0 creates it)
with Registry.open(reg_dir) as reg:
    trained = reg.train_prompts("bert24", "stars", data_dir, config=TrainConfig(epochs=6, lr=1e-2, head_lr=1e-2, batch_size=16,
                                                                             distributed=world > 1), progress=False, alias="trained")
if int(os.environ.get("RANK", "0")) == 0:
    with open(out, "w") as fh:
        json.dump({"losses": losses, "weight": provider.lin.weight.detach().flatten().tolist(), "history": loop.state.history,
                   "examples": ledger.examples_seen, "best_epoch": loop.state.best_epoch, "world": ledger.extra.get("world_size", 1),
                   "migration": {"adapter": result.adapter.id, "run": result.run.id, "set": result.set.id},
                   "trained": {"set": trained.set.id, "run": trained.run.id, "head": trained.head_id}}, fh)
elif result.set.id is None or trained.set.id is None or trained.run.status != "succeeded":
    raise SystemExit("a follower rank got no set back")
if world > 1:
    dist.destroy_process_group()
"""


def test_two_gloo_ranks_take_the_steps_of_one_process_on_the_same_global_batch(tmp_path):
    """The loop alone (every step's loss), then a whole migration with ``MigrationConfig(distributed=True)``."""
    import shutil

    from prompt_registry import Registry
    from prompt_registry.data.synthetic import make_synthetic
    from prompt_registry.testing.models import build_tiny_bert
    from prompt_registry.training.config import TrainConfig

    data = make_synthetic(tmp_path / "data", n_users=30, n_items=30, per_user=16, seed=5)
    with Registry.init(tmp_path / "reg") as reg:
        reg.register_model("bert16", build_tiny_bert(tmp_path / "bert16", hidden_size=16, seed=1))
        reg.register_model("bert24", build_tiny_bert(tmp_path / "bert24", hidden_size=24, seed=2))
        reg.train_prompts("bert16", "rate", data, config=TrainConfig(epochs=2, lr=5e-3), progress=False)
    shutil.copytree(tmp_path / "reg", tmp_path / "reg-one")  # the single process gets a registry of its own
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # both at once (their start-up, imports mostly, is most of the time); the results do not depend on timing
    jobs = {"one": [sys.executable, str(script), str(tmp_path / "reg-one"), str(data), str(tmp_path / "one.json")],
            "two": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
                    str(tmp_path / "reg"), str(data), str(tmp_path / "two.json")]}
    procs = {name: subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name, cmd in jobs.items()}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, f"{name}: {out}{err}"
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert two["world"] == 2 and one["world"] == 1
    a, b = np.array(one["losses"]), np.array(two["losses"])
    assert len(a) == len(b) > 50 and one["examples"] == two["examples"]  # the same steps, every row seen once per epoch in all
    gap = np.abs(a - b) / np.abs(a)
    assert gap.max() < 1e-4, f"loss curves differ by up to {gap.max():.2e} (relative)"  # tolerance: float summation order
    assert a[-20:].mean() < a[:20].mean()  # and it learned
    np.testing.assert_allclose(two["weight"], one["weight"], rtol=1e-3, atol=1e-5)
    assert [h["valid_rmse"] for h in two["history"]] == pytest.approx([h["valid_rmse"] for h in one["history"]], rel=1e-4)
    assert two["best_epoch"] == one["best_epoch"]
    # the migration: rank 0 stored one adapter, one set and one run, whose fit matches the single process's
    with Registry.open(tmp_path / "reg") as reg, Registry.open(tmp_path / "reg-one") as ref:
        assert len(reg.list_artifacts(kind="adapter")) == 1
        assert [s.id for s in reg.list_sets(model="bert24") if s.run_id == two["migration"]["run"]] == [two["migration"]["set"]]
        ranked, single = reg.get_run(two["migration"]["run"]), ref.get_run(one["migration"]["run"])
        assert ranked.status == "succeeded" and ranked.cost["world_size"] == 2 and "world_size" not in single.cost
        _, fitted_2 = reg.load_artifact(two["migration"]["adapter"])
        _, fitted_1 = ref.load_artifact(one["migration"]["adapter"])
    assert fitted_1.keys() == fitted_2.keys()
    for name in fitted_1:  # the stored adapter itself: the same weights, up to float summation order
        np.testing.assert_allclose(fitted_2[name].numpy(), fitted_1[name].numpy(), rtol=1e-3, atol=1e-5, err_msg=name)
    hist_1, hist_2 = single.cost["results"]["history"], ranked.cost["results"]["history"]
    assert len(hist_1) == len(hist_2) >= 1
    for h1, h2 in zip(hist_1, hist_2):
        assert h2["step"] == h1["step"] and h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-4)
        assert h2["valid_rmse"] == pytest.approx(h1["valid_rmse"], rel=1e-4)
    assert ranked.examples_seen == single.examples_seen  # every rank's rows counted, once
    # prompt training: every user's prompt row and the head as one process trains them
    with Registry.open(tmp_path / "reg") as reg, Registry.open(tmp_path / "reg-one") as ref:
        assert len(reg.list_sets(model="bert24")) == 2 and reg.get_set("bert24/stars@trained").id == two["trained"]["set"]
        t2, t1 = reg.get_run(two["trained"]["run"]), ref.get_run(one["trained"]["run"])
        assert t2.cost["world_size"] == 2 and t2.examples_seen == t1.examples_seen and t2.forward_tokens == t1.forward_tokens
        users = reg.get_set(two["trained"]["set"]).n_users
        names = reg.list_set_users(two["trained"]["set"])
        assert names == ref.list_set_users(one["trained"]["set"])
        p2 = reg.get_prompts(names, set=two["trained"]["set"]).numpy()
        p1 = ref.get_prompts(names, set=one["trained"]["set"]).numpy()
        _, head_2 = reg.load_artifact(two["trained"]["head"])
        _, head_1 = ref.load_artifact(one["trained"]["head"])
    assert users == 30 and p1.shape == p2.shape == (30, 1, 24)
    np.testing.assert_allclose(p2, p1, rtol=1e-3, atol=1e-5)
    for name in head_1:
        np.testing.assert_allclose(head_2[name].numpy(), head_1[name].numpy(), rtol=1e-3, atol=1e-5, err_msg=name)
    v1, v2 = ([h["valid_rmse"] for h in t.cost["results"]["history"]] for t in (t1, t2))
    assert v2 == pytest.approx(v1, rel=1e-4) and v1[-1] < v1[0]  # the same validation curve, and it learned
    print(f"2 gloo ranks vs 1 process: {len(a)} loop steps, max relative loss gap {gap.max():.2e}, loss {a[:20].mean():.4f} -> "
          f"{a[-20:].mean():.4f}; migration validations {[round(h['valid_rmse'], 5) for h in hist_2]}")


def test_distributed_outside_torchrun_says_how_to_start_it(tmp_path):
    from click.testing import CliRunner

    from prompt_registry.cli.main import main

    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "MASTER_ADDR", "RANK")}
    result = CliRunner(env=env).invoke(main, ["--registry", str(tmp_path / "reg"), "migrate", "run", "--from", "a", "--to", "b", "--task", "t",
                                              "--data", str(tmp_path), "--distributed"])
    assert result.exit_code != 0 and "torchrun" in result.output, result.output
    result = CliRunner(env=env).invoke(main, ["--registry", str(tmp_path / "reg"), "prompt", "train", "--model", "a", "--task", "t",
                                              "--data", str(tmp_path), "--distributed"])
    assert result.exit_code != 0 and "torchrun" in result.output, result.output
    result = CliRunner(env=env).invoke(main, ["--registry", str(tmp_path / "reg"), "prompt", "train", "--model", "a", "--task", "t",
                                              "--data", str(tmp_path), "--distributed", "--resume"])
    assert result.exit_code != 0 and "does not resume" in result.output, result.output


def test_train_config_distributed_needs_a_process_group(tmp_path):
    from prompt_registry import Registry
    from prompt_registry.data.synthetic import make_synthetic
    from prompt_registry.errors import InvalidArgumentError
    from prompt_registry.testing.models import build_tiny_bert
    from prompt_registry.training.config import TrainConfig

    data = make_synthetic(tmp_path / "data", n_users=4, n_items=5, per_user=4, seed=1)
    with Registry.init(tmp_path / "reg") as reg:
        reg.register_model("m", build_tiny_bert(tmp_path / "m", hidden_size=16, seed=1))
        for config, resume, says in ((TrainConfig(distributed=True), False, "process group"),
                                     (TrainConfig(distributed=True), True, "does not resume"),
                                     (TrainConfig(distributed=True, freeze_prompts=True), False, "one process")):
            with pytest.raises(InvalidArgumentError, match=says):
                reg.train_prompts("m", "rate", data, config=config, resume=resume, progress=False)
        assert reg.list_runs() == [] and reg.list_sets() == []  # refused before anything was recorded
