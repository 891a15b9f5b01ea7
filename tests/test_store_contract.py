"""Both tensor stores pass the one contract suite; Zarr-specific behaviour is tested below it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from prompt_registry.errors import MissingDataError
from prompt_registry.store import zarr_store
from prompt_registry.store.base import RowChecksumError, digest_matrix, row_digests
from prompt_registry.store.memory import MemoryStore
from prompt_registry.store.zarr_store import SHARD_CHUNKS, ZarrStore
from prompt_registry.testing.store_contract import TensorStoreContract


class TestMemoryStore(TensorStoreContract):
    @pytest.fixture
    def store(self):
        return MemoryStore()


class TestZarrStore(TensorStoreContract):
    """The default layout: with 4-row chunks, one 256-row shard file holds every test array."""

    shard_chunks = SHARD_CHUNKS

    @pytest.fixture
    def store(self, tmp_path):
        return ZarrStore(tmp_path / "store", create=True, shard_chunks=self.shard_chunks)

    @pytest.fixture(autouse=True)
    def _cache_even_tiny_reads(self, monkeypatch):
        """Test arrays are tiny: let every verified read go through the verified-row cache."""
        monkeypatch.setattr(zarr_store, "VERIFIED_CACHE_MIN_ROWS", 1)

    def reopen(self, store):
        return ZarrStore(store.root)

    def _file(self, store, row):
        return store.root / "arrays" / "a" / f"c.{row // (self.chunk_rows * self.shard_chunks)}.0.0"

    def test_arrays_are_uncompressed_sharded_zarr_v3(self, store):
        data = self._filled(store, n=10)
        meta = json.loads((store.root / "arrays" / "a" / "zarr.json").read_text())
        assert meta["zarr_format"] == 3
        [codec] = meta["codecs"]
        assert codec["name"] == "sharding_indexed"
        assert [c["name"] for c in codec["configuration"]["codecs"]] == ["bytes"]  # no compressor
        assert codec["configuration"]["chunk_shape"] == [self.chunk_rows, 2, 6]
        assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [self.chunk_rows * self.shard_chunks, 2, 6]
        # any Zarr client reads what we wrote
        arr = zarr.open_array(store=str(store.root / "arrays"), path="a", mode="r")
        np.testing.assert_array_equal(arr[:], data)

    def test_zarr_reads_an_array_written_piece_by_piece(self, store):
        data = np.random.default_rng(2).normal(size=(37, 2, 6)).astype(np.float32)
        store.create_array("a", data.shape, "float32", self.chunk_rows)
        for start in (8, 36, 0, 32, 20, 4, 12, 24, 16, 28):  # chunk-aligned pieces in any order, the last partial
            store.write_rows("a", start, data[start : start + 4])
        arr = zarr.open_array(store=str(store.root / "arrays"), path="a", mode="r")
        np.testing.assert_array_equal(arr[:], data)
        np.testing.assert_array_equal(store.read_rows("a", slice(None)), data)

    def test_direct_reads_match_zarr_reads(self, store):
        data = self._filled(store, n=37)
        idx = np.random.default_rng(1).integers(0, 37, size=50)
        arr = zarr.open_array(store=str(store.root / "arrays"), path="a", mode="r")
        np.testing.assert_array_equal(store.read_rows("a", idx), arr.get_orthogonal_selection((idx,)))
        np.testing.assert_array_equal(store.read_rows("a", idx), data[idx])

    def test_runs_of_consecutive_rows_read_by_slices_across_files(self, store, monkeypatch):
        """A scan asks consecutive rows: they are copied slice by slice out of each file (no
        fancy-indexed temporary); every run, across file boundaries too, reads what was written."""
        data = self._filled(store, n=37)
        fancy = []
        by_file = ZarrStore._by_file
        monkeypatch.setattr(ZarrStore, "_by_file", staticmethod(lambda *a: fancy.append(1) or by_file(*a)))
        for lo, hi in ((0, 37), (3, 4), (5, 30), (7, 9), (36, 37)):
            np.testing.assert_array_equal(store.read_rows("a", np.arange(lo, hi)), data[lo:hi])
        assert fancy == []
        np.testing.assert_array_equal(store.read_rows("a", np.array([4, 3, 9])), data[[4, 3, 9]])  # not consecutive: by file
        np.testing.assert_array_equal(store.read_rows("a", np.array([2, 3, 5])), data[[2, 3, 5]])
        assert fancy == [1, 1]

    def test_truncated_chunk_is_reported_with_its_path(self, store):
        self._filled(store, n=10)
        chunk = self._file(store, 5)
        chunk.write_bytes(chunk.read_bytes()[:10])
        with pytest.raises(MissingDataError, match="truncated"):
            store.read_rows("a", [5])

    def test_corrupted_shard_index_is_reported(self, store):
        self._filled(store, n=10)
        chunk = self._file(store, 5)
        raw = bytearray(chunk.read_bytes())
        raw[-10] ^= 0xFF  # inside the index, not the rows
        chunk.write_bytes(bytes(raw))
        with pytest.raises(MissingDataError, match="shard index"):
            store.read_rows("a", [5])

    def test_cached_chunk_maps_follow_the_file(self, store):
        data = self._filled(store, n=10)
        np.testing.assert_array_equal(store.read_rows("a", [5, 9, 1]), data[[5, 9, 1]])  # maps their files
        chunk = self._file(store, 5)
        raw = bytearray(chunk.read_bytes())
        first = (5 // (self.chunk_rows * self.shard_chunks)) * self.chunk_rows * self.shard_chunks
        offset = (5 - first) * data[0].nbytes
        raw[offset : offset + data[0].nbytes] = np.full_like(data[5], 7.0).tobytes()
        tmp = chunk.with_name("replacement")
        tmp.write_bytes(bytes(raw))
        tmp.replace(chunk)  # a new file under the old name: read afresh, not through the old map
        np.testing.assert_array_equal(store.read_rows("a", [5]), np.full_like(data[5:6], 7.0))
        chunk.write_bytes(chunk.read_bytes()[:10])  # truncated in place after being mapped
        with pytest.raises(MissingDataError, match="truncated"):
            store.read_rows("a", [5])
        if self._file(store, 9) != chunk:
            np.testing.assert_array_equal(store.read_rows("a", [9]), data[[9]])  # other files unaffected
        store.delete("a")
        assert not store._maps  # deleting an array drops its maps

    def _count_hashed(self, monkeypatch):
        """Rows hashed from now on, by the cache path or the plain one."""
        from prompt_registry.store import base

        hashed = []
        real = base.row_digests
        for module in (zarr_store, base):
            monkeypatch.setattr(module, "row_digests", lambda rows: hashed.append(len(rows)) or real(rows))
        return hashed

    def test_verified_rows_are_served_from_the_cache_without_rehashing(self, store, monkeypatch):
        data = self._filled(store, n=10)
        digests = digest_matrix(row_digests(data))
        hashed = self._count_hashed(monkeypatch)
        store.read_verified("a", [1, 8, 1], digests[[1, 8, 1]])
        assert sum(hashed) == 3
        out = store.read_verified("a", [8, 1, 4], digests[[8, 1, 4]])
        np.testing.assert_array_equal(out, data[[8, 1, 4]])
        assert sum(hashed) == 4  # only row 4 was new
        info = store.verified_cache_info()
        assert info["rows"] == 3 and 0 < info["nbytes"] <= info["capacity"]
        store.delete("a")
        assert store.verified_cache_info()["rows"] == 0

    def test_a_scan_is_verified_but_neither_served_from_nor_kept_in_the_cache(self, store, monkeypatch):
        data = self._filled(store, n=10)
        digests = digest_matrix(row_digests(data))
        hashed = self._count_hashed(monkeypatch)
        np.testing.assert_array_equal(store.read_verified("a", range(10), digests, scan=True), data)
        assert sum(hashed) == 10 and store.verified_cache_info()["rows"] == 0  # hashed, not kept
        store.read_verified("a", [1, 2], digests[[1, 2]])  # a repeated read keeps its rows
        assert store.verified_cache_info()["rows"] == 2
        store.read_verified("a", [1, 2], digests[[1, 2]], scan=True)
        assert sum(hashed) == 14  # a scan does not look them up either: it hashes every row it reads
        assert store.verified_cache_info()["rows"] == 2

    def test_small_verified_reads_just_hash(self, store, monkeypatch):
        data = self._filled(store, n=10)
        monkeypatch.setattr(zarr_store, "VERIFIED_CACHE_MIN_ROWS", 4)
        digests = digest_matrix(row_digests(data))
        np.testing.assert_array_equal(store.read_verified("a", [3, 1, 2], digests[[3, 1, 2]]), data[[3, 1, 2]])
        assert store.verified_cache_info()["rows"] == 0
        store.read_verified("a", [3, 1, 2, 0], digests[[3, 1, 2, 0]])
        assert store.verified_cache_info()["rows"] == 4

    def test_verified_cache_drops_rows_of_a_file_changed_on_disk(self, store):
        """A copy verified earlier is not served once the file changed: the change is detected."""
        data = self._filled(store, n=10)
        digests = digest_matrix(row_digests(data))
        store.read_verified("a", [5], digests[[5]])
        chunk = self._file(store, 5)
        raw = bytearray(chunk.read_bytes())
        first = (5 // (self.chunk_rows * self.shard_chunks)) * self.chunk_rows * self.shard_chunks
        raw[(5 - first) * data[0].nbytes] ^= 0x01  # bit rot in row 5, same size, new mtime
        tmp = chunk.with_name("replacement")
        tmp.write_bytes(bytes(raw))
        tmp.replace(chunk)
        with pytest.raises(RowChecksumError):
            store.read_verified("a", [5], digests[[5]])

    def test_verified_cache_is_bounded_and_can_be_turned_off(self, tmp_path, monkeypatch):
        data = np.random.default_rng(4).normal(size=(64, 1, 1024)).astype(np.float32)  # 4 KiB rows
        digests = digest_matrix(row_digests(data))
        small = ZarrStore(tmp_path / "small", create=True, shard_chunks=1, verified_cache_bytes=32 * 4096)
        small.create_array("a", data.shape, "float32", self.chunk_rows)
        small.write_rows("a", 0, data)
        for start in range(0, 64, 8):  # 8 rows per read: a quarter of the capacity, cached
            small.read_verified("a", range(start, start + 8), digests[start : start + 8])
            assert small.verified_cache_info()["nbytes"] <= small.verified_cache_bytes
        assert 0 < small.verified_cache_info()["rows"] <= 32  # the oldest files were evicted
        cached = small.verified_cache_info()
        hashed = self._count_hashed(monkeypatch)
        out = small.read_verified("a", range(64), digests)  # bigger than a quarter: verified, not cached
        np.testing.assert_array_equal(out, data)
        assert small.verified_cache_info() == cached
        assert sum(hashed) == 64  # every row, the cache neither read nor filled
        monkeypatch.setattr(zarr_store, "_VERIFIED_FILES_CACHED", 2)
        few = ZarrStore(small.root, verified_cache_bytes=small.verified_cache_bytes)
        few.read_verified("a", [0, 4, 8], digests[[0, 4, 8]])  # rows of 3 files: only 2 files kept
        assert len(few._verified) == 2
        monkeypatch.setenv(zarr_store.VERIFIED_CACHE_ENV, "0")
        off = ZarrStore(small.root)
        assert off.verified_cache_bytes == 0
        np.testing.assert_array_equal(off.read_verified("a", [3, 2], digests[[3, 2]]), data[[3, 2]])
        assert off.verified_cache_info()["rows"] == 0

    def test_one_file_cannot_outgrow_the_verified_cache(self, tmp_path):
        data = np.random.default_rng(5).normal(size=(256, 1, 1024)).astype(np.float32)  # one file of 4 KiB rows
        digests = digest_matrix(row_digests(data))
        store = ZarrStore(tmp_path / "one", create=True, verified_cache_bytes=32 * 4096)
        store.create_array("a", data.shape, "float32", 8)
        store.write_rows("a", 0, data)
        for start in range(0, 256, 8):
            np.testing.assert_array_equal(store.read_verified("a", range(start, start + 8), digests[start : start + 8]), data[start : start + 8])
            assert store.verified_cache_info()["nbytes"] <= store.verified_cache_bytes

    def test_verified_cache_accounting_holds_under_concurrent_readers(self, tmp_path):
        """Readers racing each other, evictions and purges: the bytes charged are exactly those the
        cached files hold, and every read returns the right rows."""
        import threading

        data = np.random.default_rng(6).normal(size=(512, 1, 64)).astype(np.float16)
        digests = digest_matrix(row_digests(data))
        store = ZarrStore(tmp_path / "race", create=True, shard_chunks=1, verified_cache_bytes=64 * 4096)
        store.create_array("a", data.shape, "float16", 4)
        store.write_rows("a", 0, data)
        errors = []

        def reader(seed):
            rng = np.random.default_rng(seed)
            for _ in range(60):
                idx = rng.choice(512, 16, replace=False)
                try:
                    np.testing.assert_array_equal(store.read_verified("a", idx, digests[idx]), data[idx])
                except Exception as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)
                if seed == 0:
                    row = int(rng.integers(512))
                    store.overwrite_rows("a", [row], data[[row]])  # same bytes, new mtime: entry dropped

        threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors
        info = store.verified_cache_info()
        assert info["nbytes"] == sum(e.charged for e in store._verified.values()) <= info["capacity"]
        assert info["rows"] * 4096 == info["nbytes"]  # a page per row at this width

    def test_missing_chunk_is_reported(self, store):
        self._filled(store, n=10)
        name = self._file(store, 9).name
        self._file(store, 9).unlink()
        with pytest.raises(MissingDataError, match=name):
            store.read_rows("a", [9])

    def test_arrays_written_before_sharding_are_still_read_directly(self, store):
        """Registries created before sharding hold one file per chunk; they stay readable and
        purgeable, through the direct path."""
        data = np.random.default_rng(3).normal(size=(10, 2, 6)).astype(np.float32)
        arr = zarr.create_array(
            store=str(store.root / "arrays"), name="old", shape=data.shape, chunks=(self.chunk_rows, 2, 6),
            dtype="float32", compressors=None, filters=None, fill_value=0.0,
            chunk_key_encoding={"name": "default", "separator": "."}, config={"write_empty_chunks": True}, zarr_format=3,
        )
        arr[:] = data
        layout = store._layout("old")
        assert (layout.direct, layout.sharded, layout.info.chunk_rows) == (True, False, self.chunk_rows)
        np.testing.assert_array_equal(store.read_rows("old", [9, 0, 5]), data[[9, 0, 5]])
        store.overwrite_rows("old", [5], np.zeros((1, 2, 6), np.float32))
        data[5] = 0
        np.testing.assert_array_equal(store.read_rows("old", slice(None)), data)
        np.testing.assert_array_equal(zarr.open_array(store=str(store.root / "arrays"), path="old", mode="r")[:], data)


class TestZarrStoreSmallShards(TestZarrStore):
    """Two chunks per shard: test arrays span several shard files, the edge one partial."""

    shard_chunks = 2


def test_opening_a_missing_zarr_store_explains(tmp_path):
    with pytest.raises(MissingDataError, match="prompt-registry init"):
        ZarrStore(tmp_path / "nothing-here")


def test_stores_are_resolved_by_location(tmp_path):
    from prompt_registry.errors import InvalidArgumentError, MissingDataError
    from prompt_registry.store.resolve import open_store

    assert isinstance(open_store("memory://"), MemoryStore) and not open_store("memory").persistent
    with pytest.raises(MissingDataError, match="no tensor store"):
        open_store(tmp_path / "none")
    made = open_store(tmp_path / "zarr", create=True)
    assert isinstance(made, ZarrStore) and made.persistent and made.local_root == tmp_path / "zarr"
    assert isinstance(open_store(f"file://{tmp_path / 'zarr'}"), ZarrStore)
    assert open_store("memory://").local_root is None and made.supports_overwrite
    with pytest.raises(InvalidArgumentError, match="s3://BUCKET"):
        open_store("gs://bucket/prefix")
