"""cancel(ref) of actor method calls, on a real cluster, through the node and direct.

Ray's rules: a queued call is dropped; a running async call is cancelled; a running
threaded call finishes (its result stands); force=True is refused; the actor stays
healthy and the caller's other calls keep their order.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import trio

import actorcore as ray
from actorcore.core_worker import _direct_calls as _actor_direct
from actorcore.core_worker import _worker_state
from actorcore.exceptions import TaskCancelledError

pytestmark = pytest.mark.usefixtures("cluster")  # tests/conftest.py


@ray.remote
class Signal:
    """Tells the test that a call started, and lets it go when told."""

    def __init__(self):
        self.started = asyncio.Event()
        self.go = asyncio.Event()

    async def mark_started(self):
        self.started.set()

    async def wait_started(self):
        await self.started.wait()
        self.started.clear()

    async def send(self):
        self.go.set()

    async def wait(self):
        await self.go.wait()


@ray.remote
class Worker:
    """A threaded actor: one call at a time, in arrival order."""

    def __init__(self):
        self.log = []

    def block(self, sig):
        ray.get(sig.mark_started.remote())
        ray.get(sig.wait.remote())
        self.log.append("block")
        return "block done"

    def add(self, x):
        self.log.append(x)
        return x

    def items(self):
        return self.log

    def ping(self):
        return "pong"


@ray.remote(max_concurrency=1)
class AsyncWorker:
    """An asyncio actor: the running call can be cancelled."""

    def __init__(self):
        self.log = []
        self.cancelled = 0

    async def forever(self, sig):
        try:
            await sig.mark_started.remote()  # the cancel may come while this awaits
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise

    async def add(self, x):
        self.log.append(x)
        return x

    async def state(self):
        return self.cancelled, self.log

    async def ping(self):
        return "pong"


@ray.remote
class TrioWorker:
    __actorcore_backend__ = "trio"

    def __init__(self):
        self.started = trio.Event()
        self.cancelled = 0

    async def forever(self):
        self.started.set()
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.cancelled += 1
            raise

    async def wait_started(self):
        await self.started.wait()

    async def count(self):
        return self.cancelled

    async def ping(self):
        return "pong"


@pytest.fixture(params=["node", "direct"])
def path(request, monkeypatch):
    """Which way the calls travel: through the node, or on the direct link."""
    if request.param == "node":
        monkeypatch.setattr(_actor_direct, "DIRECT_CALLS", False)
    return request.param


def _on_path(handle, path):
    """Make ``handle``'s calls take ``path`` (the direct link is found in the
    background after the first call; calls go direct once it is up)."""
    if path == "node":
        return
    core = _worker_state.current_core()
    for _ in range(500):
        assert ray.get(handle.ping.remote()) == "pong"
        route = core.actor_routes.get(handle._actor_id)
        if route is not None and route.mode == "direct":
            return
    pytest.fail("the direct link to the actor never came up")


def test_queued_calls_dropped_order_kept(path):
    w, sig = Worker.remote(), Signal.remote()
    _on_path(w, path)
    b = w.block.remote(sig)
    ray.get(sig.wait_started.remote(), timeout=30)  # block runs: the rest queue
    refs = [w.add.remote(i) for i in range(10)]
    for r in refs[::2]:
        ray.cancel(r)
    for r in refs[::2]:
        # Answered at once, while the call ahead of them still runs.
        with pytest.raises(TaskCancelledError, match=r"Worker\.add was cancelled before"):
            ray.get(r, timeout=30)
    ray.get(sig.send.remote())
    assert ray.get(b, timeout=30) == "block done"
    assert ray.get(refs[1::2], timeout=30) == [1, 3, 5, 7, 9]
    # The actor lives on; the calls that ran did so in submission order.
    assert ray.get(w.add.remote("after"), timeout=30) == "after"
    assert ray.get(w.items.remote()) == ["block", 1, 3, 5, 7, 9, "after"]


def test_a_call_queued_behind_one_the_actors_thread_read_is_cancelled_at_once():
    # The actor's thread reads a lone call off the direct link itself and runs it,
    # holding the link's read side: the calls and cancels sent behind it wait in the
    # socket. The process's loop takes the read side back from the busy thread, so
    # a cancelled queued call is answered while the running one still runs.
    w, sig = Worker.remote(), Signal.remote()
    _on_path(w, "direct")
    for _ in range(20):  # sync calls: the thread holds the read side between them
        assert ray.get(w.ping.remote()) == "pong"
    b = w.block.remote(sig)
    ray.get(sig.wait_started.remote(), timeout=30)
    refs = [w.add.remote(i) for i in range(4)]
    # Sent (not answered by the caller itself): they wait in the actor's socket.
    route = _worker_state.current_core().actor_routes[w._actor_id]
    deadline = time.monotonic() + 30
    while route.outq or route.mode != "direct":
        assert time.monotonic() < deadline, "the calls never left"
        time.sleep(0.01)
    ray.cancel(refs[1])
    with pytest.raises(TaskCancelledError, match=r"Worker\.add was cancelled before"):
        ray.get(refs[1], timeout=30)
    ray.get(sig.send.remote())
    assert ray.get(b, timeout=30) == "block done"
    assert ray.get([refs[0], refs[2], refs[3]], timeout=30) == [0, 2, 3]
    assert ray.get(w.items.remote())[-4:] == ["block", 0, 2, 3]


def test_running_threaded_call_is_not_interrupted(path):
    w, sig = Worker.remote(), Signal.remote()
    _on_path(w, path)
    b = w.block.remote(sig)
    ray.get(sig.wait_started.remote(), timeout=30)
    q = w.add.remote(1)
    ray.cancel(b)
    ray.cancel(q)
    # q's cancel travelled behind b's on the same path: once q is answered, the
    # actor's process has seen (and declined) the cancel of the running call.
    with pytest.raises(TaskCancelledError):
        ray.get(q, timeout=30)
    ray.get(sig.send.remote())
    assert ray.get(b, timeout=30) == "block done"
    assert ray.get(w.items.remote()) == ["block"]


def test_running_async_call_cancelled(path):
    a, sig = AsyncWorker.remote(), Signal.remote()
    _on_path(a, path)
    f = a.forever.remote(sig)
    ray.get(sig.wait_started.remote(), timeout=30)  # it runs: cancel interrupts it
    queued = [a.add.remote(i) for i in range(4)]  # max_concurrency=1: they wait
    ray.cancel(queued[1])
    ray.cancel(f)
    with pytest.raises(TaskCancelledError, match=r"AsyncWorker\.forever was cancelled while"):
        ray.get(f, timeout=30)
    with pytest.raises(TaskCancelledError, match="before it started"):
        ray.get(queued[1], timeout=30)
    assert ray.get([queued[0], queued[2], queued[3]], timeout=30) == [0, 2, 3]
    assert ray.get(a.state.remote(), timeout=30) == (1, [0, 2, 3])


async def test_running_trio_call_cancelled():
    t = TrioWorker.remote()
    f = t.forever.remote()
    await t.wait_started.remote()
    ray.cancel(f)
    with pytest.raises(TaskCancelledError):
        await f
    assert await t.count.remote() == 1
    assert await t.ping.remote() == "pong"


def test_force_is_refused_and_finished_calls_are_left_alone():
    w = Worker.remote()
    r = w.add.remote(7)
    with pytest.raises(ValueError, match=r"force=True\) is not supported for actor calls.*"
                                         r"Worker\.add"):
        ray.cancel(r, force=True)
    assert ray.get(r, timeout=30) == 7
    ray.cancel(r)  # finished: nothing happens
    assert ray.get(r) == 7
    with pytest.raises(ValueError, match=r"Worker\.add"):
        ray.cancel(r, force=True)
    assert ray.get(w.items.remote(), timeout=30) == [7]
