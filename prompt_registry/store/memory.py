"""An in-memory tensor store: for tests and throw-away registries (nothing survives the process)."""

from __future__ import annotations

import datetime as dt

import numpy as np

from .._forksafe import fresh_lock
from ..errors import InvalidArgumentError, MissingDataError
from .base import DEFAULT_CHUNK_ROWS, ArrayInfo, StoredObject, TensorStore, check_chunk_aligned, check_dtype, check_key, normalize_rows
from .keys import check_catalog_id


class MemoryStore(TensorStore):
    def __init__(self) -> None:
        self.location = "memory"
        self._arrays: dict[str, np.ndarray] = {}
        self._chunks: dict[str, int] = {}
        self._blobs: dict[str, bytes] = {}
        self._mtimes: dict[str, dt.datetime] = {}
        self._lock = fresh_lock(self)  # a forked child gets it unheld
        self._catalog: str | None = None

    @property
    def persistent(self) -> bool:
        return False

    def _touch(self, key: str) -> None:
        self._mtimes[key] = dt.datetime.now(dt.timezone.utc)

    def _array(self, key: str) -> np.ndarray:
        try:
            return self._arrays[key]
        except KeyError:
            raise MissingDataError(f"array {key!r} is missing from the {self.location} store") from None

    def create_array(self, key, shape, dtype, chunk_rows=DEFAULT_CHUNK_ROWS):
        check_key(key)
        check_dtype(dtype)
        with self._lock:
            if key in self._arrays or key in self._blobs:
                raise FileExistsError(f"{key!r} already exists in the {self.location} store")
            self._arrays[key] = np.zeros(shape, dtype=dtype)
            self._chunks[key] = chunk_rows
            self._touch(key)
        return self.array_info(key)

    def array_info(self, key):
        arr = self._array(key)
        return ArrayInfo(shape=tuple(arr.shape), dtype=str(arr.dtype), chunk_rows=self._chunks[key])

    def write_rows(self, key, start, data):
        info = self.array_info(key)
        data = np.asarray(data, dtype=info.dtype)
        if data.shape[1:] != info.shape[1:]:
            raise InvalidArgumentError(f"rows of shape {data.shape[1:]} do not fit array {key!r} of shape {info.shape}")
        check_chunk_aligned(info, start, len(data), repr(key))
        self._arrays[key][start : start + len(data)] = data
        self._touch(key)

    def read_rows(self, key, rows):
        arr = self._array(key)
        idx = normalize_rows(rows, arr.shape[0], repr(key))
        return arr[idx].copy()

    def overwrite_rows(self, key, rows, data):
        arr = self._array(key)
        idx = normalize_rows(rows, arr.shape[0], repr(key))
        arr[idx] = np.asarray(data, dtype=arr.dtype)
        self._touch(key)

    def put_blob(self, key, data):
        check_key(key)
        with self._lock:
            if key in self._arrays or key in self._blobs:
                raise FileExistsError(f"{key!r} already exists in the {self.location} store")
            self._blobs[key] = bytes(data)
            self._touch(key)

    def get_blob(self, key):
        try:
            return self._blobs[key]
        except KeyError:
            raise MissingDataError(f"blob {key!r} is missing from the {self.location} store") from None

    def exists(self, key):
        return key in self._arrays or key in self._blobs

    def delete(self, key):
        with self._lock:
            self._arrays.pop(key, None)
            self._chunks.pop(key, None)
            self._blobs.pop(key, None)
            self._mtimes.pop(key, None)

    def list_objects(self):
        out = [StoredObject(k, "array", a.nbytes, self._mtimes[k]) for k, a in self._arrays.items()]
        out += [StoredObject(k, "blob", len(b), self._mtimes[k]) for k, b in self._blobs.items()]
        return sorted(out, key=lambda o: o.key)

    def bound_catalog(self):
        return self._catalog

    def bind(self, catalog_id):
        check_catalog_id(catalog_id)
        with self._lock:
            if self._catalog is None:
                self._catalog = catalog_id
            return self._catalog
