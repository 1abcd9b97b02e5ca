"""Defects the chaos soak found with the work spread over nodes, one regression test
each (see ``tests/test_chaos_soak.py`` and ``docs/faults.md``)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np

import actorcore as ray
from actorcore.protocol._wire import DelayStoreHold, PullObject
from actorcore.testing import Cluster

from .cluster_support import node_call

ARRAY = 256 * 1024  # float64s: 2 MiB, in shared memory


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


@ray.remote(max_retries=3)
def big(path: str, i: int) -> np.ndarray:
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return np.full(ARRAY, float(i))


@ray.remote
def plus(a: np.ndarray, k: float) -> float:
    return float(a[0] + k)


def test_large_result_whose_producer_dies_before_the_node_holds_it(tmp_path):
    """A worker reports a large return (its only store ref is the worker's) and is
    killed before the node's own ref lands: the store frees the value. The node used
    to count its ref held all the same, so its directory said STORE for a value its
    store did not have, and another node's pull failed for good with
    ``ObjectTransferError`` ("its store does not hold the object"). Now the node sees
    the value is gone and rebuilds it from its lineage, and the pull succeeds."""
    fast = {"ACTORCORE_NODE_TIMEOUT": "3", "ACTORCORE_HEARTBEAT_INTERVAL": "0.1"}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "env_vars": fast})
    try:
        other = cluster.add_node(num_cpus=1, env_vars=fast)
        cluster.connect()
        head = cluster.head_node
        node_call(cluster, head, DelayStoreHold(1.0))
        pids = tmp_path / "pids"
        ref = big.options(scheduling_strategy=_on(head)).remote(str(pids), 7)
        ready, _ = ray.wait([ref], timeout=30)
        assert ready, "the task did not report its result"
        pid = int(pids.read_text().split()[0])
        os.kill(pid, signal.SIGKILL)  # within the hold delay: the node holds nothing yet
        deadline = time.monotonic() + 10
        while _alive(pid):
            assert time.monotonic() < deadline, f"worker {pid} survived SIGKILL"
            time.sleep(0.01)
        node_call(cluster, head, DelayStoreHold(0.0))
        # The other node pulls it from the head (no reader on the head asks first).
        deadline = time.monotonic() + 20
        while True:
            try:
                node_call(cluster, other, PullObject(ref.binary(), [head.node_id]))
                break
            except Exception as exc:
                assert "does not hold" in str(exc) or "not hold" in str(exc), exc
                assert time.monotonic() < deadline, f"the value never came back: {exc}"
                time.sleep(0.1)
        value = ray.get(ref, timeout=60)
        assert value.shape == (ARRAY,) and bool(np.all(value == 7.0))
        assert len(pids.read_text().split()) == 2, "the task was not re-run"
        # The cluster is healthy: a follow-up task reads a fresh large value.
        assert ray.get(plus.remote(big.remote(str(pids), 1), 1.0), timeout=60) == 2.0
    finally:
        ray.shutdown()
        cluster.shutdown()


def _on(node):
    from actorcore.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node.node_id, soft=False)
