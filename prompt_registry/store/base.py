"""The tensor store interface: where prompt bytes and artifact blobs live.

The catalogue (database) is the source of truth for what exists; a store only holds bytes. Two
kinds of objects live in a store, each under a key chosen by the registry:

* **arrays** (one per prompt set): ``users x prompt_len x width``, written in whole chunks of
  ``chunk_rows`` users, then never changed (except ``overwrite_rows`` for a purge);
* **blobs** (adapters and task heads): opaque safetensors bytes.

Reads come in two kinds: ``read_rows`` returns the bytes as stored, ``read_verified`` also checks
every row against the sha256 the catalogue recorded for it (``RowChecksumError`` naming the rows
that fail). A backend may keep rows it verified in a private cache (see ``ZarrStore``) as long as
what it returns always matched the expected digest when it was read from storage.

Every write is durable when the method returns (data and directory entries fsynced), so the
registry may commit catalogue rows that point at it. Every backend must pass
``prompt_registry.testing.store_contract.TensorStoreContract``.
"""

from __future__ import annotations

import abc
import dataclasses
import datetime as dt
import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .._util import echo
from ..dtypes import SUPPORTED_DTYPES as SUPPORTED_DTYPES  # also re-exported for the stores and the CLI
from ..errors import InvalidArgumentError, MissingDataError, RowChecksumError

DEFAULT_CHUNK_ROWS = 256
DIGEST_BYTES = 32
_KEY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclasses.dataclass(frozen=True)
class ArrayInfo:
    shape: tuple[int, ...]
    dtype: str
    chunk_rows: int

    @property
    def row_nbytes(self) -> int:
        return int(np.prod(self.shape[1:])) * np.dtype(self.dtype).itemsize


@dataclasses.dataclass(frozen=True)
class FileDamage:
    """A file of an array that cannot be read as its layout says: ``rows`` (``start, stop``) of
    the array live in it; ``why`` is ``missing``, ``size`` (truncated or padded) or ``index``
    (a shard index that is not the one the layout needs)."""

    path: str
    rows: tuple[int, int]
    why: str
    detail: str


@dataclasses.dataclass(frozen=True)
class StoredObject:
    key: str
    kind: str  # "array" | "blob"
    nbytes: int
    modified_at: dt.datetime


def row_digests(array: np.ndarray) -> list[bytes]:
    """sha256 of every row's raw bytes (the row = one user's prompt)."""
    sha256 = hashlib.sha256
    # the rows themselves, not row.data: a memoryview per row costs ~7% of the hashing (100,000 rows: 178 -> 191 ms)
    return [sha256(row).digest() for row in np.ascontiguousarray(array).reshape(len(array), -1).view(np.uint8)]  # type: ignore[arg-type]  # ndarray has the buffer protocol; numpy's stubs say so only for Python >= 3.12


def digest_matrix(digests: Sequence[bytes]) -> np.ndarray:
    """Digests as an ``(n, 32)`` uint8 matrix (compared row-wise in one vectorised operation)."""
    return np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(len(digests), DIGEST_BYTES)


def mismatched_rows(data: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``data`` whose sha256 is not the matching row of ``expected``."""
    if not len(data):
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero((digest_matrix(row_digests(data)) != expected).any(axis=1))


def check_key(key: str) -> str:
    if not _KEY_RE.match(key):
        raise InvalidArgumentError(f"invalid store key {echo(key)}: use letters, digits, '.', '_' or '-' (max 128)")
    return key


def check_dtype(dtype: str) -> str:
    """A dtype a store can create an array of (``SUPPORTED_DTYPES``)."""
    if dtype not in SUPPORTED_DTYPES:
        raise InvalidArgumentError(f"unsupported dtype {dtype!r}; use one of {SUPPORTED_DTYPES}")
    return dtype


def check_chunk_aligned(info: ArrayInfo, start: int, n: int, where: str) -> None:
    """Writes cover whole chunks (the last chunk may end at the end of the array)."""
    end = start + n
    if start < 0 or end > info.shape[0]:
        raise InvalidArgumentError(f"rows {start}:{end} are outside {where} with {info.shape[0]} rows")
    if start % info.chunk_rows:
        raise InvalidArgumentError(f"write to {where} starts at row {start}, not on a chunk boundary ({info.chunk_rows})")
    if end % info.chunk_rows and end != info.shape[0]:
        raise InvalidArgumentError(f"write to {where} ends at row {end}, not on a chunk boundary ({info.chunk_rows})")


def normalize_rows(rows: np.ndarray | slice | range, n_rows: int, where: str) -> np.ndarray:
    """Row selectors as a validated int64 index array."""
    if isinstance(rows, (slice, range)):
        idx = np.arange(n_rows)[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)
    else:
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n_rows):
        raise MissingDataError(
            f"rows {int(idx.min())}..{int(idx.max())} requested from {where}, which has {n_rows} rows; "
            "the catalogue and the store disagree: run `prompt-registry doctor`"
        )
    return idx.astype(np.int64, copy=False)


def binding_record(catalog_id: str) -> dict[str, str]:
    """What a store's binding object holds (``TensorStore.bind``)."""
    from .keys import check_catalog_id

    return {"catalog_id": check_catalog_id(catalog_id), "bound_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "note": "this store belongs to one prompt-registry catalogue; do not point another registry at it"}


def parse_binding(raw: bytes | str, where: str) -> str:
    """The catalogue id a binding object names; ``MissingDataError`` (restore it) when it cannot be read."""
    import json

    try:
        record = json.loads(raw)
    except ValueError as exc:
        raise MissingDataError(f"the store binding {where} is unreadable ({exc}); restore it from backup "
                               "(it names the catalogue this store belongs to)") from None
    catalog = record.get("catalog_id") if isinstance(record, dict) else None
    if not isinstance(catalog, str):
        raise MissingDataError(f"the store binding {where} names no catalogue; restore it from backup")
    return catalog


class TensorStore(abc.ABC):
    """Abstract byte store for prompt arrays and artifact blobs.

    Capabilities are properties that callers test instead of the backend's class:
    ``supports_overwrite`` (rows can be replaced in place: what a purge needs) and
    ``local_root`` (a directory on this machine beside the data, for scratch files such as
    training checkpoints and write journals; ``None`` where the store has none).
    """

    #: human-readable location used in error messages ("zarr:/path", "memory")
    location: str

    @property
    def supports_overwrite(self) -> bool:
        """Whether ``overwrite_rows`` replaces rows in place."""
        return True

    @property
    def local_root(self) -> Path | None:
        """A local directory that belongs to this store, if it has one."""
        return None

    @property
    def persistent(self) -> bool:
        """Whether the data outlives this process."""
        return True

    # -- arrays -------------------------------------------------------------------------------
    @abc.abstractmethod
    def create_array(self, key: str, shape: tuple[int, ...], dtype: str, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> ArrayInfo:
        """Create an empty array (``shape[0]`` users); raises ``FileExistsError`` if ``key`` exists."""

    @abc.abstractmethod
    def write_rows(self, key: str, start: int, data: np.ndarray) -> None:
        """Write whole chunks starting at ``start``; durable on return."""

    @abc.abstractmethod
    def read_rows(self, key: str, rows: np.ndarray | slice | range) -> np.ndarray:
        """Rows in the order asked (duplicates allowed); ``MissingDataError`` if bytes are gone."""

    def read_verified(self, key: str, rows: np.ndarray | slice | range, digests: np.ndarray, *, scan: bool = False) -> np.ndarray:
        """``read_rows``, every row checked against ``digests`` (``(len(rows), 32)`` uint8, the
        expected sha256 of each requested row); ``RowChecksumError`` names the rows that fail.
        ``scan``: the caller reads these rows once (an apply or an export streaming a whole set),
        so a store that keeps verified rows for later reads neither looks them up nor keeps them."""
        out = self.read_rows(key, rows)
        bad = mismatched_rows(out, np.asarray(digests, dtype=np.uint8).reshape(len(out), DIGEST_BYTES))
        if len(bad):
            raise RowChecksumError(key, self.location, bad.tolist())
        return out

    @abc.abstractmethod
    def array_info(self, key: str) -> ArrayInfo:
        """Shape, dtype and chunking; ``MissingDataError`` if the array does not exist."""

    @abc.abstractmethod
    def overwrite_rows(self, key: str, rows: np.ndarray, data: np.ndarray) -> None:
        """Replace individual rows in place (a purge zeroes a user's rows; a repair restores rows
        to the bytes their digests name); durable on return."""

    def damaged_files(self, key: str) -> list[FileDamage]:
        """Files of the array that no read can use (missing, wrong size, bad shard index), found
        without reading the rows. A backend without files has none."""
        return []

    def rebuild_files(self, key: str) -> list[FileDamage]:
        """Make every damaged file readable again (durable on return): the bytes still there are
        kept, lost rows become zeros (they then fail their checksums until restored), shard
        indexes are rewritten from the layout. Returns what was damaged."""
        return []

    # -- blobs --------------------------------------------------------------------------------
    @abc.abstractmethod
    def put_blob(self, key: str, data: bytes) -> None:
        """Store bytes under ``key``; raises ``FileExistsError`` if it exists; durable on return."""

    @abc.abstractmethod
    def get_blob(self, key: str) -> bytes:
        """The bytes under ``key``; ``MissingDataError`` if absent."""

    # -- both ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove an array or blob; a missing key is not an error (gc may race a crash)."""

    @abc.abstractmethod
    def list_objects(self) -> list[StoredObject]:
        """Every array and blob in the store, for consistency checks and garbage collection."""

    # -- ownership ----------------------------------------------------------------------------
    @abc.abstractmethod
    def bound_catalog(self) -> str | None:
        """The id of the catalogue this store belongs to, or ``None`` if it was never bound."""

    @abc.abstractmethod
    def bind(self, catalog_id: str) -> str:
        """Record ``catalog_id`` as this store's catalogue unless one is recorded already
        (atomically: of two binders, one wins); returns the id the store is bound to, which the
        caller compares with its own. Durable on return."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (file handles, caches)."""
