"""The pytest plugin of actorcore (entry point ``pytest11``: loaded by any pytest run
where actorcore is installed, as pytest-trio's is).

Fixtures:

- ``actorcore_cluster``: a fresh multi-node `Cluster` for the test, this process
  connected to it, shut down afterwards (every node, worker and shared-memory
  segment of it). Its shape comes from the ``actorcore_cluster`` marker::

      @pytest.mark.actorcore_cluster(nodes=3, num_cpus=1, env_vars={...})
      def test_partition(actorcore_cluster, actorcore_faults): ...

  ``nodes`` (default 2) counts the head; ``num_cpus`` (1) and ``resources`` apply to
  every node; ``env_vars`` defaults to fast failure detection (a node is declared
  dead 1.5 s after its last heartbeat).
- ``actorcore_faults``: the fault harness (`actorcore.testing.faults.Faults`) bound
  to that cluster; link faults still installed at the end of the test are healed.

Report: when a test fails, the faults injected during it (``faults.record()``: time,
kind, target, what the cluster answered, the schedule's seed and step) are added to
its report as a section "actorcore injected faults", so a failing chaos run says what
happened to it and which seed replays it.

Nothing here is imported until a test uses it: the plugin costs other test runs
nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

FAST_FAILURE_DETECTION = {"ACTORCORE_NODE_TIMEOUT": "1.5", "ACTORCORE_HEARTBEAT_INTERVAL": "0.1"}

_STARTED = pytest.StashKey[float]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "actorcore_cluster(nodes=2, num_cpus=1, resources=None, env_vars=None): the shape "
        "of the actorcore_cluster fixture's cluster")


@pytest.fixture
def actorcore_cluster(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A fresh multi-node cluster, connected (see the module docstring)."""
    import actorcore
    from actorcore.testing import Cluster

    marker = request.node.get_closest_marker("actorcore_cluster")
    shape: dict[str, Any] = dict(marker.kwargs) if marker is not None else {}
    nodes = int(shape.pop("nodes", 2))
    if nodes < 1:
        raise ValueError(f"actorcore_cluster(nodes={nodes}): a cluster needs a head node")
    env_vars = shape.pop("env_vars", None) or dict(FAST_FAILURE_DETECTION)
    args = {"num_cpus": shape.pop("num_cpus", 1), "env_vars": env_vars}
    if "resources" in shape:
        args["resources"] = shape.pop("resources")
    if shape:
        raise TypeError(f"actorcore_cluster marker: unknown arguments {sorted(shape)}")
    cluster = Cluster(initialize_head=True, head_node_args=dict(args))
    try:
        for _ in range(nodes - 1):
            cluster.add_node(**dict(args))
        cluster.connect()
        yield cluster
    finally:
        try:
            actorcore.shutdown()
        finally:
            cluster.shutdown()


@pytest.fixture
def actorcore_faults(actorcore_cluster: Any) -> Iterator[Any]:
    """The fault harness bound to ``actorcore_cluster``; heals every link at the end."""
    from actorcore.testing.faults import Faults

    harness = Faults()
    try:
        yield harness
    finally:
        try:
            harness.heal_all()
        except Exception as exc:  # the cluster may be gone by now (a killed head)
            import logging

            logging.getLogger("actorcore.testing").info(
                "heal_all at the end of the test failed: %r", exc)


def pytest_runtest_setup(item: pytest.Item) -> None:
    import sys
    import time

    item.stash[_STARTED] = time.time()
    faults = sys.modules.get("actorcore.testing.faults")
    if faults is not None:
        faults.clear_record()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    import sys

    faults = sys.modules.get("actorcore.testing.faults")
    if faults is None:
        return
    entries = faults.record()
    if not entries:
        return
    since = item.stash.get(_STARTED, entries[0].at)
    counts = faults.counts(entries)
    lines = [f"{len(entries)} fault event(s) during the test "
             f"({', '.join(f'{k}: {n}' for k, n in sorted(counts.items())) or 'none succeeded'}):"]
    lines += [e.line(since) for e in entries]
    seeds = sorted({e.seed for e in entries if e.seed is not None})
    if seeds:
        lines.append(f"replay with seed(s): {', '.join(map(str, seeds))}")
    report.sections.append(("actorcore injected faults", "\n".join(lines)))
