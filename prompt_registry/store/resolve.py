"""Turn a store location into a ``TensorStore``: the one place that knows the backends by name.

* a directory path, or ``file://PATH``: a Zarr v3 store on the local file system (``ZarrStore``);
* ``memory://`` (or ``memory``): an in-process store, gone when the process ends (tests, demos);
* ``s3://bucket/prefix``: Zarr v3 on an S3-compatible object store (``S3Store``, the ``s3``
  extra; endpoint and credentials from the ``AWS_*`` environment variables).

A new backend is a module under ``store/``, one branch here, and one subclass of the contract
suite (``prompt_registry.testing.store_contract``).
"""

from __future__ import annotations

import os

from ..errors import InvalidArgumentError
from .base import TensorStore

MEMORY = "memory://"
_MEMORY_FORMS = (MEMORY, "memory")


def is_memory(location: str | os.PathLike[str]) -> bool:
    return os.fspath(location) in _MEMORY_FORMS


def scheme(location: str | os.PathLike[str]) -> str:
    """``memory``, ``file`` or the URL scheme of ``location``."""
    text = os.fspath(location)
    if is_memory(text):
        return "memory"
    return text.split("://", 1)[0].lower() if "://" in text else "file"


def open_store(location: str | os.PathLike[str], *, create: bool = False) -> TensorStore:
    """The store at ``location``; ``create`` makes an empty one where there is none.

    ``MissingDataError`` if there is no store there and ``create`` is false;
    ``InvalidArgumentError`` for a scheme no backend serves.
    """
    kind = scheme(location)
    if kind == "memory":
        from .memory import MemoryStore

        return MemoryStore()
    if kind == "file":
        from .zarr_store import ZarrStore

        text = os.fspath(location)
        return ZarrStore(text[len("file://"):] if text.startswith("file://") else text, create=create)
    if kind == "s3":
        from .s3_store import S3Store

        return S3Store(os.fspath(location), create=create)
    raise InvalidArgumentError(
        f"no tensor store backend for {kind}:// (in {os.fspath(location)!r}); use a local directory, "
        "memory:// or s3://BUCKET/PREFIX"
    )
