"""Small helpers every layer uses: UTC time, batching, message previews."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
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


def fsync_path(path: Path) -> None:
    """fsync a file or a folder by path (a rename in a folder is durable once the folder is)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A file at ``path`` written whole or not at all: the block writes the yielded temporary path
    beside it; then it is fsynced, renamed over ``path`` and the folder fsynced. If the block (or
    any of that) fails, the temporary file is removed and ``path`` is as it was."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


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


def machine_info() -> dict[str, Any]:
    """What a benchmark ran on: CPUs, platform, Python, package versions, torch's thread settings."""
    import importlib.metadata
    import os
    import platform
    import sys

    versions: dict[str, str | None] = {}
    for dist in ("numpy", "zarr", "sqlalchemy", "torch", "transformers", "psycopg", "safetensors", "alembic", "prompt-registry"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    import torch  # the registry returns torch tensors; record its thread settings

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "versions": versions,
        "torch_threads": {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()},
        "thread_env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
    }
