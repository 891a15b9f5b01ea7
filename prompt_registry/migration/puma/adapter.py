"""The PUMA adapter Phi: maps source-model prompts into the target model's embedding space.

Architecture (as in the PUMA reference code), for source widths ``w_1..w_k`` (several sources are
concatenated at the input: aggregated migration) and target width ``W``::

    x   = concat(p_1, ..., p_k)                      (prompt_len, sum w_i)
    x   = x + FF_src(LN(x))                          pre-LN residual block, source width
    y   = FF_up(LN(x))                               up/down projection to the target width
    y   = y + FF_tgt(LN(y))                          pre-LN residual block, target width
    out = FF_out(LN(y))                              final LayerNorm + feed-forward

FF = Linear -> SiLU -> Dropout -> Linear, hidden width ``hidden``. Beyond the paper,
``norm_match`` rescales every output vector to the target's mean token-embedding norm: mapped
prompts otherwise come out 10-100x larger than the target's tokens, which pre-norm decoders do not
tolerate.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from ...errors import InvalidArgumentError

KINDS = ("mlp", "linear", "lowrank", "linear+mlp")


@dataclasses.dataclass(frozen=True)
class AdapterConfig:
    source_widths: tuple[int, ...]
    target_width: int
    hidden: int | None = None  # default: 2 x the widest of inputs and target, within [256, 4096]
    dropout: float = 0.1
    norm_match: bool = False
    target_norm: float | None = None  # needed with norm_match and output_scale
    kind: str = "mlp"
    rank: int = 32  # lowrank only
    output_scale: bool = False  # a learned scalar on the output (initialised to the target's token norm)

    def __post_init__(self) -> None:
        if not self.source_widths or any(w < 1 for w in self.source_widths) or self.target_width < 1:
            raise InvalidArgumentError("adapter widths must be positive and there must be at least one source")
        if not 0 <= self.dropout < 1:
            raise InvalidArgumentError("adapter dropout must be in [0, 1)")
        if self.hidden is not None and self.hidden < 1:
            raise InvalidArgumentError("adapter hidden width must be >= 1")
        if (self.norm_match or self.output_scale) and not (self.target_norm and self.target_norm > 0):
            raise InvalidArgumentError("norm_match and output_scale need the target's token-embedding norm (target_norm > 0)")
        if self.kind not in KINDS:
            raise InvalidArgumentError(f"unknown adapter kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.rank < 1:
            raise InvalidArgumentError("adapter rank must be >= 1")

    @property
    def input_width(self) -> int:
        return sum(self.source_widths)

    @property
    def hidden_width(self) -> int:
        if self.hidden is not None:
            return self.hidden
        return int(min(4096, max(256, 2 * max(self.input_width, self.target_width))))

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "source_widths": list(self.source_widths), "hidden": self.hidden_width}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterConfig:
        return cls(**{**data, "source_widths": tuple(data["source_widths"])})


class _FeedForward(nn.Sequential):
    def __init__(self, width_in: int, hidden: int, width_out: int, dropout: float) -> None:
        super().__init__(nn.Linear(width_in, hidden), nn.SiLU(), nn.Dropout(dropout), nn.Linear(hidden, width_out))


class Phi(nn.Module):
    """The map, by ``config.kind``: ``mlp`` (the paper's, above), ``linear`` (one affine map),
    ``lowrank`` (affine through a rank-``rank`` bottleneck), ``linear+mlp`` (affine plus a
    zero-initialised pre-LN residual feed-forward at the target width: starts as the linear map and
    adds non-linearity only where the task loss asks for it)."""

    def __init__(self, config: AdapterConfig) -> None:
        super().__init__()
        self.config = config
        d_in, d_out, h, p = config.input_width, config.target_width, config.hidden_width, config.dropout
        if config.kind == "mlp":
            self.norm_src = nn.LayerNorm(d_in)
            self.ff_src = _FeedForward(d_in, h, d_in, p)
            self.norm_up = nn.LayerNorm(d_in)
            self.ff_up = _FeedForward(d_in, h, d_out, p)
            self.norm_tgt = nn.LayerNorm(d_out)
            self.ff_tgt = _FeedForward(d_out, h, d_out, p)
            self.norm_out = nn.LayerNorm(d_out)
            self.ff_out = _FeedForward(d_out, h, d_out, p)
        elif config.kind == "lowrank":
            self.down = nn.Linear(d_in, min(config.rank, d_in, d_out), bias=False)
            self.up = nn.Linear(min(config.rank, d_in, d_out), d_out)
        else:
            self.linear = nn.Linear(d_in, d_out)
            if config.kind == "linear+mlp":
                self.norm_res = nn.LayerNorm(d_out)
                self.ff_res = _FeedForward(d_out, h, d_out, p)
                with torch.no_grad():
                    last = self.ff_res[-1]
                    assert isinstance(last, nn.Linear)
                    last.weight.zero_()
                    last.bias.zero_()
        if config.output_scale:
            self.log_scale = nn.Parameter(torch.zeros(()))

    def raw(self, *sources: torch.Tensor) -> torch.Tensor:
        """The map before the output scale or norm match."""
        if len(sources) != len(self.config.source_widths):
            raise InvalidArgumentError(f"adapter expects {len(self.config.source_widths)} source prompt(s), got {len(sources)}")
        x = torch.cat(sources, dim=-1) if len(sources) > 1 else sources[0]
        kind = self.config.kind
        if kind == "mlp":
            x = x + self.ff_src(self.norm_src(x))
            y = self.ff_up(self.norm_up(x))
            y = y + self.ff_tgt(self.norm_tgt(y))
            return self.ff_out(self.norm_out(y))
        if kind == "lowrank":
            return self.up(self.down(x))
        y = self.linear(x)
        if kind == "linear+mlp":
            y = y + self.ff_res(self.norm_res(y))
        return y

    def forward(self, *sources: torch.Tensor) -> torch.Tensor:
        """``sources``: one (batch, prompt_len, w_i) tensor per source -> (batch, prompt_len, W)."""
        out = self.raw(*sources)
        if self.config.norm_match:
            out = out / out.norm(dim=-1, keepdim=True).clamp(min=1e-6) * self.config.target_norm
        if self.config.output_scale:
            out = out * self.log_scale.exp()
        return out

    def init_from_map(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        """Start the map at the affine map ``x @ weight.T + bias`` (``alignment.token_map``):
        ``linear`` and ``linear+mlp`` take it as is (the residual stays zero), ``lowrank`` its best
        rank-``rank`` approximation (truncated SVD, the singular values split between the factors)."""
        kind = self.config.kind
        if kind == "mlp":
            raise InvalidArgumentError("the mlp adapter has no affine map to start from: init='tokens' needs phi linear, lowrank "
                                       "or linear+mlp")
        expected = (self.config.target_width, self.config.input_width)
        if tuple(weight.shape) != expected or tuple(bias.shape) != (expected[0],):
            raise InvalidArgumentError(f"an affine map of shape {tuple(weight.shape)} cannot start an adapter {expected[1]} -> {expected[0]}")
        with torch.no_grad():
            if kind == "lowrank":
                u, s, vh = torch.linalg.svd(weight.double(), full_matrices=False)
                r = self.down.weight.shape[0]
                root = s[:r].sqrt()
                self.up.weight.copy_((u[:, :r] * root).to(self.up.weight.dtype))
                self.down.weight.copy_((root[:, None] * vh[:r]).to(self.down.weight.dtype))
                self.up.bias.copy_(bias)
            else:
                self.linear.weight.copy_(weight)
                self.linear.bias.copy_(bias)

    def init_output_scale(self, *sources: torch.Tensor) -> None:
        """Set the learned output scale so that mapped prompts of ``sources`` have, on average, the
        target's token-embedding norm (a data-dependent start; training then moves it)."""
        if not self.config.output_scale:
            return
        was_training = self.training
        self.eval()
        with torch.no_grad():
            out = self.raw(*sources)
            if self.config.norm_match:
                out = out / out.norm(dim=-1, keepdim=True).clamp(min=1e-6) * self.config.target_norm
            mean_norm = float(out.norm(dim=-1).mean().clamp(min=1e-6))
            assert self.config.target_norm is not None
            self.log_scale.fill_(math.log(self.config.target_norm / mean_norm))
        self.train(was_training)


class MappedPrompts(nn.Module):
    """A prompt provider for the training loop: frozen source prompts of the selected users through Phi."""

    def __init__(self, phi: Phi, sources: list[torch.Tensor]) -> None:
        super().__init__()
        self.phi = phi
        for i, table in enumerate(sources):
            self.register_buffer(f"source_{i}", table, persistent=False)
        self.n_sources = len(sources)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        return self.phi(*[getattr(self, f"source_{i}")[index] for i in range(self.n_sources)])
