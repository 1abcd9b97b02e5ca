"""Crashes of a node's store components with work in flight: ``object_manager`` (the
store service: it reopens its arena and rebuilds its index) and ``store_link`` (the
node's own link to it: it redials and re-claims its refs). Pulls between the nodes
that the crash interrupts start over, tasks finish, and every object made before the
crash can still be read."""

from __future__ import annotations

import numpy as np
import pytest

import actorcore
from actorcore.testing import faults

from . import cluster_support
from .cluster_support import until

_until = until

N = 300_000  # float64s: 2.4 MB, in the store
# Not about membership: a node busy under load (its first pyarrow import, on its
# loop, can take over a second on a loaded machine) must not be declared dead.
ENV = {"ACTORCORE_NODE_TIMEOUT": "20", "ACTORCORE_HEARTBEAT_INTERVAL": "0.1"}


@pytest.fixture(scope="module")
def two_nodes():
    with cluster_support.two_nodes(ENV, {"FAR": 100}) as nodes:
        yield nodes


@actorcore.remote(resources={"FAR": 1}, max_retries=-1)
def far_make(i: int) -> np.ndarray:
    return np.full(N, float(i))


@actorcore.remote(resources={"FAR": 1}, max_retries=-1)
def far_plus(a: np.ndarray, k: float) -> np.ndarray:
    return a + k


@actorcore.remote(max_retries=-1)
def near_sum(a: np.ndarray) -> float:
    return float(a.sum())


def _restarts(path: str) -> int:
    return int(next(e for p, e in faults.Faults().paths() if p == path)["restarts"])


def _running(path: str) -> bool:
    return next(e for p, e in faults.Faults().paths() if p == path)["state"] == "running"


@pytest.mark.parametrize("component", ["object_manager", "store_link"])
@pytest.mark.parametrize("where", ["far", "head"])
def test_store_component_crash_with_pulls_in_flight(two_nodes, component, where):
    cluster, other = two_nodes
    node = other if where == "far" else cluster.head_node
    path = f"node:{node.node_id[:8]}/{component}"
    # Made before the crash: on the far node (pulled to the head by the driver's
    # get) and by the driver on the head (pulled to the far node by a task).
    old_far = [far_make.remote(i) for i in range(3)]
    old_put = actorcore.put(np.full(N, 7.0))
    assert float(actorcore.get(old_far[0], timeout=60)[0]) == 0.0
    before = _restarts(path)
    # Work in flight across the crash: tasks there on arguments from here, results
    # coming back, pulls both ways.
    moved = [far_plus.remote(old_put, float(k)) for k in range(4)]
    back = [near_sum.remote(r) for r in old_far]
    faults.crash(path)
    more = [far_plus.remote(r, 1.0) for r in old_far]
    _until(lambda: _restarts(path) > before and _running(path), what=f"{path} restarted")
    for k, a in enumerate(actorcore.get(moved, timeout=120)):
        assert a.shape == (N,) and float(a[0]) == 7.0 + k and float(a[-1]) == 7.0 + k
    assert actorcore.get(back, timeout=120) == [float(i * N) for i in range(3)]
    for i, a in enumerate(actorcore.get(more, timeout=120)):
        assert float(a[0]) == i + 1.0
    # The objects made before the crash can be read again, here and there.
    for i, a in enumerate(actorcore.get(old_far, timeout=60)):
        assert a.shape == (N,) and bool(np.all(a == float(i)))
    assert bool(np.all(actorcore.get(old_put, timeout=60) == 7.0))
    assert actorcore.get(near_sum.options(resources={"FAR": 1}).remote(old_put),
                         timeout=60) == 7.0 * N
