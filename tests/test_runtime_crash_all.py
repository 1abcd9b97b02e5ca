"""Every component of a node crashed in a row, each a few milliseconds after the
last: all come back, and nothing old is lost (a cluster of its own, so that the
node's restart intensity is not spent by other tests)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import actorcore as ray
from actorcore.testing import faults

from .cluster_support import tree_entry
from .cluster_support import until as _until


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    info = ray.init(num_cpus=2, log_to_driver=False)
    yield info
    ray.shutdown()


pytestmark = pytest.mark.usefixtures("cluster")


@ray.remote
def inc(x):
    return x + 1


@ray.remote
class Counter:
    def __init__(self):
        self.n = 0

    def add(self):
        self.n += 1
        return self.n




def test_every_node_component_crashed_in_a_row_comes_back():
    # Crashes of every node component a few milliseconds apart, each followed by
    # reads of old objects, an actor call and a task (as a user's fault loop does).
    # The node's supervisor restarts them one at a time: a restarting ``gcs_client``
    # that waited for the GCS before it was ready held up the restart of the
    # crashed ``gcs`` queued behind it, and neither came back (60 s waits, over
    # and over). Every component must be running again, a new function must run.
    old = ray.put(np.arange(1000))
    counter = Counter.remote()
    ray.get(counter.add.remote(), timeout=30)
    node = next(p for p, e in faults.Faults().paths() if e.get("kind") == "node")
    names = [e["name"] for p, e in faults.Faults().paths()
             if p.startswith(node + "/") and p.count("/") == 1
             and e["name"] != "rpc_server"]  # (drops this driver's link: its own test)
    assert {"gcs", "gcs_client", "local_scheduler", "object_manager"} <= set(names)
    def crashed(name: str) -> bool:
        # A crash can restart others too (the node's restart groups): each is
        # crashed once it runs again.
        try:
            faults.crash(name)
            return True
        except ValueError as e:
            if "not running" not in str(e):
                raise
            return False

    for name in names:
        _until(lambda n=name: crashed(n), f"{name} to run and crash", timeout=60)
        assert int(ray.get(old, timeout=60).sum()) == 499500
        ray.get(counter.add.remote(), timeout=60)
        assert ray.get(inc.remote(1), timeout=60) == 2

    def all_running() -> bool:
        snap = ray.tree()
        return all((tree_entry(snap, n) or {}).get("state") == "running" for n in names)

    _until(all_running, "every node component to run again", timeout=60)

    @ray.remote
    def exported_after(x):
        return x * 3

    assert ray.get(exported_after.remote(5), timeout=60) == 15
    ray.kill(counter)
