"""PUMA's own options: the adapter Phi's architecture and how it is trained (paper defaults)."""

from __future__ import annotations

import dataclasses

from ...errors import InvalidArgumentError
from ..base import MethodConfig
from .adapter import KINDS, AdapterConfig, Phi

INITS = ("random", "tokens")


@dataclasses.dataclass(frozen=True)
class PumaConfig(MethodConfig):
    """Paper defaults where the paper is right here: Phi's lr 1e-4 (real models; the tiny ones in
    the demo and benchmark learn at 3e-3), a cosine schedule (now with warm-up and a floor; the
    batch size, the head's lr, the step budget and the loop settings are the migration's, shared
    by every method: ``MigrationConfig``). ``epochs`` (4) is a floor beside the migration's
    ``min_steps``.

    ``phi`` is ``lowrank`` (rank 32, with a learned ``output_scale`` initialised to the target's
    token norm) rather than the paper's ``mlp``: in ``benchmarks/bench_quality.py`` (tiny pair,
    1,000 users x 40, 3 seeds, group selection) it recovered 98.7% / 98.8% of the retrain's gain
    over random-init at budgets 0.1 / 0.3, against 97.5 / 96.7% for one affine map (``linear``),
    99.0 / 97.8% for ``linear+mlp`` (a zero-initialised residual) and 95.3 / 98.3% for the ``mlp``,
    all at 0.12 of the retrain's token-passes. The gaps between the linear-family variants are
    about one paired standard error per seed: "best" is a mean over three seeds, not a proof, and
    the real-model pair is still to be measured. A map fitted from a few dozen to a few hundred
    users' data has no use for the MLP's millions of weights. ``hidden`` is the MLP's width
    (default 2 x the widest of inputs and target, within [256, 4096]); ``norm_match`` rescales every
    mapped prompt to the target's mean token-embedding norm (pre-norm decoders do not tolerate
    PUMA's 10-100x larger outputs).
    """

    epochs: int = 4
    lr: float = 1e-4
    cosine: bool = True
    hidden: int | None = None
    dropout: float = 0.1
    norm_match: bool = False
    phi: str = "lowrank"  # the map: lowrank, linear, mlp (the paper's), linear+mlp (adapter.py); see the class docstring
    rank: int = 32  # lowrank only
    output_scale: bool = True  # a learned output scale, initialised to the target's token norm
    # how the map starts: "random" (PyTorch's initialisation), or "tokens": the ridge map from the
    # sources' to the target's embeddings of the tokens their vocabularies share (``alignment.py``;
    # linear-family phi only), fitted before training without a forward pass
    init: str = "random"

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.lr > 0, "learning rates must be > 0"),
            (self.hidden is None or self.hidden >= 1, "hidden must be >= 1"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (self.phi in KINDS, f"phi must be one of {', '.join(KINDS)}"),
            (self.rank >= 1, "rank must be >= 1"),
            (self.init in INITS, f"init must be one of {', '.join(INITS)}"),
            (self.init != "tokens" or self.phi != "mlp", "init='tokens' starts an affine map: use phi linear, lowrank or linear+mlp"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidArgumentError(f"invalid migration config: {message}")


def default_phi(source_widths: tuple[int, ...], target_width: int, *, seed: int = 0) -> Phi:
    """An untrained Phi with the default PUMA architecture (``PumaConfig()``): what throughput
    benchmarks and tests map through (its weights do not change the cost of a map)."""
    import torch

    default = PumaConfig()
    torch.manual_seed(seed)
    return Phi(AdapterConfig(tuple(source_widths), target_width, default.hidden, default.dropout, default.norm_match,
                             1.0 if default.norm_match or default.output_scale else None, kind=default.phi, rank=default.rank,
                             output_scale=default.output_scale))
