"""A caller's thread reads the answer of its own direct call, or its leased task's
end, off the link itself (``core_worker._reply_reads``): the values, errors and
bookkeeping are those of the loop's path, and every other waiter on the same link
(another thread, ``await``, a dependent call, a ref polled with ``wait``) still gets
its answer."""

from __future__ import annotations

import collections
import threading
import time

import pytest
import trio

import actorcore as ray
from actorcore import exceptions as exc
from actorcore.core_worker import _worker_state
from actorcore.core_worker._node_link import NodeLink
from actorcore.protocol import _wire as w

from .cluster_support import until

pytestmark = pytest.mark.usefixtures("cluster")  # tests/conftest.py


@ray.remote
class Echo:
    def f(self, x=None):
        return x

    def two(self, x):
        return x, x + 1

    def fail(self, text):
        raise KeyError(text)

    def big(self, n):
        return b"x" * n

    def slow(self, x, seconds):
        time.sleep(seconds)
        return x


@ray.remote
def add(x, y=0):
    return x + y


@ray.remote
def fail(text):
    raise KeyError(text)


def _direct_route(actor):
    core = _worker_state.current_core()
    until(lambda: ray.get(actor.f.remote(0)) == 0
          and core.actor_routes[actor._actor_id].mode == "direct",
          "the actor's direct link")
    return core, core.actor_routes[actor._actor_id]


def _read_by_thread(conn) -> int:
    return conn.statistics().frames_read_by_threads


def test_sync_calls_are_answered_by_the_calling_threads_own_read():
    a = Echo.remote()
    core, route = _direct_route(a)
    conn = route.conn
    before = _read_by_thread(conn)
    stats = core.stats
    withdrawn = stats["results_withdrawn"] + stats["results_unreported"]
    for i in range(100):
        assert ray.get(a.f.remote(i)) == i
    assert _read_by_thread(conn) - before >= 80  # a few may go through the loop
    # The inline results were never queued for the node (or withdrawn from a
    # queued Put) as their refs died unread elsewhere: no Put, no Free.
    assert stats["results_withdrawn"] + stats["results_unreported"] - withdrawn >= 80
    # Errors, several returns, a value through the store: as on the loop's path.
    with pytest.raises(KeyError, match="boom"):
        ray.get(a.fail.remote("boom"))
    r1, r2 = a.two.options(num_returns=2).remote(5)
    assert ray.get(r1) == 5 and ray.get(r2) == 6
    assert ray.get(a.big.remote(1 << 20)) == b"x" * (1 << 20)
    assert not route.direct and not route.held
    ray.kill(a)


def test_every_other_waiter_on_the_link_gets_its_answer():
    # The calling thread keeps the link's read side between its sync calls; whoever
    # else waits on that link meanwhile must not wait for it.
    a = Echo.remote()
    core, route = _direct_route(a)
    for i in range(20):
        assert ray.get(a.f.remote(i)) == i
    # A burst, fetched at once.
    assert ray.get([a.f.remote(i) for i in range(50)]) == list(range(50))
    for i in range(5):
        assert ray.get(a.f.remote(i)) == i
    # A call that takes an earlier call's ref (its dependency's callback runs in the loop).
    assert ray.get(a.f.remote(a.f.remote(7))) == 7
    # `await ref` in a Trio loop of another thread.
    ray.get(a.f.remote(1))
    ref = a.f.remote(8)
    got: list = []

    async def awaiter() -> None:
        got.append(await ref)

    t = threading.Thread(target=trio.run, args=(awaiter,))
    t.start()
    t.join(30)
    assert got == [8]
    # Another thread's `get` of several refs while this one makes sync calls.
    ray.get(a.f.remote(1))
    slow = a.slow.remote("s", 0.2)
    other: list = []
    t = threading.Thread(target=lambda: other.append(ray.get([slow, a.f.remote(9)], timeout=30)))
    t.start()
    for i in range(20):
        assert ray.get(a.f.remote(i), timeout=30) == i
    t.join(30)
    assert other == [["s", 9]]
    # A ref polled with wait(timeout=0), which registers no waiter: the loop takes the
    # side back from a thread that keeps it unread.
    ray.get(a.f.remote(1))
    ref = a.f.remote(10)
    deadline = time.monotonic() + 30
    while not ray.wait([ref], timeout=0)[0]:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    assert ray.get(ref) == 10
    assert route.reply is not None and route.reply.loan.reclaimed > 0
    ray.kill(a)


def test_a_callback_on_the_entry_sends_the_answer_through_the_loop():
    # max_pending_calls counts a call down from a callback on its result: the thread
    # that reads the answer leaves the entry to the loop, which runs it.
    a = Echo.options(max_pending_calls=2).remote()
    _core, _route = _direct_route(a)
    for i in range(30):
        assert ray.get(a.f.remote(i)) == i  # the count goes down, or this would refuse


def test_killing_the_actor_under_a_reading_thread_fails_its_get():
    a = Echo.remote()
    _direct_route(a)
    ref = a.slow.remote(1, 60)
    threading.Timer(0.5, ray.kill, args=(a,)).start()
    with pytest.raises(exc.ActorDiedError):
        ray.get(ref, timeout=60)


def test_sync_leased_tasks_are_ended_by_the_calling_threads_own_read():
    core = _worker_state.current_core()
    leased = core.leased
    if leased is None or not leased.enabled:
        pytest.skip("direct task submission is off")
    for i in range(20):
        assert ray.get(add.remote(i, 1)) == i + 1
    links = list(leased._links.values())
    before = sum(_read_by_thread(link.conn) for link in links)
    for i in range(50):
        assert ray.get(add.remote(i, 1)) == i + 1
    links = list(leased._links.values())
    assert sum(_read_by_thread(link.conn) for link in links) - before >= 30
    with pytest.raises(KeyError, match="bad"):
        ray.get(fail.remote("bad"))
    # A burst after sync tasks: the lease's ends are read by the loop again.
    assert ray.get([add.remote(i) for i in range(40)]) == list(range(40))
    assert ray.get(add.remote(1, 1)) == 2


def _queueing_node_link() -> tuple[NodeLink, collections.Counter[str]]:
    """A `NodeLink` with no node and a loop that never runs, and its statistics:
    what is enqueued stays queued (the wake-up goes nowhere) for `_next_message`
    to take, in the order it would leave."""

    class Token:
        def run_sync_soon(self, *args):
            pass

    class Loop:
        trio_token = Token()

        def in_loop(self):
            return False

    stats: collections.Counter[str] = collections.Counter()
    return NodeLink(None, Loop(), stats, lambda oid, payload: None), stats


def test_answers_queued_for_the_node_one_behind_another_leave_as_one_put():
    # A burst's answers join the results queued last (one Put, not one per answer);
    # a message queued between them keeps its place, and a withdrawn result is left
    # out, as before.
    link, _stats = _queueing_node_link()
    a, b, c, d = (bytes([i]) * 20 for i in range(4))
    link.enqueue_results([(a, False, b"1")])
    link.enqueue_results([(b, False, b"2"), (c, False, b"3")])
    assert len(link._queue) == 1
    free = w.Free([b"f" * 20])
    link.enqueue(free, wake=False)
    link.enqueue_results([(d, False, b"4")])
    assert len(link._queue) == 3
    assert link.withdraw_result(c)
    sent = []
    while (m := link._next_message()) is not None:
        sent.append(m)
    assert sent == [w.Put([(a, False, b"1"), (b, False, b"2")]), free,
                    w.Put([(d, False, b"4")])]
    assert not link.withdraw_result(a)  # sent: a Free must follow
    link.enqueue_results([(c, False, b"5")])  # a new batch after the last was taken
    assert link._next_message() == w.Put([(c, False, b"5")])


def test_frees_queued_one_behind_another_leave_as_one_message():
    # A task dropping its children's refs one by one queues a Free each: a run of
    # them leaves as one Free, and a message queued between two runs keeps its
    # place (a Free still follows what used the ref).
    link, stats = _queueing_node_link()
    a, b, c, d = (bytes([i]) * 20 for i in range(4))
    for oid in (a, b, c):
        link.enqueue(w.Free([oid]), wake=False)
    between = w.Blocked(b"t" * 16)
    link.enqueue(between, wake=False)
    link.enqueue(w.Free([d]), wake=False)
    sent = []
    while (m := link._next_message()) is not None:
        sent.append(m)
    assert sent == [w.Free([a, b, c]), between, w.Free([d])]
    assert stats["frees_coalesced"] == 1
