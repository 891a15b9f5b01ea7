"""Anchor-ridge's own options."""

from __future__ import annotations

import dataclasses

from ...errors import InvalidArgumentError
from ..base import MethodConfig


@dataclasses.dataclass(frozen=True)
class AnchorRidgeConfig(MethodConfig):
    """``epochs`` and ``lr``: the anchors' prompt retrain (at least the migration's ``min_steps``;
    the head trains beside them at the migration's ``head_lr``); ``lambdas``: the ridge
    regularisers tried, as multiples of the mean squared norm of the (centred) source prompts,
    the one with the best validation on the non-anchor users kept; ``init``: the anchors' starting
    prompts (as in prompt training)."""

    epochs: int = 15
    lr: float = 5e-4
    lambdas: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    init: str = "token-norm"

    def __post_init__(self) -> None:
        object.__setattr__(self, "lambdas", tuple(float(v) for v in self.lambdas))
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (bool(self.lambdas) and all(v >= 0 for v in self.lambdas), "lambdas must be one or more numbers >= 0"),
            (self.init in ("token-norm", "token"), "init must be 'token-norm' or 'token'"),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidArgumentError(f"invalid anchor-ridge config: {message}")
