"""PUMA's own options: the adapter Phi's architecture and how it is trained (paper defaults)."""

from __future__ import annotations

import dataclasses

from ...errors import InvalidArgumentError
from ..base import MethodConfig
from .adapter import KINDS


@dataclasses.dataclass(frozen=True)
class PumaConfig(MethodConfig):
    """Paper defaults where the paper is right here: Phi's lr 1e-4 (real models; the tiny ones in
    the demo and benchmark learn at 3e-3), a cosine schedule (now with warm-up and a floor; the
    batch size, the head's lr, the step budget and the loop settings are the migration's, shared
    by every method: ``MigrationConfig``). ``epochs`` (4) is a floor beside the migration's
    ``min_steps``.

    ``phi`` is ``linear`` (with a learned ``output_scale`` initialised to the target's token norm)
    rather than the paper's ``mlp``: in ``benchmarks/bench_quality.py`` (tiny pair, 1,000 users x
    40, 3 seeds, budgets 0.1 and 0.3) one affine map matched or beat the 4-block MLP at every budget
    with group selection, for a fraction of the parameters; a map fitted from a few dozen to a few
    hundred users' data has no use for millions of weights. ``lowrank`` and ``linear+mlp`` (a
    zero-initialised residual) are options. ``hidden`` is the MLP's width (default 2 x the widest
    of inputs and target, within [256, 4096]); ``norm_match`` rescales every mapped prompt to the
    target's mean token-embedding norm (pre-norm decoders do not tolerate PUMA's 10-100x larger
    outputs).
    """

    epochs: int = 4
    lr: float = 1e-4
    cosine: bool = True
    hidden: int | None = None
    dropout: float = 0.1
    norm_match: bool = False
    phi: str = "linear"  # the map: linear, mlp (the paper's), lowrank, linear+mlp (adapter.py); see the class docstring
    rank: int = 32  # lowrank only
    output_scale: bool = True  # a learned output scale, initialised to the target's token norm

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.lr > 0, "learning rates must be > 0"),
            (self.hidden is None or self.hidden >= 1, "hidden must be >= 1"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (self.phi in KINDS, f"phi must be one of {', '.join(KINDS)}"),
            (self.rank >= 1, "rank must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidArgumentError(f"invalid migration config: {message}")
