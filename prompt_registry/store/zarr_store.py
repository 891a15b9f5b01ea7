"""Zarr v3 tensor store on a local directory.

Layout::

    ROOT/zarr.json                 group
    ROOT/arrays/KEY/zarr.json      one Zarr v3 array per prompt set (users x prompt_len x width)
    ROOT/arrays/KEY/c.I.0.0        chunk I: rows I*chunk_rows ... (uncompressed, little endian)
    ROOT/blobs/KEY                 safetensors blobs (adapters, task heads)

Arrays are uncompressed (float prompts compress ~1.1x at 3x the cost) and chunked by
``chunk_rows`` users. Chunk keys use the ``.`` separator so that all chunk files of an array sit in
one directory: one directory fsync per write instead of three per chunk.

zarr-python creates every array (its ``zarr.json``), so the arrays are ordinary Zarr v3 that any
Zarr client reads (a test checks this). Chunk I/O takes a direct path: because the codec chain is
a plain little-endian ``bytes`` codec, chunk ``i`` is exactly the raw bytes of rows
``i*chunk_rows ...``, so we write whole chunk files ourselves (zarr does not fsync; we must) and
read rows through memory maps of the chunk files (kept open, re-validated by ``stat`` on each
use), gathered by numpy: a single prompt read is a page-cache copy instead of a whole-chunk decode
through zarr's event loop, and 10,000 random rows are one pass over ~400 maps. Arrays whose metadata differs (written by another
tool) go through zarr for both.
"""

from __future__ import annotations

import collections
import concurrent.futures
import datetime as dt
import json
import mmap
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

from ..errors import MissingDataError
from .base import (
    DEFAULT_CHUNK_ROWS,
    SUPPORTED_DTYPES,
    ArrayInfo,
    StoredObject,
    TensorStore,
    check_chunk_aligned,
    check_key,
    normalize_rows,
)

_ARRAYS = "arrays"
_BLOBS = "blobs"


def fsync_path(path: Path) -> None:
    """fsync a file or directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_IO_THREADS = 8
# Chunk memory maps kept open for reads (one virtual memory area each; Linux allows ~65,000).
_MAPS_CACHED = 4096
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _io_pool() -> concurrent.futures.ThreadPoolExecutor:
    """Threads for overlapping chunk writes and fsyncs (they release the GIL)."""
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(max_workers=_IO_THREADS, thread_name_prefix="prompt-registry-io")
    return _pool


def _mtime(path: Path) -> dt.datetime:
    return dt.datetime.fromtimestamp(path.stat().st_mtime, tz=dt.timezone.utc)


class _Layout:
    """What we need to know to read an array's chunk files directly."""

    def __init__(self, info: ArrayInfo, direct: bool) -> None:
        self.info = info
        self.direct = direct  # plain little-endian bytes codec and "." chunk keys


class ZarrStore(TensorStore):
    def __init__(self, root: str | os.PathLike[str], *, create: bool = False) -> None:
        self.root = Path(root).absolute()
        self.location = f"zarr:{self.root}"
        if create:
            for sub in (self.root, self.root / _ARRAYS, self.root / _BLOBS):
                sub.mkdir(parents=True, exist_ok=True)
            if not (self.root / "zarr.json").exists():
                zarr.open_group(store=LocalStore(self.root), mode="a", zarr_format=3)
            fsync_path(self.root)
        elif not (self.root / "zarr.json").is_file():
            raise MissingDataError(
                f"no tensor store at {self.root} (missing zarr.json); check --store / "
                "PROMPT_REGISTRY_STORE, or run `prompt-registry init` to create one"
            )
        self._zarr_store = LocalStore(self.root / _ARRAYS)
        self._layouts: dict[str, _Layout] = {}
        self._maps: collections.OrderedDict[tuple[str, int], tuple[tuple[int, int, int], np.ndarray]] = collections.OrderedDict()
        self._lock = threading.Lock()

    # -- helpers ------------------------------------------------------------------------------
    def _array_dir(self, key: str) -> Path:
        return self.root / _ARRAYS / key

    def _blob_path(self, key: str) -> Path:
        return self.root / _BLOBS / key

    @staticmethod
    def _chunk_name(chunk: int, ndim: int) -> str:
        """Chunk ``chunk``'s file name (``.`` separator; one chunk along every other axis)."""
        return f"c.{chunk}" + ".0" * (ndim - 1)

    def _chunk_path(self, key: str, chunk: int, ndim: int) -> Path:
        return self._array_dir(key) / self._chunk_name(chunk, ndim)

    def _layout(self, key: str) -> _Layout:
        layout = self._layouts.get(key)
        if layout is not None:
            return layout
        meta_path = self._array_dir(key) / "zarr.json"
        try:
            meta = json.loads(meta_path.read_bytes())
        except FileNotFoundError:
            raise MissingDataError(f"array {key!r} is missing from the store {self.location}") from None
        except ValueError as exc:
            raise MissingDataError(f"array metadata {meta_path} is corrupt ({exc})") from None
        shape = tuple(int(s) for s in meta["shape"])
        chunk_shape = tuple(int(c) for c in meta["chunk_grid"]["configuration"]["chunk_shape"])
        info = ArrayInfo(shape=shape, dtype=str(meta["data_type"]), chunk_rows=chunk_shape[0])
        codecs = meta.get("codecs", [])
        encoding = meta.get("chunk_key_encoding", {})
        direct = (
            len(codecs) == 1
            and codecs[0].get("name") == "bytes"
            and codecs[0].get("configuration", {}).get("endian", "little") == "little"
            and encoding.get("name") == "default"
            and encoding.get("configuration", {}).get("separator") == "."
            and chunk_shape[1:] == shape[1:]
        )
        layout = _Layout(info, direct)
        with self._lock:
            self._layouts[key] = layout
        return layout

    def _open_zarr(self, key: str, mode: str = "r") -> zarr.Array:
        return zarr.open_array(store=self._zarr_store, path=key, mode=mode, zarr_format=3)

    # -- arrays -------------------------------------------------------------------------------
    def create_array(self, key, shape, dtype, chunk_rows=DEFAULT_CHUNK_ROWS):
        check_key(key)
        if dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"unsupported dtype {dtype!r}; use one of {SUPPORTED_DTYPES}")
        if self.exists(key):
            raise FileExistsError(f"{key!r} already exists in the store {self.location}")
        shape = tuple(int(s) for s in shape)
        zarr.create_array(
            store=self._zarr_store,
            name=key,
            shape=shape,
            chunks=(chunk_rows, *shape[1:]),
            dtype=dtype,
            compressors=None,
            filters=None,
            fill_value=0.0,
            chunk_key_encoding={"name": "default", "separator": "."},
            config={"write_empty_chunks": True},
            zarr_format=3,
        )
        array_dir = self._array_dir(key)
        fsync_path(array_dir / "zarr.json")
        fsync_path(array_dir)
        fsync_path(array_dir.parent)
        return self._layout(key).info

    def array_info(self, key):
        return self._layout(key).info

    def write_rows(self, key, start, data):
        layout = self._layout(key)
        info = layout.info
        data = np.ascontiguousarray(data, dtype=info.dtype)
        if data.shape[1:] != info.shape[1:]:
            raise ValueError(f"rows of shape {data.shape[1:]} do not fit array {key!r} of shape {info.shape}")
        check_chunk_aligned(info, start, len(data), repr(key))
        if not len(data):
            return
        first = start // info.chunk_rows
        n_chunks = -(-len(data) // info.chunk_rows)
        if layout.direct:
            self._write_chunks_direct(key, info, first, data)
        else:
            self._open_zarr(key, mode="r+")[start : start + len(data)] = data
            paths = [self._chunk_path(key, c, len(info.shape)) for c in range(first, first + n_chunks)]
            list(_io_pool().map(fsync_path, paths))
        fsync_path(self._array_dir(key))

    def _write_chunks_direct(self, key: str, info: ArrayInfo, first: int, data: np.ndarray) -> None:
        """Write whole chunk files exactly as zarr's plain ``bytes`` codec lays them out.

        Chunks are written and fdatasync'ed from a small thread pool: the flushes overlap, which
        is most of the cost of a durable write. A final partial chunk is padded with the fill
        value (0) to the full chunk shape, as zarr does.
        """
        chunk_nbytes = info.chunk_rows * info.row_nbytes
        flat = data.reshape(-1).view(np.uint8)

        def write(i: int) -> None:
            payload = memoryview(flat[i * chunk_nbytes : (i + 1) * chunk_nbytes])
            path = self._chunk_path(key, first + i, len(info.shape))
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                written = os.write(fd, payload)
                while written < len(payload):
                    written += os.write(fd, payload[written:])
                if len(payload) < chunk_nbytes:
                    os.ftruncate(fd, chunk_nbytes)  # zero padding of the edge chunk
                os.fdatasync(fd)
            finally:
                os.close(fd)

        n_chunks = -(-len(data) // info.chunk_rows)
        list(_io_pool().map(write, range(n_chunks)))

    def read_rows(self, key, rows):
        layout = self._layout(key)
        info = layout.info
        idx = normalize_rows(rows, info.shape[0], f"array {key!r} in {self.location}")
        if not layout.direct:
            return np.asarray(self._open_zarr(key).get_orthogonal_selection((idx,)))
        out = np.empty((len(idx), *info.shape[1:]), dtype=info.dtype)
        if not len(idx):
            return out
        # group the asked rows by chunk (stable: each chunk's rows keep their order), then gather
        # each group from the chunk's memory map straight into its places in ``out``
        chunk_of = idx // info.chunk_rows
        order = np.argsort(chunk_of, kind="stable")
        chunks = chunk_of[order]
        local = idx[order] - chunks * info.chunk_rows
        bounds = (np.flatnonzero(np.diff(chunks)) + 1).tolist()
        for lo, hi in zip([0, *bounds], [*bounds, len(idx)]):
            out[order[lo:hi]] = self._chunk_view(key, info, int(chunks[lo]))[local[lo:hi]]
        return out

    def _chunk_view(self, key: str, info: ArrayInfo, chunk: int) -> np.ndarray:
        """A chunk file as a read-only array over its memory map (the page cache), cached.

        Each use re-stats the file: a map is reused only while the file is the same (inode,
        size, mtime), so a chunk replaced or truncated on disk is mapped afresh or reported,
        never read through a stale or short map.
        """
        path = f"{self.root}/{_ARRAYS}/{key}/{self._chunk_name(chunk, len(info.shape))}"  # str: pathlib costs ~30 us
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise MissingDataError(
                f"chunk file {path} is missing from the store; the bytes of this prompt set are lost: "
                "restore them from backup or re-import the set"
            ) from None
        ident = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._maps.get((key, chunk))
            if hit is not None and hit[0] == ident:
                self._maps.move_to_end((key, chunk))
                return hit[1]
        chunk_nbytes = info.chunk_rows * info.row_nbytes
        if st.st_size != chunk_nbytes:
            raise MissingDataError(
                f"chunk file {path} is truncated or padded ({st.st_size} bytes, expected {chunk_nbytes}); "
                "restore it from backup or re-import the set"
            )
        with open(path, "rb") as fh:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        view = np.frombuffer(mapped, dtype=info.dtype).reshape(info.chunk_rows, *info.shape[1:])
        with self._lock:
            self._maps[(key, chunk)] = (ident, view)
            while len(self._maps) > _MAPS_CACHED:
                self._maps.popitem(last=False)  # the map closes when no reader holds its view
        return view

    def overwrite_rows(self, key, rows, data):
        info = self._layout(key).info
        idx = normalize_rows(rows, info.shape[0], f"array {key!r} in {self.location}")
        data = np.ascontiguousarray(np.asarray(data, dtype=info.dtype).reshape((len(idx), *info.shape[1:])))
        chunks = sorted(set((idx // info.chunk_rows).tolist()))
        if not self._layout(key).direct:
            # keep all-zero chunks as files (zarr would otherwise delete them: purges zero rows)
            arr = zarr.open_array(store=self._zarr_store, path=key, mode="r+", zarr_format=3, config={"write_empty_chunks": True})
            arr.set_orthogonal_selection((idx,), data)
            list(_io_pool().map(fsync_path, [self._chunk_path(key, c, len(info.shape)) for c in chunks]))
            return
        flat = data.reshape(len(idx), -1).view(np.uint8)
        for chunk in chunks:
            path = self._chunk_path(key, chunk, len(info.shape))
            try:
                fd = os.open(path, os.O_WRONLY)
            except FileNotFoundError:
                raise MissingDataError(f"chunk file {path} is missing from the store; cannot overwrite its rows") from None
            try:
                for i in np.flatnonzero(idx // info.chunk_rows == chunk).tolist():
                    os.pwrite(fd, flat[i].tobytes(), (int(idx[i]) - chunk * info.chunk_rows) * info.row_nbytes)
                os.fdatasync(fd)
            finally:
                os.close(fd)

    # -- blobs --------------------------------------------------------------------------------
    def put_blob(self, key, data):
        check_key(key)
        path = self._blob_path(key)
        if self.exists(key):
            raise FileExistsError(f"{key!r} already exists in the store {self.location}")
        tmp = path.with_name(f".{key}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_path(path.parent)

    def get_blob(self, key):
        try:
            return self._blob_path(key).read_bytes()
        except FileNotFoundError:
            raise MissingDataError(f"blob {key!r} is missing from the store {self.location}") from None

    # -- both ---------------------------------------------------------------------------------
    def exists(self, key):
        return (self._array_dir(key) / "zarr.json").exists() or self._array_dir(key).exists() or self._blob_path(key).exists()

    def delete(self, key):
        check_key(key)
        with self._lock:
            self._layouts.pop(key, None)
            for cached in [k for k in self._maps if k[0] == key]:
                del self._maps[cached]
        array_dir = self._array_dir(key)
        if array_dir.exists():
            shutil.rmtree(array_dir, ignore_errors=True)
            fsync_path(array_dir.parent)
        blob = self._blob_path(key)
        if blob.exists():
            blob.unlink(missing_ok=True)
            fsync_path(blob.parent)

    def list_objects(self):
        out: list[StoredObject] = []
        for entry in sorted((self.root / _ARRAYS).iterdir()):
            if entry.is_dir():
                nbytes = sum(f.stat().st_size for f in entry.iterdir() if f.is_file())
                out.append(StoredObject(entry.name, "array", nbytes, _mtime(entry)))
        for entry in sorted((self.root / _BLOBS).iterdir()):
            if entry.is_file() and not entry.name.startswith("."):
                out.append(StoredObject(entry.name, "blob", entry.stat().st_size, _mtime(entry)))
        return out
