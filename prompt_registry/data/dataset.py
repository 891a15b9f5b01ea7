"""The canonical data-set layout and its deterministic per-user chronological split.

A data set is a folder with two CSV files::

    interactions.csv   user_id,item_id,label,timestamp     (label: a rating, or 0/1 for clicks)
    items.csv          item_id,text

Every problem in a file is reported with its path and line number.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import numbers
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from .._util import echo, preview
from ..errors import InvalidArgumentError, InvalidFileError, UnknownUserError


@contextlib.contextmanager
def _readable(path: Path) -> Iterator[None]:
    """Undecodable bytes or a broken CSV row become one InvalidFileError naming the file."""
    try:
        yield
    except (UnicodeDecodeError, csv.Error) as exc:
        raise _unreadable(path, exc) from None

INTERACTIONS = "interactions.csv"
ITEMS = "items.csv"
INTERACTION_COLUMNS = ("user_id", "item_id", "label", "timestamp")
ITEM_COLUMNS = ("item_id", "text")


def _open_csv(path: Path, columns: Sequence[str]) -> tuple[csv.DictReader[str], TextIO]:
    if not path.is_file():
        raise InvalidFileError(f"{path} does not exist; a data set folder holds {INTERACTIONS} and {ITEMS}")
    fh = open(path, newline="", encoding="utf-8-sig")  # -sig: the byte-order mark Excel writes
    reader = csv.DictReader(fh)
    try:
        fieldnames = reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as exc:
        fh.close()
        raise _unreadable(path, exc) from None
    missing = [c for c in columns if c not in fieldnames]
    if missing:
        fh.close()
        raise InvalidFileError(
            f"{path}:1: missing column(s) {', '.join(missing)} (found {preview(fieldnames)}); "
            f"the header must name {', '.join(columns)}"
        )
    return reader, fh


def _unreadable(path: Path, exc: Exception) -> InvalidFileError:
    return InvalidFileError(f"{path} is not a readable UTF-8 CSV ({echo(str(exc))})")


@dataclasses.dataclass(frozen=True)
class Split:
    """Row indices (into the data set's interactions) of each part, chronological per user."""

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray

    def part(self, name: str) -> np.ndarray:
        if name not in ("train", "valid", "test"):
            raise InvalidFileError(f"unknown split {echo(name)}; use train, valid or test")
        return getattr(self, name)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Interactions as parallel arrays, plus item texts. Load with ``Dataset.load(folder)``."""

    root: str
    users: np.ndarray  # str, one per interaction
    items: np.ndarray  # str
    labels: np.ndarray  # float32
    timestamps: np.ndarray  # int64
    item_text: dict[str, str]
    fingerprint: str

    @classmethod
    def coerce(cls, data: str | os.PathLike[str] | Dataset) -> Dataset:
        """``data`` itself when it is a loaded data set, else the data set in the folder it names."""
        return data if isinstance(data, Dataset) else cls.load(data)

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Dataset:
        folder = Path(folder)
        digest = hashlib.sha256()
        item_text: dict[str, str] = {}
        reader, fh = _open_csv(folder / ITEMS, ITEM_COLUMNS)
        with fh, _readable(folder / ITEMS):
            for row in reader:
                item = (row["item_id"] or "").strip()
                if not item:
                    raise InvalidFileError(f"{folder / ITEMS}:{reader.line_num}: empty item_id")
                if item in item_text:
                    raise InvalidFileError(f"{folder / ITEMS}:{reader.line_num}: item {echo(item)} is listed twice")
                item_text[item] = (row["text"] or "").strip()
        users: list[str] = []
        items: list[str] = []
        labels: list[float] = []
        stamps: list[int] = []
        path = folder / INTERACTIONS
        reader, fh = _open_csv(path, INTERACTION_COLUMNS)
        with fh, _readable(path):
            for row in reader:
                where = f"{path}:{reader.line_num}"
                user, item = (row["user_id"] or "").strip(), (row["item_id"] or "").strip()
                if not user:
                    raise InvalidFileError(f"{where}: empty user_id")
                if item not in item_text:
                    raise InvalidFileError(f"{where}: unknown item {echo(item)} (not in {ITEMS})")
                try:
                    label = float(row["label"])
                except (TypeError, ValueError):
                    raise InvalidFileError(f"{where}: label {echo(row['label'])} is not a number") from None
                if not np.isfinite(label):
                    raise InvalidFileError(f"{where}: label {echo(row['label'])} is not finite")
                try:
                    stamp = int(float(row["timestamp"]))
                except (TypeError, ValueError, OverflowError):
                    raise InvalidFileError(f"{where}: timestamp {echo(row['timestamp'])} is not a finite number") from None
                if not -2**63 <= stamp < 2**63:
                    raise InvalidFileError(f"{where}: timestamp {echo(row['timestamp'])} is out of range (a 64-bit count of seconds)")
                users.append(user)
                items.append(item)
                labels.append(label)
                stamps.append(stamp)
        if not users:
            raise InvalidFileError(f"{path} has no interactions")
        for name in (ITEMS, INTERACTIONS):
            digest.update((folder / name).read_bytes())
        return cls(
            root=str(folder.absolute()), users=np.array(users), items=np.array(items),
            labels=np.array(labels, dtype=np.float32), timestamps=np.array(stamps, dtype=np.int64),
            item_text=item_text, fingerprint=digest.hexdigest(),
        )

    def __len__(self) -> int:
        return len(self.users)

    @property
    def kind(self) -> str:
        """``click`` if every label is 0 or 1, else ``rating``."""
        return "click" if np.isin(self.labels, (0.0, 1.0)).all() else "rating"

    def user_ids(self) -> list[str]:
        """Users in order of first appearance."""
        return list(dict.fromkeys(self.users.tolist()))

    def split(self, *, test_fraction: float = 0.2, valid_fraction: float = 0.0, users: Sequence[str] | None = None) -> Split:
        """Per-user chronological split: each user's oldest interactions train, newest test.

        ``valid_fraction`` takes the newest part of each user's *training* rows as a validation
        tail. Ties in time keep file order. Deterministic: no randomness involved.
        """
        if not 0 < test_fraction < 1 or not 0 <= valid_fraction < 1:
            raise InvalidFileError("test_fraction must be in (0, 1) and valid_fraction in [0, 1)")
        keep = self._user_mask(users)
        order = np.lexsort((np.arange(len(self)), self.timestamps, self.users))
        order = order[keep[order]]
        parts: dict[str, list[np.ndarray]] = {"train": [], "valid": [], "test": []}
        boundaries = np.flatnonzero(self.users[order][1:] != self.users[order][:-1]) + 1
        for rows in np.split(order, boundaries):
            if not len(rows):
                continue
            n_test = int(round(len(rows) * test_fraction)) if len(rows) > 1 else 0
            n_test = min(max(n_test, 1 if len(rows) > 1 else 0), len(rows) - 1)
            train, test = rows[: len(rows) - n_test], rows[len(rows) - n_test :]
            n_valid = int(round(len(train) * valid_fraction)) if len(train) > 1 else 0
            parts["train"].append(train[: len(train) - n_valid])
            parts["valid"].append(train[len(train) - n_valid :])
            parts["test"].append(test)
        return Split(**{k: np.sort(np.concatenate(v)) if v else np.empty(0, np.int64) for k, v in parts.items()})

    def _user_mask(self, users: Sequence[str] | None) -> np.ndarray:
        if users is None:
            return np.ones(len(self), dtype=bool)
        wanted = np.array(list(users))
        present = set(self.users.tolist())
        absent = [u for u in wanted.tolist() if u not in present]
        if absent:
            shown = ", ".join(repr(u) for u in absent[:5])
            raise UnknownUserError(f"{len(absent)} requested user(s) have no interactions in {self.root}: {shown}")
        return np.isin(self.users, wanted)

    def stats(self) -> dict[str, object]:
        per_user = np.unique(self.users, return_counts=True)[1]
        return {
            "root": self.root, "interactions": len(self), "users": int(len(per_user)), "items": len(self.item_text),
            "kind": self.kind, "label_mean": round(float(self.labels.mean()), 4),
            "label_std": round(float(self.labels.std()), 4),
            "interactions_per_user": {"min": int(per_user.min()), "median": float(np.median(per_user)), "max": int(per_user.max())},
            "fingerprint": self.fingerprint,
        }


def write_dataset(folder: str | Path, interactions: Sequence[tuple[str, str, float, int]], items: dict[str, str]) -> Path:
    """Write the canonical layout (used by converters and synthetic data)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ITEMS, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(ITEM_COLUMNS)
        writer.writerows(items.items())
    with open(folder / INTERACTIONS, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(INTERACTION_COLUMNS)
        for user, item, label, stamp in interactions:
            writer.writerow([user, item, f"{label:g}", int(stamp)])
    return folder


def subsample(src: str | Path, dest: str | Path, *, n_users: int, per_user: int | None = None, seed: int = 0,
              min_interactions: int = 1) -> Path:
    """Write a smaller data set: ``n_users`` users drawn (seeded) among those with at least
    ``min_interactions`` interactions, each keeping their ``per_user`` most recent interactions."""
    for what, value, low in (("n_users", n_users, 1), ("per_user", per_user, 1), ("seed", seed, 0), ("min_interactions", min_interactions, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= int(value) <= 2**63 - 1):
            raise InvalidArgumentError(f"{what} must be a whole number from {low} to 2**63 - 1, not {echo(value)}")
    data = Dataset.load(src)
    ids, counts = np.unique(data.users, return_counts=True)
    eligible = ids[counts >= min_interactions]
    if len(eligible) < n_users:
        raise InvalidFileError(f"only {len(eligible)} users of {data.root} have >= {min_interactions} interactions; asked for {n_users}")
    chosen = set(np.random.default_rng(seed).choice(eligible, size=n_users, replace=False).tolist())
    rows: list[tuple[str, str, float, int]] = []
    for user in sorted(chosen):
        mine = np.flatnonzero(data.users == user)
        mine = mine[np.lexsort((mine, data.timestamps[mine]))]
        if per_user is not None:
            mine = mine[-per_user:]
        rows += [(user, str(data.items[r]), float(data.labels[r]), int(data.timestamps[r])) for r in mine.tolist()]
    used = {r[1] for r in rows}
    return write_dataset(dest, rows, {i: t for i, t in data.item_text.items() if i in used})
