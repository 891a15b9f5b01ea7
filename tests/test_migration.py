"""Migrations (PUMA, and a trivial second method registered here) with tiny random backbones and
synthetic users with real structure."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import prompt_registry as pr
from prompt_registry import Registry
from prompt_registry.cli.main import main
from prompt_registry.data.synthetic import make_synthetic
from prompt_registry.migration import base as methods
from prompt_registry.migration.base import MethodConfig, MigrationMethod, register_method
from prompt_registry.migration.config import MigrationConfig
from prompt_registry.migration.puma import PumaConfig, PumaMethod
from prompt_registry.migration.puma.adapter import AdapterConfig, Phi
from prompt_registry.migration.puma.selection import SelectionConfig, largest_remainder, reference_allocation, select_users
from prompt_registry.testing.models import build_tiny_bert, build_tiny_llama
from prompt_registry.training.config import TrainConfig

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
SELECTION = SelectionConfig(method="group", budget=40, n_clusters=5, min_per_cluster=3)
# a tiny world: 300 steps (the default 1,000 would cost more than this world's retrain)
FAST = MigrationConfig(epochs=8, lr=1e-3, min_steps=300, max_fit_epochs=None, valid_every=50, selection=SELECTION)


# ------------------------------------------------------------------------------ adapter and selection


def test_phi_maps_widths_and_aggregates_sources():
    phi = Phi(AdapterConfig((16, 24, 8), 32, hidden=64)).eval()
    out = phi(torch.randn(5, 2, 16), torch.randn(5, 2, 24), torch.randn(5, 2, 8))
    assert out.shape == (5, 2, 32)
    with pytest.raises(pr.InvalidArgumentError, match="expects 3"):
        phi(torch.randn(5, 2, 16))
    assert AdapterConfig((384,), 768).hidden_width == 1536 and AdapterConfig((16,), 8).hidden_width == 256
    assert AdapterConfig((9000,), 8).hidden_width == 4096
    matched = Phi(AdapterConfig((16,), 32, norm_match=True, target_norm=3.0)).eval()(torch.randn(7, 1, 16) * 50)
    torch.testing.assert_close(matched.norm(dim=-1), torch.full((7, 1), 3.0))
    for bad in (dict(source_widths=()), dict(source_widths=(4,), dropout=1.0), dict(source_widths=(4,), norm_match=True)):
        with pytest.raises(pr.InvalidArgumentError):
            AdapterConfig(target_width=8, **bad)


def test_phi_variants_map_restore_and_start_where_they_should():
    x = torch.randn(6, 2, 16)
    for kind in ("mlp", "linear", "lowrank", "linear+mlp"):
        config = AdapterConfig((16,), 24, hidden=32, kind=kind, rank=4, output_scale=True, target_norm=2.5)
        phi = Phi(config).eval()
        phi.init_output_scale(x)
        out = phi(x)
        assert out.shape == (6, 2, 24)
        assert abs(float(out.detach().norm(dim=-1).mean()) - 2.5) < 1e-4  # the learned scale starts at the target's token norm
        restored = PumaMethod.restore(PumaConfig(phi=kind), config.to_dict(), PumaMethod(PumaConfig(phi=kind), phi).tensors())
        torch.testing.assert_close(restored.map(x), out, rtol=0, atol=0)
    low = Phi(AdapterConfig((16,), 24, kind="lowrank", rank=4))
    assert low.down.weight.shape == (4, 16) and sum(p.numel() for p in low.parameters()) == 4 * 16 + 24 * 4 + 24
    both = Phi(AdapterConfig((16,), 24, hidden=32, kind="linear+mlp")).eval()
    torch.testing.assert_close(both(x), both.linear(x))  # the residual starts at zero: the map starts linear
    with pytest.raises(pr.InvalidArgumentError, match="unknown adapter kind"):
        AdapterConfig((16,), 24, kind="deep")
    with pytest.raises(pr.InvalidArgumentError, match="phi must be one of"):
        PumaConfig(phi="deep")
    # an adapter stored before the variants records no kind: it restores as the paper's mlp
    old = Phi(AdapterConfig.from_dict({"source_widths": [16], "target_width": 24, "hidden": 32, "dropout": 0.1,
                                       "norm_match": False, "target_norm": None}))
    assert old.config.kind == "mlp" and hasattr(old, "ff_src")


def test_clusters_scale_with_the_budget_and_nearly_empty_strata_are_reported():
    rng = np.random.default_rng(0)
    users = [f"u{i}" for i in range(2000)]
    prompts, variance = rng.normal(size=(2000, 4)), rng.gamma(2, 0.5, size=2000)
    assert [SelectionConfig().clusters_for(b) for b in (20, 100, 600, 5000)] == [2, 2, 12, 15]
    assert SelectionConfig(n_clusters=7).clusters_for(5000) == 7
    scaled = select_users(users, prompts, variance, SelectionConfig(budget=600, seed=1))
    assert scaled.summary()["clusters"] == 12 and not scaled.warnings
    thin = select_users(users, prompts, variance, SelectionConfig(budget=30, n_clusters=15, min_per_cluster=2, seed=1))
    assert thin.summary()["clusters"] == 15 and "nearly empty" in thin.summary()["warnings"][0]


def test_group_selection_covers_every_cluster_and_is_deterministic():
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 10, size=(6, 8))
    prompts = np.concatenate([c + rng.normal(size=(50, 8)) for c in centers])
    users = [f"u{i}" for i in range(300)]
    variance = rng.gamma(2, 0.5, size=300)
    config = SelectionConfig(budget=60, n_clusters=6, min_per_cluster=5, seed=3)
    a, b = select_users(users, prompts, variance, config), select_users(users, prompts, variance, config)
    assert a.users == b.users and len(a.users) == 60 and len(set(a.users)) == 60
    assert sorted(a.summary()["per_cluster"]) == list(range(6)) and min(a.summary()["per_cluster"].values()) >= 5
    assert select_users(users, prompts, variance, SelectionConfig(budget=0.1)).budget == 30
    assert len(select_users(users, prompts, variance, SelectionConfig(method="all")).users) == 300
    rand = select_users(users, prompts, variance, SelectionConfig(method="random", budget=60, seed=3))
    assert len(rand.users) == 60 and rand.users != a.users


def test_reference_allocation_skews_to_high_variance_and_largest_remainder_does_not():
    weights = np.exp(-np.linspace(-2, 2, 5) ** 2 / 2) + 0.1
    assert reference_allocation(4, weights).tolist() == [0, 0, 1, 0, 3]  # 3 of 4 picks in the top bin
    assert largest_remainder(4, weights).tolist() == [0, 1, 2, 1, 0]
    assert largest_remainder(17, weights).sum() == 17
    rng = np.random.default_rng(1)
    users = [f"u{i}" for i in range(600)]
    prompts, variance = rng.normal(size=(600, 4)), rng.gamma(2, 0.5, size=600)
    share = lambda alloc: select_users(users, prompts, variance, SelectionConfig(  # noqa: E731
        budget=45, n_clusters=15, min_per_cluster=3, allocation=alloc)).summary()["variance_quintile_share"][4]
    assert share("reference") > 0.4 > 0.2 > share("largest-remainder")


# ------------------------------------------------------------------------------ methods as plug-ins


@dataclasses.dataclass(frozen=True)
class PadConfig(MethodConfig):
    head_epochs: int = 2

    def __post_init__(self) -> None:
        if self.head_epochs < 1:
            raise pr.InvalidArgumentError("head_epochs must be >= 1")


class _Mapped(nn.Module):
    """Index -> the mapped prompts of the selected users; nothing to train (no parameters)."""

    def __init__(self, method: MigrationMethod, sources: list[torch.Tensor]) -> None:
        super().__init__()
        self.method, self.sources = method, sources

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.method.map(*[table[index] for table in self.sources])


class PadTruncate(MigrationMethod):
    """A trivial second method: zero-pad or truncate the source width to the target width; only
    the target head is fitted."""

    config_class = PadConfig

    def __init__(self, config: PadConfig, source_width: int, target_width: int) -> None:
        super().__init__(config)
        self.source_width, self.target_width = source_width, target_width

    @classmethod
    def create(cls, config, spec, backbone):
        if len(spec.source_widths) != 1:
            raise pr.InvalidArgumentError("pad-truncate maps one source")
        return cls(config, spec.source_widths[0], spec.target_width)

    def describe(self):
        return {"source_widths": [self.source_width], "target_width": self.target_width}

    def fit(self, ctx):
        optimizers = {"head": torch.optim.AdamW(ctx.head.parameters(), lr=ctx.head_lr)}
        loop = ctx.training_loop(_Mapped(self, ctx.sources), optimizers, epochs=self.config.head_epochs)
        loop.fit(ctx.progress)
        loop.use_best()
        return loop

    def map(self, *sources):
        (x,) = sources
        if self.target_width <= self.source_width:
            return x[..., : self.target_width].clone()
        return nn.functional.pad(x, (0, self.target_width - self.source_width))

    def to(self, device):
        return self

    def tensors(self):
        return {"widths": torch.tensor([self.source_width, self.target_width])}

    @classmethod
    def restore(cls, config, spec, tensors):
        method = cls(config, spec["source_widths"][0], spec["target_width"])
        assert tensors["widths"].tolist() == [method.source_width, method.target_width]
        return method


register_method("pad-truncate", PadTruncate)


def pad_or_truncate(prompts: torch.Tensor, width: int) -> torch.Tensor:
    out = torch.zeros(*prompts.shape[:-1], width)
    keep = min(width, prompts.shape[-1])
    out[..., :keep] = prompts[..., :keep]
    return out


def test_methods_are_looked_up_by_name_and_an_unknown_one_is_refused():
    assert {"puma", "pad-truncate"} <= set(methods.available_methods())
    assert methods.get_method("puma") is PumaMethod and methods.get_method("pad-truncate") is PadTruncate
    for refuse in (lambda: MigrationConfig(method="ridge"), lambda: methods.get_method("ridge")):
        with pytest.raises(pr.InvalidArgumentError, match="unknown migration method 'ridge'") as err:
            refuse()
        assert "pad-truncate" in str(err.value) and "puma" in str(err.value)
    register_method("pad-truncate", PadTruncate)  # again: a no-op
    with pytest.raises(pr.ConflictError, match="already registered"):
        register_method("puma", PadTruncate)
    with pytest.raises(pr.ConflictError, match="subclass MigrationMethod"):
        register_method("nothing", object)


def test_migration_config_names_its_method_and_validates_the_method_config():
    flat = MigrationConfig(epochs=8, lr=1e-3, norm_match=True, head_lr=2e-3)  # PUMA shorthands (CLI, scripts)
    assert flat.method == "puma" and flat.method_config == PumaConfig(epochs=8, lr=1e-3, norm_match=True)
    assert flat == MigrationConfig(method_config=PumaConfig(epochs=8, lr=1e-3, norm_match=True), head_lr=2e-3)
    assert dataclasses.replace(flat, seed=3).method_config == flat.method_config
    recorded = flat.to_dict()
    assert recorded["method"] == "puma" and recorded["method_config"]["epochs"] == 8 and recorded["head_lr"] == 2e-3
    assert MigrationConfig(method_config=recorded["method_config"]).method_config == flat.method_config
    assert MigrationConfig().method_config == PumaConfig() == PumaConfig(epochs=4, lr=1e-4, cosine=True, hidden=None)
    pad = MigrationConfig(method="pad-truncate", method_config={"head_epochs": 3})
    assert pad.method_config == PadConfig(head_epochs=3) and pad.to_dict()["method"] == "pad-truncate"
    for bad, match in ((dict(epochs=0), "epochs must be >= 1"), (dict(lr=-1.0), "learning rates"), (dict(dropout=1.0), "dropout"),
                       (dict(method="pad-truncate", lr=1e-3), "has no option"),
                       (dict(method="pad-truncate", method_config=PumaConfig()), "takes a PadConfig"),
                       (dict(method_config={"epochz": 3}), "no option"), (dict(head_lr=0.0), "learning rates")):
        with pytest.raises(pr.InvalidArgumentError, match=match):
            MigrationConfig(**bad)


def test_a_method_saves_and_restores_through_its_artifact_config():
    torch.manual_seed(0)
    puma = PumaMethod(PumaConfig(hidden=32), Phi(AdapterConfig((16,), 24, hidden=32)))
    recorded = methods.artifact_config(puma)
    assert recorded["method"] == "puma" and recorded["method_config"]["hidden"] == 32 and recorded["adapter"]["target_width"] == 24
    x = torch.randn(3, 2, 16)
    for config in (recorded, {"adapter": recorded["adapter"]}):  # the second: an adapter stored before methods were plug-ins
        restored = methods.load_method(json.loads(json.dumps(config)), puma.tensors())
        assert isinstance(restored, PumaMethod)
        torch.testing.assert_close(restored.map(x), puma.map(x), rtol=0, atol=0)
    with pytest.raises(pr.InvalidArgumentError, match="unknown migration method 'ghost'"):
        methods.load_method({**recorded, "method": "ghost"}, puma.tensors())


# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("migration")
    data = make_synthetic(root / "data", n_users=100, n_items=80, per_user=25, seed=4)
    reg = Registry.init(root / "reg", actor="migrator")
    reg.register_model("src", build_tiny_bert(root / "src", hidden_size=48, seed=1))
    reg.register_model("dst", build_tiny_bert(root / "dst", hidden_size=64, seed=2))
    reg.register_model("llama", build_tiny_llama(root / "llama", hidden_size=32, seed=5))
    source = reg.train_prompts("src", "rate", data, config=TrainConfig(epochs=15, lr=5e-3), progress=False, alias="production")
    yield {"reg": reg, "data": data, "source": source, "root": root}
    reg.close()


@pytest.fixture(scope="module")
def random_init(world):
    """The target's random-init set (prompts frozen, head trained), the reference a migration
    report's "random-init" row reads: every test that asserts on that row asks for it, so none
    depends on another test (or an xdist worker) having trained it first."""
    return world["reg"].train_prompts("dst", "rate", world["data"], config=TrainConfig(epochs=15, lr=5e-3, freeze_prompts=True),
                                      progress=False, evaluate_split="test")


def test_migrated_prompts_beat_random_init_and_approach_retrain(world, random_init):
    reg, data = world["reg"], world["data"]
    rand = random_init
    assert rand.run.backward_tokens == 0  # head only: no backward pass through the backbone
    retrain = reg.train_prompts("dst", "rate", data, config=TrainConfig(epochs=15, lr=5e-3), progress=False, evaluate_split="test")
    result = reg.migrate(["src"], "dst", "rate", data, config=FAST, progress=False)
    rows = {r["name"]: r["rmse"] for r in result.report.rows}
    assert set(rows) == {"migrated", "source (src)", "retrain", "random-init"} and result.report.reference == "retrain"
    assert result.report.recovered >= 0.8, result.report.recovered  # of retrain's gain over random-init
    migrated, random_init, scratch = rows["migrated"], rand.evaluation.metrics["rmse"], retrain.evaluation.metrics["rmse"]
    assert migrated < random_init - 0.1, (migrated, random_init)
    assert migrated < scratch + 0.12, (migrated, scratch)
    cost_ratio = (result.run.forward_tokens + result.run.backward_tokens) / (retrain.run.forward_tokens + retrain.run.backward_tokens)
    assert cost_ratio < 0.5, cost_ratio
    assert 0 <= result.report.share_worse <= 1 and len(result.report.worst_users) == 5


def test_migration_lineage_run_and_idempotent_apply(world):
    reg, data = world["reg"], world["data"]
    result = reg.migrate(["src"], "dst", "rate", data, config=FAST, progress=False, evaluate=False)
    mapped, adapter = result.set, result.adapter
    source_set = world["source"].set
    assert (mapped.parents, mapped.adapter_id, mapped.head_id, mapped.n_users) == ((source_set.id,), adapter.id, result.head_id, 100)
    assert (adapter.source_models, adapter.target_model, adapter.source_fingerprints) == (("src",), "dst", (reg.get_model("src").fingerprint,))
    run = reg.get_run(result.run.id)
    assert run.kind == "migrate" and len(run.config["selected_users"]) == 40 and run.config["selection_summary"]["method"] == "group"
    assert run.cost["selected_users"] == 40 and run.cost["mapped_users"] == 100
    # mapping again with the same adapter and inputs is a no-op: same set, no new bytes
    objects = {o.key for o in reg.store.list_objects()}
    again = reg.apply_adapter(adapter.id, progress=False)
    assert again.id == mapped.id and {o.key for o in reg.store.list_objects()} == objects
    # the stored prompts are exactly Phi(source)
    _, tensors = reg.load_artifact(adapter.id)
    phi = Phi(AdapterConfig.from_dict(adapter.config["adapter"]))
    phi.load_state_dict(tensors)
    phi.eval()
    users = ["user0001", "user0050"]
    with torch.no_grad():
        expected = phi(reg.get_prompts(users, set=source_set.id))
    torch.testing.assert_close(reg.get_prompts(users, set=mapped.id), expected)


def test_adapter_reuse_maps_new_users_without_training(world):
    reg = world["reg"]
    adapter = reg.migrate(["src"], "dst", "rate", world["data"], config=FAST, progress=False, evaluate=False).adapter
    newcomers = {f"new{i}": np.random.default_rng(i).normal(size=(1, 48)).astype(np.float32) for i in range(3)}
    reg.import_prompts("src", "rate", newcomers, base="src/rate@production", create_users=True, alias="production")
    migrations_before = len(reg.list_runs(kind="migrate"))
    mapped = reg.apply_adapter(adapter.id, users=list(newcomers), progress=False)
    assert len(reg.list_runs(kind="migrate")) == migrations_before  # no training
    assert mapped.n_rows == 3 and mapped.n_users == 103 and mapped.base_id is not None
    assert reg.get_prompts(["new0", "user0003"], set=mapped.id).shape == (2, 1, 64)
    with pytest.raises(pr.ModelMismatchError):
        reg.load_artifact(adapter.id, fingerprint=reg.get_model("src").fingerprint)


def test_aggregated_migration_from_three_sources(world):
    reg, data = world["reg"], world["data"]
    for name, width in (("agg1", 40), ("agg2", 56), ("agg3", 32)):
        reg.register_model(name, build_tiny_bert(world["root"] / name, hidden_size=width, seed=width))
        reg.train_prompts(name, "rate", data, config=TrainConfig(epochs=3, lr=5e-3), progress=False)
    result = reg.migrate(["agg1", "agg2", "agg3"], "dst", "rate", data, config=FAST, progress=False)
    assert result.adapter.source_models == ("agg1", "agg2", "agg3")
    assert result.adapter.config["adapter"]["source_widths"] == [40, 56, 32] and len(result.set.parents) == 3
    rows = {r["name"]: r["rmse"] for r in result.report.rows}
    assert {"source (agg1)", "source (agg2)", "source (agg3)"} <= set(rows)
    assert rows["migrated"] < result.report.rows[0]["baselines"]["global_mean"]["rmse"]


def test_a_second_method_runs_end_to_end_through_migrate_and_apply(world):
    reg, data = world["reg"], world["data"]
    source_set = world["source"].set
    config = MigrationConfig(method="pad-truncate", method_config=PadConfig(head_epochs=2), selection=SELECTION, min_steps=0,
                             cost_budget=None)  # the method alone: no refinement after it
    result = reg.migrate([source_set.id], "dst", "rate", data, config=config, progress=False, evaluate=False)
    mapped, adapter = result.set, result.adapter
    everyone = reg.list_set_users(source_set.id)
    assert mapped.n_users == len(everyone) == 100 and mapped.adapter_id == adapter.id and mapped.parents == (source_set.id,)
    source = reg.get_prompts(everyone, set=source_set.id)
    assert torch.equal(reg.get_prompts(everyone, set=mapped.id), pad_or_truncate(source, 64))  # 48 -> 64: zero-padded
    assert adapter.config["method"] == "pad-truncate" and adapter.config["method_config"] == {"head_epochs": 2}
    assert adapter.config["adapter"] == {"source_widths": [48], "target_width": 64}
    run = reg.get_run(result.run.id)
    assert run.config["method"] == "pad-truncate" and run.config["method_config"] == {"head_epochs": 2}
    assert run.backward_tokens == 0 and run.cost["epochs_run"] == 2 and len(run.config["selected_users"]) == 40  # head only
    head = reg.get_artifact(result.head_id)
    assert head.kind == "head" and head.target_model == "dst"
    # apply rebuilds the method from the artifact: the same inputs give the same set; new users are padded too
    assert reg.apply_adapter(adapter.id, sources=[source_set.id], progress=False).id == mapped.id
    newcomers = {f"pad{i}": np.random.default_rng(20 + i).normal(size=(1, 48)).astype(np.float32) for i in range(3)}
    newer = reg.import_prompts("src", "rate", newcomers, base=source_set.id, create_users=True)
    applied = reg.apply_adapter(adapter.id, sources=[newer.id], users=list(newcomers), progress=False)
    assert applied.base_id == mapped.id and applied.n_rows == 3 and applied.n_users == 103
    assert torch.equal(reg.get_prompts(list(newcomers), set=applied.id), pad_or_truncate(torch.from_numpy(np.stack(list(newcomers.values()))), 64))
    assert torch.equal(reg.get_prompts(everyone, set=applied.id), reg.get_prompts(everyone, set=mapped.id))
    # 48 -> 32 (the Llama target): truncated
    narrow = reg.migrate([source_set.id], "llama", "rate", data, config=config, progress=False, evaluate=False)
    assert torch.equal(reg.get_prompts(everyone, set=narrow.set.id), source[..., :32])


def test_an_adapter_stored_before_methods_were_plugins_is_puma(world):
    reg = world["reg"]
    result = reg.migrate(["src"], "dst", "rate", world["data"], config=dataclasses.replace(FAST, epochs=1), progress=False, evaluate=False)
    assert result.adapter.config["method"] == "puma" and result.adapter.config["method_config"]["epochs"] == 1
    assert reg.get_run(result.run.id).config["method"] == "puma"
    _, tensors = reg.load_artifact(result.adapter.id)
    old_layout = {k: v for k, v in result.adapter.config.items() if k not in ("method", "method_config")}
    legacy = reg.put_artifact("adapter", "src->dst/rate", tensors, task="rate", target_model="dst", source_models=["src"],
                              config=old_layout)
    assert "method" not in reg.get_artifact(legacy.id).config
    applied = reg.apply_adapter(legacy.id, progress=False)
    assert applied.id != result.set.id and applied.adapter_id == legacy.id
    users = reg.list_set_users(result.set.id)
    assert torch.equal(reg.get_prompts(users, set=applied.id), reg.get_prompts(users, set=result.set.id))


def test_gate_refuses_to_move_the_alias_when_worse_than_reference(world):
    reg, data = world["reg"], world["data"]
    refused = reg.migrate(["src"], "dst", "rate", data, config=FAST, progress=False, alias="production", gate=-10.0)
    assert refused.alias["moved"] is False and "gate" in refused.alias["why"]
    with pytest.raises(pr.UnknownAliasError):
        reg.get_alias("production", "dst", "rate")
    passed = reg.migrate(["src"], "dst", "rate", data, config=FAST, progress=False, alias="production", gate=10.0)
    assert passed.alias["moved"] and reg.get_alias("production", "dst", "rate").set_id == passed.set.id


def test_decoder_target_with_norm_match_and_refinement(world):
    reg, data = world["reg"], world["data"]
    config = MigrationConfig(method_config=PumaConfig(epochs=6, lr=1e-3, norm_match=True, output_scale=False), min_steps=300,
                             refine_epochs=3, refine_lr=5e-3, selection=SELECTION)
    result = reg.migrate(["src"], "llama", "rate", data, config=config, progress=False)
    mapped = reg.get_prompts(["user0001", "user0002"], set=result.set.id)
    from prompt_registry.backbones.loader import load_backbone

    token_norm = load_backbone(reg.get_model("llama")).token_norm
    torch.testing.assert_close(mapped.norm(dim=-1), torch.full((2, 1), token_norm), rtol=1e-4, atol=1e-4)
    refined = result.refined
    assert refined is not None and refined.base_id == result.set.id and result.set.id in refined.parents
    assert result.run.cost["refine"]["token_passes"] > 0
    assert result.report.rows[0]["set_id"] == refined.id


def test_cli_migrate_apply_and_adapters(world):
    base = ["--registry", str(world["root"] / "reg")]
    runner = CliRunner()
    res = runner.invoke(main, [*base, "migrate", "run", "--from", "src", "--to", "dst", "--task", "rate", "--data", str(world["data"]),
                               "--budget", "30", "--clusters", "4", "--min-per-cluster", "2", "--epochs", "2", "--lr", "1e-3", "--min-steps", "0",
                               "--phi", "linear", "--cost-budget", "none", "--json"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["selection"]["selected"] == 30 and out["report"]["rows"][0]["name"] == "migrated"
    assert out["run"]["config"]["method_config"]["phi"] == "linear" and out["run"]["config"]["min_steps"] == 0
    assert out["run"]["config"]["cost_budget"] is None and out["refined"] is None and "refine" not in out["run"]["cost"]
    wrong = runner.invoke(main, [*base, "migrate", "run", "--from", "src", "--to", "dst", "--task", "rate", "--data", str(world["data"]),
                                 "--cost-budget", "lots"])
    assert wrong.exit_code == 2 and "--cost-budget" in wrong.stderr and "'selection', 'none' or a share" in wrong.stderr
    adapter_id = out["adapter"]["id"]
    listed = json.loads(runner.invoke(main, [*base, "adapter", "list", "--json"]).stdout)
    assert adapter_id in [a["id"] for a in listed]
    shown = json.loads(runner.invoke(main, [*base, "adapter", "show", str(adapter_id), "--json"]).stdout)
    assert shown["source_models"] == ["src"] and shown["target_model"] == "dst"
    assert "SOURCE_MODELS" in runner.invoke(main, [*base, "adapter", "list"]).stdout
    applied = runner.invoke(main, [*base, "migrate", "apply", "--adapter", str(adapter_id)])
    assert applied.exit_code == 0 and f"mapped set {out['set']['id']}" in applied.stdout  # idempotent
    text = runner.invoke(main, [*base, "migrate", "run", "--from", "src", "--to", "dst", "--task", "rate", "--data", str(world["data"]),
                                "--budget", "30", "--clusters", "4", "--min-per-cluster", "2", "--epochs", "1", "--gate", "-5", "--alias", "canary",
                                "--min-steps", "0", "--refine-epochs", "1", "--refine-lr", "50"])
    assert text.exit_code == 0 and "did NOT move alias canary" in text.stdout and "token-passes" in text.stdout
    assert "beat the mapped prompts on no epoch: kept the mapped set" in text.stdout  # a wrecking refine lr: nothing written
    bad = runner.invoke(main, [*base, "migrate", "run", "--from", "src", "--to", "src", "--task", "rate", "--data", str(world["data"])])
    assert bad.exit_code == 1 and "same model" in bad.stderr


CHILD = textwrap.dedent(
    """
    import sys, time
    import prompt_registry.core.writes as registry_module
    from prompt_registry import Registry
    from prompt_registry.store.zarr_store import ZarrStore

    location, adapter_id, source, ready = sys.argv[1:5]
    registry_module.WRITE_BATCH_ROWS = 256  # several durable batches
    original, calls = ZarrStore.write_rows, []
    def write_rows(self, key, start, data):
        original(self, key, start, data)
        calls.append(start)
        if len(calls) == 2:
            open(ready, "w").close()
            time.sleep(120)
    ZarrStore.write_rows = write_rows
    with Registry.open(location) as reg:
        reg.apply_adapter(int(adapter_id), sources=[source], progress=False)
    """
)


def test_sigkill_during_apply_then_rerun_gives_a_complete_valid_set(world, tmp_path, monkeypatch):
    reg = world["reg"]
    adapter = reg.migrate(["src"], "dst", "rate", world["data"], config=FAST, progress=False, evaluate=False).adapter
    many = {f"bulk{i:04d}": row for i, row in enumerate(np.random.default_rng(9).normal(size=(900, 1, 48)).astype(np.float32))}
    bigger = reg.import_prompts("src", "rate", many, base="src/rate@production", create_users=True)
    script, ready = tmp_path / "child.py", tmp_path / "ready"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), str(world["root"] / "reg"), str(adapter.id), str(bigger.id), str(ready)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    adapter_sets = lambda: [s for s in reg.list_sets(model="dst") if s.adapter_id == adapter.id]  # noqa: E731
    before = adapter_sets()
    assert all(s.n_users != bigger.n_users for s in before)  # no half-visible version

    import prompt_registry.core.writes as registry_module
    from prompt_registry.store.zarr_store import ZarrStore

    monkeypatch.setattr(registry_module, "WRITE_BATCH_ROWS", 256)
    starts: list[int] = []
    original = ZarrStore.write_rows
    monkeypatch.setattr(ZarrStore, "write_rows", lambda self, key, start, data: (starts.append(start), original(self, key, start, data))[1])
    result = reg.apply_adapter(adapter.id, sources=[bigger.id], progress=False)
    # killed after the second batch's bytes but before its journal entry: only the first batch
    # counts as durable, so the rerun writes from the second batch on
    assert starts == [256, 512, 768]
    assert result.n_users == bigger.n_users
    everyone = reg.list_set_users(result.id)
    assert len(everyone) == bigger.n_users
    reg.get_prompts(everyone, set=result.id, verify=True)  # every row checksum-valid
    assert reg.doctor().ok
    assert reg.apply_adapter(adapter.id, sources=[bigger.id], progress=False).id == result.id  # idempotent


# ------------------------------------------------------------------------------ quality machinery


def test_the_head_refit_sets_a_floor_at_random_init(world):
    """A map that carries nothing (uniform noise for every user) with a barely trained head: the
    refit on every user's rows from cached features brings it to random-init quality."""
    reg, data = world["reg"], world["data"]
    users = reg.list_set_users(world["source"].set.id)
    noise = reg.import_prompts("src", "rate", np.random.default_rng(9).normal(0, 1, size=(len(users), 1, 48)).astype(np.float32), users)
    rand = reg.train_prompts("dst", "rate", data, config=TrainConfig(epochs=1, freeze_prompts=True), progress=False, evaluate_split="test")
    assert rand.run.backward_tokens == 0 and rand.run.cost["steps"] > 0  # fitted on cached features, no backward pass
    config = MigrationConfig(method="pad-truncate", method_config=PadConfig(head_epochs=1), selection=SelectionConfig(method="random", budget=5),
                             min_steps=0, warm_start_head=False, cost_budget=None)  # the refit alone: no refinement after it
    kept = reg.migrate([noise.id], "dst", "rate", data, config=dataclasses.replace(config, head_refit=False), progress=False)
    refit = reg.migrate([noise.id], "dst", "rate", data, config=config, progress=False)
    rows = {r["name"]: r["rmse"] for r in refit.report.rows}
    assert rows["migrated"] <= rand.evaluation.metrics["rmse"] + 0.02, (rows, rand.evaluation.metrics)
    assert kept.report.rows[0]["rmse"] > rows["migrated"] + 0.05, (kept.report.rows[0]["rmse"], rows["migrated"])
    summary = reg.get_run(refit.run.id).cost["head_refit"]
    assert summary["refit"] and summary["valid_after"] <= summary["valid_before"] and summary["token_passes"] > 0
    assert refit.run.backward_tokens == 0


def test_anchor_ridge_keeps_anchors_retrained_and_maps_the_rest(world, random_init):
    reg, data = world["reg"], world["data"]
    source_set = world["source"].set
    config = MigrationConfig(method="anchor-ridge", method_config={"epochs": 10, "lr": 5e-3}, min_steps=200, valid_every=50,
                             selection=SELECTION)
    result = reg.migrate([source_set.id], "dst", "rate", data, config=config, progress=False)
    adapter = result.adapter
    assert adapter.config["method"] == "anchor-ridge" and adapter.config["adapter"]["lambda"] in config.method_config.lambdas
    selected = reg.get_run(result.run.id).config["selected_users"]
    others = [u for u in reg.list_set_users(source_set.id) if u not in set(selected)]
    _, tensors = reg.load_artifact(adapter.id)
    source = reg.get_prompts(others, set=source_set.id)
    mapped = reg.get_prompts(others, set=result.set.id)
    torch.testing.assert_close(mapped, source @ tensors["weight"] + tensors["bias"], rtol=1e-5, atol=1e-5)
    anchors_mapped = reg.get_prompts(selected, set=result.set.id)
    anchors_ridge = reg.get_prompts(selected, set=source_set.id) @ tensors["weight"] + tensors["bias"]
    assert not torch.allclose(anchors_mapped, anchors_ridge, atol=1e-3)  # anchors keep their retrained prompts
    rows = {r["name"]: r["rmse"] for r in result.report.rows}
    assert rows["migrated"] < rows["random-init"] - 0.1, rows
    assert result.run.backward_tokens > 0 and result.run.cost["fit"]["token_passes"] > 0
    # the stored adapter maps everyone (anchors too) through the ridge map
    applied = reg.apply_adapter(adapter.id, sources=[source_set.id], progress=False)
    torch.testing.assert_close(reg.get_prompts(selected, set=applied.id), anchors_ridge, rtol=1e-5, atol=1e-5)


def test_selective_refinement_refines_only_the_worst_users_as_an_incremental_version(world):
    reg, data = world["reg"], world["data"]
    config = dataclasses.replace(FAST, refine_epochs=2, refine_share=0.2, refine_lr=5e-3)
    result = reg.migrate(["src"], "dst", "rate", data, config=config, progress=False)
    refined, mapped = result.refined, result.set
    assert refined is not None and refined.base_id == mapped.id and refined.n_rows == 20 and refined.n_users == mapped.n_users
    assert refined.head_id == mapped.head_id  # the head stays fixed: it serves everyone else's mapped prompts
    part = result.run.cost["refine"]
    assert part["users"] == 20 and part["token_passes"] > 0 and part["head_trained"] is False
    changed = [u for u in reg.list_set_users(mapped.id)
               if not torch.equal(reg.get_prompt(u, set=refined.id), reg.get_prompt(u, set=mapped.id))]
    assert 0 < len(changed) <= 20


def test_a_cost_budget_spends_what_the_fit_left_on_refinement_and_never_more(world):
    """The default ``cost_budget="selection"``: 40 of 100 users selected -> at most 40% of a
    reference retrain's token-passes in all, the fit's share taken first, the rest whole refine
    epochs over everyone, counted exactly as the loop counts them."""
    reg, data = world["reg"], world["data"]
    config = dataclasses.replace(FAST, reference_epochs=30, refine_lr=5e-3, budget_refine_patience=None)
    result = reg.migrate(["src"], "dst", "rate", data, config=config, progress=False)
    cost = result.run.cost
    plan, part = cost["refine_plan"], cost["refine"]
    assert plan["share"] == 0.4 and plan["mode"] == "everyone" and part["users"] == 100 and part["head_trained"]
    assert part["valid_after"] < part["valid_before"]  # refinement beat the map on validation, hence a refined version
    two = reg.train_prompts("dst", "rate", data, config=TrainConfig(epochs=2, lr=5e-3), progress=False)  # the reference, for 2 epochs
    assert plan["reference_token_passes"] == 15 * two.run.token_passes  # 30 epochs of the same retrain
    assert part["epochs_run"] == plan["epochs"] >= 2  # no patience here: every planned epoch runs
    assert part["token_passes"] == plan["planned_token_passes"] <= plan["left"]  # the plan is exactly what the loop spent
    assert plan["spent_before"] + part["token_passes"] == result.run.token_passes <= 0.4 * plan["reference_token_passes"]
    assert result.refined is not None and result.refined.base_id == result.set.id and result.final.id == result.refined.id
    mapped_rmse = reg.evaluate(result.set.id, data).metrics["rmse"]
    assert result.report.rows[0]["rmse"] < mapped_rmse, (result.report.rows[0]["rmse"], mapped_rmse)  # refining helped here
    none = reg.migrate(["src"], "dst", "rate", data, config=dataclasses.replace(config, cost_budget=None), progress=False, evaluate=False)
    assert none.refined is None and "refine" not in none.run.cost and "refine_plan" not in none.run.cost


def test_refinement_that_beats_nothing_keeps_the_mapped_prompts(world):
    """The mapped state is refinement's epoch 0: a refinement that only makes validation worse (a
    learning rate that wrecks the prompts) writes no version; the report and alias are the map's."""
    reg, data = world["reg"], world["data"]
    config = dataclasses.replace(FAST, refine_epochs=1, refine_lr=50.0)
    result = reg.migrate(["src"], "dst", "rate", data, config=config, progress=False, alias="staging")
    part = result.run.cost["refine"]
    assert part["kept_mapped"] and part["best_epoch"] == 0 and part["token_passes"] > 0
    assert part["valid_metric"] == "rmse" and part["valid_after"] == part["valid_before"]  # the map's own validation RMSE, kept
    assert result.refined is None and result.final.id == result.set.id and result.run.cost["results"]["refined_set"] is None
    assert reg.get_alias("staging", "dst", "rate").set_id == result.set.id
    # the budget's refinement (patience 2): two epochs that do not beat the map end it
    budgeted = reg.migrate(["src"], "dst", "rate", data, config=dataclasses.replace(FAST, reference_epochs=30, refine_lr=50.0),
                           progress=False, evaluate=False)
    plan, part = budgeted.run.cost["refine_plan"], budgeted.run.cost["refine"]
    assert plan["epochs"] >= 3 and part["epochs_run"] == 2 and part["kept_mapped"] and budgeted.refined is None
    assert part["token_passes"] < plan["planned_token_passes"]  # two epochs spent, not the budget
    assert len(part["valid_curve"]) == 3 and part["valid_curve"][0] == part["valid_before"]  # the map, then two worse epochs


def test_the_refine_plan_buys_epochs_for_everyone_else_the_worst_users_that_fit():
    from prompt_registry.migration.refine import plan

    train, valid = np.full(10, 100, dtype=np.int64), np.full(10, 10, dtype=np.int64)  # per user: one pass's tokens
    loss = {i: float(i) for i in range(10)}  # user 9 is the worst on validation
    users = [f"u{i}" for i in range(10)]
    config = MigrationConfig(cost_budget=0.5, reference_epochs=10)  # reference: 10 x (2 x 1000 + 100) = 21,000
    every = plan(config, users, loss, selected=3, spent=4_000, train_tokens=train, valid_tokens=valid)
    assert every.users == users and every.epochs == 3 and every.train_head  # (10,500 - 4,000 - 100) // 2,100
    assert every.budget["planned_token_passes"] == 3 * 2_100 + 100 <= every.budget["left"] == 6_500
    few = plan(config, users, loss, selected=3, spent=10_000, train_tokens=train, valid_tokens=valid)
    per_user = 2 * 210 + 10  # share_refine_epochs (2) x (forward + backward + validation), and the start's validation
    assert few.budget["mode"] == "worst users" and few.users == ["u9"] and few.epochs == 2 and not few.train_head
    assert few.budget["planned_token_passes"] == per_user
    assert plan(config, users, loss, selected=3, spent=10_500, train_tokens=train, valid_tokens=valid).users == []
    assert plan(dataclasses.replace(config, cost_budget="selection"), users, loss, selected=5, spent=4_000, train_tokens=train,
                valid_tokens=valid).budget["share"] == 0.5  # "selection": the selected users' share
    assert plan(dataclasses.replace(config, cost_budget=None), users, loss, selected=5, spent=0, train_tokens=train, valid_tokens=valid) is None
    assert plan(dataclasses.replace(config, cost_budget="selection"), users, loss, selected=10, spent=0, train_tokens=train,
                valid_tokens=valid) is None  # everyone selected: no budget (not a whole retrain's worth of refinement)
    manual = plan(dataclasses.replace(config, refine_epochs=4, refine_share=0.2), users, loss, selected=3, spent=10**9,
                  train_tokens=train, valid_tokens=valid)
    assert (manual.users, manual.epochs, manual.budget) == (["u8", "u9"], 4, None)  # asked for: no budget applies


def test_head_prefit_and_validation_on_the_selected_users_only(world):
    reg, data = world["reg"], world["data"]
    config = dataclasses.replace(FAST, head_prefit=True, validate_on="selected", min_steps=60)
    result = reg.migrate(["src"], "dst", "rate", data, config=config, progress=False, evaluate=False)
    run = reg.get_run(result.run.id)
    prefit = run.cost["head_prefit"]
    assert prefit["token_passes"] > 0 and prefit["valid_after"] <= prefit["valid_before"]
    assert run.cost["fit"]["token_passes"] >= prefit["token_passes"]
    everyone = reg.train_prompts("dst", "rate", data, config=TrainConfig(epochs=1, freeze_prompts=True), progress=False).run.config["n_valid"]
    assert run.config["n_valid"] < everyone  # validated on the 40 selected users' rows, not on all 100
    assert reg.get_run(reg.migrate(["src"], "dst", "rate", data, config=dataclasses.replace(config, validate_on="all"), progress=False,
                                   evaluate=False).run.id).config["n_valid"] == everyone


def test_an_aggregate_whose_sources_hold_different_users_imputes_them_and_lists_the_cold_ones(world):
    """Source A holds users 0-59, B users 30-89: 30 on both, 60 on one, 10 on none (cold)."""
    from prompt_registry.data.dataset import Dataset
    from prompt_registry.migration.coverage import MEAN_KEY

    reg, data = world["reg"], world["data"]
    users = Dataset.load(data).user_ids()
    on_a, on_b, cold = users[:60], users[30:90], users[90:]
    for name, width, who in (("cova", 40, on_a), ("covb", 24, on_b)):
        reg.register_model(name, build_tiny_bert(world["root"] / name, hidden_size=width, seed=width + 1))
        reg.train_prompts(name, "rate", data, users=who, config=TrainConfig(epochs=6, lr=5e-3), progress=False, alias="production")
    rand = reg.train_prompts("llama", "rate", data, config=TrainConfig(epochs=15, lr=5e-3, freeze_prompts=True), progress=False)
    config = dataclasses.replace(FAST, seed=1)
    result = reg.migrate(["cova", "covb"], "llama", "rate", data, config=config, progress=False)
    assert result.coverage["policy"] == "impute" and (result.coverage["full"], result.coverage["partial"]) == (30, 60)
    assert result.coverage["cold"] == 10 and result.coverage["cold_sample"] == cold and result.set.n_users == 90
    assert reg.get_run(result.run.id).config["coverage"]["partial"] == 60
    # a user on A only is mapped from its A prompt and B's mean prompt, the mean stored with the adapter
    _, tensors = reg.load_artifact(result.adapter.id)
    mean_b = tensors[MEAN_KEY.format(1)]
    # the mean is over the migration's candidates that B holds (all of B's users have data here)
    torch.testing.assert_close(mean_b, reg.get_prompts(on_b, set=reg.get_set("covb/rate@production").id).mean(0))
    method = methods.load_method(result.adapter.config, {k: v for k, v in tensors.items() if not k.startswith("coverage.")})
    only_a = users[0]
    with torch.no_grad():
        expected = method.map(reg.get_prompts([only_a], set=reg.get_set("cova/rate@production").id), mean_b[None])
    torch.testing.assert_close(reg.get_prompts([only_a], set=result.set.id), expected)
    # the partly covered users learn: better than random-init prompts on the target
    partial = [r for r in result.report.rows if r["name"] == "migrated"][0]["partial_rmse"]
    rand_eval = reg.get_evaluation(reg.evaluate(rand.set.id, data).id)
    from prompt_registry.migration.report import group_metric

    assert partial < group_metric(rand_eval.per_user, set(users[:30]) | set(users[60:90]), "rating") - 0.05, partial
    # reuse imputes as the fit did: the same bytes, the same set
    assert reg.apply_adapter(result.adapter.id, progress=False).id == result.set.id
    with pytest.raises(pr.UnknownSetError, match="no prompt in any source set"):
        reg.apply_adapter(result.adapter.id, users=[cold[0]], progress=False)
    # cold users get the mapped centroid; ``common`` maps only the 30 on both and lists the rest
    warm = reg.migrate(["cova", "covb"], "llama", "rate", data, config=dataclasses.replace(config, cold_start="centroid"),
                       progress=False, evaluate=False)
    assert warm.set.n_users == 100 and warm.coverage["cold"] == 10
    centroid = reg.get_prompts(cold, set=warm.set.id)
    torch.testing.assert_close(centroid, centroid[:1].expand_as(centroid))
    common = reg.migrate(["cova", "covb"], "llama", "rate", data, config=dataclasses.replace(config, coverage="common"),
                         progress=False, evaluate=False)
    assert common.set.n_users == 30 and common.coverage["left_out"] == 60
    assert not any(k.startswith("coverage.") for k in reg.load_artifact(common.adapter.id)[1])
    with pytest.raises(pr.InvalidArgumentError, match="needs coverage='impute'"):
        reg.migrate(["cova", "covb"], "llama", "rate", data, config=dataclasses.replace(config, coverage="common", cold_start="centroid"),
                    progress=False)
    with pytest.raises(pr.InvalidArgumentError, match="unknown coverage policy"):
        MigrationConfig(coverage="fallback")
    # the CLI: the same options, the counts printed
    res = CliRunner().invoke(main, ["--registry", str(world["root"] / "reg"), "migrate", "run", "--from", "cova,covb", "--to", "llama",
                                    "--task", "rate", "--data", str(data), "--budget", "20", "--min-steps", "0", "--epochs", "1",
                                    "--coverage", "common", "--no-eval"], catch_exceptions=False)
    assert res.exit_code == 0 and "coverage (common): 30 on every source, 0 imputed, 60 left out, 10 with no source prompt" in res.stdout
