"""Values larger than a full object store, with the disk fallback turned off: every
failure reaches its caller as a typed ``ObjectStoreFullError`` naming the sizes, and
the workers and actors that hit it keep serving (issue 9, item 1).

A real embedded cluster with a 16 MiB store; the values are 24 MiB.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

import actorcore as ray
from actorcore import exceptions as exc

np = pytest.importorskip("numpy")

MB = 1 << 20
STORE = 16 * MB
BIG = 24 * MB


@pytest.fixture(scope="module", autouse=True)
def small_store_without_fallback() -> Iterator[None]:
    old = os.environ.get("ACTORCORE_OBJECT_STORE_DISK_FALLBACK")
    os.environ["ACTORCORE_OBJECT_STORE_DISK_FALLBACK"] = "0"  # read by the node at start
    try:
        ray.init(num_cpus=2, object_store_memory=STORE, log_to_driver=False)
    finally:
        if old is None:
            del os.environ["ACTORCORE_OBJECT_STORE_DISK_FALLBACK"]
        else:
            os.environ["ACTORCORE_OBJECT_STORE_DISK_FALLBACK"] = old
    yield
    ray.shutdown()


@ray.remote(max_retries=0)
def make(n):
    return np.zeros(n, np.uint8)


@ray.remote(max_retries=0)
def make_two(n):
    return np.zeros(n, np.uint8), "small"


@ray.remote
def total(x):
    return int(x.sum())


@ray.remote
class Holder:
    def __init__(self):
        self.calls = 0

    def big(self, n):
        self.calls += 1
        return np.zeros(n, np.uint8)

    def count(self):
        self.calls += 1
        return self.calls


@ray.remote
class AsyncHolder:
    async def big(self, n):
        return np.zeros(n, np.uint8)

    async def ping(self):
        return "pong"


def _store():
    return ray._api._call("status")["store"]


def _check_full(error: BaseException) -> None:
    assert isinstance(error, exc.ObjectStoreFullError), repr(error)
    text = str(error)
    assert f"capacity {STORE} bytes" in text, text
    assert "disk fallback is disabled" in text, text
    cause = error.cause if isinstance(error, exc.TaskError) else error
    assert cause.capacity == STORE and cause.requested > BIG, (cause.capacity, cause.requested)


def test_task_returning_more_than_the_store_fails_with_the_sizes():
    started = time.monotonic()
    with pytest.raises(exc.ObjectStoreFullError) as info:
        ray.get(make.remote(BIG), timeout=30)
    assert time.monotonic() - started < 20
    assert isinstance(info.value, exc.TaskError)  # as a task error, remote traceback and all
    _check_full(info.value)
    # The worker and its CPUs are free again: two tasks run side by side.
    assert ray.get([total.remote(ray.put(np.ones(MB, np.uint8))) for _ in range(2)], timeout=30) == [MB, MB]
    assert ray.get(make.remote(MB), timeout=30).nbytes == MB
    assert _store().unsealed == 0


def test_one_return_too_large_fails_only_that_return():
    big, small = make_two.options(num_returns=2).remote(BIG)
    assert ray.get(small, timeout=30) == "small"
    with pytest.raises(exc.ObjectStoreFullError):
        ray.get(big, timeout=30)


def test_actor_method_returning_more_than_the_store_fails_and_the_actor_serves_on():
    holder = Holder.remote()
    assert ray.get(holder.count.remote(), timeout=30) == 1
    with pytest.raises(exc.ObjectStoreFullError) as info:
        ray.get(holder.big.remote(BIG), timeout=30)
    _check_full(info.value)
    # Same actor, same state, later calls answered (before the fix they hung).
    assert ray.get([holder.count.remote() for _ in range(3)], timeout=30) == [3, 4, 5]
    assert ray.get(holder.big.remote(MB), timeout=30).nbytes == MB


def test_async_actor_method_returning_more_than_the_store_fails_and_serves_on():
    holder = AsyncHolder.remote()
    with pytest.raises(exc.ObjectStoreFullError) as info:
        ray.get(holder.big.remote(BIG), timeout=30)
    _check_full(info.value)
    assert ray.get(holder.ping.remote(), timeout=30) == "pong"


def test_put_larger_than_the_store_raises_at_once():
    with pytest.raises(exc.ObjectStoreFullError) as info:
        ray.put(np.zeros(BIG, np.uint8))
    _check_full(info.value)
    assert ray.get(ray.put(np.ones(MB, np.uint8))).sum() == MB
