"""Large values (store objects) between nodes on real clusters, through the pull
(``node.transfers.pull``): task arguments and results, a driver's ``get`` of a
50 MB value made on another node, a numpy array through two hops; actor call
arguments, results and constructor arguments on a host node elsewhere, and the
host's copies freed when the owner frees them; locality (a task goes to the node
holding its 50 MB argument when resources allow); node death with objects on it;
``list_named_actors`` across nodes; a store too small on the receiving node; many
small tasks spread over the nodes."""

from __future__ import annotations

import gc
import time

import numpy as np
import pytest
import trio

import actorcore
import actorcore as ray
import store
from actorcore import exceptions as exc
from actorcore.protocol._wire import GetTransferStatistics, SlowChunks
from actorcore.testing import Cluster
from actorcore.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .cluster_support import FAST, driver, node_call, until
from .cluster_support import three_nodes as shared_three_nodes

MB = 1024 * 1024


def _cluster(env: dict[str, str] = FAST) -> Cluster:
    return Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "env_vars": env})


@pytest.fixture(scope="class")
def three_nodes():
    """Head (1 CPU), A (1 CPU, resource A), B (1 CPU, resource B): shared by the
    tests that leave every node alive."""
    with shared_three_nodes() as cluster:
        yield cluster


@pytest.fixture
def three(three_nodes):
    """``three_nodes``, this process a new driver on its head for the test."""
    with driver(three_nodes[0]):
        yield three_nodes


@pytest.fixture
def cluster():
    c = _cluster()
    try:
        yield c
    finally:
        try:
            actorcore.shutdown()
        finally:
            c.shutdown()


@ray.remote
def make(n: int, seed: int = 0):
    return np.arange(n, dtype=np.uint8) + np.uint8(seed)


@ray.remote
def double(x):
    return x.astype(np.uint16) * 2


@ray.remote
def checksum(x):
    return int(np.asarray(x, dtype=np.uint64).sum()), ray.get_runtime_context().get_node_id()


@ray.remote
def where():
    return ray.get_runtime_context().get_node_id()


@ray.remote
def nap(seconds: float):
    time.sleep(seconds)
    return ray.get_runtime_context().get_node_id()


@ray.remote
def square(i: int) -> int:
    return i * i


@ray.remote
class Holder:
    def __init__(self, data) -> None:
        self.data = data

    def ctor_sum(self) -> int:
        return int(np.asarray(self.data, dtype=np.uint64).sum())

    def sum(self, x) -> int:
        return int(np.asarray(x, dtype=np.uint64).sum())

    def blob(self, n: int):
        return np.full(n, 7, dtype=np.uint8)

    def node(self) -> str:
        return ray.get_runtime_context().get_node_id()


@ray.remote(num_cpus=0)
def make_named(name: str) -> list:
    """A named actor made by a task on another node; the names that task sees."""
    h = Holder.options(name=name, lifetime="detached", num_cpus=0).remote(1)
    ray.get(h.node.remote(), timeout=20)
    return ray.list_named_actors()


def _expected_sum(n: int, seed: int = 0) -> int:
    return int((np.arange(n, dtype=np.uint8) + np.uint8(seed)).astype(np.uint64).sum())


def _healthy() -> None:
    assert ray.get(square.remote(7), timeout=30) == 49


def _store_contains(cluster: Cluster, node, oid: bytes) -> bool:
    async def main() -> bool:
        address = f"unix:{node.session_dir / 'sockets' / 'store.sock'}"
        async with await store.StoreClient.connect(address, cluster.head_node.process.token) as c:
            return bool(await c.contains(oid))

    return trio.run(main)


_until = until


class TestOnThreeNodes:
    """Tests that leave every node alive share one cluster (``three``)."""

    # -- tasks ---------------------------------------------------------------

    def test_large_task_values_across_nodes_and_a_50mb_driver_get(self, three):
        cluster, a, b = three
        n = 50 * MB
        big = make.options(resources={"A": 1}).remote(n, 3)  # made on A
        value = ray.get(big, timeout=60)  # the driver on the head reads it
        assert value.shape == (n,) and value[0] == 3 and value[-1] == np.uint8((n - 1 + 3) % 256)
        assert not value.flags.writeable  # a view of the head's store, not a private copy
        assert ray.get(checksum.options(resources={"B": 1}).remote(big), timeout=60) == (
            _expected_sum(n, 3), b.node_id)
        # A numpy array through two hops: made on A, doubled on B, read by the driver.
        twice = ray.get(double.options(resources={"B": 1}).remote(big), timeout=60)
        assert twice.dtype == np.uint16 and twice.shape == (n,)
        assert int(twice[12345]) == 2 * int(value[12345]) and int(twice[-1]) == 2 * int(value[-1])
        # A large argument put by the driver, used on A.
        put = ray.put(np.ones(3 * MB, dtype=np.uint8))
        assert ray.get(checksum.options(resources={"A": 1}).remote(put), timeout=60) == (
            3 * MB, a.node_id)
        del value, twice
        _healthy()


    # -- locality ------------------------------------------------------------

    def test_a_task_goes_to_the_node_that_holds_its_50mb_argument(self, three):
        cluster, a, b = three
        def cpus_free(n: int):
            return lambda: ray.available_resources().get("CPU", 0) == n

        for resource, node in (("A", a), ("B", b)):
            big = make.options(resources={resource: 1}).remote(50 * MB)
            ray.wait([big], timeout=60)
            _until(cpus_free(3), "every node idle in the head's view")
            # The head's CPU is taken (pinned there: left to the scheduler, the nap
            # could go to A or B while the head's workers start): the task leaves it.
            busy = nap.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                cluster.head_node.node_id, soft=False)).remote(3.0)
            _until(cpus_free(2), "the head busy")
            got, ran_on = ray.get(checksum.remote(big), timeout=60)
            assert got == _expected_sum(50 * MB)
            assert ran_on == node.node_id, (
                f"the task ran on {ran_on[:12]}, not on {resource} ({node.node_id[:12]}) "
                f"which holds its 50 MB argument")
            ray.get(busy, timeout=30)
        _healthy()


    def test_an_argument_whose_only_ref_died_at_submit_reaches_the_other_node(self, three):
        # The driver's only ref to a value made on A dies as soon as the task that
        # takes it is submitted; the task waits on the head to be placed, then runs
        # on B: the head must keep the value (and A its copy) until B has it.
        cluster, a, b = three
        for i in range(2):
            made = make.options(resources={"A": 1}).remote(MB, i)
            ray.wait([made], timeout=60)
            ref = checksum.options(resources={"B": 1}).remote(made)
            del made
            assert ray.get(ref, timeout=60) == (_expected_sum(MB, i), b.node_id)
        _healthy()

    # -- actors --------------------------------------------------------------

    def test_large_actor_values_across_nodes_and_the_host_frees_its_copies(self, three):
        cluster, a, b = three
        ctor = ray.put(np.arange(2 * MB, dtype=np.uint8))
        h = Holder.options(resources={"B": 1}).remote(ctor)
        assert ray.get(h.node.remote(), timeout=60) == b.node_id
        assert ray.get(h.ctor_sum.remote(), timeout=60) == _expected_sum(2 * MB)
        # An argument put by the driver, one made by a task on A: pulled by the host.
        arg = ray.put(np.full(3 * MB, 2, dtype=np.uint8))
        made = make.options(resources={"A": 1}).remote(4 * MB, 1)
        assert ray.get(h.sum.remote(arg), timeout=60) == 6 * MB
        assert ray.get(h.sum.remote(made), timeout=60) == _expected_sum(4 * MB, 1)
        # Calls of one caller stay in order although the first waits for a pull.
        order = [h.sum.remote(ray.put(np.ones(2 * MB, dtype=np.uint8))), h.sum.remote(5)]
        assert ray.get(order, timeout=60) == [2 * MB, 5]
        # A large result made on B, read by the driver on the head.
        blob_ref = h.blob.remote(5 * MB)
        blob = ray.get(blob_ref, timeout=60)
        assert blob.shape == (5 * MB,) and int(blob[-1]) == 7
        result_id, arg_id = blob_ref.binary(), arg.binary()
        assert _store_contains(cluster, b, result_id) and _store_contains(cluster, b, arg_id)
        # The owner frees them: the host lets its copies go.
        del blob, blob_ref, arg
        gc.collect()
        _until(lambda: not _store_contains(cluster, b, result_id), "the result freed on the host")
        _until(lambda: not _store_contains(cluster, b, arg_id), "the argument freed on the host")
        ray.kill(h)
        _healthy()


    # -- names ---------------------------------------------------------------

    def test_list_named_actors_covers_every_node(self, three):
        cluster, a, b = three
        on_a = Holder.options(name="on-a", resources={"A": 1}).remote(1)
        assert ray.get(on_a.node.remote(), timeout=30) == a.node_id
        seen = ray.get(make_named.options(resources={"B": 0.001}).remote("on-b"), timeout=30)
        assert {"on-a", "on-b"} <= set(seen)  # from a task on B too
        on_b = ray.get_actor("on-b")
        assert ray.get(on_b.node.remote(), timeout=30) == b.node_id
        assert {"on-a", "on-b"} <= set(ray.list_named_actors())
        both = ray.list_named_actors(all_namespaces=True)
        assert {d["name"] for d in both} >= {"on-a", "on-b"}
        ray.kill(on_a)
        ray.kill(on_b)
        _until(lambda: not {"on-a", "on-b"} & set(ray.list_named_actors()),
               "killed actors left the list")
        _healthy()


    # -- many small tasks ----------------------------------------------------

    def test_a_thousand_small_tasks_spread_over_the_nodes(self, three):
        cluster, a, b = three
        refs = [square.options(scheduling_strategy="SPREAD").remote(i) for i in range(1000)]
        assert ray.get(refs, timeout=120) == [i * i for i in range(1000)]
        nodes = ray.get([where.options(scheduling_strategy="SPREAD").remote() for _ in range(30)],
                        timeout=60)
        assert set(nodes) == {cluster.head_node.node_id, a.node_id, b.node_id}



# -- crashes of a non-head node's components while work crosses nodes ---------------


def test_components_of_a_node_crash_while_work_crosses_nodes(cluster):
    from actorcore.testing import faults

    a = cluster.add_node(num_cpus=1, resources={"A": 1}, env_vars=FAST)
    cluster.connect()
    h = Holder.options(resources={"A": 0.5}, num_cpus=0).remote(1)
    assert ray.get(h.node.remote(), timeout=30) == a.node_id
    arg = ray.put(np.ones(MB, dtype=np.uint8))
    for component in ("node_links", "gcs_client", "global_scheduler", "node_links"):
        tasks = [square.options(resources={"A": 0.01}).remote(i) for i in range(150)]
        calls = [h.sum.remote(arg) for _ in range(10)]
        big = make.options(resources={"A": 0.5}).remote(4 * MB, 2)
        faults.crash(component, address=a.address)
        assert ray.get(tasks, timeout=60) == [i * i for i in range(150)], component
        assert ray.get(calls, timeout=60) == [MB] * 10, component
        assert int(ray.get(big, timeout=60)[-1]) == (4 * MB - 1 + 2) % 256, component
    _healthy()


# -- a store too small on the receiving node -------------------------------------------


def test_a_pull_into_a_full_store_fails_typed_naming_the_store(cluster):
    small = cluster.add_node(num_cpus=1, resources={"S": 1}, object_store_memory=32 * MB,
                             env_vars={**FAST, "ACTORCORE_OBJECT_STORE_DISK_FALLBACK": "0"})
    cluster.add_node(num_cpus=1, resources={"A": 1}, env_vars=FAST)
    cluster.connect()
    big = make.options(resources={"A": 1}).remote(64 * MB)
    ray.wait([big], timeout=60)
    started = time.monotonic()
    with pytest.raises(exc.ObjectStoreFullError) as info:
        ray.get(checksum.options(resources={"S": 1}).remote(big), timeout=60)
    assert time.monotonic() - started < 30
    message = str(info.value)
    assert "object store" in message and small.node_id[:12] in message, message
    assert info.value.capacity == 32 * MB and info.value.requested > 64 * MB, message
    # The node serves on: a smaller value reaches it.
    assert ray.get(checksum.options(resources={"S": 1}).remote(
        make.options(resources={"A": 1}).remote(MB)), timeout=60)[0] == _expected_sum(MB)


# -- node death ------------------------------------------------------------------------


def test_objects_on_a_dead_node_lost_typed_or_read_from_a_copy(cluster):
    a = cluster.add_node(num_cpus=1, resources={"A": 1}, env_vars=FAST)
    b = cluster.add_node(num_cpus=1, resources={"B": 1}, env_vars=FAST)
    cluster.connect()
    # Copied to the head (its owner's node) before A dies: still readable.
    kept = make.options(resources={"A": 1}).remote(8 * MB, 5)
    assert ray.get(kept, timeout=60)[-1] == np.uint8((8 * MB - 1 + 5) % 256)
    # Its only copy on A: A serves it slowly, and dies while the head pulls it.
    node_call(cluster, a, SlowChunks(0.5))
    served = node_call(cluster, a, GetTransferStatistics()).chunks_out  # of ``kept``
    # (max_retries=0: no lineage to rebuild it from, so it is lost for good)
    lost = make.options(resources={"A": 1}, max_retries=0).remote(50 * MB, 1)

    def serving() -> bool:
        return node_call(cluster, a, GetTransferStatistics()).chunks_out > served

    _until(serving, "node A serving the value")
    cluster.remove_node(a)
    started = time.monotonic()
    with pytest.raises(exc.ObjectLostError, match=a.node_id[:12]):
        ray.get(lost, timeout=30)
    assert time.monotonic() - started < 15
    # A consumer of the lost value fails the same way, never hangs.
    with pytest.raises(exc.ObjectLostError):
        ray.get(checksum.options(resources={"B": 1}).remote(lost), timeout=30)
    # The copy elsewhere is read by the driver and by a task on B.
    assert ray.get(checksum.options(resources={"B": 1}).remote(kept), timeout=60) == (
        _expected_sum(8 * MB, 5), b.node_id)
    _healthy()
