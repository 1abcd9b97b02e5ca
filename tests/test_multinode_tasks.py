"""Tasks across nodes on real clusters: placement (custom resources, SPREAD,
NodeAffinity, spill-back under load), objects made on one node and used on
another and by the driver, a driver on a non-head node, infeasible tasks that wait
for a node to join, node death with tasks on it, and cancel of a forwarded task."""

from __future__ import annotations

import time

import numpy as np
import pytest

import actorcore
import actorcore as ray
from actorcore import exceptions as exc
from actorcore.session._admin import admin_call
from actorcore.testing import Cluster
from actorcore.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .cluster_support import FAST, driver, tasks_seen


@pytest.fixture
def cluster():
    """A cluster of its own (a head of 1 CPU) for a test that adds or kills nodes."""
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "env_vars": FAST})
    try:
        yield c
    finally:
        try:
            actorcore.shutdown()
        finally:
            c.shutdown()


@ray.remote
def where(x=None):
    return ray.get_runtime_context().get_node_id()


@ray.remote
def slow_where(seconds):
    time.sleep(seconds)
    return ray.get_runtime_context().get_node_id()


@ray.remote
def value(n):
    return list(range(n))


@ray.remote
def total(xs):
    return sum(xs)


@ray.remote
def total_nested(box):
    return sum(ray.get(box[0])), ray.get_runtime_context().get_node_id()


def _healthy():
    assert ray.get(value.remote(3), timeout=30) == [0, 1, 2]


def test_a_custom_resource_places_the_task_on_the_node_that_has_it(on_three):
    cluster, a, b = on_three
    assert ray.get(where.options(resources={"A": 1}).remote(), timeout=30) == a.node_id
    # Default work from the idle head stays on the head (under the threshold).
    assert ray.get(where.remote(), timeout=30) == cluster.head_node.node_id
    _healthy()


@ray.remote(num_returns="streaming")
def count_up(n, big):
    for i in range(n):
        yield np.full(200_000, i, dtype=np.uint8) if big else i


@pytest.mark.parametrize("big", [False, True], ids=["inline", "stored"])
def test_a_streaming_generator_on_another_node_yields_every_item(on_three, big):
    """Its items go home one by one while it runs, then its end: every one of them
    reaches the driver (the first used to close the task's way home)."""
    cluster, a, b = on_three
    gen = count_up.options(resources={"A": 1}).remote(4, big)
    got = [ray.get(ref, timeout=30) for ref in gen]
    assert [int(x[0]) if big else x for x in got] == [0, 1, 2, 3]
    _healthy()


@pytest.mark.parametrize("big", [False, True], ids=["inline", "stored"])
def test_a_dynamic_generator_on_another_node_gives_every_item(on_three, big):
    """Its items go home with it (they are not pushed to the driver, whose refs to
    them, in the task's value, look for them on its node): each one is read."""
    cluster, a, b = on_three
    gen = count_up.options(num_returns="dynamic", resources={"A": 1}).remote(4, big)
    refs = list(ray.get(gen, timeout=30))
    got = ray.get(refs, timeout=30)
    assert [int(x[0]) if big else x for x in got] == [0, 1, 2, 3]
    _healthy()


def test_spread_puts_tasks_on_every_node(on_three):
    cluster, a, b = on_three
    got = ray.get([where.options(scheduling_strategy="SPREAD").remote() for _ in range(6)],
                  timeout=60)
    assert set(got) == {cluster.head_node.node_id, a.node_id, b.node_id}
    _healthy()


def test_work_spills_to_another_node_when_the_first_is_busy(on_three):
    cluster, a, b = on_three
    before = admin_call(cluster.address, "status", timeout=10.0)
    got = ray.get([slow_where.remote(1.0) for _ in range(4)], timeout=60)
    if not (cluster.head_node.node_id in got and len(set(got)) > 1):
        # What the head saw and did (shown with the failure): its view of the nodes
        # before, its schedulers' figures after.
        print("head's status before:", before)
        print("head's status after:", admin_call(cluster.address, "status", timeout=10.0))
    # The head runs one; the others spill to the idle nodes.
    assert cluster.head_node.node_id in got and len(set(got)) > 1, got
    _healthy()


def test_node_affinity_hard_and_soft(on_three):
    cluster, a, b = on_three
    hard = NodeAffinitySchedulingStrategy(a.node_id, soft=False)
    assert ray.get([where.options(scheduling_strategy=hard).remote() for _ in range(3)],
                   timeout=30) == [a.node_id] * 3
    bogus = "ab" * 16
    with pytest.raises(exc.TaskUnschedulableError, match="abababababab is not a node"):
        ray.get(where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            bogus, soft=False)).remote(), timeout=30)
    soft = NodeAffinitySchedulingStrategy(bogus, soft=True)
    assert ray.get(where.options(scheduling_strategy=soft).remote(), timeout=30) in {
        cluster.head_node.node_id, a.node_id, b.node_id}
    with pytest.raises(ValueError, match="scheduling_strategy"):
        where.options(scheduling_strategy="NEAREST")
    _healthy()


def test_objects_made_on_one_node_are_used_on_another_and_by_the_driver(on_three):
    cluster, a, b = on_three
    made = value.options(resources={"A": 1}).remote(100)  # on a
    # An argument made on a, used on b; the result back to the driver on the head.
    assert ray.get(total.options(resources={"B": 1}).remote(made), timeout=30) == 4950
    assert ray.get(made, timeout=30) == list(range(100))
    # A ref nested in a value: the worker on b fetches it through its node.
    put = ray.put(list(range(10)))
    s, node = ray.get(total_nested.options(resources={"B": 1}).remote([put]), timeout=30)
    assert (s, node) == (45, b.node_id)
    s, node = ray.get(total_nested.options(resources={"A": 1}).remote([made]), timeout=30)
    assert (s, node) == (4950, a.node_id)
    # An error made on a reaches a consumer on b and the driver as itself.
    bad = value.options(resources={"A": 1}).remote("x")
    with pytest.raises(TypeError):
        ray.get(total.options(resources={"B": 1}).remote(bad), timeout=30)
    _healthy()


def test_a_driver_on_a_non_head_node(three):
    cluster, a, b = three
    with driver(cluster, address=a.address):
        _on_a_non_head_node(cluster, a)


def _on_a_non_head_node(cluster, a):
    assert ray.get_runtime_context().get_node_id() == a.node_id
    head = NodeAffinitySchedulingStrategy(cluster.head_node.node_id, soft=False)
    made = value.options(scheduling_strategy=head).remote(10)
    assert ray.get(made, timeout=30) == list(range(10))
    assert ray.get(total.options(resources={"A": 1}).remote(made), timeout=30) == 45
    _healthy()


def test_an_infeasible_task_waits_until_a_node_that_can_run_it_joins(cluster):
    cluster.connect()
    ref = where.options(resources={"Z": 1}).remote()
    with pytest.raises(exc.GetTimeoutError):
        ray.get(ref, timeout=0.5)
    _healthy()  # the cluster serves on meanwhile
    z = cluster.add_node(num_cpus=1, resources={"Z": 1}, env_vars=FAST)
    assert ray.get(ref, timeout=30) == z.node_id


def test_tasks_on_a_dead_node_are_retried_elsewhere_or_fail_naming_it(cluster):
    a = cluster.add_node(num_cpus=1, resources={"W": 1}, env_vars=FAST)
    cluster.connect()
    retried = slow_where.options(resources={"W": 1}, max_retries=1).remote(30)
    lost = slow_where.options(resources={"W": 1}, max_retries=0).remote(30)
    deadline = time.monotonic() + 20
    while a.node_id not in {t.get("node_id") for t in _running_tasks()}:
        assert time.monotonic() < deadline, "the task never started on the W node"
        time.sleep(0.05)
    cluster.remove_node(a)
    with pytest.raises(exc.NodeDiedError, match=a.node_id[:12]):
        ray.get(lost, timeout=30)
    # The retried one waits for a node with W: one joins and runs it.
    with pytest.raises(exc.GetTimeoutError):
        ray.get(retried, timeout=0.2)
    b = cluster.add_node(num_cpus=1, resources={"W": 1}, env_vars=FAST)
    ray.cancel(retried)  # the 30 s sleep need not run to the end
    try:
        ray.get(retried, timeout=30)
    except (exc.TaskCancelledError, exc.NodeDiedError):
        pass
    except exc.GetTimeoutError:
        raise AssertionError(f"the cancel did not end the task:\n"
                             f"{tasks_seen(cluster, [retried])}") from None
    else:
        raise AssertionError("the cancelled task returned a value")
    assert ray.get(where.options(resources={"W": 1}).remote(), timeout=30) == b.node_id
    _healthy()


def test_cancel_reaches_the_node_running_a_forwarded_task(on_three):
    cluster, a, b = on_three
    ref = slow_where.options(resources={"A": 1}).remote(60)
    deadline = time.monotonic() + 20
    while a.node_id not in {t.get("node_id") for t in _running_tasks()}:
        assert time.monotonic() < deadline, "the task never started"
        time.sleep(0.05)
    ray.cancel(ref, force=True)
    with pytest.raises(exc.TaskCancelledError):
        ray.get(ref, timeout=20)
    assert ray.get(where.options(resources={"A": 1}).remote(), timeout=30) == a.node_id


def _running_tasks() -> list[dict]:
    out = []

    def walk(node: dict) -> None:
        if node.get("kind") == "task":
            out.append(node)
        for child in node.get("children", ()):
            walk(child)

    walk(actorcore.tree())
    return out


def test_a_forwarded_task_runs_while_the_gcs_lacks_its_function(on_three):
    """The origin sends a function's code with the first task of it that it forwards
    to a node: the target does not depend on the export having reached the GCS."""
    from actorcore.testing import faults

    cluster, a, b = on_three
    head = f"node:{cluster.head_node.node_id[:8]}"

    @actorcore.remote(resources={"B": 1})
    def fresh(x):
        return x + 1

    # The head's link to the GCS drops everything: the export cannot land there.
    with faults.drop(1.0, a=head, b="gcs"):
        assert actorcore.get(fresh.remote(41), timeout=30) == 42
    assert actorcore.get(fresh.remote(1), timeout=30) == 2
