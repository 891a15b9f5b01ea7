"""Turning data-set rows into model inputs: (user index, tokenised text after the prompt, label)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from ..backbones.prompting import PromptEncoder, Template
from ..data.dataset import Dataset
from .metrics import smoothed_item_means


@dataclasses.dataclass(frozen=True)
class Examples:
    rows: np.ndarray  # indices into the data set
    user_index: np.ndarray  # int64 index into the prompt table
    suffix_ids: list[list[int]]
    labels: np.ndarray  # float32
    users: np.ndarray  # str per example
    items: np.ndarray  # str per example
    prior: np.ndarray | None = None  # float32 per example: the item's prior score, for encoders with ``item_prior``

    def __len__(self) -> int:
        return len(self.rows)

    def subset(self, positions: np.ndarray) -> Examples:
        """These examples at ``positions`` (in that order), without tokenising anything again."""
        return Examples(rows=self.rows[positions], user_index=self.user_index[positions],
                        suffix_ids=[self.suffix_ids[p] for p in positions.tolist()], labels=self.labels[positions],
                        users=self.users[positions], items=self.items[positions],
                        prior=None if self.prior is None else self.prior[positions])

    def prior_of(self, positions: Sequence[int] | np.ndarray) -> np.ndarray | None:
        return None if self.prior is None else self.prior[np.asarray(positions, dtype=np.int64)]

    def tokens_by_user(self, encoder: PromptEncoder, n_users: int) -> np.ndarray:
        """Real tokens of one pass over these examples, summed per prompt-table row (int64, ``n_users``)."""
        counts = np.asarray(encoder.tokens(self.suffix_ids), dtype=np.int64)
        return np.bincount(self.user_index, weights=counts, minlength=n_users).astype(np.int64)


def user_histories(data: Dataset, train_rows: np.ndarray, history_len: int) -> dict[str, list[tuple[str, float]]]:
    """Each user's most recent training items (newest last), for templates with {history}."""
    if history_len <= 0:
        return {}
    order = train_rows[np.lexsort((train_rows, data.timestamps[train_rows]))]
    out: dict[str, list[tuple[str, float]]] = {}
    for r in order.tolist():
        out.setdefault(str(data.users[r]), []).append((str(data.items[r]), float(data.labels[r])))
    return out


@dataclasses.dataclass(frozen=True)
class ItemPrior:
    """Each item's prior score from training rows, and the score of an item they never show."""

    values: dict[str, float]
    default: float

    def __call__(self, items: np.ndarray) -> np.ndarray:
        return np.array([self.values.get(i, self.default) for i in items.tolist()], dtype=np.float32)


def item_priors(data: Dataset, train_rows: np.ndarray, kind: str) -> ItemPrior:
    """The item prior a head with ``prior=True`` reads: for clicks the logit of the item's smoothed
    click-through rate, exactly the popularity baseline's (one pseudo-row at the global rate); for
    ratings the smoothed item mean minus the global mean. From the training rows only."""
    labels, items = data.labels[train_rows].astype(np.float64), data.items[train_rows]
    overall = float(labels.mean()) if len(labels) else (0.5 if kind == "click" else 3.0)
    smoothed = smoothed_item_means(items, labels) if len(labels) else {}
    if kind == "click":
        def logit(p: float) -> float:
            p = min(max(p, 1e-4), 1 - 1e-4)
            return float(np.log(p / (1 - p)))
        return ItemPrior({i: logit(v) for i, v in smoothed.items()}, logit(overall))
    return ItemPrior({i: v - overall for i, v in smoothed.items()}, 0.0)


def suffix_text(template: Template, user: str, item: str, text: str, histories: dict[str, list[tuple[str, float]]],
                item_text: dict[str, str]) -> str:
    """The text after the prompt for ``user`` and ``item`` (shown as ``text``): the template's suffix,
    with the user's most recent other training items when it has ``{history}``."""
    history = ""
    if template.history_len:
        recent = [h for h in histories.get(user, []) if h[0] != item][-template.history_len :]
        history = ", ".join(f"{item_text[i]} ({label:g})" for i, label in recent) or "none"
    return template.suffix(text, history)


def build_examples(data: Dataset, rows: np.ndarray, user_index: dict[str, int], encoder: PromptEncoder,
                   template: Template, histories: dict[str, list[tuple[str, float]]], priors: ItemPrior | None = None) -> Examples:
    suffixes = [suffix_text(template, str(data.users[r]), str(data.items[r]), data.item_text[str(data.items[r])], histories, data.item_text)
                for r in rows.tolist()]
    return Examples(
        rows=rows, user_index=np.array([user_index[str(data.users[r])] for r in rows.tolist()], dtype=np.int64),
        suffix_ids=encoder.tokenize(suffixes), labels=data.labels[rows].astype(np.float32),
        users=data.users[rows], items=data.items[rows], prior=priors(data.items[rows]) if priors is not None else None,
    )
