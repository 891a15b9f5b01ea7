"""The contract every ``TensorStore`` backend must pass.

Subclass ``TensorStoreContract`` in a test module and provide a ``store`` fixture returning a
fresh, empty store (and, for persistent backends, ``reopen`` returning a new instance over the
same location)::

    class TestMyStore(TensorStoreContract):
        @pytest.fixture
        def store(self, tmp_path):
            return MyStore(tmp_path)
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from ..dtypes import BFLOAT16
from ..errors import ChecksumError, MissingDataError, RowChecksumError
from ..store.base import TensorStore, digest_matrix, row_digests


def _rows(n: int, width: int = 6, length: int = 2, seed: int = 0, dtype: str = "float32") -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, length, width)).astype(dtype)


class TensorStoreContract:
    chunk_rows = 4

    @pytest.fixture
    def store(self) -> TensorStore:  # pragma: no cover - overridden
        raise NotImplementedError

    def reopen(self, store: TensorStore) -> TensorStore:
        """A new instance over the same data (persistent backends override this)."""
        return store

    def _filled(self, store: TensorStore, key: str = "a", n: int = 10, **kw) -> np.ndarray:
        data = _rows(n, **kw)
        store.create_array(key, data.shape, str(data.dtype), self.chunk_rows)
        store.write_rows(key, 0, data)
        return data

    def test_round_trip_whole_array(self, store):
        data = self._filled(store)
        np.testing.assert_array_equal(self.reopen(store).read_rows("a", slice(None)), data)

    def test_exists_sees_a_delete_by_another_handle(self, store):
        """``exists`` asks the store, not this handle's cache: another process's ``gc`` may have
        removed the array, and a commit that checks its bytes are still there must see it."""
        self._filled(store)
        store.array_info("a")  # whatever this handle caches about the array
        other = self.reopen(store)
        if other is store:
            pytest.skip("a store without a second handle over the same data")
        other.delete("a")
        assert not store.exists("a")
        with pytest.raises(MissingDataError):
            store.read_rows("a", slice(None))

    def test_info_reports_shape_dtype_chunks(self, store):
        self._filled(store, n=10)
        info = store.array_info("a")
        assert (info.shape, info.dtype, info.chunk_rows) == ((10, 2, 6), "float32", self.chunk_rows)
        assert info.row_nbytes == 2 * 6 * 4

    def test_rows_come_back_in_the_order_asked_with_duplicates(self, store):
        data = self._filled(store, n=10)
        order = np.array([9, 0, 5, 5, 3, 8, 1])
        np.testing.assert_array_equal(store.read_rows("a", order), data[order])

    def test_float16_is_kept(self, store):
        data = self._filled(store, dtype="float16")
        out = store.read_rows("a", [1, 2])
        assert out.dtype == np.float16
        np.testing.assert_array_equal(out, data[[1, 2]])

    def test_bfloat16_is_kept_bit_for_bit_verified_and_overwritten(self, store):
        data = self._filled(store, dtype="bfloat16")  # numpy's bfloat16, from ml_dtypes
        again = self.reopen(store)
        assert again.array_info("a").dtype == "bfloat16" and again.array_info("a").row_nbytes == 2 * 6 * 2
        out = again.read_rows("a", np.array([3, 1, 3]))
        assert out.dtype == BFLOAT16
        np.testing.assert_array_equal(out.view(np.uint16), data[[3, 1, 3]].view(np.uint16))
        digests = digest_matrix(row_digests(data))
        np.testing.assert_array_equal(again.read_verified("a", np.array([2, 9]), digests[[2, 9]]).view(np.uint16), data[[2, 9]].view(np.uint16))
        again.overwrite_rows("a", np.array([2]), np.zeros((1, 2, 6), BFLOAT16))
        assert not again.read_rows("a", np.array([2])).astype(np.float32).any()
        with pytest.raises(RowChecksumError):
            again.read_verified("a", np.array([2]), digests[[2]])

    def test_chunked_writes_assemble(self, store):
        data = _rows(10)
        store.create_array("a", data.shape, "float32", self.chunk_rows)
        store.write_rows("a", 4, data[4:8])
        store.write_rows("a", 0, data[0:4])
        store.write_rows("a", 8, data[8:10])  # last chunk may be partial
        np.testing.assert_array_equal(store.read_rows("a", range(10)), data)

    def test_unaligned_writes_are_refused(self, store):
        data = _rows(10)
        store.create_array("a", data.shape, "float32", self.chunk_rows)
        with pytest.raises(ValueError, match="chunk boundary"):
            store.write_rows("a", 1, data[1:5])
        with pytest.raises(ValueError, match="chunk boundary"):
            store.write_rows("a", 0, data[0:3])
        with pytest.raises(ValueError, match="outside"):
            store.write_rows("a", 8, _rows(4))

    def test_wrong_row_shape_is_refused(self, store):
        store.create_array("a", (4, 2, 6), "float32", self.chunk_rows)
        with pytest.raises(ValueError, match="do not fit"):
            store.write_rows("a", 0, _rows(4, width=5))

    def test_written_arrays_have_no_damaged_files_and_a_rebuild_changes_nothing(self, store):
        data = self._filled(store)
        assert store.damaged_files("a") == []
        assert store.rebuild_files("a") == []
        np.testing.assert_array_equal(store.read_rows("a", range(len(data))), data)

    def test_create_twice_fails(self, store):
        self._filled(store)
        with pytest.raises(FileExistsError):
            store.create_array("a", (3, 1, 2), "float32")

    def test_unsupported_dtype_and_bad_keys_are_refused(self, store):
        with pytest.raises(ValueError, match="dtype"):
            store.create_array("a", (3, 1, 2), "int32")
        for key in ("", "../x", "a/b", "x" * 200):
            with pytest.raises(ValueError, match="invalid store key"):
                store.create_array(key, (3, 1, 2), "float32")

    def test_missing_array_and_out_of_range_rows(self, store):
        with pytest.raises(MissingDataError):
            store.read_rows("nope", [0])
        with pytest.raises(MissingDataError):
            store.array_info("nope")
        self._filled(store, n=10)
        with pytest.raises(MissingDataError, match="has 10 rows"):
            store.read_rows("a", [10])

    def test_empty_selection(self, store):
        self._filled(store)
        assert store.read_rows("a", []).shape == (0, 2, 6)

    def test_verified_reads_return_the_rows_asked_and_name_the_bad_ones(self, store):
        data = self._filled(store, n=10)
        order = np.array([9, 0, 5, 5, 3])
        digests = digest_matrix(row_digests(data))
        np.testing.assert_array_equal(store.read_verified("a", order, digests[order]), data[order])
        np.testing.assert_array_equal(store.read_verified("a", order, digests[order]), data[order])  # again (warm)
        wrong = digests[order].copy()
        wrong[[1, 4], 0] ^= 0xFF  # the caller expects other bytes for rows 0 and 3
        with pytest.raises(RowChecksumError) as err:
            store.read_verified("a", order, wrong)
        assert err.value.positions == [1, 4] and isinstance(err.value, ChecksumError)
        assert store.read_verified("a", [], digests[:0]).shape == (0, 2, 6)
        np.testing.assert_array_equal(store.read_verified("a", order, digests[order], scan=True), data[order])  # a scan checks as much
        with pytest.raises(RowChecksumError) as err:
            store.read_verified("a", order, wrong, scan=True)
        assert err.value.positions == [1, 4]

    def test_verified_reads_see_overwritten_rows(self, store):
        data = self._filled(store, n=10)
        digests = digest_matrix(row_digests(data))
        store.read_verified("a", [2, 7], digests[[2, 7]])
        store.overwrite_rows("a", np.array([2]), np.zeros((1, 2, 6), np.float32))
        with pytest.raises(RowChecksumError) as err:  # the old bytes are not served any more
            store.read_verified("a", [2, 7], digests[[2, 7]])
        assert err.value.positions == [0]
        zeros = digest_matrix(row_digests(np.zeros((1, 2, 6), np.float32)))
        assert not store.read_verified("a", [2], zeros).any()

    def test_overwrite_rows_changes_only_those_rows(self, store):
        data = self._filled(store)
        store.overwrite_rows("a", np.array([2, 7]), np.zeros((2, 2, 6), np.float32))
        out = self.reopen(store).read_rows("a", slice(None))
        assert not out[[2, 7]].any()
        keep = [i for i in range(10) if i not in (2, 7)]
        np.testing.assert_array_equal(out[keep], data[keep])

    def test_overwriting_every_row_with_zeros_keeps_the_array_readable(self, store):
        self._filled(store, n=6)  # two chunks, the last one partial
        store.overwrite_rows("a", np.arange(6), np.zeros((6, 2, 6), np.float32))
        out = self.reopen(store).read_rows("a", slice(None))
        assert out.shape == (6, 2, 6) and not out.any()
        assert store.array_info("a").shape == (6, 2, 6)

    def test_blobs_round_trip_and_are_write_once(self, store):
        store.put_blob("b.safetensors", b"\x00payload")
        assert self.reopen(store).get_blob("b.safetensors") == b"\x00payload"
        with pytest.raises(FileExistsError):
            store.put_blob("b.safetensors", b"other")
        with pytest.raises(MissingDataError):
            store.get_blob("missing")

    def test_list_exists_delete(self, store):
        before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
        self._filled(store, "a")
        store.put_blob("b", b"xyz")
        objects = {o.key: o for o in store.list_objects()}
        assert set(objects) == {"a", "b"}
        assert objects["a"].kind == "array" and objects["a"].nbytes >= 10 * 2 * 6 * 4
        assert objects["b"].kind == "blob" and objects["b"].nbytes == 3
        assert all(o.modified_at >= before for o in objects.values())
        assert store.exists("a") and store.exists("b") and not store.exists("c")
        store.delete("a")
        store.delete("b")
        store.delete("never-existed")  # not an error
        assert store.list_objects() == [] and not store.exists("a")

    def test_a_store_is_bound_to_one_catalogue(self, store):
        first, second = "a" * 32, "b" * 32
        assert store.bound_catalog() is None
        assert store.bind(first) == first
        assert store.bind(second) == first  # the first binding stays: the caller sees the mismatch
        assert store.bind(first) == first
        assert self.reopen(store).bound_catalog() == first
        assert store.list_objects() == []  # the binding is not an object of the store
        with pytest.raises(ValueError, match="hex"):
            store.bind("not-an-id")
