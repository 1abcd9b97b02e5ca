"""store: serialisation, the allocator and the arena (no service, no sockets)."""

from __future__ import annotations

import random
import threading

import numpy as np
import pyarrow as pa
import pytest

import store
from store._allocator import Allocator
from store._arena import SEALED, Arena


def test_numpy_round_trip_is_out_of_band():
    array = np.arange(100_000, dtype=np.float64)
    serialized = store.serialize(array)
    assert len(serialized.buffers) == 1
    assert serialized.buffer_sizes == [array.nbytes]
    assert len(serialized.data) < 1000  # the body is not in the pickle stream
    assert serialized.total_size >= array.nbytes
    np.testing.assert_array_equal(store.deserialize(serialized), array)


@pytest.mark.parametrize(
    "make",
    [
        lambda: pa.array(np.arange(50_000)),
        lambda: pa.record_batch([pa.array(np.arange(50_000))], names=["a"]),
        lambda: pa.table({"a": np.arange(50_000), "s": [str(i) for i in range(50_000)]}),
    ],
)
def test_arrow_round_trip_zero_copy(make):
    value = make()
    serialized = store.serialize(value)
    assert serialized.buffers, "Arrow buffers must travel out of band"
    # Rebuild over read-only foreign views and check the result points into them.
    backing = [pa.py_buffer(bytes(b)) for b in serialized.buffers]
    ranges = [(b.address, b.address + b.size) for b in backing]
    rebuilt = store.deserialize(serialized.data, backing)
    assert rebuilt.equals(value)
    batches = rebuilt.to_batches() if isinstance(rebuilt, pa.Table) else [rebuilt]
    for batch in batches:
        arrays = batch.columns if isinstance(batch, pa.RecordBatch) else [batch]
        for array in arrays:
            for buf in array.buffers():
                if buf is not None and buf.size:
                    assert any(lo <= buf.address < hi for lo, hi in ranges)


def test_unpicklable_value_names_type_and_path():
    class Model:
        def __init__(self):
            self.weights = [1, 2]
            self.lock = threading.Lock()

    with pytest.raises(store.SerializationError) as info:
        store.serialize({"model": Model()})
    assert "lock" in info.value.type_name
    assert info.value.path == "<value>['model'].lock"
    assert "_thread.lock" in str(info.value) or "lock" in str(info.value)


def test_deserialize_failure_is_typed():
    with pytest.raises(store.SerializationError):
        store.deserialize(b"not a pickle")


def test_metadata_travels():
    serialized = store.serialize(1, metadata=b"err")
    assert serialized.metadata == b"err"
    assert serialized.total_size == len(serialized.data) + 3


def test_allocator_random_operations_keep_invariants():
    rng = random.Random(7)
    allocator = Allocator(4096, 4096 + (1 << 20))
    live: list[int] = []
    for _ in range(3000):
        if live and rng.random() < 0.45:
            allocator.free(live.pop(rng.randrange(len(live))))
        else:
            got = allocator.allocate(rng.choice([64, 100, 5000, 40_000, 200_000]))
            if got is not None:
                live.append(got[0])
        allocator.check()
    for offset in live:
        allocator.free(offset)
    allocator.check()
    assert allocator.used_bytes == 0
    assert allocator.largest_free == 1 << 20
    assert allocator.free_blocks == 1


def test_allocator_best_fit_reuses_the_same_block():
    allocator = Allocator(0, 1 << 20)
    a = allocator.allocate(100_000)
    b = allocator.allocate(300_000)
    assert a is not None and b is not None
    allocator.free(a[0])
    again = allocator.allocate(100_000)
    assert again is not None and again[0] == a[0]
    with pytest.raises(ValueError, match="no used block"):
        allocator.free(12345)


def test_arena_rebuilds_from_headers(tmp_path):
    path = str(tmp_path / "arena")
    arena, found = Arena.open(path, 1 << 20)
    assert found == []
    blocks = []
    for i in range(5):
        got = arena.allocate(10_000 + i)
        assert got is not None
        arena.write_block(got[0], got[1], b"id%d" % i, 3, 10, [100, 200])
        blocks.append(got[0])
    arena.set_state(blocks[0], SEALED)
    arena.set_state(blocks[2], SEALED)
    arena.free(blocks[1])
    arena.free(blocks[3])
    used = arena.allocator.used_bytes
    reopened, found = Arena.open(path, 1 << 20)
    assert {(b.object_id, b.state) for b in found} == {
        (b"id0", SEALED), (b"id2", SEALED), (b"id4", 1)
    }
    assert found[0].buffer_sizes == (100, 200) and found[0].meta_len == 3
    assert reopened.allocator.used_bytes == used
    reopened.allocator.check()
