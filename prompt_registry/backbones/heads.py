"""Task heads: what turns the backbone's answer features into a rating or a click probability.

=========  =========================================================================================
rating     decoder: logits of the tokens "1".."5" at the answer position -> cross-entropy, and an MLP
           5->32->12->1 on those logits trained with MSE; loss = 0.8 MSE + 0.2 CE (PUMA's design);
           the prediction is the MLP output. Encoder: mean-pooled hidden state -> MLP -> rating (MSE).
click      decoder: the "Yes" vs "No" logit -> BCE. Encoder: pooled -> MLP (as for ratings; a head
           stored before it was, ``click_mlp`` absent, is linear) -> logit -> BCE.
=========  =========================================================================================

With ``prior=True`` the last feature column is the item's prior score (the logit of its smoothed
click-through rate, or its smoothed mean rating minus the global mean, from the training rows)
and the head adds it with a learned weight that starts at 1, the backbone's part starting at 0:
an untrained head *is* the popularity (item-mean) baseline, and training calibrates how much the
personal part moves it.

A head is versioned in the registry next to the prompts that need it (a ``head`` artifact whose
config says how to rebuild it).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

RATING_MSE_WEIGHT = 0.8
RATING_MIN, RATING_MAX = 1.0, 5.0


class TaskHead(nn.Module):
    def __init__(self, task_kind: str, decoder: bool, feature_size: int, label_mean: float = 3.0, hidden: int = 64,
                 prior: bool = False, scoring_width: int = 0, scoring_rank: int = 16, click_mlp: bool = True) -> None:
        super().__init__()
        if task_kind not in ("rating", "click"):
            raise ValueError(f"unknown task kind {task_kind!r}")
        self.task_kind, self.decoder, self.feature_size = task_kind, decoder, feature_size
        self.label_mean, self.hidden, self.prior = float(label_mean), hidden, prior
        self.scoring_width, self.scoring_rank, self.click_mlp = scoring_width, scoring_rank, click_mlp
        feature_size -= int(prior) + 2 * scoring_width  # the backbone's answer features; the others are read apart
        self.base_size = feature_size
        if task_kind == "rating":
            sizes = (feature_size, 32, 12, 1) if decoder else (feature_size, hidden, 1)
            layers: list[nn.Module] = []
            for i in range(len(sizes) - 1):
                linear = nn.Linear(sizes[i], sizes[i + 1])
                layers.append(linear)
                if i < len(sizes) - 2:
                    layers.append(nn.SiLU())
            self.mlp = nn.Sequential(*layers)
            with torch.no_grad():
                linear.bias.fill_(self.label_mean)  # the output layer starts at the global mean, not at 0
        elif decoder:
            self.scale = nn.Parameter(torch.ones(()))
            self.bias = nn.Parameter(torch.zeros(()))
        else:
            out = nn.Linear(hidden if click_mlp else feature_size, 1)
            if click_mlp:
                self.mlp = nn.Sequential(nn.Linear(feature_size, hidden), nn.SiLU(), out)
            else:
                self.linear = out
            p = min(max(self.label_mean, 1e-3), 1 - 1e-3)
            with torch.no_grad():
                out.bias.fill_(0.0 if prior else math.log(p / (1 - p)))
                if prior:
                    out.weight.zero_()
        if scoring_width:
            # the match of the user (hidden state at the prompt slot) and the candidate (the text after
            # it), in a learned rank-r space; the user side starts at zero: the match starts silent
            self.user_proj = nn.Linear(scoring_width, scoring_rank, bias=False)
            self.item_proj = nn.Linear(scoring_width, scoring_rank, bias=False)
            with torch.no_grad():
                self.user_proj.weight.zero_()
        if prior:
            self.prior_weight = nn.Parameter(torch.ones(()))
            if decoder and task_kind == "click":
                with torch.no_grad():
                    self.scale.zero_()

    def config(self) -> dict[str, Any]:
        return {"task_kind": self.task_kind, "decoder": self.decoder, "feature_size": self.feature_size,
                "label_mean": self.label_mean, "hidden": self.hidden, "prior": self.prior,
                "scoring_width": self.scoring_width, "scoring_rank": self.scoring_rank, "click_mlp": self.click_mlp}

    @classmethod
    def from_artifact(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> TaskHead:
        head = cls(config["task_kind"], config["decoder"], config["feature_size"], config["label_mean"], config.get("hidden", 64),
                   config.get("prior", False), config.get("scoring_width", 0), config.get("scoring_rank", 16),
                   config.get("click_mlp", False))
        head.load_state_dict(tensors)
        return head

    def _raw(self, features: torch.Tensor) -> torch.Tensor:
        raw = self._backbone_raw(features[:, : self.base_size])
        if self.scoring_width:
            w = self.scoring_width
            slot, item = features[:, self.base_size : self.base_size + w], features[:, self.base_size + w : self.base_size + 2 * w]
            raw = raw + (self.user_proj(slot) * self.item_proj(item)).sum(dim=-1)
        if self.prior:
            raw = raw + self.prior_weight * features[:, -1]
        return raw

    def _backbone_raw(self, features: torch.Tensor) -> torch.Tensor:
        if self.task_kind == "rating":
            x = features - features.mean(dim=-1, keepdim=True) if self.decoder else features
            return self.mlp(x).squeeze(-1)
        if self.decoder:
            return self.scale * (features[:, 0] - features[:, 1]) + self.bias
        return (self.mlp if self.click_mlp else self.linear)(features).squeeze(-1)

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(training loss, prediction) for a batch; the prediction is a rating or a probability."""
        raw = self._raw(features)
        features = features[:, : self.base_size]
        if self.task_kind == "rating":
            loss = nn.functional.mse_loss(raw, labels)
            if self.decoder:
                target = (labels.round().clamp(RATING_MIN, RATING_MAX) - 1).long()
                loss = RATING_MSE_WEIGHT * loss + (1 - RATING_MSE_WEIGHT) * nn.functional.cross_entropy(features, target)
            return loss, raw.detach()
        return nn.functional.binary_cross_entropy_with_logits(raw, labels), torch.sigmoid(raw.detach())

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        raw = self._raw(features)
        if self.task_kind == "rating":
            return raw.clamp(RATING_MIN, RATING_MAX)
        return torch.sigmoid(raw)
