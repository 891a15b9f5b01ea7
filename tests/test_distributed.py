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


def test_two_gloo_ranks_take_the_steps_of_one_process_on_the_same_global_batch(tmp_path):
    from prompt_registry import Registry
    from prompt_registry.data.synthetic import make_synthetic
    from prompt_registry.testing.models import build_tiny_bert

    data = make_synthetic(tmp_path / "data", n_users=30, n_items=30, per_user=16, seed=5)
    with Registry.init(tmp_path / "reg") as reg:
        reg.register_model("bert16", build_tiny_bert(tmp_path / "bert16", hidden_size=16, seed=1))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(tmp_path / "reg"), str(data)]
    # both at once (their start-up, imports mostly, is most of the time); the results do not depend on timing
    single = subprocess.Popen([sys.executable, str(script), *args, str(tmp_path / "one.json")], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    ranks = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script), *args,
                              str(tmp_path / "two.json")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for proc in (single, ranks):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out + err
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
    print(f"2 gloo ranks vs 1 process: {len(a)} steps, max relative loss gap {gap.max():.2e}, "
          f"loss {a[:20].mean():.4f} -> {a[-20:].mean():.4f}")
