"""Semantics that Ray programs rely on (issue 14), section 5: an actor ends when its
last handle anywhere is gone (the driver's, a task's, another actor's, one carried
beside large arguments), and lives while one that escaped where it cannot be
followed may still be used. Each on a real embedded cluster, each followed by a task.
"""

from __future__ import annotations

import os
import time

import pytest

import actorcore as ray

pytestmark = pytest.mark.usefixtures("cluster")  # tests/conftest.py


@ray.remote
def add_one(x):
    return x + 1


def _healthy():
    """A follow-up task works: the cluster kept serving."""
    assert ray.get(add_one.remote(41), timeout=30) == 42



@ray.remote(num_cpus=2)
class Whole:
    """Takes every CPU of the test cluster: a second one starts only once it ended."""

    def __init__(self, keep=None):
        self.keep = keep

    def pid(self):
        return os.getpid()

    def keep_handle(self, handle):
        self.keep = handle
        return True

    def call_kept(self):
        return ray.get(self.keep.pid.remote())


@ray.remote(num_cpus=0)
class Holder:
    def __init__(self, handle=None):
        self.handle = handle

    def keep(self, handle):
        self.handle = handle
        return True

    def call(self):
        return ray.get(self.handle.pid.remote())


@ray.remote(num_cpus=0)
def call_through(handle):
    return ray.get(handle.pid.remote())


def _state(handle_or_id):
    from actorcore.api._job import request_node
    from actorcore.core_worker._worker_state import current_core
    from actorcore.protocol._wire import GetActorState

    aid = getattr(handle_or_id, "_actor_id", handle_or_id)
    return request_node(current_core(), GetActorState(aid))


def _wait_dead(aid, timeout=30):
    deadline = time.monotonic() + timeout
    while (st := _state(aid))["state"] != "dead":
        assert time.monotonic() < deadline, st
        time.sleep(0.05)
    return st


def _starts_now():
    """A new Whole actor gets both CPUs now: nothing else holds them."""
    fresh = Whole.remote()
    assert ray.get(fresh.pid.remote(), timeout=30) > 0
    aid = fresh._actor_id
    del fresh
    _wait_dead(aid)


def test_a_handle_passed_to_a_task_does_not_keep_the_actor_alive_after_it():
    actor = Whole.remote()
    pid = ray.get(call_through.remote(actor), timeout=30)
    assert pid == ray.get(actor.pid.remote(), timeout=30)
    aid = actor._actor_id
    del actor
    assert "all handles to it were dropped" in _wait_dead(aid)["death_cause"]
    _starts_now()  # its CPUs are free again
    _healthy()


def test_an_actor_lives_while_another_actor_holds_its_handle():
    target = Whole.remote()
    by_ctor = Holder.remote(target)          # held through the constructor's arguments
    by_call = Holder.remote()
    assert ray.get(by_call.keep.remote(target), timeout=30)  # ...and a method's
    pid = ray.get(target.pid.remote(), timeout=30)
    aid = target._actor_id
    del target
    assert ray.get(by_ctor.call.remote(), timeout=30) == pid
    assert ray.get(by_call.call.remote(), timeout=30) == pid
    del by_ctor
    assert ray.get(by_call.call.remote(), timeout=30) == pid
    assert _state(aid)["state"] == "alive"
    del by_call                               # the last holder's process ends
    assert "all handles to it were dropped" in _wait_dead(aid)["death_cause"]
    _starts_now()
    _healthy()


@ray.remote(num_cpus=0)
def call_through_with(handle, blob):
    return ray.get(handle.pid.remote()), len(blob)


@ray.remote(num_cpus=0)
class BigHolder:
    def __init__(self, handle=None, blob=b""):
        self.handle, self.size = handle, len(blob)

    def keep(self, handle, blob):
        self.handle, self.size = handle, len(blob)
        return self.size

    def call(self):
        return ray.get(self.handle.pid.remote())


def test_handles_carried_beside_large_arguments_are_followed_and_the_arguments_freed():
    # A large argument goes by ref through the store, freed once the call is done;
    # a handle beside it is still carried (pinned by the sender, registered by the
    # receiver) and released after: neither mechanism hides the other.
    blob = b"x" * (1 << 20)  # well over the inline threshold: passed by ref
    from actorcore.core_worker import _worker_state

    base = ray._api._call("status")["store"].used
    by_ref = _worker_state.core.stats["args_by_ref"]
    target = Whole.remote()
    pid = ray.get(target.pid.remote(), timeout=30)
    assert ray.get(call_through_with.remote(target, blob), timeout=30) == (pid, len(blob))
    by_ctor = BigHolder.remote(target, blob)
    by_call = BigHolder.remote()
    assert ray.get(by_call.keep.remote(target, blob), timeout=30) == len(blob)
    assert _worker_state.core.stats["args_by_ref"] == by_ref + 3  # task, creation, call
    aid = target._actor_id
    del target
    assert ray.get(by_ctor.call.remote(), timeout=30) == pid
    assert ray.get(by_call.call.remote(), timeout=30) == pid
    assert _state(aid)["state"] == "alive"
    del by_ctor, by_call
    assert "all handles to it were dropped" in _wait_dead(aid)["death_cause"]
    deadline = time.monotonic() + 30
    while ray._api._call("status")["store"].used > base + (1 << 20) // 2:
        assert time.monotonic() < deadline, "the large argument was never freed"
        time.sleep(0.05)
    _starts_now()
    _healthy()


def test_handles_that_escape_where_they_cannot_be_followed_keep_the_actor():
    from actorcore.api._actor_handle import ActorHandle

    target = Whole.remote()
    aid, meta = target._actor_id, target._meta
    pid = ray.get(target.pid.remote(), timeout=30)
    boxed = ray.put([target])  # in a put value: this process holds it until it exits
    del target
    again = ray.get(boxed, timeout=30)[0]
    assert ray.get(again.pid.remote(), timeout=30) == pid
    del again, boxed
    assert _state(aid)["state"] == "alive"
    ray.kill(ActorHandle(aid, meta))
    _wait_dead(aid)
    _healthy()
