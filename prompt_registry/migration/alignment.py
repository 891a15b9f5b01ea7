"""Aligning two models' input embedding spaces through the tokens they share.

A soft prompt lives in its model's input embedding space, on the scale of that model's token
embeddings. Two models whose vocabularies share strings (most do: WordPiece, BPE and SentencePiece
vocabularies of one language overlap in thousands of pieces) give paired points of the two spaces:
the same token, embedded by each. A ridge regression from the source embeddings of the shared
tokens to the target embeddings is a linear map between the spaces, fitted without one forward
pass; it is PUMA's ``init="tokens"`` start for a linear-family Phi, which the task loss then
trains (the cross-lingual word-embedding mapping recipe, applied to input embeddings).

Token strings are compared in a canonical form: a word-initial piece is ``"▁" + text`` whatever
the scheme marks (WordPiece marks continuations with ``##``, byte-level BPE marks word starts with
``Ġ``, SentencePiece with ``▁``; a word-level vocabulary holds whole words). Special tokens are left
out. The ridge strength is chosen on held-out shared tokens (never on task data).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import InvalidArgumentError

LAMBDAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # x the mean squared singular value of the centred inputs
MIN_SHARED = 32  # fewer shared tokens than this cannot fit (or validate) a map


@dataclasses.dataclass(frozen=True)
class TokenTable:
    """One model's vocabulary (canonical token string -> row) and its input embedding rows."""

    vocab: Mapping[str, int]
    embeddings: torch.Tensor  # (vocab size, width), float32 on the CPU

    @classmethod
    def of(cls, tokenizer: Any, embeddings: torch.Tensor) -> TokenTable:
        return cls(canonical_vocab(tokenizer), embeddings.detach().float().cpu())


def _scheme(tokens: Sequence[str]) -> str:
    n = max(len(tokens), 1)
    if sum(t.startswith("##") for t in tokens) > 0.02 * n:
        return "wordpiece"
    if sum(t.startswith("Ġ") for t in tokens) > 0.05 * n:
        return "bytelevel"
    if sum(t.startswith("▁") for t in tokens) > 0.05 * n:
        return "sentencepiece"
    return "words"


def canonical(token: str, scheme: str) -> str:
    """``token`` in the canonical form of the module docstring."""
    if scheme == "wordpiece":
        return token[2:] if token.startswith("##") else "▁" + token
    if scheme == "bytelevel":
        return "▁" + token[1:] if token.startswith("Ġ") else token
    if scheme == "sentencepiece":
        return token
    return "▁" + token


def canonical_vocab(tokenizer: Any) -> dict[str, int]:
    """Canonical token string -> id for every non-special token of a Hugging Face tokenizer (the
    first id wins when two tokens share a canonical form)."""
    vocab: dict[str, int] = tokenizer.get_vocab()
    special = set(getattr(tokenizer, "all_special_tokens", ()))
    tokens = [t for t in vocab if t not in special]
    scheme = _scheme(tokens)
    out: dict[str, int] = {}
    for token in sorted(tokens, key=vocab.__getitem__):
        out.setdefault(canonical(token, scheme), vocab[token])
    return out


@dataclasses.dataclass(frozen=True)
class RidgeMap:
    """``y = x @ weight.T + bias`` from the (concatenated) source spaces to the target's."""

    weight: torch.Tensor  # (target width, input width)
    bias: torch.Tensor  # (target width,)
    summary: dict[str, Any]


class RidgePath:
    """Affine least squares ``y ~ x W + b`` with an L2 penalty on ``W``, for any penalty from one
    SVD of the centred inputs (float64): the shared solver of this module's token map and of
    anchor-ridge's map from source to retrained prompts."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        x64, y64 = x.double(), y.double()
        self.x_mean, self.y_mean = x64.mean(0), y64.mean(0)
        u, self.singular, self.vh = torch.linalg.svd(x64 - self.x_mean, full_matrices=False)
        self.projected = u.T @ (y64 - self.y_mean)
        self.rows = len(x64)

    @property
    def mean_squared_singular_value(self) -> float:
        return float((self.singular**2).mean())

    @property
    def mean_squared_row_norm(self) -> float:
        """The centred inputs' mean squared row norm."""
        return float((self.singular**2).sum()) / max(self.rows, 1)

    def solve(self, penalty: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(W (d_in, d_out), b (d_out,)) minimising ``|x W + b - y|^2 + penalty |W|^2`` (penalty > 0)."""
        s = self.singular
        weight = self.vh.T @ ((s / (s**2 + penalty))[:, None] * self.projected)
        return weight, self.y_mean - self.x_mean @ weight


def fit_ridge(x: np.ndarray, y: np.ndarray, *, seed: int = 0, valid_share: float = 0.1,
              lambdas: Sequence[float] = LAMBDAS) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Ridge regression ``y ~ x W + b`` with the strength picked on a held-out share of the rows,
    then refitted on every row. Returns (W (d_in, d_out), b, summary)."""
    n = len(x)
    if n < MIN_SHARED:
        raise InvalidArgumentError(f"{n} paired rows cannot fit a map (need at least {MIN_SHARED})")
    order = np.random.default_rng(seed).permutation(n)
    n_valid = max(1, int(round(valid_share * n)))
    held, fit_rows = order[:n_valid], order[n_valid:]

    def solver(rows: np.ndarray) -> Callable[[float], tuple[np.ndarray, np.ndarray]]:
        """Ridge solutions on ``rows`` for a strength ``lam`` x the mean squared singular value."""
        path = RidgePath(torch.from_numpy(x[rows]), torch.from_numpy(y[rows]))

        def solve(lam: float) -> tuple[np.ndarray, np.ndarray]:
            w, b = path.solve(lam * path.mean_squared_singular_value)
            return w.numpy(), b.numpy()

        return solve

    def error(w: np.ndarray, b: np.ndarray, rows: np.ndarray) -> float:
        return float(np.mean((x[rows] @ w + b - y[rows]) ** 2))

    baseline = float(np.mean((y[held] - y[fit_rows].mean(axis=0)) ** 2))  # predicting the mean target embedding
    on_fit_rows = solver(fit_rows)
    scores = {lam: error(*on_fit_rows(lam), rows=held) for lam in lambdas}
    best = min(scores, key=scores.__getitem__)
    w, b = solver(np.arange(n))(best)
    summary = {"shared_tokens": n, "held_out": int(n_valid), "lambda": best, "valid_mse": scores[best],
               "valid_mse_mean_only": baseline, "explained": 1 - scores[best] / baseline if baseline > 0 else 0.0,
               "valid_mse_by_lambda": {f"{k:g}": v for k, v in scores.items()}}
    return w, b, summary


def token_map(sources: Sequence[TokenTable], target: TokenTable, *, seed: int = 0) -> RidgeMap:
    """The ridge map from the sources' embeddings (concatenated, as an aggregated Phi reads them) of
    every token all the models share to the target's embeddings of the same tokens."""
    shared = set(target.vocab)
    for table in sources:
        shared &= set(table.vocab)
    tokens = sorted(shared)
    if len(tokens) < MIN_SHARED:
        raise InvalidArgumentError(f"the source and target vocabularies share {len(tokens)} token(s) (need at least {MIN_SHARED}): "
                                   "init='tokens' cannot align these models; use PUMA's default init='random'")
    x = np.concatenate([t.embeddings[[t.vocab[k] for k in tokens]].numpy() for t in sources], axis=1).astype(np.float64)
    y = target.embeddings[[target.vocab[k] for k in tokens]].numpy().astype(np.float64)
    w, b, summary = fit_ridge(x, y, seed=seed)
    return RidgeMap(torch.from_numpy(w.T.astype(np.float32)).contiguous(), torch.from_numpy(b.astype(np.float32)), summary)
