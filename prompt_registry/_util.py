"""Small helpers every layer uses: UTC time, batching, message previews."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar, overload

T = TypeVar("T")
QUERY_BATCH = 2000  # bound IN (...) lists (SQLite's variable limit, plan sizes)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


@overload
def aware(value: dt.datetime) -> dt.datetime: ...


@overload
def aware(value: None) -> None: ...


@overload
def aware(value: dt.datetime | None) -> dt.datetime | None: ...


def aware(value: dt.datetime | None) -> dt.datetime | None:
    """SQLite hands back naive datetimes; everything we store is UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def batched(items: Sequence[T], size: int = QUERY_BATCH) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def preview(items: Iterable[Any], n: int = 5) -> str:
    """The first ``n`` items for a message, and how many more there are."""
    items = list(items)
    shown = ", ".join(repr(i) for i in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")
