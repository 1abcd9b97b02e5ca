"""The Ray API surface that Ray programs rely on (issue 14, "Missing API"), each on a
real embedded cluster: futures and completion callbacks, ``ActorPool``, ``Queue``,
the built-in actor methods and ``exit_actor``, named-actor listing, concurrency
groups, ``max_pending_calls``, ``max_calls`` and the runtime context.

Every test checks the Ray behaviour and then that the cluster still serves a
follow-up task or actor call.
"""

from __future__ import annotations

import asyncio
import os
import pickle
import threading
import time

import pytest

import actorcore as ray
from actorcore import exceptions as exc
from actorcore.util import ActorPool
from actorcore.util.queue import Empty, Full, Queue

from .cluster_support import until

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


# ---------------------------------------------------------------- futures, callbacks


def test_future_and_as_future_resolve_with_value_or_error():
    fut = add_one.remote(1).future()
    assert fut.result(timeout=30) == 2
    bad = fail.remote("no").future()
    with pytest.raises(ValueError, match="no"):
        bad.result(timeout=30)
    assert isinstance(bad.exception(), exc.TaskError)

    async def main():
        a = add_one.remote(10).as_future()
        b = fail.remote("async no").as_future()
        assert isinstance(a, asyncio.Future)
        value = await asyncio.wait_for(a, 30)
        with pytest.raises(ValueError, match="async no"):
            await asyncio.wait_for(b, 30)
        return value

    assert asyncio.run(main()) == 11
    # A large value (through the store) resolves too.
    big = ray.put(b"x" * (2 << 20))
    assert len(big.future().result(timeout=30)) == 2 << 20
    _healthy()


def test_on_completed_calls_back_with_value_or_exception_off_the_caller_thread():
    got: list = []
    done = threading.Event()
    caller = threading.get_ident()

    def callback(result):
        # A callback may block and call the API: it runs in a thread of its own.
        got.append((result, threading.get_ident() != caller, ray.get(add_one.remote(0))))
        if len(got) == 3:
            done.set()

    ray.put(5).on_completed(callback)  # ready already: called soon anyway
    sleep_then.remote(6, 0.2)._on_completed(callback)  # Ray's private spelling
    fail.remote("cb").on_completed(callback)
    assert done.wait(30), got
    values = sorted((r for r, _t, _z in got if not isinstance(r, BaseException)))
    errors = [r for r, _t, _z in got if isinstance(r, BaseException)]
    assert values == [5, 6]
    assert len(errors) == 1 and isinstance(errors[0], ValueError) and "cb" in str(errors[0])
    assert all(other and zero == 1 for _r, other, zero in got)
    with pytest.raises(TypeError, match="callable"):
        ray.put(1).on_completed("not callable")
    _healthy()


# ---------------------------------------------------------------------- ActorPool


@ray.remote
class Doubler:
    def double(self, v):
        time.sleep(0.05 * (v % 3))
        return 2 * v

    def die(self):
        os._exit(1)


def test_actor_pool_map_submit_and_bookkeeping():
    a1, a2 = Doubler.remote(), Doubler.remote()
    pool = ActorPool([a1, a2])
    assert list(pool.map(lambda a, v: a.double.remote(v), [1, 2, 3, 4, 5])) == [2, 4, 6, 8, 10]
    assert sorted(pool.map_unordered(lambda a, v: a.double.remote(v), range(6))) == [
        0, 2, 4, 6, 8, 10]

    pool.submit(lambda a, v: a.double.remote(v), 1)
    pool.submit(lambda a, v: a.double.remote(v), 2)
    pool.submit(lambda a, v: a.double.remote(v), 3)  # waits for a free actor
    assert pool.has_next() and not pool.has_free() and pool.pop_idle() is None
    assert [pool.get_next(), pool.get_next(), pool.get_next()] == [2, 4, 6]
    assert not pool.has_next() and pool.has_free()
    with pytest.raises(StopIteration):
        pool.get_next()
    with pytest.raises(ValueError, match="already belongs"):
        pool.push(a1)

    pool.submit(lambda a, v: a.double.remote(v), 5)
    with pytest.raises(TimeoutError):
        pool.get_next(timeout=0)
    assert pool.get_next(timeout=30) == 10
    pool.submit(lambda a, v: a.double.remote(v), 7)
    pool.submit(lambda a, v: a.double.remote(v), 8)
    assert sorted([pool.get_next_unordered(timeout=30), pool.get_next_unordered()]) == [14, 16]
    with pytest.raises(TypeError, match="ObjectRef"):
        pool.submit(lambda a, v: v, 1)

    idle = pool.pop_idle()
    assert idle in (a1, a2) and pool.pop_idle() is not None and pool.pop_idle() is None
    pool.push(idle)
    assert pool.has_free()

    # An actor that died is not handed work again: the pool goes on without it.
    victim, survivor = Doubler.remote(), Doubler.remote()
    pool = ActorPool([victim])
    pool.submit(lambda a, v: a.die.remote(), None)
    with pytest.raises(exc.ActorDiedError):
        pool.get_next(timeout=30)
    assert not pool.has_free()
    pool.push(survivor)
    assert list(pool.map(lambda a, v: a.double.remote(v), [3])) == [6]
    _healthy()


# -------------------------------------------------------------------------- Queue


@ray.remote
def consume(queue, n):
    return [queue.get(timeout=30) for _ in range(n)]


def test_queue_put_get_block_timeout_batch_async_and_shutdown():
    q = Queue(maxsize=3)
    assert q.empty() and not q.full() and q.qsize() == 0 and len(q) == 0
    q.put(1)
    q.put_nowait(2)
    q.put(3, timeout=1)
    assert q.full() and q.size() == 3
    with pytest.raises(Full):
        q.put_nowait(4)
    started = time.monotonic()
    with pytest.raises(Full):
        q.put(4, timeout=0.3)
    assert 0.25 <= time.monotonic() - started < 10
    assert [q.get(), q.get_nowait(), q.get(block=False)] == [1, 2, 3]
    with pytest.raises(Empty):
        q.get_nowait()
    with pytest.raises(Empty):
        q.get(timeout=0.2)
    import queue as stdlib_queue

    with pytest.raises(stdlib_queue.Empty):  # Ray's Empty/Full subclass the stdlib's
        q.get(block=False)
    with pytest.raises(ValueError, match="timeout"):
        q.get(timeout=-1)

    q.put_nowait_batch([10, 11])
    with pytest.raises(Full, match="Cannot add 2 items"):
        q.put_nowait_batch([12, 13])
    assert q.qsize() == 2  # all or nothing
    with pytest.raises(Empty, match="Cannot get 3 items"):
        q.get_nowait_batch(3)
    assert q.get_nowait_batch(2) == [10, 11]
    with pytest.raises(TypeError):
        q.put_nowait_batch(5)

    async def async_side():
        await q.put_async("a")
        await q.put_async("b", block=False)
        got = [await q.get_async(), await q.get_async(timeout=5)]
        with pytest.raises(Empty):
            await q.get_async(block=False)
        return got

    assert asyncio.run(async_side()) == ["a", "b"]

    # A blocking get in a task waits for puts made later (the queue travels as an
    # argument; every copy reaches the same items).
    unbounded = Queue()
    consumer = consume.remote(unbounded, 3)
    assert ray.wait([consumer], timeout=0.3) == ([], [consumer])  # it waits in get
    for i in range(3):
        unbounded.put(i)
    assert ray.get(consumer, timeout=30) == [0, 1, 2]

    # shutdown ends the actor; the queue refuses use afterwards.
    q.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        q.put(1)
    unbounded.shutdown(force=True)
    _healthy()


# ---------------------------------------------------- built-in methods, exit_actor


@ray.remote
class Counter:
    def __init__(self):
        self.n = 0

    def incr(self, by=1):
        self.n += by
        return self.n

    def slow_incr(self, seconds):
        time.sleep(seconds)
        self.n += 1
        return self.n

    def leave(self):
        ray.actor.exit_actor()
        return "not reached"

    def leave_after_atexit(self, path):
        import atexit

        atexit.register(lambda: open(path, "w").write("ran"))
        ray.actor.exit_actor()

    def leave_despite_except(self):
        try:
            ray.actor.exit_actor()
        except Exception:  # exit_actor is not an Exception: this does not catch it
            return "caught"


@ray.remote
class AsyncCounter:
    def __init__(self):
        self.n = 0

    async def incr(self):
        self.n += 1
        return self.n

    async def leave(self):
        await asyncio.sleep(0)
        ray.actor.exit_actor()


def test_builtin_actor_methods_ready_call_terminate():
    c = Counter.remote()
    assert ray.get(c.__ray_ready__.remote(), timeout=30) is True
    assert ray.get(c.__ray_call__.remote(lambda self, k: self.incr(k) * 10, 4), timeout=30) == 40
    with pytest.raises(TypeError, match="positional"):
        c.__ray_ready__.remote(1)
    # __ray_terminate__ ends it after the calls made before it; later ones fail.
    first = c.slow_incr.remote(0.3)
    done = c.__ray_terminate__.remote()
    assert ray.get(first, timeout=30) == 5
    with pytest.raises(exc.ActorDiedError, match="exit_actor"):
        ray.get(done, timeout=30)
    with pytest.raises(exc.ActorDiedError, match="exit_actor"):
        ray.get(c.incr.remote(), timeout=30)

    a = AsyncCounter.remote()
    assert ray.get(a.__ray_ready__.remote(), timeout=30) is True

    async def bump(self):
        return await self.incr()

    assert ray.get(a.__ray_call__.remote(bump), timeout=30) == 1
    _healthy()


def test_exit_actor_ends_the_actor_for_good_and_frees_its_resources(tmp_path):
    with pytest.raises(TypeError, match="outside an actor"):
        ray.actor.exit_actor()
    # Every CPU free first: an actor of an earlier test may still be giving its back.
    before = ray.cluster_resources().get("CPU", 0)
    until(lambda: ray.available_resources().get("CPU", 0) == before, "every CPU free")
    c = Counter.options(num_cpus=1, max_restarts=3).remote()
    assert ray.get(c.incr.remote(), timeout=30) == 1
    assert ray.available_resources().get("CPU", 0) == before - 1
    leaving = c.leave.remote()
    queued = c.incr.remote()
    with pytest.raises(exc.ActorDiedError, match="exit_actor"):
        ray.get(leaving, timeout=30)
    with pytest.raises(exc.ActorDiedError, match="exit_actor"):
        ray.get(queued, timeout=30)
    with pytest.raises(exc.ActorDiedError):  # not restarted despite max_restarts=3
        ray.get(c.incr.remote(), timeout=30)
    until(lambda: ray.available_resources().get("CPU", 0) == before, "the actor's CPU back")

    d = Counter.remote()
    with pytest.raises(exc.ActorDiedError):
        ray.get(d.leave_despite_except.remote(), timeout=30)
    e = Counter.remote()  # as Ray: the actor process's atexit handlers run
    marker = tmp_path / "atexit"
    with pytest.raises(exc.ActorDiedError):
        ray.get(e.leave_after_atexit.remote(str(marker)), timeout=30)
    assert marker.read_text() == "ran"

    a = AsyncCounter.remote()
    assert ray.get(a.incr.remote(), timeout=30) == 1
    with pytest.raises(exc.ActorDiedError, match="exit_actor"):
        ray.get(a.leave.remote(), timeout=30)
    with pytest.raises(exc.ActorDiedError):
        ray.get(a.incr.remote(), timeout=30)
    _healthy()


def test_list_named_actors():
    a = Counter.options(name="listed-a").remote()
    b = Counter.options(name="listed-b", namespace="elsewhere").remote()
    ray.get([a.incr.remote(), b.incr.remote()], timeout=30)
    names = ray.list_named_actors()
    assert "listed-a" in names and "listed-b" not in names
    every = ray.list_named_actors(all_namespaces=True)
    assert {"name": "listed-a", "namespace": "default"} in every
    assert {"name": "listed-b", "namespace": "elsewhere"} in every
    ray.kill(a)
    assert "listed-a" not in ray.list_named_actors()
    ray.kill(b)
    _healthy()


# ----------------------------------------------------------------- concurrency groups


@ray.remote(concurrency_groups={"io": 2, "control": 1})
class Grouped:
    def __init__(self):
        self.flag = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.peak = 0

    @ray.method(concurrency_group="control")
    def wait_flag(self):
        return self.flag.wait(20)

    def set_flag(self):
        self.flag.set()
        return True

    @ray.method(concurrency_group="io")
    def io(self, seconds):
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
        time.sleep(seconds)
        with self.lock:
            self.running -= 1
        return threading.current_thread().name

    def peak_io(self):
        return self.peak


@ray.remote(concurrency_groups={"io": 2})
class AsyncGrouped:
    def __init__(self):
        self.flag = asyncio.Event()
        self.running = 0
        self.peak = 0

    @ray.method(concurrency_group="io")
    async def io(self, seconds):
        self.running += 1
        self.peak = max(self.peak, self.running)
        await asyncio.sleep(seconds)
        self.running -= 1
        return self.peak

    async def wait_flag(self):
        await asyncio.wait_for(self.flag.wait(), 20)
        return True

    async def set_flag(self):
        self.flag.set()
        return True


def test_concurrency_groups_threaded_actor():
    g = Grouped.remote()
    # The default group (one thread) is free while "control" waits: without groups
    # set_flag would queue behind wait_flag until its 20 s ran out.
    waiting = g.wait_flag.remote()
    assert ray.wait([waiting], timeout=0.2) == ([], [waiting])  # it waits for the flag
    assert ray.get(g.set_flag.remote(), timeout=10) is True
    assert ray.get(waiting, timeout=10) is True
    # "io" runs at most 2 at a time, in threads of its own.
    names = ray.get([g.io.remote(0.3) for _ in range(5)], timeout=30)
    assert ray.get(g.peak_io.remote(), timeout=10) == 2
    assert all("-io" in n for n in names)
    # A call-site override puts a default-group method into a group.
    assert "-io" in ray.get(g.io.options(concurrency_group="io").remote(0), timeout=10)
    with pytest.raises(ValueError, match="no such group"):
        g.io.options(concurrency_group="nope")
    _healthy()


def test_concurrency_groups_async_actor_and_bad_groups():
    a = AsyncGrouped.remote()
    peaks = ray.get([a.io.remote(0.3) for _ in range(5)], timeout=30)
    assert max(peaks) == 2
    waiting = a.wait_flag.remote()
    # io calls at their limit hold back only their own group.
    busy = [a.io.remote(1.0) for _ in range(3)]
    assert ray.get(a.set_flag.remote(), timeout=10) is True
    assert ray.get(waiting, timeout=10) is True
    ray.get(busy, timeout=30)

    class Bad:
        @ray.method(concurrency_group="gpu")
        def f(self):
            return 1

    with pytest.raises(ValueError, match="concurrency_group='gpu'.*does not define"):
        ray.remote(Bad).remote()
    with pytest.raises(ValueError, match=r"concurrency_groups\['io'\]=0"):
        Grouped.options(concurrency_groups={"io": 0})
    with pytest.raises(TypeError, match="concurrency_group"):
        ray.method(concurrency_group=3)
    _healthy()


# -------------------------------------------------------------- max_pending_calls


def test_max_pending_calls_refuses_the_call_over_the_limit():
    c = Counter.options(max_pending_calls=2).remote()
    first = c.slow_incr.remote(0.5)
    second = c.slow_incr.remote(0.0)
    with pytest.raises(exc.PendingCallsLimitExceeded, match="max_pending_calls=2"):
        c.incr.remote()
    with pytest.raises(exc.PendingCallsLimitExceeded):  # a copy of the handle shares it
        pickle.loads(pickle.dumps(c)).incr.remote()
    assert ray.get([first, second], timeout=30) == [1, 2]
    # The count dropped as the results arrived (before get returned them).
    assert ray.get(c.incr.remote(), timeout=30) == 3
    with pytest.raises(ValueError, match="max_pending_calls=0"):
        Counter.options(max_pending_calls=0)
    _healthy()


# ------------------------------------------------------------------ runtime context


@ray.remote
def task_context():
    ctx = ray.get_runtime_context()
    return ctx.get_task_name(), ctx.get_assigned_resources(), ctx.get_actor_name()


@ray.remote
class Introspect:
    def context(self):
        ctx = ray.get_runtime_context()
        return (ctx.get_actor_name(), ctx.get_task_name(), ctx.get_assigned_resources(),
                ctx.get_actor_id(), ctx.get_job_id(), ctx.get_task_id())

    def me(self):
        return ray.get_runtime_context().current_actor

    def ping(self):
        return "pong"

    async def async_name(self):
        return ray.get_runtime_context().get_task_name()


def test_runtime_context_task_actor_and_driver():
    name, resources, actor_name = ray.get(task_context.remote(), timeout=30)
    assert name.endswith("task_context") and resources == {"CPU": 1.0} and actor_name is None
    assert ray.get(task_context.options(name="custom", num_cpus=0.5).remote(),
                   timeout=30)[:2] == ("custom", {"CPU": 0.5})

    a = Introspect.options(name="introspected", num_cpus=1).remote()
    actor_name, task_name, res, actor_id, job_id, task_id = ray.get(
        a.context.remote(), timeout=30)
    assert actor_name == "introspected" and task_name == "Introspect.context"
    assert res == {"CPU": 1.0} and actor_id == a.actor_id
    assert job_id == ray.get_runtime_context().get_job_id() and task_id
    me = ray.get(a.me.remote(), timeout=30)
    assert me == a and ray.get(me.ping.remote(), timeout=30) == "pong"

    # Unnamed, and async: the call's own name, even with calls interleaving.
    b = Introspect.remote()
    assert ray.get(b.context.remote(), timeout=30)[0] is None
    assert ray.get(b.async_name.remote(), timeout=30) == "Introspect.async_name"

    ctx = ray.get_runtime_context()
    assert ctx.get_task_name() is None and ctx.get_actor_name() is None
    with pytest.raises(RuntimeError, match="only defined inside a task or an actor"):
        ctx.get_assigned_resources()
    with pytest.raises(RuntimeError, match="inside an actor"):
        ctx.current_actor  # noqa: B018
    ray.kill(a)
    _healthy()


# ---------------------------------------------------------------------- max_calls


@ray.remote(max_calls=1)
def pid_once():
    return os.getpid()


@ray.remote(max_calls=2, num_cpus=1)
def pid_twice():
    return os.getpid()


@ray.remote(max_calls=1)
def outer_once():
    return os.getpid(), ray.get(sleep_then.remote(os.getpid(), 0.1))


def _gone(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow  # (seconds of waiting; run with -m slow)
def test_max_calls_retires_the_worker_and_frees_its_resources():
    total = ray.cluster_resources()["CPU"]
    once = [ray.get(pid_once.remote(), timeout=60) for _ in range(3)]
    assert len(set(once)) == 3, once  # every call in a worker of its own
    until(lambda: all(_gone(p) for p in once), "each worker's exit after its one call")
    twice = ray.get([pid_twice.remote() for _ in range(6)], timeout=60)
    assert max(twice.count(p) for p in twice) <= 2, twice
    # One blocked in get keeps its worker: the next one does not start beside it.
    nested = ray.get([outer_once.remote() for _ in range(3)], timeout=60)
    assert len({pid for pid, _inner in nested}) == 3, nested
    # Other functions are not limited by it, and the pool refills: work goes on.
    assert ray.get([add_one.remote(i) for i in range(8)], timeout=60) == list(range(1, 9))
    until(lambda: ray.available_resources().get("CPU", 0) == total, "every CPU free again")
    with pytest.raises(ValueError, match="max_calls=-1"):
        pid_once.options(max_calls=-1)
    _healthy()
