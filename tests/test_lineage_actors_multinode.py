"""Actors recovered by replay across nodes: an actor restarted on another node after
its host node died starts from its last checkpoint, read from the GCS (its call log
died with that node)."""

from __future__ import annotations

import pytest
import trio

import actorcore
import gcs
from actorcore.core_worker import _worker_state
from actorcore.testing import Cluster

from .cluster_support import FAST, until


@pytest.fixture
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "env_vars": FAST})
    try:
        yield c
    finally:
        actorcore.shutdown()
        c.shutdown()


class Affinity:
    """Any object with ``node_id``/``soft`` is a NodeAffinitySchedulingStrategy."""

    def __init__(self, node_id: str, soft: bool = False) -> None:
        self.node_id = node_id
        self.soft = soft


@actorcore.remote
class Journal:
    def __init__(self):
        self.lines = []

    def write(self, line):
        self.lines.append(line)
        return len(self.lines)

    def read(self):
        return list(self.lines)

    def node(self):
        return actorcore.get_runtime_context().get_node_id()

    def __actorcore_checkpoint__(self):
        return list(self.lines)

    def __actorcore_restore__(self, state):
        self.lines = list(state)


def _checkpoint_in_gcs(actor_id: str):
    core = _worker_state.core

    async def read():
        async with gcs.open_client(core.gcs_address, core.token, timeout=10) as client:
            return await client.kv.get(actor_id, namespace="actorcore.checkpoints")

    return trio.run(read)


def test_replay_actor_restarted_elsewhere_starts_from_its_checkpoint(cluster):
    a = cluster.add_node(num_cpus=1, resources={"R": 1}, env_vars=FAST)
    b = cluster.add_node(num_cpus=1, resources={"R": 1}, env_vars=FAST)
    cluster.connect()
    j = Journal.options(resources={"R": 1}, max_restarts=1, checkpoint_interval=1,
                        scheduling_strategy=Affinity(a.node_id, soft=True)).remote()
    assert actorcore.get(j.node.remote(), timeout=30) == a.node_id
    assert actorcore.get([j.write.remote(f"l{i}") for i in range(6)], timeout=30) == [
        1, 2, 3, 4, 5, 6]
    # Every call checkpoints (interval 1); the newest is written behind to the GCS.
    expected = [f"l{i}" for i in range(6)]
    until(lambda: (d := _checkpoint_in_gcs(j._actor_id.hex())) is not None
          and _state_of(d) == expected, "the newest checkpoint in the GCS")
    cluster.remove_node(a)
    assert actorcore.get(j.read.remote(), timeout=30) == expected
    assert actorcore.get(j.node.remote(), timeout=30) == b.node_id
    assert actorcore.get(j.write.remote("after"), timeout=30) == 7


def _state_of(data: bytes):
    from actorcore.protocol import _serialization

    return _serialization.loads(data)


@actorcore.remote(num_cpus=1)
def where_square(x):
    return actorcore.get_runtime_context().get_node_id(), x * x


def _gcs(reads):
    core = _worker_state.core

    async def run():
        async with gcs.open_client(core.gcs_address, core.token, timeout=10) as client:
            return await reads(client)

    return trio.run(run)


def test_gcs_crash_on_two_nodes(cluster):
    """The head's embedded GCS restarts empty under load on a two-node cluster:
    both nodes register again, the named actor of the other node is still found
    (and its name still its), results stay exact."""
    from actorcore.testing import faults

    b = cluster.add_node(num_cpus=1, resources={"B": 1}, env_vars=FAST)
    cluster.connect()
    keeper = Journal.options(name="far", lifetime="detached", resources={"B": 0.1},
                             max_restarts=1, checkpoint_interval=2).remote()
    assert actorcore.get(keeper.node.remote(), timeout=30) == b.node_id
    refs = [where_square.remote(i) for i in range(60)]
    writes = [keeper.write.remote(i) for i in range(10)]
    faults.crash("gcs")
    refs += [where_square.remote(i) for i in range(60, 120)]
    writes += [keeper.write.remote(i) for i in range(10, 20)]
    out = actorcore.get(refs, timeout=60)
    assert [v for _n, v in out] == [i * i for i in range(120)]
    assert actorcore.get(writes, timeout=60) == list(range(1, 21))
    head = cluster.head_node.node_id

    async def state(client):
        nodes = {k for k, _v in await client.nodes.list()}
        return nodes, dict(await client.actors.list_names()).get("far")

    until(lambda: _gcs(state) == ({head, b.node_id}, keeper._actor_id.hex()),
          "both nodes and the name in the restarted GCS", timeout=30)
    found = actorcore.get_actor("far")
    assert actorcore.get(found.read.remote(), timeout=30) == list(range(20))
    with pytest.raises(ValueError, match="far"):
        Journal.options(name="far").remote()
    assert actorcore.get(where_square.remote(5), timeout=30)[1] == 25
    actorcore.kill(keeper)
