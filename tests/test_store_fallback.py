"""Values larger than the object store go to disk, as in Ray (issue 9, item 8).

A real embedded cluster with a 16 MiB store: a put, a task's or an actor method's
return of 24 MiB is created in a file of the session's spill directory and read
zero-copy from a mapping of it; one ``get`` of a list whose total exceeds the store
maps the spilled objects it cannot restore; the files go with the last ref.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

import actorcore as ray
import store

np = pytest.importorskip("numpy")

MB = 1 << 20
STORE = 16 * MB
BIG = 24 * MB


@pytest.fixture(scope="module")
def session() -> Iterator[Any]:
    info = ray.init(num_cpus=2, object_store_memory=STORE, log_to_driver=False)
    yield info
    ray.shutdown()


@pytest.fixture
def spill_dir(session) -> str:
    return os.path.join(session["session_dir"], "spill")


@ray.remote(max_retries=0)
def make(n, fill):
    return np.full(n, fill, np.uint8)


@ray.remote
def total(x):
    return int(x.sum(dtype=np.int64)), x.flags.writeable


@ray.remote
class Holder:
    def __init__(self):
        self.calls = 0

    def big(self, n):
        self.calls += 1
        return np.full(n, 5, np.uint8)

    def count(self):
        self.calls += 1
        return self.calls


def _files(spill_dir: str) -> list[str]:
    return sorted(os.listdir(spill_dir)) if os.path.isdir(spill_dir) else []


def _store() -> store.StoreStatistics:
    return ray._api._call("status")["store"]


def _wait_until_no_files(spill_dir: str, limit: float = 15.0) -> None:
    """The node frees objects a moment after their last ref goes (a one-way message
    to the node, then to the store): poll, failing after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while _files(spill_dir):
        assert time.monotonic() < deadline, f"files still on disk: {_files(spill_dir)}"
        time.sleep(0.05)


def _maps(path_part: str) -> bool:
    with open("/proc/self/maps") as f:
        return any(path_part in line for line in f)


def test_put_larger_than_the_store_lives_on_disk_and_reads_zero_copy(spill_dir):
    value = np.arange(BIG // 8, dtype=np.int64)
    before = _store().disk_allocations
    ref = ray.put(value)
    assert _store().disk_allocations == before + 1
    assert len(_files(spill_dir)) == 1
    got = ray.get(ref)
    assert not got.flags.writeable and np.array_equal(got, value)
    assert _maps(os.path.join(spill_dir, _files(spill_dir)[0]))  # a mapping, not a copy
    assert ray.get(total.remote(ref), timeout=60) == (int(value.sum()), False)
    del got, ref
    _wait_until_no_files(spill_dir)


def test_task_returning_more_than_the_store_succeeds_and_the_worker_serves_on(spill_dir):
    ref = make.remote(BIG, 3)
    got = ray.get(ref, timeout=60)
    assert got.nbytes == BIG and int(got[-1]) == 3 and not got.flags.writeable
    assert ray.get(total.remote(ref), timeout=60) == (3 * BIG, False)
    del got, ref
    _wait_until_no_files(spill_dir)
    sums = ray.get([total.remote(np.ones(MB, np.uint8)) for _ in range(4)], timeout=60)
    assert [s for s, _writeable in sums] == [MB] * 4


def test_actor_method_returning_more_than_the_store_succeeds_and_serves_on(spill_dir):
    holder = Holder.remote()
    got = ray.get(holder.big.remote(BIG), timeout=60)
    assert got.nbytes == BIG and int(got[0]) == 5
    assert ray.get([holder.count.remote() for _ in range(3)], timeout=30) == [2, 3, 4]
    del got
    _wait_until_no_files(spill_dir)


def test_get_of_a_list_larger_than_the_store(spill_dir):
    refs = [make.remote(6 * MB, i) for i in range(5)]  # 30 MiB in a 16 MiB store
    values = ray.get(refs, timeout=60)
    assert [int(v[0]) for v in values] == list(range(5))
    assert all(v.nbytes == 6 * MB for v in values)
    stats = _store()
    assert stats.file_reads >= 1, stats
    del values, refs
    _wait_until_no_files(spill_dir)
    # The store is whole again: a value of nearly its size goes to shared memory.
    before = _store().disk_allocations
    ref = ray.put(np.ones(12 * MB, np.uint8))
    assert _store().disk_allocations == before
    assert ray.get(total.remote(ref), timeout=60) == (12 * MB, False)
