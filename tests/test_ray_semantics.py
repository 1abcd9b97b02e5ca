"""Semantics that Ray programs rely on (issue 14), each on a real embedded cluster.

Every test checks the Ray behaviour and then that the cluster still serves a
follow-up task or actor call.
"""

from __future__ import annotations

import random
import threading
import time

import pytest

import actorcore as ray
from actorcore import exceptions as exc

pytestmark = pytest.mark.usefixtures("cluster")  # tests/conftest.py


@ray.remote
def add_one(x):
    return x + 1


@ray.remote
def fail(message="boom"):
    raise ValueError(message)


@ray.remote
def sleep_then(value, seconds):
    time.sleep(seconds)
    return value


def _healthy():
    """A follow-up task works: the cluster kept serving."""
    assert ray.get(add_one.remote(41), timeout=30) == 42


# --------------------------------------------------------------- 1. tasks from actors


@ray.remote
class Submitter:
    """Submits tasks and actor calls from its methods: it owns what they return."""

    def task(self, x):
        return ray.get(add_one.remote(x))

    def task_from_thread(self, x):
        out = []
        t = threading.Thread(target=lambda: out.append(ray.get(add_one.remote(x))))
        t.start()
        t.join(30)
        return out[0]

    def actor(self):
        self.inner = Submitter.remote()
        return ray.get(self.inner.task.remote(1))

    def keep(self, x):
        self.ref = add_one.remote(x)  # a ref this actor owns, read later
        return None

    def read_kept(self):
        return ray.get(self.ref)


@ray.remote
class AsyncSubmitter:
    async def task(self, x):
        return await add_one.remote(x)

    async def actor(self):
        self.inner = Submitter.remote()
        return await self.inner.task.remote(2)


def test_tasks_and_actor_calls_from_actor_methods():
    sync = Submitter.remote()
    threaded = Submitter.options(max_concurrency=3).remote()
    asynchronous = AsyncSubmitter.remote()
    for actor in (sync, threaded):
        assert ray.get(actor.task.remote(1), timeout=30) == 2
        assert ray.get(actor.task_from_thread.remote(2), timeout=30) == 3
        assert ray.get(actor.actor.remote(), timeout=30) == 2
        ray.get(actor.keep.remote(10), timeout=30)
        assert ray.get(actor.read_kept.remote(), timeout=30) == 11
    assert ray.get(asynchronous.task.remote(5), timeout=30) == 6
    assert ray.get(asynchronous.actor.remote(), timeout=30) == 3
    _healthy()


# ------------------------------------------------------------------------ 2. wait([])


def test_wait_on_an_empty_list():
    assert ray.wait([]) == ([], [])
    assert ray.wait([], num_returns=3, timeout=0) == ([], [])
    with pytest.raises(ValueError, match="timeout"):
        ray.wait([], timeout=-1)
    _healthy()


# ------------------------------------------------------- 3. get raises at the first error


def test_get_raises_as_soon_as_one_ref_holds_an_error():
    slow = sleep_then.remote("late", 20)
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="early failure"):
        ray.get([slow, fail.remote("early failure")], timeout=60)
    assert time.monotonic() - t0 < 10, "get waited for the slow ref before raising"
    ray.cancel(slow, force=True)
    # The first error in list order when several are ready; a timeout still times out.
    a, b = fail.remote("first"), fail.remote("second")
    ray.wait([a, b], num_returns=2, timeout=30)
    with pytest.raises(ValueError, match="first"):
        ray.get([sleep_then.remote(0, 0), a, b], timeout=30)
    with pytest.raises(exc.GetTimeoutError):
        ray.get([sleep_then.remote(0, 1)], timeout=0.2)
    _healthy()
