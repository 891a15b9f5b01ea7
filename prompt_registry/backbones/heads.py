"""Task heads: what turns the backbone's answer features into a rating or a click probability.

=========  =========================================================================================
rating     decoder: logits of the tokens "1".."5" at the answer position -> cross-entropy, and an MLP
           5->32->12->1 on those logits trained with MSE; loss = 0.8 MSE + 0.2 CE (PUMA's design);
           the prediction is the MLP output. Encoder: mean-pooled hidden state -> MLP -> rating (MSE).
click      decoder: the "Yes" vs "No" logit -> BCE. Encoder: pooled -> linear logit -> BCE.
=========  =========================================================================================

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
    def __init__(self, task_kind: str, decoder: bool, feature_size: int, label_mean: float = 3.0, hidden: int = 64) -> None:
        super().__init__()
        if task_kind not in ("rating", "click"):
            raise ValueError(f"unknown task kind {task_kind!r}")
        self.task_kind, self.decoder, self.feature_size = task_kind, decoder, feature_size
        self.label_mean, self.hidden = float(label_mean), hidden
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
            self.linear = nn.Linear(feature_size, 1)
            p = min(max(self.label_mean, 1e-3), 1 - 1e-3)
            with torch.no_grad():
                self.linear.bias.fill_(math.log(p / (1 - p)))

    def config(self) -> dict[str, Any]:
        return {"task_kind": self.task_kind, "decoder": self.decoder, "feature_size": self.feature_size,
                "label_mean": self.label_mean, "hidden": self.hidden}

    @classmethod
    def from_artifact(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> TaskHead:
        head = cls(config["task_kind"], config["decoder"], config["feature_size"], config["label_mean"], config.get("hidden", 64))
        head.load_state_dict(tensors)
        return head

    def _raw(self, features: torch.Tensor) -> torch.Tensor:
        if self.task_kind == "rating":
            x = features - features.mean(dim=-1, keepdim=True) if self.decoder else features
            return self.mlp(x).squeeze(-1)
        if self.decoder:
            return self.scale * (features[:, 0] - features[:, 1]) + self.bias
        return self.linear(features).squeeze(-1)

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(training loss, prediction) for a batch; the prediction is a rating or a probability."""
        raw = self._raw(features)
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
