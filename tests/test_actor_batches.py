"""Bursts of direct actor calls: several calls per frame to the actor's process
(``DirectCalls``), several answers per frame back (``DirectResults``), with every
guarantee of one call per frame kept."""

from __future__ import annotations

import time

import numpy as np
import pytest

import actorcore as ray
from actorcore import exceptions as exc

pytestmark = pytest.mark.usefixtures("cluster")  # tests/conftest.py


@ray.remote
class Recorder:
    def __init__(self):
        self.seen = []

    def add(self, i):
        self.seen.append(i)
        return i

    def fail(self, i):
        raise ValueError(f"bad {i}")

    def big(self):
        return np.arange(300_000)

    def sleep(self, seconds):
        time.sleep(seconds)
        return seconds

    def seen_of(self):
        return self.seen

    def stats(self):
        from actorcore.worker._actor_host import process_statistics

        return process_statistics()


@ray.remote
def plus_one(x):
    return x + 1


def _direct(handle):
    from actorcore.core_worker._worker_state import current_core

    ray.get(handle.add.remote(-1))  # the route exists from the first call
    route = current_core().actor_routes[handle._actor_id]
    deadline = time.monotonic() + 20
    while route.mode != "direct":
        assert time.monotonic() < deadline
        ray.get(handle.add.remote(-1))
    return route


def test_a_burst_travels_in_batches_and_keeps_its_order_and_its_results():
    r = Recorder.remote()
    _direct(r)
    before = ray.get(r.stats.remote())
    start = len(ray.get(r.seen_of.remote()))
    refs = [r.add.remote(i) for i in range(3000)]
    assert ray.get(refs) == list(range(3000))
    after = ray.get(r.stats.remote())
    assert ray.get(r.seen_of.remote())[start:] == list(range(3000))
    # Several calls per frame in, several answers per frame out.
    assert after.call_frames_read_by_loop > before.call_frames_read_by_loop
    calls = after.calls_read_by_loop - before.calls_read_by_loop
    frames = after.call_frames_read_by_loop - before.call_frames_read_by_loop
    assert calls > 2 * frames, (calls, frames)
    answers = after.answers_sent_by_loop - before.answers_sent_by_loop
    answer_frames = after.answer_frames_sent_by_loop - before.answer_frames_sent_by_loop
    assert answers > 2 * answer_frames, (answers, answer_frames)
    # Results of a batch resolve where they are passed on (the node heard of them).
    assert ray.get(plus_one.remote(refs[1234])) == 1235

    # Errors, store-sized results and plain ones mixed in one burst: each its own.
    mixed = []
    for i in range(300):
        if i % 50 == 7:
            mixed.append(("fail", r.fail.remote(i)))
        elif i % 100 == 42:
            mixed.append(("big", r.big.remote()))
        else:
            mixed.append(("add", r.add.remote(i)))
    for i, (kind, ref) in enumerate(mixed):
        if kind == "fail":
            with pytest.raises(ValueError, match=f"bad {i}"):
                ray.get(ref)
        elif kind == "big":
            assert int(ray.get(ref).sum()) == int(np.arange(300_000).sum())
        else:
            assert ray.get(ref) == i
    big = next(ref for kind, ref in mixed if kind == "big")
    assert ray.get(plus_one.remote(big))[-1] == 300_000


def test_a_call_cancelled_inside_a_batch_is_answered_and_the_others_run():
    r = Recorder.remote()
    _direct(r)
    first = r.sleep.remote(1.0)
    refs = [r.add.remote(i) for i in range(200)]
    ray.cancel(refs[100])
    with pytest.raises(exc.TaskCancelledError):
        ray.get(refs[100], timeout=60)
    assert ray.get(first, timeout=60) == 1.0
    assert [ray.get(ref) for i, ref in enumerate(refs) if i != 100] == [
        i for i in range(200) if i != 100]
    assert 100 not in ray.get(r.seen_of.remote())[-199:]


def test_a_burst_to_a_killed_actor_fails_every_call():
    r = Recorder.remote()
    _direct(r)
    first = r.sleep.remote(0.5)
    refs = [r.add.remote(i) for i in range(500)]
    ray.kill(r)
    for ref in [first, *refs]:
        with pytest.raises(exc.ActorDiedError):
            ray.get(ref, timeout=60)


@ray.remote
def total_of(box):
    return sum(ray.get(box[0]))


def test_the_node_hears_of_a_bursts_results_only_when_their_refs_are_passed_on():
    # The answers of a burst read and dropped here never reach the node (no Put, no
    # Free); one passed on later -- as an argument, inside a pickled list, inside a
    # put value -- is sent to the node before the message that carries it.
    from actorcore.core_worker._worker_state import current_core

    r = Recorder.remote()
    _direct(r)
    core = current_core()
    stats = core.stats
    before = stats["results_unreported"]
    refs = [r.add.remote(i) for i in range(1000)]
    assert ray.get(refs) == list(range(1000))
    kept = [refs[10], refs[20], refs[30]]
    del refs
    assert stats["results_unreported"] - before >= 990
    assert ray.get(plus_one.remote(kept[0])) == 11  # an argument
    assert ray.get(total_of.remote([kept])) == 60  # inside a pickled list
    boxed = ray.put([kept[1], kept[2]])
    assert ray.get(total_of.remote([ray.get(boxed)])) == 50  # inside a put value
