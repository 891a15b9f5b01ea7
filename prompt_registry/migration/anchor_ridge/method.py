"""Anchor-ridge as a migration method.

1. The selected users are anchors: their prompts are trained from scratch on the target (with the
   head), exactly like a retrain restricted to them, best state on their validation rows.
2. A ridge map, one affine map per prompt position shared across positions like PUMA's Phi, is
   fitted from the anchors' source prompts to their retrained prompts, for each regulariser in
   ``lambdas``; the one whose mapped prompts give the best validation metric on the *other*
   candidates (forward only, counted in the cost) is kept.
3. Everyone is mapped; anchors keep their retrained prompts (``retained``). A stored adapter
   (the affine map) maps new users or a newer source version with no training.

It never gets stuck the way a task-loss map can (measured on the tiny pair: 0.879 where PUMA
stalled at 1.107), but maps regressed onto target prompts transfer less well than maps trained on
the task loss when those train long enough (Su et al. 2022; 0.859 vs 0.846 at 500 users).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ...training import metrics
from ...training.loop import PromptTable, run_batches
from ...training.trainer import init_prompts
from ..alignment import RidgePath
from ..base import FitContext, MappingSpec, MigrationMethod
from .config import AnchorRidgeConfig

if TYPE_CHECKING:
    from ...backbones.loader import Backbone
    from ...training.loop import TrainingLoop


def ridge(path: RidgePath, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine least squares with an L2 penalty ``lam`` (x the inputs' mean squared row norm) on the
    weights: (weight (d_in, d_out), bias (d_out,)), solved in float64."""
    weight, bias = path.solve(lam * max(path.mean_squared_row_norm, 1e-12))
    return weight.float(), bias.float()


class AnchorRidgeMethod(MigrationMethod[AnchorRidgeConfig]):
    """See the module docstring. The artifact holds ``weight`` (in, out) and ``bias``."""

    config_class = AnchorRidgeConfig

    def __init__(self, config: AnchorRidgeConfig, spec: MappingSpec | dict[str, Any], weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__(config)
        self.spec = spec if isinstance(spec, dict) else {"source_widths": list(spec.source_widths), "target_width": spec.target_width,
                                                         "prompt_len": spec.prompt_len}
        self.weight, self.bias = weight, bias
        self._retained: dict[int, torch.Tensor] = {}
        self.token_norm = 1.0

    @classmethod
    def create(cls, config: AnchorRidgeConfig, spec: MappingSpec, backbone: Backbone) -> AnchorRidgeMethod:
        d_in = sum(spec.source_widths)
        method = cls(config, spec, torch.zeros(d_in, spec.target_width), torch.zeros(spec.target_width))
        method.token_norm = backbone.token_norm
        return method

    def describe(self) -> dict[str, Any]:
        return dict(self.spec)

    def fit(self, ctx: FitContext) -> TrainingLoop:
        config = self.config
        n, prompt_len = ctx.sources[0].shape[0], ctx.sources[0].shape[1]
        generator = torch.Generator().manual_seed(ctx.seed)
        table = PromptTable(init_prompts(n, prompt_len, ctx.backbone, config.init, generator)).to(ctx.backbone.device)
        ctx.prefit_head(table)
        optimizers: dict[str, torch.optim.Optimizer] = {"prompts": torch.optim.SparseAdam(table.parameters(), lr=config.lr),
                                                        "head": torch.optim.AdamW(ctx.head.parameters(), lr=ctx.head_lr)}
        # the anchors' own validation rows pick their best epoch: nobody else has a trained prompt yet
        loop = ctx.training_loop(table, optimizers, epochs=config.epochs, valid=ctx.valid_selected)
        loop.fit(ctx.progress)
        loop.use_best()
        anchors = torch.as_tensor(ctx.selected, dtype=torch.long)
        trained = loop.best_provider["rows.weight"].reshape(n, prompt_len, -1)[anchors]
        sources = [t.detach().cpu().float() for t in ctx.sources]
        x = torch.cat([t[anchors] for t in sources], dim=-1).reshape(len(anchors) * prompt_len, -1)
        y = trained.reshape(len(anchors) * prompt_len, -1)
        self._retained = {int(row): trained[i].clone() for i, row in enumerate(ctx.selected.tolist())}
        others = np.setdiff1d(np.arange(n), ctx.selected)
        rows = np.flatnonzero(np.isin(ctx.valid.user_index, others)) if len(others) else np.arange(len(ctx.valid))
        path = RidgePath(x, y)  # one SVD for every regulariser
        if len(config.lambdas) == 1 or not len(rows):
            self.weight, self.bias = ridge(path, config.lambdas[0])
            return loop
        valid = ctx.valid.subset(rows)
        key, lower = ("rmse", True) if ctx.task_kind == "rating" else ("auc", False)
        best: tuple[float, float] | None = None
        ctx.head.eval()
        for lam in config.lambdas:
            self.weight, self.bias = ridge(path, lam)
            pred, tokens = run_batches(ctx.encoder, ctx.head, _lookup(self.map(*[t.to(ctx.backbone.device) for t in sources])),
                                       valid, ctx.eval_batch_size)
            ctx.extra_forward_tokens += tokens
            value = metrics.summarize(valid.users, pred, valid.labels, ctx.task_kind)[key]
            if best is None or (value < best[1] if lower else value > best[1]):
                best = (lam, value)
        assert best is not None
        self.weight, self.bias = ridge(path, best[0])
        self.spec = {**self.spec, "lambda": best[0], "lambda_valid": best[1]}
        return loop

    def retained(self) -> dict[int, torch.Tensor]:
        return dict(self._retained)

    def map(self, *sources: torch.Tensor) -> torch.Tensor:
        x = torch.cat(sources, dim=-1) if len(sources) > 1 else sources[0]
        with torch.no_grad():
            return x.float() @ self.weight.to(x.device) + self.bias.to(x.device)

    def to(self, device: str | torch.device) -> AnchorRidgeMethod:
        self.weight, self.bias = self.weight.to(device), self.bias.to(device)
        return self

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight.detach().cpu().contiguous(), "bias": self.bias.detach().cpu().contiguous()}

    @classmethod
    def restore(cls, config: AnchorRidgeConfig, spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> AnchorRidgeMethod:
        return cls(config, spec, tensors["weight"].float(), tensors["bias"].float())


def _lookup(table: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda index: table[index]
