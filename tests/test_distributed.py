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
if int(os.environ.get("RANK", "0")) == 0:
    with open(out, "w") as fh:
        json.dump({"losses": losses, "weight": provider.lin.weight.detach().flatten().tolist(), "history": loop.state.history,
                   "examples": ledger.examples_seen, "best_epoch": loop.state.best_epoch, "world": ledger.extra.get("world_size", 1)}, fh)
if world > 1:
    dist.destroy_process_group()
"""


def _migrate_args(reg: str, data: str) -> list[str]:
    return ["-m", "prompt_registry.cli", "--registry", reg, "migrate", "run", "--from", "bert16", "--to", "bert24", "--task", "rate",
            "--data", data, "--min-steps", "60", "--warmup-steps", "0", "--head-lr", "1e-2", "--lr", "3e-3", "--budget", "20",
            "--no-eval", "--json"]


def test_two_gloo_ranks_take_the_steps_of_one_process_on_the_same_global_batch(tmp_path):
    """The loop alone (every step's loss), and a whole migration run by `torchrun ... migrate run --distributed`."""
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
    shutil.copytree(tmp_path / "reg", tmp_path / "reg-one")  # the single-process migration gets a registry of its own
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(tmp_path / "reg"), str(data)]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    # every job at once (their start-up, imports mostly, is most of the time); the results do not depend on timing
    jobs = {
        "loop-1": [sys.executable, str(script), *args, str(tmp_path / "one.json")],
        "loop-2": [*torchrun, str(script), *args, str(tmp_path / "two.json")],
        "migrate-1": [sys.executable, *_migrate_args(str(tmp_path / "reg-one"), str(data))],
        "migrate-2": [*torchrun, *_migrate_args(str(tmp_path / "reg"), str(data)), "--distributed"],
    }
    procs = {name: subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name, cmd in jobs.items()}
    outputs = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, f"{name}: {out}{err}"
        outputs[name] = out
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
    single = json.loads(outputs["migrate-1"])
    ranked = json.loads(outputs["migrate-2"])  # only rank 0 printed
    with Registry.open(tmp_path / "reg") as reg:
        assert len(reg.list_artifacts(kind="adapter")) == 1 and len(reg.list_sets(model="bert24")) == 1
        run = reg.get_run(ranked["run"]["id"])
        assert run.status == "succeeded" and run.cost["world_size"] == 2
    hist_1, hist_2 = single["run"]["cost"]["results"]["history"], ranked["run"]["cost"]["results"]["history"]
    assert len(hist_1) == len(hist_2) >= 1
    for h1, h2 in zip(hist_1, hist_2):
        assert h2["step"] == h1["step"] and h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-4)
        assert h2["valid_rmse"] == pytest.approx(h1["valid_rmse"], rel=1e-4)
    with Registry.open(tmp_path / "reg") as reg, Registry.open(tmp_path / "reg-one") as ref:
        _, fitted_2 = reg.load_artifact(ranked["adapter"]["id"])
        _, fitted_1 = ref.load_artifact(single["adapter"]["id"])
    assert fitted_1.keys() == fitted_2.keys()
    for name in fitted_1:  # the stored adapter itself: the same weights, up to float summation order
        np.testing.assert_allclose(fitted_2[name].numpy(), fitted_1[name].numpy(), rtol=1e-3, atol=1e-5, err_msg=name)
    assert ranked["run"]["examples_seen"] == single["run"]["examples_seen"]  # every rank's rows counted, once
    print(f"2 gloo ranks vs 1 process: {len(a)} loop steps, max relative loss gap {gap.max():.2e}, loss {a[:20].mean():.4f} -> "
          f"{a[-20:].mean():.4f}; migration validations {[round(h['valid_rmse'], 5) for h in hist_2]}")
