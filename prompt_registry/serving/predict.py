"""Predictions from served prompts: ``PromptReader.predict`` and ``predict_file``.

A prediction is what evaluation computes, for (user, item) pairs a service asks about: the pinned
version's prompt of each user is injected into the frozen backbone through the training code's
``PromptEncoder`` (the same tokens, positions and padding), and the set's task head turns the
answer features into a rating (1..5) or a click probability.

What a pair needs beyond the prompt depends on the head the set was trained with:

* the item's text: from ``data`` (a data set folder or ``Dataset``: its ``item_text``), else the
  item string itself is the text;
* a head with the item prior, or a template with ``{history}``, reads the training rows: ``data``
  is then required, and its training split (the one the set's run recorded) gives the priors
  and histories exactly as in training.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._util import atomic_file, preview
from ..backbones.heads import TaskHead
from ..backbones.loader import Backbone
from ..backbones.prompting import PromptEncoder, Template
from ..core.services import Services
from ..data.dataset import Dataset
from ..entities import PredictionResult, PromptSet
from ..errors import InvalidArgumentError
from ..fileio import read_csv_columns
from ..training.evaluate import set_head, split_fractions
from ..training.examples import Examples, ItemPrior, item_priors, suffix_text, user_histories
from ..training.loop import run_batches

PAIR_COLUMNS = ("user_id", "item_id")


@dataclasses.dataclass
class SetModel:
    """One set's head and encoder on a backbone, and what its inputs read from a data set."""

    set: PromptSet
    head: TaskHead
    template: Template
    encoder: PromptEncoder
    data: Dataset | None = None
    histories: dict[str, list[tuple[str, float]]] = dataclasses.field(default_factory=dict)
    priors: ItemPrior | None = None

    @classmethod
    def load(cls, services: Services, prompt_set: PromptSet, backbone: Backbone, data: Dataset | None) -> SetModel:
        head, template, encoder = set_head(services, prompt_set, backbone, purpose="used for predictions")
        needs = [why for why, needed in (("its head adds the item prior", head.prior), ("its template shows the user's history",
                                          template.history_len > 0)) if needed]
        if needs and data is None:
            raise InvalidArgumentError(f"set {prompt_set.id} reads its training rows ({' and '.join(needs)}): pass the data set it was trained on "
                                       "(data=, or --data)")
        model = cls(prompt_set, head, template, encoder, data)
        if data is not None and needs:
            test_fraction, valid_fraction = split_fractions(services, prompt_set.run_id, None)
            train = data.split(test_fraction=test_fraction, valid_fraction=valid_fraction).train
            model.histories = user_histories(data, train, template.history_len)
            model.priors = item_priors(data, train, head.task_kind) if head.prior else None
        return model

    def examples(self, users: Sequence[str], items: Sequence[str], user_index: np.ndarray) -> Examples:
        texts = self.data.item_text if self.data is not None else None
        if texts is not None:
            unknown = [i for i in dict.fromkeys(items) if i not in texts]
            if unknown:
                raise InvalidArgumentError(f"{len(unknown)} item(s) are not in data set {self.data.root if self.data else ''}: {preview(unknown)}")
        suffixes = [suffix_text(self.template, u, i, texts[i] if texts is not None else i, self.histories, texts or {}) for u, i in zip(users, items)]
        item_array = np.asarray(items, dtype=object)
        return Examples(rows=np.arange(len(users)), user_index=user_index, suffix_ids=self.encoder.tokenize(suffixes),
                        labels=np.zeros(len(users), np.float32), users=np.asarray(users, dtype=object), items=item_array,
                        prior=self.priors(item_array) if self.priors is not None else None)

    def predict(self, prompts: torch.Tensor, users: Sequence[str], items: Sequence[str], user_index: np.ndarray, batch_size: int) -> np.ndarray:
        examples = self.examples(users, items, user_index)
        with torch.inference_mode():
            predictions, _ = run_batches(self.encoder, self.head, lambda idx: prompts[idx.to(prompts.device)], examples, batch_size)
        return predictions.astype(np.float32)


def as_dataset(data: str | os.PathLike[str] | Dataset | None) -> Dataset | None:
    return None if data is None else Dataset.coerce(data)


def read_pairs_csv(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """(users, items) from a CSV with ``user_id`` and ``item_id`` columns (others are ignored)."""
    users, items = read_csv_columns(path, PAIR_COLUMNS, "pairs file")
    return users, items


def write_predictions_csv(path: str | os.PathLike[str], users: Sequence[str], items: Sequence[str], predictions: np.ndarray) -> Path:
    """``user_id,item_id,prediction`` rows, written whole or not at all (tmp + fsync + rename)."""
    path = Path(path)
    if path.is_dir():
        raise InvalidArgumentError(f"{path} is a folder; name the CSV file to write")
    if not path.parent.is_dir():
        raise InvalidArgumentError(f"folder {path.parent} does not exist; create it first")
    with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([*PAIR_COLUMNS, "prediction"])
        writer.writerows((u, i, f"{float(p):.6g}") for u, i, p in zip(users, items, predictions.tolist()))
    return path


def prediction_result(prompt_set: PromptSet, path: Path, users: Sequence[str], predictions: np.ndarray, started: float) -> PredictionResult:
    return PredictionResult(set_id=prompt_set.id, version=prompt_set.version, path=str(path), rows=len(predictions),
                            users=len(set(users)), mean_prediction=round(float(predictions.mean()), 6) if len(predictions) else None,
                            wall_seconds=round(time.perf_counter() - started, 3))


def check_pairs(users: Sequence[Any], items: Sequence[Any]) -> tuple[list[str], list[str]]:
    users, items = list(map(str, users)), list(map(str, items))
    if len(users) != len(items):
        raise InvalidArgumentError(f"predict needs one item per user: got {len(users)} users and {len(items)} items")
    return users, items
