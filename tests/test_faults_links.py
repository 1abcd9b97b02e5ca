"""Links that break: every link of a cluster redials, resends what was unanswered and
skips what it already handled, so work across nodes finishes exactly under link
resets (``drop``), breaks after a frame (``duplicate``) and partitions that heal.

(The transport's own semantics are tested in test_transport_*; these run real
two-node clusters.)"""

from __future__ import annotations

import numpy as np
import pytest

import actorcore
from actorcore.testing import faults

from . import cluster_support
from .cluster_support import tasks_seen, until

_until = until

# Nodes are declared dead only well after a healed partition: these tests are about
# links that break and come back, not about membership.
SLOW_DEATH = {"ACTORCORE_NODE_TIMEOUT": "20", "ACTORCORE_HEARTBEAT_INTERVAL": "0.1"}


@pytest.fixture(scope="module")
def two_nodes():
    with cluster_support.two_nodes(SLOW_DEATH, {"FAR": 100}) as nodes:
        try:
            yield nodes
        finally:
            faults.heal_all()


@actorcore.remote(resources={"FAR": 1})
def far_square(i: int) -> int:
    return i * i


@actorcore.remote(resources={"FAR": 1})
def far_array(i: int) -> np.ndarray:
    return np.full(200_000, float(i))  # 1.6 MB: in the store, pulled to the head


@actorcore.remote(resources={"FAR": 1})
def far_sum(a: np.ndarray) -> float:
    return float(a.sum())


def _links(node) -> dict:
    path = f"node:{node.node_id[:8]}/node_links"
    return next(e for p, e in faults.Faults().paths() if p == path)


def _work(n: int, cluster=None) -> None:
    refs = [far_square.remote(i) for i in range(n)]
    arrays = [far_array.remote(i) for i in range(4)]
    sums = [far_sum.remote(actorcore.put(np.full(100_000, 2.0)))]
    assert _get(refs, cluster) == [i * i for i in range(n)]
    for i, a in enumerate(_get(arrays, cluster)):
        assert a.shape == (200_000,) and bool(np.all(a == float(i)))
    assert _get(sums, cluster) == [200_000.0]


def _get(refs: list, cluster) -> list:
    try:
        return actorcore.get(refs, timeout=60)
    except actorcore.exceptions.GetTimeoutError:
        if cluster is None:
            raise
        # What each node knows of its links (first: on admin connections, touching
        # none of theirs) and of the tasks not done: what a rare loss under
        # duplicated frames needs to be read.
        from actorcore.session._admin import admin_call

        links = {node.node_id[:8]: admin_call(node.address, "links", timeout=10.0)
                 for node in cluster.list_all_nodes()}
        ready, pending = actorcore.wait(refs, num_returns=len(refs), timeout=0)
        raise AssertionError(f"{len(pending)} of {len(refs)} not done\nlinks: {links}\n"
                             f"{tasks_seen(cluster, pending[:3])}") from None


@pytest.mark.parametrize("kind", ["drop", "duplicate"])
def test_work_across_nodes_survives_broken_links(two_nodes, kind):
    cluster, other = two_nodes
    head = f"node:{cluster.head_node.node_id[:8]}"
    far = f"node:{other.node_id[:8]}"
    _work(4)  # exported, warm
    before = _links(cluster.head_node)["dials"] + _links(other)["dials"]
    inject = faults.drop if kind == "drop" else faults.duplicate
    with inject(0.1, a=head, b=far):
        for _ in range(3):
            _work(20, cluster)
    after_head, after_far = _links(cluster.head_node), _links(other)
    # The links did break (and were dialled again), and nothing is left unacknowledged.
    assert after_head["dials"] + after_far["dials"] > before, (after_head, after_far)
    _work(4)
    _until(lambda: _links(cluster.head_node)["unacked"] == 0 and _links(other)["unacked"] == 0,
           what="every batch between the nodes acknowledged")


def test_work_across_nodes_survives_a_partition_that_heals(two_nodes):
    cluster, other = two_nodes
    head = f"node:{cluster.head_node.node_id[:8]}"
    far = f"node:{other.node_id[:8]}"
    _work(2)
    with faults.partition(head, far):
        refs = [far_square.remote(i) for i in range(10)]
        # Nothing crosses while the partition holds (nor hangs: the wait times out).
        ready, pending = actorcore.wait(refs, num_returns=10, timeout=0.5)
        assert len(ready) + len(pending) == 10
    # Healed: the queued forwards go through on a new link, each once.
    assert actorcore.get(refs, timeout=60) == [i * i for i in range(10)]
    _work(4)
