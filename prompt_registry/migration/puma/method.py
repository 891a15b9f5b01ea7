"""PUMA as a migration method: train Phi (and the fresh target head) on the target's task loss."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from ...training.loop import cpu_state
from ..base import FitContext, MappingSpec, MigrationMethod
from .adapter import AdapterConfig, MappedPrompts, Phi
from .config import PumaConfig

if TYPE_CHECKING:
    from ...backbones.loader import Backbone
    from ...training.loop import TrainingLoop


class PumaMethod(MigrationMethod[PumaConfig]):
    """Phi (``adapter.py``) maps the frozen source prompts; Phi and the head train jointly with
    AdamW (Phi at ``lr``, the head at the migration's ``head_lr``) for at least the migration's
    ``min_steps``, warmed up and cosine-decayed to ``final_lr`` of the peak; the best validation
    on every candidate's validation tail is kept. The artifact holds Phi's state dict."""

    config_class = PumaConfig

    def __init__(self, config: PumaConfig, phi: Phi) -> None:
        super().__init__(config)
        self.phi = phi

    @classmethod
    def create(cls, config: PumaConfig, spec: MappingSpec, backbone: Backbone) -> PumaMethod:
        adapter = AdapterConfig(spec.source_widths, spec.target_width, config.hidden, config.dropout, config.norm_match,
                                backbone.token_norm if (config.norm_match or config.output_scale) else None,
                                kind=config.phi, rank=config.rank, output_scale=config.output_scale)
        return cls(config, Phi(adapter).to(backbone.device))

    def describe(self) -> dict[str, Any]:
        return self.phi.config.to_dict()

    def fit(self, ctx: FitContext) -> TrainingLoop:
        config = self.config
        provider = MappedPrompts(self.phi, ctx.sources)
        if config.init == "tokens":
            self._init_from_tokens(ctx)
        self.phi.init_output_scale(*[t[torch.as_tensor(ctx.selected, device=t.device)] for t in ctx.sources])
        provider.eval()
        ctx.prefit_head(provider)  # the head learns item effects first, from the map as initialised
        provider.train()
        optimizers = {"phi": torch.optim.AdamW(self.phi.parameters(), lr=config.lr),
                      "head": torch.optim.AdamW(ctx.head.parameters(), lr=ctx.head_lr)}
        loop = ctx.training_loop(provider, optimizers, epochs=config.epochs, schedule="cosine" if config.cosine else "constant")
        loop.fit(ctx.progress)
        loop.use_best()
        return loop

    def _init_from_tokens(self, ctx: FitContext) -> None:
        """Start Phi at the ridge map between the models' embeddings of their shared tokens."""
        from ...errors import InvalidArgumentError
        from ..alignment import token_map

        if ctx.token_tables is None:
            raise InvalidArgumentError("init='tokens' needs the models' vocabularies and embeddings, which this caller does not offer")
        sources, target = ctx.token_tables()
        fitted = token_map(sources, target, seed=ctx.seed)
        device = next(self.phi.parameters()).device
        self.phi.init_from_map(fitted.weight.to(device), fitted.bias.to(device))
        ctx.init = {"kind": "tokens", **{k: v for k, v in fitted.summary.items() if k != "valid_mse_by_lambda"}}

    def map(self, *sources: torch.Tensor) -> torch.Tensor:
        self.phi.eval()
        with torch.no_grad():
            return self.phi(*sources)

    def to(self, device: str | torch.device) -> PumaMethod:
        self.phi = self.phi.to(device)
        return self

    def tensors(self) -> dict[str, torch.Tensor]:
        return cpu_state(self.phi)

    @classmethod
    def restore(cls, config: PumaConfig, spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> PumaMethod:
        # the adapter spec, not the method config, is authoritative: it holds the resolved hidden
        # width and the target norm the map was trained with (and is all a pre-plug-in adapter has)
        phi = Phi(AdapterConfig.from_dict(spec))
        phi.load_state_dict(tensors)
        return cls(config, phi.eval())
