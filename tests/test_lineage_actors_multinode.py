"""Actors recovered by replay across nodes: an actor restarted on another node after
its host node died starts from its last checkpoint and replays the calls logged
since, both read from the GCS (the host wrote them there before answering)."""

from __future__ import annotations

import os
import signal
import time

import pytest
import trio

import actorcore
import gcs
from actorcore.core_worker import _worker_state
from actorcore.testing import Cluster

from .cluster_support import FAST, node_call, until


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
          and _state_of(d.state) == expected and d.seq == 7,  # `node` is a call too
          "the newest checkpoint in the GCS")
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
          "both nodes and the name in the restarted GCS", timeout=120)
    found = actorcore.get_actor("far")
    assert actorcore.get(found.read.remote(), timeout=30) == list(range(20))
    with pytest.raises(ValueError, match="far"):
        Journal.options(name="far").remote()
    assert actorcore.get(where_square.remote(5), timeout=30)[1] == 25
    actorcore.kill(keeper)


@actorcore.remote
class Tally:
    """Every call leaves a trace in ``history``: a call run twice, or lost, shows."""

    def __init__(self):
        self.history = []

    def add(self, x):
        time.sleep(0.01)  # a few calls are in flight when the node dies
        self.history.append(x)
        return len(self.history)

    def add_slowly(self, x, seconds):
        time.sleep(seconds)
        return self.add(x)

    def history_(self):
        return list(self.history)

    def where(self):
        return actorcore.get_runtime_context().get_node_id(), os.getpid()

    def __actorcore_checkpoint__(self):
        return list(self.history)

    def __actorcore_restore__(self, state):
        self.history = list(state)


def _host_state(cluster, node, actor):
    from actorcore.protocol._wire import GetActorState

    return node_call(cluster, node, GetActorState(actor._actor_id))


def _log_in_gcs(actor_id: bytes):
    from actorcore.node.actor_manager._replay import log_prefix

    return _gcs(lambda client: client.scan("kv", log_prefix(actor_id)))


@actorcore.remote(num_cpus=1, resources={"B": 1})
def add_from_node_b(t, values):
    """Calls from a task on the actor's own node: after the first, they go straight
    to the actor's process (``core_worker._direct_calls``)."""
    return [actorcore.get(t.add.remote(v), timeout=30) for v in values]


def _tally_on_b(cluster):
    b = cluster.add_node(num_cpus=1, resources={"R": 1, "B": 1}, env_vars=FAST)
    c = cluster.add_node(num_cpus=1, resources={"R": 1}, env_vars=FAST)
    cluster.connect()
    t = Tally.options(resources={"R": 1}, max_restarts=2, checkpoint_interval=5,
                      scheduling_strategy=Affinity(b.node_id, soft=True)).remote()
    assert actorcore.get(t.where.remote(), timeout=30)[0] == b.node_id
    return b, c, t


def _calls_both_ways(cluster, b, t, n):
    """``n`` calls routed through the nodes (the driver's, from the head node), then
    ``n`` direct ones (a task's on node B); returns the history they make."""
    assert actorcore.get([t.add.remote(i) for i in range(n)], timeout=60) == list(
        range(1, n + 1))
    direct = [f"d{i}" for i in range(n)]
    assert actorcore.get(add_from_node_b.remote(t, direct), timeout=60) == list(
        range(n + 1, 2 * n + 1))
    state = _host_state(cluster, b, t)["replay"]
    assert 0 < state["calls_logged_direct"] < n, state  # the first ones: node-routed
    return [*range(n), *direct]


def test_call_log_survives_its_host_node(cluster):
    """The host node is SIGKILLed with calls logged since the last checkpoint (both
    routed through the nodes and direct) and more in flight: the actor restarts on
    the third node with exactly its history (checkpoint + the logged calls, from
    the GCS), and every call ran once."""
    b, c, t = _tally_on_b(cluster)
    history = _calls_both_ways(cluster, b, t, 13)  # 27 calls: 2 since the 5th checkpoint
    state = _host_state(cluster, b, t)["replay"]
    assert state["checkpoints"] >= 4 and state["log_length"] >= 1, state
    # The calls since the last checkpoint are in the GCS (their callers were answered).
    assert len(_log_in_gcs(t._actor_id)) >= state["log_length"]
    n = len(history)
    # The first one keeps the rest queued behind it (the log as it was, with its 2
    # entries, is what the restart reads: the test checks it used the GCS's log).
    inflight = [t.add_slowly.remote(100, 3.0), *(t.add.remote(i) for i in range(101, 112))]
    cluster.remove_node(b)  # SIGKILL of the whole node process tree
    assert actorcore.get(inflight, timeout=90) == list(range(n + 1, n + 13))
    assert actorcore.get(t.history_.remote(), timeout=30) == [*history, *range(100, 112)]
    where, _pid = actorcore.get(t.where.remote(), timeout=30)
    assert where == c.node_id
    replay = _host_state(cluster, c, t)["replay"]
    assert replay["recoveries"] == 1 and replay["calls_restored_from_gcs"] >= 1, replay
    assert actorcore.get(t.add.remote("after"), timeout=30) == n + 13
    actorcore.kill(t)
    until(lambda: not _log_in_gcs(t._actor_id), "the dead actor's call log to leave the GCS")


def test_replay_after_its_process_alone_dies_on_another_node(cluster):
    """Only the actor's process on node B is SIGKILLed, calls in flight: node B
    restarts it from its own log; history exact, every call ran once."""
    b, _c, t = _tally_on_b(cluster)
    history = _calls_both_ways(cluster, b, t, 6)
    _node, pid = actorcore.get(t.where.remote(), timeout=30)
    n = len(history)
    inflight = [t.add.remote(i) for i in range(100, 110)]
    os.kill(pid, signal.SIGKILL)
    assert actorcore.get(inflight, timeout=60) == list(range(n + 1, n + 11))
    assert actorcore.get(t.history_.remote(), timeout=30) == [*history, *range(100, 110)]
    where, new_pid = actorcore.get(t.where.remote(), timeout=30)
    assert where == b.node_id and new_pid != pid
    actorcore.kill(t)
