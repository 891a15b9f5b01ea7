"""Data sets: the canonical layout, converters, synthetic data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .dataset import Dataset, Split, subsample, write_dataset
from .movielens import convert_movielens
from .synthetic import make_clicks, make_synthetic


def dataset_stats(folder: str | Path) -> dict[str, Any]:
    """Counts, label statistics and fingerprint of the data set in ``folder`` (validates it)."""
    return Dataset.load(folder).stats()


__all__ = ["Dataset", "Split", "convert_movielens", "dataset_stats", "make_clicks", "make_synthetic", "subsample", "write_dataset"]
