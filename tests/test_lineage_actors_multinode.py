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

from .cluster_support import until

FAST = {"ACTORCORE_NODE_TIMEOUT": "1.5", "ACTORCORE_HEARTBEAT_INTERVAL": "0.1"}


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
