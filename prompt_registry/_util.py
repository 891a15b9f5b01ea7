"""Small helpers every layer uses: UTC time, batching, message previews."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, TypeVar, overload

T = TypeVar("T")
QUERY_BATCH = 2000  # bound IN (...) lists (SQLite's variable limit, plan sizes)
ECHO_CHARS = 120  # the most of a value an error message repeats (store keys are up to 101 characters)


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


def echo(value: object, limit: int = ECHO_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters with a note of how long it was (a hostile
    10,000-character id stays out of error lines and logs)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(str(value))} characters)"


def word(value: str, placeholder: str) -> str:
    """``value`` for a suggested command line, or ``placeholder`` when it is too long or odd to repeat."""
    return value if len(value) <= ECHO_CHARS and value.isprintable() and " " not in value else placeholder


def preview(items: Iterable[Any], n: int = 5) -> str:
    """The first ``n`` items for a message (each cut by ``echo``), and how many more there are."""
    items = list(items)
    shown = ", ".join(echo(i) for i in items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")
