"""Both tensor stores pass the one contract suite; Zarr-specific behaviour is tested below it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from prompt_registry.errors import MissingDataError
from prompt_registry.store.memory import MemoryStore
from prompt_registry.store.zarr_store import ZarrStore
from prompt_registry.testing.store_contract import TensorStoreContract


class TestMemoryStore(TensorStoreContract):
    @pytest.fixture
    def store(self):
        return MemoryStore()


class TestZarrStore(TensorStoreContract):
    @pytest.fixture
    def store(self, tmp_path):
        return ZarrStore(tmp_path / "store", create=True)

    def reopen(self, store):
        return ZarrStore(store.root)

    def test_arrays_are_plain_uncompressed_zarr_v3(self, store):
        data = self._filled(store, n=10)
        meta = json.loads((store.root / "arrays" / "a" / "zarr.json").read_text())
        assert meta["zarr_format"] == 3
        assert [c["name"] for c in meta["codecs"]] == ["bytes"]  # no compressor
        assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [self.chunk_rows, 2, 6]
        # any Zarr client reads what we wrote
        arr = zarr.open_array(store=str(store.root / "arrays"), path="a", mode="r")
        np.testing.assert_array_equal(arr[:], data)

    def test_direct_reads_match_zarr_reads(self, store):
        data = self._filled(store, n=37)
        idx = np.random.default_rng(1).integers(0, 37, size=50)
        arr = zarr.open_array(store=str(store.root / "arrays"), path="a", mode="r")
        np.testing.assert_array_equal(store.read_rows("a", idx), arr.get_orthogonal_selection((idx,)))
        np.testing.assert_array_equal(store.read_rows("a", idx), data[idx])

    def test_truncated_chunk_is_reported_with_its_path(self, store):
        self._filled(store, n=10)
        chunk = store.root / "arrays" / "a" / "c.1.0.0"
        chunk.write_bytes(chunk.read_bytes()[:10])
        with pytest.raises(MissingDataError, match="truncated"):
            store.read_rows("a", [5])

    def test_cached_chunk_maps_follow_the_file(self, store):
        data = self._filled(store, n=10)
        np.testing.assert_array_equal(store.read_rows("a", [5, 1]), data[[5, 1]])  # maps chunks 0 and 1
        chunk = store.root / "arrays" / "a" / "c.1.0.0"
        replaced = np.full_like(data[: self.chunk_rows], 7.0)
        tmp = chunk.with_name("replacement")
        tmp.write_bytes(replaced.tobytes())
        tmp.replace(chunk)  # a new file under the old name: read afresh, not through the old map
        np.testing.assert_array_equal(store.read_rows("a", [5]), replaced[:1])
        chunk.write_bytes(chunk.read_bytes()[:10])  # truncated in place after being mapped
        with pytest.raises(MissingDataError, match="truncated"):
            store.read_rows("a", [5])
        np.testing.assert_array_equal(store.read_rows("a", [1]), data[[1]])  # other chunks unaffected
        store.delete("a")
        assert not store._maps  # deleting an array drops its maps

    def test_missing_chunk_is_reported(self, store):
        self._filled(store, n=10)
        (store.root / "arrays" / "a" / "c.2.0.0").unlink()
        with pytest.raises(MissingDataError, match="c.2.0.0"):
            store.read_rows("a", [9])

    def test_opening_a_missing_store_explains(self, tmp_path):
        with pytest.raises(MissingDataError, match="prompt-registry init"):
            ZarrStore(tmp_path / "nothing-here")
