"""Actors on a real embedded cluster: stateful edges, handles, names, async, bad input."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import trio

import actorcore as ray
from actorcore import _api
from actorcore import exceptions as exc

pytestmark = pytest.mark.usefixtures("cluster")  # tests/conftest.py


@ray.remote
class Log:
    """Records (caller, seq) pairs in arrival order."""

    def __init__(self):
        self.items = []

    def add(self, caller, seq):
        self.items.append((caller, seq))
        return len(self.items)

    def items_of(self):
        return self.items

    def pid(self):
        import os

        return os.getpid()


@ray.remote
def call_many(log, caller, n):
    # A task is a caller too: its calls keep their order.
    return ray.get([log.add.remote(caller, i) for i in range(n)])[-1]


@ray.remote
class Forwarder:
    def __init__(self, log):
        self.log = log

    def forward(self, caller, n):
        refs = [self.log.add.remote(caller, i) for i in range(n)]
        return ray.get(refs[-1])


@ray.remote
def slow_value(x, delay):
    time.sleep(delay)
    return x


def _check_order(items, callers):
    per = {}
    for caller, seq in items:
        per.setdefault(caller, []).append(seq)
    for c in callers:
        assert per[c] == sorted(per[c]), f"caller {c} out of order"
    return per


def test_calls_from_several_callers_keep_submission_order():
    log = Log.remote()
    fwd = Forwarder.remote(log)
    n = 1500
    results = {}

    def driver_thread(name):
        refs = [log.add.remote(name, i) for i in range(n)]
        results[name] = ray.get(refs[-1])

    threads = [threading.Thread(target=driver_thread, args=(f"thread{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    tasks = [call_many.remote(log, f"task{i}", 500) for i in range(2)]
    via_actor = fwd.forward.remote("actor", 500)
    for i in range(n):  # the main thread too
        log.add.remote("main", i)
    for t in threads:
        t.join()
    ray.get(tasks + [via_actor])
    items = ray.get(log.items_of.remote())
    per = _check_order(items, ["main", "thread0", "thread1", "task0", "task1", "actor"])
    assert len(per["main"]) == n and len(per["task0"]) == 500 and len(per["actor"]) == 500
    assert len(items) == 3 * n + 3 * 500


def test_ref_arguments_do_not_reorder_calls():
    log = Log.remote()
    late = slow_value.remote("late", 0.3)
    r1 = log.add.remote("c", late)  # waits for its argument ...
    r2 = log.add.remote("c", "early")  # ... and the next call waits behind it
    assert ray.get([r1, r2]) == [1, 2]
    assert ray.get(log.items_of.remote()) == [("c", "late"), ("c", "early")]


def test_handles_pass_through_tasks_and_actors_and_compare_equal():
    log = Log.remote()
    assert ray.get(call_many.remote(log, "t", 10)) == 10

    @ray.remote
    def return_handle(h):
        return h

    h2 = ray.get(return_handle.remote(log))
    assert h2 == log and hash(h2) == hash(log)
    assert ray.get(h2.add.remote("x", 0)) == 11
    fwd = Forwarder.remote(log)
    assert ray.get(fwd.forward.remote("y", 3)) == 14


def test_each_actor_has_its_own_process_and_shows_in_the_tree():
    a, b = Log.options(name="tree_a").remote(), Log.remote()
    pa, pb = ray.get([a.pid.remote(), b.pid.remote()])
    assert pa != pb
    snap = ray.tree()
    actors = []

    def walk(n, parent=None):
        if n.get("kind") == "actor":
            actors.append((n, parent))
        for c in n.get("children", []):
            walk(c, n)

    walk(snap)
    named = [(n, p) for n, p in actors if n["actor_name"] == "tree_a"]
    assert named and named[0][0]["class"] == "Log" and named[0][1]["kind"] == "worker"
    assert named[0][1]["pid"] == pa


def test_num_returns_and_method_options():
    @ray.remote
    class Multi:
        @ray.method(num_returns=2)
        def pair(self):
            return 1, 2

        @ray.method  # bare, as Ray allows: the defaults
        def three(self):
            return 1, 2, 3

    m = Multi.remote()
    a, b = m.pair.remote()
    assert ray.get([a, b]) == [1, 2]
    refs = m.three.options(num_returns=3).remote()
    assert ray.get(refs) == [1, 2, 3]
    with pytest.raises(ValueError, match="num_returns"):
        m.three.options(num_returns=-1)


def test_method_exception_is_a_task_error_and_the_actor_lives_on():
    @ray.remote
    class Flaky:
        def __init__(self):
            self.n = 0

        def fail(self):
            self.n += 1
            raise KeyError("nope")

        def count(self):
            return self.n

    f = Flaky.remote()
    with pytest.raises(KeyError) as info:
        ray.get(f.fail.remote())
    assert isinstance(info.value, exc.TaskError) and "nope" in str(info.value)
    assert "Flaky.fail" in str(info.value)
    assert ray.get(f.count.remote()) == 1


def test_named_actors_namespaces_and_taken_names():
    a = Log.options(name="svc").remote()
    ray.get(a.add.remote("x", 1))
    same = ray.get_actor("svc")
    assert same == a
    assert ray.get(same.add.remote("y", 2)) == 2
    with pytest.raises(ValueError, match="already taken.*'svc'"):
        Log.options(name="svc").remote()
    other = Log.options(name="svc", namespace="other").remote()
    assert ray.get_actor("svc", namespace="other") == other != a
    assert Log.options(name="svc", get_if_exists=True).remote() == a
    with pytest.raises(ValueError, match="no live actor named 'missing'"):
        ray.get_actor("missing")
    # The name is freed when its actor dies.
    ray.kill(a)
    with pytest.raises(ValueError, match="no live actor named 'svc'"):
        ray.get_actor("svc")
    b = Log.options(name="svc").remote()
    assert ray.get(b.add.remote("z", 0)) == 1


def test_dropping_the_last_handle_ends_the_actor_after_its_calls():
    log = Log.remote()
    ref = log.add.remote("a", 1)
    pid = ray.get(log.pid.remote())
    aid = log._actor_id
    del log
    assert ray.get(ref) == 1
    from actorcore.api._job import request_node
    from actorcore.core_worker._worker_state import current_core
    from actorcore.protocol._wire import GetActorState

    deadline = time.monotonic() + 10
    while True:
        st = request_node(current_core(), GetActorState(aid))
        if st["state"] == "dead":
            break
        assert time.monotonic() < deadline, st
        time.sleep(0.05)
    assert "all handles to it were dropped" in st["death_cause"]
    _wait_pid_gone(pid)


def _wait_pid_gone(pid, timeout=120):
    import os

    deadline = time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, f"process {pid} still alive"
        time.sleep(0.05)


@ray.remote
class Sleeper:
    async def nap(self, t):
        await asyncio.sleep(t)
        return t

    async def ping(self):
        return "pong"

    async def chain(self, ref_list):
        # ``await ref`` inside an async actor
        return await ref_list[0] + 1


def test_async_actor_runs_calls_concurrently():
    s = Sleeper.remote()
    assert ray.get(s.ping.remote()) == "pong"
    t0 = time.monotonic()
    assert ray.get([s.nap.remote(1.0) for _ in range(10)]) == [1.0] * 10
    took = time.monotonic() - t0
    assert took < 2.0, f"ten 1-second sleeps took {took:.2f} s"
    assert ray.get(s.chain.remote([slow_value.remote(41, 0)])) == 42


def test_trio_async_actor_and_max_concurrency():
    @ray.remote(max_concurrency=2)
    class TrioSleeper:
        __actorcore_backend__ = "trio"

        def __init__(self):
            self.running = 0
            self.peak = 0

        async def nap(self, t):
            import sniffio

            assert sniffio.current_async_library() == "trio"
            self.running += 1
            self.peak = max(self.peak, self.running)
            await trio.sleep(t)
            self.running -= 1
            return self.peak

        async def chain(self, refs):
            return await refs[0] * 2

    s = TrioSleeper.remote()
    ray.get(s.nap.remote(0))  # started
    peaks = ray.get([s.nap.remote(0.5) for _ in range(4)])
    assert max(peaks) == 2  # two at a time: the limit, and reached
    assert ray.get(s.chain.remote([slow_value.remote(21, 0)])) == 42


def test_threaded_actor_max_concurrency():
    @ray.remote(max_concurrency=4)
    class Threaded:
        def nap(self, t):
            time.sleep(t)
            return threading.get_ident()

    t = Threaded.remote()
    ray.get(t.nap.remote(0))
    idents = ray.get([t.nap.remote(0.5) for _ in range(4)])
    assert len(set(idents)) >= 2  # side by side, in threads of their own


def test_await_refs_from_trio_and_asyncio_drivers():
    s = Sleeper.remote()

    async def in_trio():
        return await s.nap.remote(0.1)

    async def in_asyncio():
        return await s.ping.remote()

    assert trio.run(in_trio) == 0.1
    assert asyncio.run(in_asyncio()) == "pong"


def test_bad_input_gets_clear_errors():
    log = Log.remote()
    with pytest.raises(AttributeError, match="Log has no method 'nope'"):
        log.nope.remote()
    with pytest.raises(TypeError, match=r"Log.add\(\) missing 1 required argument: 'seq'"):
        log.add.remote("x")
    with pytest.raises(TypeError, match=r"Log.add\(\) takes 2 positional arguments but 3"):
        log.add.remote(1, 2, 3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'bogus'"):
        log.add.remote(1, 2, bogus=3)
    with pytest.raises(TypeError, match=r"Log.__init__\(\) takes 0 positional"):
        Log.remote(5)
    lock = threading.Lock()
    with pytest.raises(exc.SerializationError, match="argument 0 of Forwarder.__init__.*lock"):
        Forwarder.remote(lock)
    with pytest.raises(exc.SerializationError, match="argument 1 of Log.add"):
        log.add.remote("x", lock)
    with pytest.raises(TypeError, match="cannot be instantiated directly"):
        Log()
    with pytest.raises(TypeError, match="cannot be called directly"):
        log.add("x", 1)
    with pytest.raises(ValueError, match="unknown option.*bogus"):
        Log.options(bogus=1)
    with pytest.raises(ValueError, match="placement='everywhere'"):
        Log.options(placement="everywhere")
    with pytest.raises(TypeError, match="expects an actor handle"):
        ray.kill("not a handle")
    # ... and the cluster and the actor keep working.
    assert ray.get(log.add.remote("ok", 1)) == 1


def test_actor_resources_are_held_and_infeasible_requests_wait():
    @ray.remote(num_cpus=2)
    class Big:
        def ok(self):
            return ray.available_resources().get("CPU", 0)

    b = Big.remote()
    assert ray.get(b.ok.remote()) == 0
    ray.kill(b)
    # As in Ray: an actor no node can host waits (with a warning) for a node that
    # can to join; its calls wait with it.
    never = Big.options(num_cpus=64).remote()
    call = never.ok.remote()
    with pytest.raises(exc.GetTimeoutError):
        ray.get(call, timeout=0.5)
    stats = _api._call("status")["actors"]
    assert stats.unplaced == 1
    assert "CPU: 64" in stats.unplaced_warnings[0]
    ray.kill(never)
    with pytest.raises(exc.ActorDiedError, match="killed"):
        ray.get(call, timeout=10)
    assert _api._call("status")["actors"].unplaced == 0


def test_lightweight_actors_share_one_process():
    @ray.remote
    class Light:
        def __init__(self, i):
            self.i = i

        def who(self):
            import os

            return self.i, os.getpid()

    actors = [Light.options(placement="shared").remote(i) for i in range(200)]
    out = ray.get([a.who.remote() for a in actors])
    assert [i for i, _ in out] == list(range(200))
    assert len({pid for _, pid in out}) == 1


def test_large_values_and_runtime_context_in_actors():
    import numpy as np

    @ray.remote
    class Holder:
        def __init__(self, arr):
            self.arr = arr

        def total(self, extra):
            return float(self.arr.sum() + extra.sum())

        def big(self):
            return np.ones(1_000_000)

        def ids(self):
            ctx = ray.get_runtime_context()
            return ctx.get_actor_id(), ctx.get_task_id()

    arr = np.ones(500_000)
    h = Holder.remote(arr)
    assert ray.get(h.total.remote(np.ones(300_000))) == 800_000.0
    assert ray.get(h.big.remote()).sum() == 1_000_000
    aid, tid = ray.get(h.ids.remote())
    assert aid == h.actor_id and tid is not None


@ray.remote
class Spawner:
    def spawn(self, x):
        # A task submitted from an actor method belongs to the actor's job.
        return ray.get(slow_value.remote(x, 0)), ray.get_runtime_context().get_job_id()


@ray.remote
class AsyncSpawner:
    async def spawn(self, x):
        return await slow_value.remote(x, 0), ray.get_runtime_context().get_job_id()


def test_tasks_submitted_by_actor_methods_run_in_the_actors_job():
    job = ray.get_runtime_context().get_job_id()
    assert ray.get(Spawner.remote().spawn.remote(7), timeout=60) == (7, job)
    assert ray.get(AsyncSpawner.remote().spawn.remote(8), timeout=60) == (8, job)


def test_get_actor_and_kill_from_a_task():
    a = Log.options(name="from_task").remote()

    @ray.remote
    def use_and_kill():
        h = ray.get_actor("from_task")
        n = ray.get(h.add.remote("t", 0))
        ray.kill(h)
        return n

    assert ray.get(use_and_kill.remote()) == 1
    with pytest.raises(exc.ActorDiedError, match="killed"):
        ray.get(a.add.remote("x", 1))


def test_direct_calls_after_the_switch_and_their_results_feed_tasks():
    import numpy as np

    from actorcore.core_worker._worker_state import current_core

    @ray.remote
    class Src:
        def small(self, i):
            return i

        def big(self):
            return np.arange(500_000)

    @ray.remote
    def consume(x):
        return int(np.asarray(x).sum()) if not isinstance(x, int) else x + 1

    s = Src.remote()
    assert ray.get([s.small.remote(i) for i in range(50)]) == list(range(50))
    route = current_core().actor_routes[s._actor_id]
    _wait_for(lambda: route.mode == "direct" or bool(s.small.remote(0) and False))
    assert ray.get(consume.remote(s.small.remote(41))) == 42  # a direct result, by ref
    assert ray.get(consume.remote(s.big.remote())) == int(np.arange(500_000).sum())
    assert ray.get([s.small.remote(i) for i in range(1000)]) == list(range(1000))


def test_direct_results_read_and_dropped_never_reach_the_node():
    # The result of a sync direct call, read and dropped before the lazy flush, is
    # withdrawn from its Put (no Put, no Free for the node); a result passed on to
    # a task, stored in a list that is pickled, or read after its error was seen is
    # still handed to the node, and resolves there.
    from actorcore.core_worker._worker_state import current_core

    @ray.remote
    class Src:
        def small(self, i):
            return i

    @ray.remote
    def total(xs):
        return sum(ray.get(xs))

    @ray.remote
    def plus_one(x):
        return x + 1

    s = Src.remote()
    assert ray.get(s.small.remote(0)) == 0
    route = current_core().actor_routes[s._actor_id]
    _wait_for(lambda: route.mode == "direct" or bool(s.small.remote(0) and False))
    core = current_core()
    _wait_for(lambda: not core.link.has_queued())  # (earlier tests' results: sent)
    stats = core.stats
    before = stats["results_withdrawn"] + stats["results_unreported"]
    created = _api._call("status")["object_store"].created
    assert [ray.get(s.small.remote(i)) for i in range(200)] == list(range(200))
    # Never queued for the node (unreported), or withdrawn from a queued Put.
    withdrawn = stats["results_withdrawn"] + stats["results_unreported"] - before
    _wait_for(lambda: not core.link.has_queued())
    assert withdrawn >= 150, withdrawn  # (a result the flush took first is freed)
    # Without them, the node created at most the objects of the others.
    assert _api._call("status")["object_store"].created - created <= 200 - withdrawn
    ref = s.small.remote(41)
    assert ray.get(ref) == 41
    assert ray.get(plus_one.remote(ref)) == 42  # passed on after it was read
    kept = [s.small.remote(i) for i in range(3)]
    ray.get(kept)
    assert ray.get(total.remote(kept)) == 3  # inside a pickled list


def test_a_long_actor_call_is_not_lost_to_a_getter_that_does_not_own_it():
    # A task gets the refs of actor calls that run longer than the node once waited
    # before declaring an object nobody produces lost (5 s): it gets their values,
    # for a call routed through the node (an actor's first call) and for one that
    # went straight to the actor (after the switch), of which the node knows nothing
    # until the caller hands in its result. Its owner, the driver, lives: not lost.
    from actorcore.core_worker._worker_state import current_core

    @ray.remote
    class Sleeper:
        def ping(self):
            return 0

        def sleep(self, seconds, value):
            time.sleep(seconds)
            return value

    @ray.remote
    def get_first(refs):
        return ray.get(refs[0], timeout=60)

    via_node, direct = Sleeper.remote(), Sleeper.remote()
    assert ray.get(direct.ping.remote(), timeout=30) == 0
    route = current_core().actor_routes[direct._actor_id]
    _wait_for(lambda: route.mode == "direct" or bool(direct.ping.remote() and False))
    started = time.monotonic()
    refs = [via_node.sleep.remote(7, "node"), direct.sleep.remote(7, "direct")]
    assert current_core().actor_routes[via_node._actor_id].mode != "direct"
    getters = [get_first.remote([ref]) for ref in refs]
    assert ray.get(getters, timeout=60) == ["node", "direct"]
    assert time.monotonic() - started >= 7
    assert ray.get(get_first.remote([via_node.sleep.remote(0, 1)]), timeout=30) == 1


def _wait_for(pred, timeout=120):
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_the_actors_thread_reads_lone_direct_calls_itself_and_keeps_their_order():
    # Sync calls on an idle direct link are read by the actor's own thread (the
    # process's loop hands them over no more); bursts, calls from a second caller
    # and calls that wait for refs go through the loop. One order per caller, every
    # call once, and the actor still stops when killed while its thread holds the link.
    from actorcore.core_worker._worker_state import current_core

    @ray.remote
    class Reader:
        def __init__(self):
            self.seen = []

        def add(self, caller, i):
            self.seen.append((caller, i))
            return i

        def seen_of(self):
            return self.seen

        def reads(self):
            from actorcore.worker._actor_host import process_statistics

            stats = process_statistics()
            return stats.calls_read_by_thread, stats.calls_read_by_loop

    r = Reader.remote()
    assert ray.get(r.add.remote("d", -1)) == -1
    route = current_core().actor_routes[r._actor_id]
    _wait_for(lambda: route.mode == "direct" or bool(r.add.remote("d", -1) and False))
    start = len(ray.get(r.seen_of.remote()))
    for i in range(100):
        if i % 10 == 5:  # a burst: several frames in one read, given back to the loop
            assert ray.get([r.add.remote("d", i) for _ in range(5)]) == [i] * 5
        elif i % 10 == 7:  # a call waiting for a ref argument
            assert ray.get(r.add.remote("d", slow_value.remote(i, 0.01))) == i
        else:
            assert ray.get(r.add.remote("d", i)) == i
    by_thread, by_loop = ray.get(r.reads.remote())
    assert by_thread >= 50, (by_thread, by_loop)
    assert by_loop > 0
    # A second caller (a task) beside the driver: each caller's calls in its order.
    other = call_many.remote(r, "t", 50)
    for i in range(50):
        ray.get(r.add.remote("d2", i))
    ray.get(other)
    seen = ray.get(r.seen_of.remote())[start:]
    per = _check_order(seen, ["d", "t", "d2"])
    assert len(per["t"]) == 50 and len(per["d2"]) == 50
    assert [i for i in per["d"] if i >= 0] == sorted(
        [i for i in range(100) for _ in range(5 if i % 10 == 5 else 1)])
    ray.kill(r)
    with pytest.raises(exc.ActorDiedError):
        ray.get(r.add.remote("d", 0), timeout=30)
