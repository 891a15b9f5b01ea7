"""Zarr v3 tensor store on a local directory.

Layout::

    ROOT/zarr.json                 group
    ROOT/prompt-registry.json      the id of the one catalogue this store belongs to
    ROOT/arrays/KEY/zarr.json      one Zarr v3 array per prompt set (users x prompt_len x width)
    ROOT/arrays/KEY/c.F.0.0        shard file F: rows F*shard_rows ... in chunks of chunk_rows,
                                   then the shard index (uncompressed, little endian)
    ROOT/blobs/KEY                 safetensors blobs (adapters, task heads)

Arrays are uncompressed (float prompts compress ~1.1x at 3x the cost) and chunked by
``chunk_rows`` users (256), with 64 chunks per shard file (``sharding_indexed`` codec): a
100,000-user version is 7 files, not 391. Fewer files is what makes a durable write cheap: each
new file costs a create, its own fdatasync and a journal commit (measured on 2 cores, 230 MB
written and fsynced beside a hashing thread: 0.39 s as 391 files, 0.28 s as 7). Chunk keys use the
``.`` separator so that all files of an array sit in one directory.

zarr-python creates every array (its ``zarr.json``), so the arrays are ordinary Zarr v3 that any
Zarr client reads (a test checks this). File I/O takes a direct path: with a plain little-endian
``bytes`` codec inside the shard, and the chunks of a shard stored in order from offset 0, row
``r`` of a shard is a fixed byte range of its file. We write shard files ourselves (pwrite into a
file of the final size, the index written with its crc32c; zarr does not fsync, we must), and read
rows through memory maps of the files (kept open, re-validated by ``stat`` on each use; the shard
index is checked once per map), gathered by numpy. A single prompt read is a page-cache copy
instead of a decode through zarr's event loop.

Verified reads (``read_verified``) keep the rows that passed their sha256 check in a bounded
private cache (:class:`_VerifiedFile`, LRU over files, ``verified_cache_bytes``), the way a
database block cache keeps blocks whose checksum it checked when it read them from disk: a warm
verified read copies those rows instead of hashing them again. What is served from the cache
matched the digest the caller expects when it came off storage; the cache is private memory, so
later changes on disk cannot alter it, and an entry is dropped as soon as its file changes
(inode, size or mtime differ), is overwritten by this store (a purge) or deleted.

Arrays written before sharding (one file per chunk) are read the same way; arrays whose metadata
differs (written by another tool) go through zarr.
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
from collections.abc import Iterator
from pathlib import Path

import google_crc32c
import numpy as np
import numpy.typing as npt
import zarr
from zarr.storage import LocalStore

from .._forksafe import fresh_lock
from .._util import atomic_file, fsync_path
from ..dtypes import as_words, dtype_of_metadata, zarr_attributes, zarr_dtype
from ..errors import InvalidArgumentError, MissingDataError, RowChecksumError
from .base import (
    DEFAULT_CHUNK_ROWS,
    DIGEST_BYTES,
    ArrayInfo,
    FileDamage,
    StoredObject,
    TensorStore,
    binding_record,
    check_chunk_aligned,
    check_dtype,
    check_key,
    digest_matrix,
    normalize_rows,
    parse_binding,
    row_digests,
)

_ARRAYS = "arrays"
_BLOBS = "blobs"
# ROOT/BINDING_FILE names the catalogue the store belongs to (see ``TensorStore.bind``).
BINDING_FILE = "prompt-registry.json"

# Chunks per shard file of new arrays: 256 users x 64 = 16,384 users (37.7 MB at width 576).
SHARD_CHUNKS = 64
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


def _forget_io_pool_after_fork() -> None:
    """In a forked child the pool's threads are gone (see ``_forksafe``): a new pool is made on
    first use."""
    global _pool
    _pool = None


os.register_at_fork(after_in_child=_forget_io_pool_after_fork)


def _pwrite_all(fd: int, payload: memoryview, offset: int) -> None:
    written = 0
    while written < len(payload):
        written += os.pwrite(fd, payload[written:], offset + written)


def _mtime(path: Path) -> dt.datetime:
    return dt.datetime.fromtimestamp(path.stat().st_mtime, tz=dt.timezone.utc)


_EMPTY = 2**64 - 1  # shard index entry of a chunk that is not stored

# Verified-row cache: default capacity, and the environment variable that overrides it (MiB; 0 = off).
DEFAULT_VERIFIED_CACHE_BYTES = 256 * 2**20
VERIFIED_CACHE_ENV = "PROMPT_REGISTRY_VERIFIED_CACHE_MB"
# Reads of fewer rows hash them directly: a row hashes in ~2 us, a cache lookup costs tens of us.
VERIFIED_CACHE_MIN_ROWS = 64
# Files with cached rows: each holds two anonymous maps, and a process may have ~65,000 maps
# (``vm.max_map_count``), shared with the file maps above.
_VERIFIED_FILES_CACHED = 1024


def _anonymous(nbytes: int, dtype: npt.DTypeLike, shape: tuple[int, ...]) -> np.ndarray:
    """A zeroed array in its own anonymous memory map: pages are allocated when first written and
    returned to the system when the array is dropped."""
    return np.frombuffer(mmap.mmap(-1, max(nbytes, 1)), dtype=dtype, count=int(np.prod(shape))).reshape(shape)


class _VerifiedFile:
    """Private copies of rows of one store file that passed their sha256 check.

    ``digests[r]`` is the digest row ``r`` was checked against; a row is served from here only to
    a caller that expects that same digest. Memory is allocated lazily per page as rows arrive.
    """

    __slots__ = ("charged", "digests", "ident", "known", "rows")

    def __init__(self, ident: tuple[int, int, int], n_rows: int, row_shape: tuple[int, ...], dtype: str) -> None:
        row_nbytes = int(np.prod(row_shape)) * np.dtype(dtype).itemsize
        self.ident = ident
        self.rows = _anonymous(n_rows * row_nbytes, dtype, (n_rows, *row_shape))
        self.digests = _anonymous(n_rows * DIGEST_BYTES, np.uint8, (n_rows, DIGEST_BYTES))
        self.known = np.zeros(n_rows, dtype=bool)
        self.charged = 0


class _Layout:
    """How an array's files are laid out, as far as the direct path needs to know.

    ``file_rows`` rows per file (a shard, or one chunk for arrays written before sharding); in a
    shard, chunk ``k`` sits at byte ``k * chunk_nbytes`` and the index follows the last chunk
    stored (chunks past the end of the array are not stored).
    """

    def __init__(self, info: ArrayInfo, direct: bool, file_rows: int, sharded: bool) -> None:
        self.info = info
        self.direct = direct
        self.file_rows = file_rows
        self.sharded = sharded

    def file_of(self, rows: np.ndarray) -> np.ndarray:
        return rows // self.file_rows

    def stored_rows(self, f: int) -> int:
        """Rows file ``f`` holds (whole chunks: the edge chunk is padded with zeros)."""
        if not self.sharded:
            return self.file_rows
        rows = min(self.file_rows, self.info.shape[0] - f * self.file_rows)
        return -(-rows // self.info.chunk_rows) * self.info.chunk_rows

    def index_bytes(self, f: int) -> bytes:
        """Shard ``f``'s index (offset, nbytes per chunk, uint64 LE) followed by its crc32c."""
        chunk_nbytes = self.info.chunk_rows * self.info.row_nbytes
        n_chunks = self.file_rows // self.info.chunk_rows
        stored = self.stored_rows(f) // self.info.chunk_rows
        index = np.full((n_chunks, 2), _EMPTY, dtype="<u8")
        index[:stored, 0] = np.arange(stored, dtype=np.uint64) * chunk_nbytes
        index[:stored, 1] = chunk_nbytes
        raw = index.tobytes()
        return raw + google_crc32c.value(raw).to_bytes(4, "little")

    def file_nbytes(self, f: int) -> int:
        data = self.stored_rows(f) * self.info.row_nbytes
        return data + (len(self.index_bytes(f)) if self.sharded else 0)


def _parse_layout(meta: dict) -> _Layout:
    shape = tuple(int(s) for s in meta["shape"])
    grid = tuple(int(c) for c in meta["chunk_grid"]["configuration"]["chunk_shape"])
    codecs = meta.get("codecs", [])
    encoding = meta.get("chunk_key_encoding", {})
    keys_ok = encoding.get("name") == "default" and encoding.get("configuration", {}).get("separator") == "."

    def plain_bytes(chain: list) -> bool:
        return (len(chain) == 1 and chain[0].get("name") == "bytes"
                and chain[0].get("configuration", {}).get("endian", "little") == "little")

    if len(codecs) == 1 and codecs[0].get("name") == "sharding_indexed":
        conf = codecs[0].get("configuration", {})
        inner = tuple(int(c) for c in conf.get("chunk_shape", ()))
        index_codecs = [c.get("name") for c in conf.get("index_codecs", [])]
        direct = (
            keys_ok and plain_bytes(conf.get("codecs", [])) and index_codecs == ["bytes", "crc32c"]
            and conf.get("index_location", "end") == "end" and len(inner) == len(shape)
            and inner[1:] == shape[1:] and grid[1:] == shape[1:] and grid[0] % inner[0] == 0
        )
        info = ArrayInfo(shape=shape, dtype=dtype_of_metadata(meta), chunk_rows=inner[0] if inner else grid[0])
        return _Layout(info, direct, grid[0], sharded=True)
    info = ArrayInfo(shape=shape, dtype=dtype_of_metadata(meta), chunk_rows=grid[0])
    return _Layout(info, keys_ok and plain_bytes(codecs) and grid[1:] == shape[1:], grid[0], sharded=False)


class ZarrStore(TensorStore):
    def __init__(self, root: str | os.PathLike[str], *, create: bool = False, shard_chunks: int = SHARD_CHUNKS,
                 verified_cache_bytes: int | None = None) -> None:
        """``shard_chunks``: chunks per shard file for arrays this store creates (existing arrays
        keep the layout their metadata records). ``verified_cache_bytes``: capacity of the
        verified-row cache (default ``$PROMPT_REGISTRY_VERIFIED_CACHE_MB`` MiB, else 256 MiB; 0
        turns it off and every verified read hashes every row)."""
        self.root = Path(root).absolute()
        self.shard_chunks = shard_chunks
        if verified_cache_bytes is None:
            env = os.environ.get(VERIFIED_CACHE_ENV)
            verified_cache_bytes = int(float(env) * 2**20) if env else DEFAULT_VERIFIED_CACHE_BYTES
        self.verified_cache_bytes = max(int(verified_cache_bytes), 0)
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
        self._verified: collections.OrderedDict[tuple[str, int], _VerifiedFile] = collections.OrderedDict()
        self._verified_nbytes = 0
        self._lock = fresh_lock(self)  # a forked child gets it unheld

    @property
    def local_root(self) -> Path:
        return self.root

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
        layout = _parse_layout(meta)
        with self._lock:
            self._layouts[key] = layout
        return layout

    def _open_zarr(self, key: str, mode: str = "r") -> zarr.Array:
        return zarr.open_array(store=self._zarr_store, path=key, mode=mode, zarr_format=3)

    # -- arrays -------------------------------------------------------------------------------
    def create_array(self, key, shape, dtype, chunk_rows=DEFAULT_CHUNK_ROWS):
        check_key(key)
        check_dtype(dtype)
        if self.exists(key):
            raise FileExistsError(f"{key!r} already exists in the store {self.location}")
        shape = tuple(int(s) for s in shape)
        zarr.create_array(
            store=self._zarr_store,
            name=key,
            shape=shape,
            shards=(chunk_rows * self.shard_chunks, *shape[1:]),
            chunks=(chunk_rows, *shape[1:]),
            dtype=zarr_dtype(dtype),
            attributes=zarr_attributes(dtype),
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
            raise InvalidArgumentError(f"rows of shape {data.shape[1:]} do not fit array {key!r} of shape {info.shape}")
        check_chunk_aligned(info, start, len(data), repr(key))
        if not len(data):
            return
        files = range(start // layout.file_rows, (start + len(data) - 1) // layout.file_rows + 1)
        if layout.direct and layout.sharded:
            self._write_shards_direct(key, layout, start, data, files)
        else:  # arrays written before sharding, or by another tool: zarr writes, we fsync
            self._open_zarr(key, mode="r+")[start : start + len(data)] = as_words(data)
            list(_io_pool().map(fsync_path, [self._chunk_path(key, f, len(info.shape)) for f in files]))
        fsync_path(self._array_dir(key))

    def _write_shards_direct(self, key: str, layout: _Layout, start: int, data: np.ndarray, files: range) -> None:
        """pwrite the rows into their shard files, laid out exactly as zarr's sharding codec does.

        A shard file is created at its final size (the chunks not written yet read as zeros, the
        fill value) and its index is (re)written on every write, so any chunk-aligned write lands
        in place. Files are written and fdatasync'ed from a thread pool: the flushes overlap.
        """
        info = layout.info
        flat = data.reshape(len(data), -1).view(np.uint8)

        def write(f: int) -> None:
            lo, hi = max(start, f * layout.file_rows), min(start + len(data), (f + 1) * layout.file_rows)
            size = layout.file_nbytes(f)
            index = layout.index_bytes(f)
            fd = os.open(self._chunk_path(key, f, len(info.shape)), os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                if os.fstat(fd).st_size != size:
                    os.ftruncate(fd, size)
                _pwrite_all(fd, flat[lo - start : hi - start].data.cast("B"), (lo - f * layout.file_rows) * info.row_nbytes)
                _pwrite_all(fd, memoryview(index), size - len(index))
                os.fdatasync(fd)
            finally:
                os.close(fd)

        list(_io_pool().map(write, files))

    def read_rows(self, key, rows):
        layout = self._layout(key)
        info = layout.info
        idx = normalize_rows(rows, info.shape[0], f"array {key!r} in {self.location}")
        if not layout.direct:
            return np.asarray(self._open_zarr(key).get_orthogonal_selection((idx,))).view(info.dtype)
        out = np.empty((len(idx), *info.shape[1:]), dtype=info.dtype)
        if len(idx) and idx[-1] - idx[0] == len(idx) - 1 and bool((np.diff(idx) == 1).all()):
            # consecutive rows (a scan): one slice copy per file, no fancy-indexed temporary of every row
            first, end, per_file = int(idx[0]), int(idx[-1]) + 1, layout.file_rows
            for f in range(first // per_file, (end - 1) // per_file + 1):
                lo, hi = max(first, f * per_file), min(end, (f + 1) * per_file)
                out[lo - first : hi - first] = self._file_view(key, layout, f)[1][lo - f * per_file : hi - f * per_file]
            return out
        for f, places, local in self._by_file(layout, idx):
            out[places] = self._file_view(key, layout, f)[1][local]
        return out

    @staticmethod
    def _by_file(layout: _Layout, idx: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """The asked rows grouped by file: ``(file, places in the request, rows in the file)``,
        each file's rows in the order asked."""
        if not len(idx):
            return
        file_of = layout.file_of(idx)
        order = np.argsort(file_of, kind="stable")
        files = file_of[order]
        local = idx[order] - files * layout.file_rows
        bounds = (np.flatnonzero(np.diff(files)) + 1).tolist()
        for lo, hi in zip([0, *bounds], [*bounds, len(idx)]):
            yield int(files[lo]), order[lo:hi], local[lo:hi]

    def read_verified(self, key, rows, digests, *, scan=False):
        layout = self._layout(key)
        idx = normalize_rows(rows, layout.info.shape[0], f"array {key!r} in {self.location}")
        try:
            if scan:  # read once (an apply, an export): keeping the rows would only copy them and evict what others reuse
                return super().read_verified(key, idx, digests)
            return self._read_verified(key, layout, idx, digests)
        except RowChecksumError as exc:
            files = sorted(set(layout.file_of(idx[exc.positions]).tolist()))
            raise exc.in_files(tuple(str(self._chunk_path(key, f, len(layout.info.shape))) for f in files)) from None

    def _read_verified(self, key: str, layout: _Layout, idx: np.ndarray, digests: np.ndarray) -> np.ndarray:
        info = layout.info
        if not layout.direct or not self.verified_cache_bytes:
            return super().read_verified(key, idx, digests)
        # small reads hash faster than the cache answers; a read bigger than a quarter of the
        # cache (an export, a scan) would only evict what others use: both just hash
        if not VERIFIED_CACHE_MIN_ROWS <= len(idx) <= self.verified_cache_bytes // 4 // max(info.row_nbytes, mmap.PAGESIZE):
            return super().read_verified(key, idx, digests)
        expected = np.asarray(digests, dtype=np.uint8).reshape(len(idx), DIGEST_BYTES)
        out = np.empty((len(idx), *info.shape[1:]), dtype=info.dtype)
        bad: list[int] = []
        for f, places, local in self._by_file(layout, idx):
            ident, view = self._file_view(key, layout, f)
            with self._lock:  # lookups and copies out of an entry never interleave with its updates
                entry = self._verified_entry(key, f, ident, layout)
                hit = entry.known[local] & (entry.digests[local] == expected[places]).all(axis=1)
                cached = np.flatnonzero(hit)
                out[places[cached]] = entry.rows[local[cached]]
                fresh_at = np.flatnonzero(~hit)
            if not len(fresh_at):
                continue
            fresh_places, fresh_local = places[fresh_at], local[fresh_at]
            fresh = view[fresh_local]
            ok = (digest_matrix(row_digests(fresh)) == expected[fresh_places]).all(axis=1)
            out[fresh_places] = fresh
            if not ok.all():
                bad.extend(fresh_places[~ok].tolist())
            if ok.any():
                self._remember((key, f), entry, fresh_local[ok], fresh[ok], expected[fresh_places[ok]], info.row_nbytes)
        if bad:
            raise RowChecksumError(key, self.location, sorted(bad))
        return out

    def _verified_entry(self, key: str, f: int, ident: tuple[int, int, int], layout: _Layout) -> _VerifiedFile:
        """The verified rows of file ``f`` as it is now (``ident``): a stale entry is replaced by
        an empty one. Caller holds ``_lock``."""
        entry = self._verified.get((key, f))
        if entry is not None and entry.ident == ident:
            self._verified.move_to_end((key, f))
            return entry
        if entry is not None:
            self._forget_verified((key, f))
        entry = _VerifiedFile(ident, layout.stored_rows(f), layout.info.shape[1:], layout.info.dtype)
        self._verified[(key, f)] = entry
        self._evict_verified()
        return entry

    def _remember(self, cached: tuple[str, int], entry: _VerifiedFile, local: np.ndarray, rows: np.ndarray,
                  digests: np.ndarray, row_nbytes: int) -> None:
        """Keep rows that passed their check (charged at least a page each: random rows touch
        whole pages), unless the entry was dropped meanwhile, then evict beyond the limits."""
        with self._lock:
            if self._verified.get(cached) is not entry:
                return  # evicted, overwritten or deleted while the rows were being hashed
            new = np.unique(local[~entry.known[local]])
            entry.rows[local] = rows
            entry.digests[local] = digests
            entry.known[local] = True
            charge = len(new) * max(row_nbytes, mmap.PAGESIZE)
            entry.charged += charge
            self._verified_nbytes += charge
            self._evict_verified()

    def _evict_verified(self) -> None:
        """Drop least recently used files beyond the capacity or the file count (caller holds ``_lock``)."""
        while self._verified and (self._verified_nbytes > self.verified_cache_bytes or len(self._verified) > _VERIFIED_FILES_CACHED):
            self._forget_verified(next(iter(self._verified)))

    def _forget_verified(self, cached: tuple[str, int]) -> None:
        """Drop one file's verified rows (caller holds ``_lock``)."""
        entry = self._verified.pop(cached, None)
        if entry is not None:
            self._verified_nbytes -= entry.charged

    def verified_cache_info(self) -> dict[str, int]:
        """How much the verified-row cache holds: files, rows and bytes charged, capacity."""
        with self._lock:
            return {"files": len(self._verified), "rows": int(sum(int(e.known.sum()) for e in self._verified.values())),
                    "nbytes": self._verified_nbytes, "capacity": self.verified_cache_bytes}

    def _file_view(self, key: str, layout: _Layout, f: int) -> tuple[tuple[int, int, int], np.ndarray]:
        """File ``f`` of an array as a read-only array of its rows over its memory map, cached,
        with the file's identity ``(inode, size, mtime)`` when it was checked.

        Each use re-stats the file: a map is reused only while the file is the same (inode,
        size, mtime), so a file replaced or truncated on disk is mapped afresh or reported, never
        read through a stale or short map. A shard's index is checked when it is mapped.
        """
        info = layout.info
        path = f"{self.root}/{_ARRAYS}/{key}/{self._chunk_name(f, len(info.shape))}"  # str: pathlib costs ~30 us
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise MissingDataError(
                f"chunk file {path} is missing from the store; the bytes of this prompt set are lost: "
                "run `prompt-registry doctor --repair` (it rebuilds the file and restores rows other versions hold), "
                "or restore them from backup or re-import the set"
            ) from None
        ident = (st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._maps.get((key, f))
            if hit is not None and hit[0] == ident:
                self._maps.move_to_end((key, f))
                return hit
        expected = layout.file_nbytes(f)
        if st.st_size != expected:
            raise MissingDataError(
                f"chunk file {path} is truncated or padded ({st.st_size} bytes, expected {expected}); "
                "run `prompt-registry doctor --repair`, or restore it from backup or re-import the set"
            )
        with open(path, "rb") as fh:
            mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        rows = layout.stored_rows(f)
        if layout.sharded:
            index = layout.index_bytes(f)
            if mapped[expected - len(index):] != index:
                raise MissingDataError(
                    f"the shard index at the end of {path} is not the one this array's layout needs "
                    "(corrupted, or rewritten by another tool); run `prompt-registry doctor --repair` (it rewrites "
                    "the index), or restore the file from backup or re-import the set"
                )
        view = np.frombuffer(mapped, dtype=info.dtype, count=rows * info.row_nbytes // np.dtype(info.dtype).itemsize)
        view = view.reshape(rows, *info.shape[1:])
        with self._lock:
            self._maps[(key, f)] = (ident, view)
            while len(self._maps) > _MAPS_CACHED:
                self._maps.popitem(last=False)  # the map closes when no reader holds its view
        return ident, view

    def _file_damage(self, key: str, layout: _Layout, f: int) -> FileDamage | None:
        info = layout.info
        path = self._chunk_path(key, f, len(info.shape))
        rows = (f * layout.file_rows, min((f + 1) * layout.file_rows, info.shape[0]))
        expected = layout.file_nbytes(f)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return FileDamage(str(path), rows, "missing", "the file is gone")
        if size != expected:
            return FileDamage(str(path), rows, "size", f"{size} bytes, expected {expected}")
        if layout.sharded:
            index = layout.index_bytes(f)
            with open(path, "rb") as fh:
                fh.seek(expected - len(index))
                if fh.read() != index:
                    return FileDamage(str(path), rows, "index", "the shard index is not the one the layout needs")
        return None

    def _files(self, layout: _Layout) -> range:
        return range(-(-layout.info.shape[0] // layout.file_rows))

    @staticmethod
    def _foreign_shard(path: Path, layout: _Layout, f: int) -> bool:
        """Whether ``path`` ends with a shard index whose crc32c holds and whose chunks all lie in
        the file: a valid shard another writer laid out (e.g. one that dropped empty chunks)."""
        n_index = len(layout.index_bytes(f))
        raw = path.read_bytes()
        if len(raw) < n_index:
            return False
        tail = raw[-n_index:]
        if google_crc32c.value(tail[:-4]).to_bytes(4, "little") != tail[-4:]:
            return False
        entries = np.frombuffer(tail[:-4], dtype="<u8").reshape(-1, 2)
        used = entries[(entries[:, 0] != _EMPTY) | (entries[:, 1] != _EMPTY)]
        return bool(np.all(used[:, 0] + used[:, 1] <= len(raw) - n_index)) and tail != layout.index_bytes(f)

    def damaged_files(self, key):
        layout = self._layout(key)
        if not layout.direct:
            return []  # written by another tool: zarr reads it and reports what it cannot
        return [d for f in self._files(layout) if (d := self._file_damage(key, layout, f)) is not None]

    def rebuild_files(self, key):
        layout = self._layout(key)
        if not layout.direct:
            return []
        damaged = []
        for f in self._files(layout):
            damage = self._file_damage(key, layout, f)
            if damage is None:
                continue
            path = self._chunk_path(key, f, len(layout.info.shape))
            if damage.why in ("size", "index") and layout.sharded and self._foreign_shard(path, layout, f):
                raise MissingDataError(
                    f"{path} is a valid shard laid out differently from ours (rewritten by another Zarr writer?): "
                    "it is not rewritten; read the array through zarr, or restore the file from backup"
                )
            damaged.append(damage)
            size = layout.file_nbytes(f)
            with self._lock:  # the file changes: its map and verified rows are stale
                self._forget_verified((key, f))
                self._maps.pop((key, f), None)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.ftruncate(fd, size)  # a truncated file grows with zeros; a padded one loses its tail
                if layout.sharded:
                    index = layout.index_bytes(f)
                    _pwrite_all(fd, memoryview(index), size - len(index))
                os.fdatasync(fd)
            finally:
                os.close(fd)
            if damage.why == "missing":
                fsync_path(path.parent)
        return damaged

    def overwrite_rows(self, key, rows, data):
        layout = self._layout(key)
        info = layout.info
        idx = normalize_rows(rows, info.shape[0], f"array {key!r} in {self.location}")
        data = np.ascontiguousarray(np.asarray(data, dtype=info.dtype).reshape((len(idx), *info.shape[1:])))
        files = sorted(set(layout.file_of(idx).tolist()))
        with self._lock:  # the rows change: verified copies of these files are stale
            for f in files:
                self._forget_verified((key, f))
        if not layout.direct:
            # keep all-zero chunks as files (zarr would otherwise delete them: purges zero rows)
            arr = zarr.open_array(store=self._zarr_store, path=key, mode="r+", zarr_format=3, config={"write_empty_chunks": True})
            arr.set_orthogonal_selection((idx,), data)
            list(_io_pool().map(fsync_path, [self._chunk_path(key, f, len(info.shape)) for f in files]))
            return
        flat = data.reshape(len(idx), -1).view(np.uint8)
        for f in files:
            path = self._chunk_path(key, f, len(info.shape))
            try:
                fd = os.open(path, os.O_WRONLY)
            except FileNotFoundError:
                raise MissingDataError(f"chunk file {path} is missing from the store; cannot overwrite its rows") from None
            try:
                for i in np.flatnonzero(layout.file_of(idx) == f).tolist():
                    _pwrite_all(fd, memoryview(flat[i]), (int(idx[i]) - f * layout.file_rows) * info.row_nbytes)
                os.fdatasync(fd)
            finally:
                os.close(fd)

    # -- blobs --------------------------------------------------------------------------------
    def put_blob(self, key, data):
        check_key(key)
        path = self._blob_path(key)
        if self.exists(key):
            raise FileExistsError(f"{key!r} already exists in the store {self.location}")
        with atomic_file(path) as tmp:
            tmp.write_bytes(data)

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
            for cached in [k for k in self._verified if k[0] == key]:
                self._forget_verified(cached)
        array_dir = self._array_dir(key)
        if array_dir.exists():
            shutil.rmtree(array_dir, ignore_errors=True)
            fsync_path(array_dir.parent)
        blob = self._blob_path(key)
        if blob.exists():
            blob.unlink(missing_ok=True)
            fsync_path(blob.parent)

    # -- ownership ----------------------------------------------------------------------------
    def bound_catalog(self):
        try:
            raw = (self.root / BINDING_FILE).read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise MissingDataError(f"the store binding {self.root / BINDING_FILE} is unreadable ({exc}); restore it from backup") from None
        return parse_binding(raw, str(self.root / BINDING_FILE))

    def bind(self, catalog_id):
        record = binding_record(catalog_id)
        path = self.root / BINDING_FILE
        tmp = path.with_name(f".{BINDING_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
        with open(tmp, "w") as fh:
            json.dump(record, fh)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)  # create-if-absent, atomically: of two binders one wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        fsync_path(self.root)
        bound = self.bound_catalog()
        assert bound is not None
        return bound

    def close(self):
        with self._lock:
            self._maps.clear()
            self._verified.clear()
            self._verified_nbytes = 0

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
