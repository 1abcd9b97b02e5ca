"""Actors across nodes on real clusters: placed by resources and strategy on any
node, called from drivers, tasks and actors of other nodes, found by name, and
restarted elsewhere (or declared dead with the cause) when their node dies; an actor
no node can host waits for one that can."""

from __future__ import annotations

import time

import pytest

import actorcore
from actorcore import exceptions as exc
from actorcore.api._actor_handle import actor_state
from actorcore.testing import Cluster

from .cluster_support import FAST, until


@pytest.fixture
def cluster():
    """A cluster of its own (a head of 1 CPU) for a test that adds or kills nodes."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "env_vars": FAST})
    try:
        yield c
    finally:
        actorcore.shutdown()
        c.shutdown()


@actorcore.remote
class Counter:
    def __init__(self, start: int = 0) -> None:
        self.n = start

    def incr(self, by: int = 1) -> int:
        self.n += by
        return self.n

    def node(self) -> str:
        return actorcore.get_runtime_context().get_node_id()

    def call_other(self, other, by: int) -> int:
        return actorcore.get(other.incr.remote(by), timeout=20)

    def slow(self) -> int:
        time.sleep(60)
        return 0

    def nap(self, seconds: float) -> str:
        time.sleep(seconds)
        return actorcore.get_runtime_context().get_node_id()

    def blob(self, n: int) -> bytes:
        return b"x" * n


class Affinity:
    """Any object with ``node_id``/``soft`` is a NodeAffinitySchedulingStrategy."""

    def __init__(self, node_id: str, soft: bool = False) -> None:
        self.node_id = node_id
        self.soft = soft


@actorcore.remote(num_cpus=0)
def call_from_task(handle, by: int) -> tuple[str, int]:
    node = actorcore.get_runtime_context().get_node_id()
    return node, actorcore.get(handle.incr.remote(by), timeout=20)


_until = until


def test_actor_placed_by_resource_and_called_from_everywhere(on_three):
    cluster, a, b = on_three
    actor = Counter.options(resources={"A": 1}).remote(10)
    assert actorcore.get(actor.node.remote(), timeout=20) == a.node_id
    # From the driver (on the head): calls in order.
    refs = [actor.incr.remote() for _ in range(20)]
    assert actorcore.get(refs, timeout=20) == list(range(11, 31))
    # From a task (on the head).
    node, value = actorcore.get(call_from_task.remote(actor, 5), timeout=30)
    assert node == cluster.head_node.node_id and value == 35
    # From an actor on a third node: its node learns where the actor lives.
    third = Counter.options(resources={"B": 1}).remote()
    assert actorcore.get(third.node.remote(), timeout=20) == b.node_id
    assert actorcore.get(third.call_other.remote(actor, 5), timeout=20) == 40
    # A method's error reaches the caller typed.
    with pytest.raises(TypeError):
        actorcore.get(actor.incr.remote("x"), timeout=20)
    assert actorcore.get(actor.incr.remote(), timeout=20) == 41
    # Its state, asked on the head, is its host's: alive on node A.
    state = actor_state(actor)
    assert state["state"] == "alive" and state["node_id"] == a.node_id


def test_spread_places_actors_on_every_node(on_three):
    _until(lambda: sum(n["Alive"] for n in actorcore.nodes()) == 3, what="3 nodes")
    actors = [Counter.options(scheduling_strategy="SPREAD").remote() for _ in range(3)]
    nodes = actorcore.get([h.node.remote() for h in actors], timeout=30)
    assert len(set(nodes)) == 3
    # NodeAffinity: on the node named; a hard one to no such node fails at once.
    target = nodes[1]
    pinned = Counter.options(scheduling_strategy=Affinity(target)).remote()
    assert actorcore.get(pinned.node.remote(), timeout=20) == target
    nowhere = Counter.options(scheduling_strategy=Affinity("ab" * 16)).remote()
    with pytest.raises(exc.ActorUnschedulableError, match="not a node of the cluster"):
        actorcore.get(nowhere.incr.remote(), timeout=20)
    soft = Counter.options(scheduling_strategy=Affinity("ab" * 16, soft=True)).remote()
    assert actorcore.get(soft.incr.remote(), timeout=20) == 1


def test_named_actor_found_from_another_node(on_three):
    cluster, a, b = on_three
    Counter.options(name="shared", lifetime="detached", resources={"A": 1}).remote(100)

    @actorcore.remote(resources={"B": 1})
    class User:
        def use_by_name(self) -> int:
            h = actorcore.get_actor("shared")
            return actorcore.get(h.incr.remote(), timeout=20)

    # Resolved on node B, which has never seen it.
    assert actorcore.get(User.remote().use_by_name.remote(), timeout=30) == 101
    h = actorcore.get_actor("shared")
    assert actorcore.get(h.node.remote(), timeout=20) == a.node_id
    assert actorcore.get(h.incr.remote(), timeout=20) == 102
    with pytest.raises(ValueError, match="no live actor named 'nobody'"):
        actorcore.get_actor("nobody")
    actorcore.kill(h)
    with pytest.raises(exc.ActorDiedError):
        actorcore.get(h.incr.remote(), timeout=20)


def test_actor_restarted_elsewhere_when_its_node_dies(cluster):
    a = cluster.add_node(num_cpus=1, resources={"R": 1}, env_vars=FAST)
    b = cluster.add_node(num_cpus=1, resources={"R": 1, "C": 1}, env_vars=FAST)
    cluster.connect()
    actor = Counter.options(resources={"R": 1}, max_restarts=1, max_task_retries=-1,
                            scheduling_strategy=Affinity(a.node_id, soft=True)).remote()
    assert actor_state(actor)["state"] in ("alive", "pending")
    assert actorcore.get(actor.node.remote(), timeout=20) == a.node_id
    assert actorcore.get(actor.incr.remote(), timeout=20) == 1
    # A caller on the third node, b, knows it through a proxy.
    caller = Counter.options(resources={"C": 1}).remote()
    assert actorcore.get(caller.call_other.remote(actor, 1), timeout=20) == 2
    in_flight = actor.nap.remote(2.0)
    with pytest.raises(exc.GetTimeoutError):
        actorcore.get(in_flight, timeout=0.2)
    cluster.remove_node(a)
    # The call in flight is resent (max_task_retries=-1) to the restarted actor on b
    # (its state lost: a new constructor); the third node's proxy finds it there.
    assert actorcore.get(in_flight, timeout=30) == b.node_id
    assert actorcore.get(actor.node.remote(), timeout=30) == b.node_id
    assert actorcore.get(caller.call_other.remote(actor, 5), timeout=30) == 5
    # The cluster works on.
    assert actorcore.get(Counter.remote().incr.remote(), timeout=20) == 1


def test_actor_without_restarts_dies_with_its_node(cluster):
    a = cluster.add_node(num_cpus=1, resources={"A": 1}, env_vars=FAST)
    cluster.connect()
    actor = Counter.options(resources={"A": 1}).remote()
    assert actorcore.get(actor.node.remote(), timeout=20) == a.node_id
    # A large result crosses nodes (pulled from the host's store).
    assert actorcore.get(actor.blob.remote(2_000_000), timeout=20) == b"x" * 2_000_000
    in_flight = actor.slow.remote()
    with pytest.raises(exc.GetTimeoutError):
        actorcore.get(in_flight, timeout=0.5)
    cluster.remove_node(a)
    # The call in flight and every later one fail with the cause.
    with pytest.raises(exc.ActorDiedError, match=f"node {a.node_id[:12]}.*died"):
        actorcore.get(in_flight, timeout=30)
    with pytest.raises(exc.ActorDiedError, match=f"node {a.node_id[:12]}.*died"):
        actorcore.get(actor.incr.remote(), timeout=30)
    assert actorcore.get(Counter.remote().incr.remote(), timeout=20) == 1


def test_actor_waits_for_a_node_with_its_resource(cluster):
    cluster.connect()
    actor = Counter.options(resources={"GPU_X": 1}).remote(7)
    ref = actor.incr.remote()
    with pytest.raises(exc.GetTimeoutError):
        actorcore.get(ref, timeout=1.0)
    x = cluster.add_node(num_cpus=1, resources={"GPU_X": 1}, env_vars=FAST)
    assert actorcore.get(ref, timeout=30) == 8
    assert actorcore.get(actor.node.remote(), timeout=20) == x.node_id
