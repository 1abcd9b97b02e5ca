"""Rapid crashes of the node's store link while objects are freed: every release
reaches the store. A cluster of its own, so that these restarts do not count
towards the node's restart intensity in the other recovery tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import actorcore as ray
from actorcore.testing import faults

from .cluster_support import tree_entry
from .cluster_support import until as _until

MB = 1 << 20


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[dict[str, Any]]:
    info = ray.init(num_cpus=1, object_store_memory=64 * MB, log_to_driver=False)
    yield info
    ray.shutdown()


@ray.remote
def inc(x):
    return x + 1


def _running_again(name: str, before: int) -> None:
    def done() -> bool:
        entry = tree_entry(ray.tree(), name)
        return entry is not None and entry["restarts"] > before and entry["state"] == "running"

    _until(done, f"{name} to restart")


def test_store_link_crashes_while_objects_are_freed():
    # Frees land while the link's nursery is closing: each release waits for the
    # next incarnation, or completes. Before: starting it in the closed nursery
    # killed the node (TrioInternalError), and a release cut off half way through
    # its send kept its object in the store for ever.
    import gc

    base = tree_entry(ray.tree(), "object_manager")["count"]
    for i in range(12):
        objs = [ray.put(np.full(MB // 4, i, np.uint8)) for _ in range(16)]
        assert ray.get(objs[-1], timeout=30)[0] == i
        before = tree_entry(ray.tree(), "store_link")["restarts"]
        # The frees and the crash reach the node together, in either order.
        if i % 2:
            del objs
            gc.collect()
            assert "crashed" in faults.crash("store_link")
        else:
            assert "crashed" in faults.crash("store_link")
            del objs
            gc.collect()
        _running_again("store_link", before)
    _until(lambda: tree_entry(ray.tree(), "object_manager")["count"] <= base,
           "the freed objects to leave the store")
    assert tree_entry(ray.tree(), "node")["state"] == "running"
    assert ray.get(inc.remote(1), timeout=30) == 2
