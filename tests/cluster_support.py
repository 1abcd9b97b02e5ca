"""Helpers shared by the tests that run real clusters."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from actorcore.session._session import pid_alive

__all__ = ["FAST", "ROOT", "STEADY", "alive", "at_rest", "driver", "no_resources_held",
           "node_call", "run_program", "short_root", "three_nodes", "tasks_seen", "tree_entry",
           "two_nodes", "until", "wait_at_rest"]

#: The repository's root (``PYTHONPATH`` of the programs the tests run).
ROOT = Path(__file__).resolve().parent.parent

#: Node environment for multi-node tests that kill nodes: a killed node is declared dead within
#: 3 s (heartbeats every 0.1 s) instead of the default 10 s. Not less: on a loaded
#: 2-core machine a node that is starting (imports, its store's arena faulted in,
#: workers spawned) can miss heartbeats for well over a second, and a live node
#: declared dead stops itself, leaving a test's cluster without the node it added.
FAST = {"ACTORCORE_NODE_TIMEOUT": "3", "ACTORCORE_HEARTBEAT_INTERVAL": "0.1"}

#: Node environment for a cluster that a module's tests share and none kills a node
#: of: no death to detect, so a node is declared dead only after 60 s without a
#: heartbeat (a loaded machine can starve a node's heartbeats for longer than
#: FAST's 3 s, and a node wrongly declared dead would fail every later test on
#: the cluster); heartbeats every 0.1 s keep each node's free resources fresh in
#: the others' views.
STEADY = {"ACTORCORE_NODE_TIMEOUT": "60", "ACTORCORE_HEARTBEAT_INTERVAL": "0.1"}

#: Seconds a test gives a subprocess it runs (a CLI command, a driver script, a
#: cluster's start or stop) before calling it hung. A hang guard only, never a
#: timing check: the suite runs two xdist workers on two cores beside other load,
#: where a command that takes a second alone took over a minute.
HANG_GUARD = 600.0

#: Whether a process runs (a zombie is dead): the runtime's own test.
alive = pid_alive


@contextlib.contextmanager
def short_root() -> Iterator[str]:
    """A short session root (Unix socket paths must stay under 108 bytes), removed
    afterwards."""
    path = tempfile.mkdtemp(prefix="acs")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_program(root: str, code: str, timeout: float, **env: str) -> str:
    """Run ``code`` as a driver program of its own, its sessions under ``root``; it
    must exit 0 and print "OK". Its output."""
    full = dict(os.environ, PYTHONPATH=str(ROOT), ACTORCORE_TMPDIR=root, **env)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full,
                         capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0 and "OK" in out.stdout, out.stdout[-5000:] + out.stderr[-5000:]
    return out.stdout


def tree_entry(snap: dict, name: str) -> dict | None:
    """The first entry named ``name`` in a tree snapshot (``actorcore.tree()``),
    parents before their children; ``None`` if there is none."""
    if snap.get("name") == name:
        return snap
    for child in snap.get("children") or ():
        found = tree_entry(child, name)
        if found is not None:
            return found
    return None


def until(pred: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    """Poll ``pred`` until it returns something true, and return that; fail the test
    naming ``what`` after ``timeout`` seconds. For state only visible by asking (a
    process's exit, a component's restart): where an event exists, wait for it."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def no_resources_held(timeout: float = 120.0) -> None:
    """Wait until the driver's node is idle (no task queued or running, no lease
    granted) and then check its ledger's account: every resource free, none
    held by a task, a lease or anything else (``SchedulerStatistics``). For a
    module without actors or placement groups, after each of its tests: a CPU
    the account leaked would hold up every later test."""
    import actorcore as ray

    def idle() -> Any:
        st = ray._api._call("status")["scheduler"]
        if st.queued or st.running or st.leased_workers or st.leases_awaiting_lost:
            return None
        return st

    deadline = time.monotonic() + timeout
    st = None
    while time.monotonic() < deadline:
        st = idle()
        if st is not None and all(abs(st.ledger_available.get(k, 0.0) - v) < 1e-9
                                  for k, v in st.total.items()):
            return
        time.sleep(0.02)
    st = ray._api._call("status")["scheduler"]
    raise AssertionError(
        f"the node's resources were not all free {timeout} s after the test: ledger "
        f"free {st.ledger_available} of {st.total}, held by tasks {st.held_by_tasks}, "
        f"by leases {st.held_by_leases}, elsewhere {st.held_elsewhere}; queued "
        f"{st.queued}, running {st.running}, leases {st.leases}, awaiting lost "
        f"{st.leases_awaiting_lost}")


def node_call(cluster: Any, node: Any, message: Any, timeout: float = 30.0) -> Any:
    """One request to ``node`` of a `testing.Cluster` over its TCP listener (the
    cluster's TLS from ``ACTORCORE_TLS_*``, if set); its answer."""
    import trio

    import transport
    from actorcore.session._security import tls_config

    async def go() -> Any:
        async with transport.open_connection(
            f"tcp:{node.address}", cluster.head_node.process.token, name="test-node-call",
            tls=tls_config(),
        ) as conn:
            return await conn.request(message, timeout=timeout)

    return trio.run(go)


# A module shares one `testing.Cluster` among its tests that leave every node as it
# found it (starting a cluster of three nodes costs seconds; a test on it, often
# less). Each such test is a driver of its own (a job): ``shutdown()`` says goodbye,
# so the node ends the driver's actors (not detached ones: the test kills those) and
# frees the objects the driver owned at once, as Ray does when a driver exits. The
# test's teardown then waits for the cluster to be back at rest, so the next test
# starts from what a fresh cluster would give it, and a test that leaves something
# behind fails its own teardown, naming what it left.


def at_rest(cluster: Any) -> str | None:
    """What keeps ``cluster`` from being at rest, or None: each of its nodes alive,
    every resource available and no task queued in the head's view of the cluster
    (what its global scheduler places by), no actor live or waiting, every node's
    store empty."""
    from actorcore.session._admin import admin_call

    nodes = cluster.list_all_nodes()
    listed = admin_call(cluster.address, "nodes", timeout=10.0)
    alive = {n["NodeID"] for n in listed if n.get("Alive")}
    missing = [n.node_id[:12] for n in nodes if n.node_id not in alive]
    if missing:
        return f"nodes {missing} not alive"
    total = admin_call(cluster.address, "cluster_resources", timeout=10.0)
    free = admin_call(cluster.address, "available_resources", timeout=10.0)
    held = {k: v - free.get(k, 0.0) for k, v in total.items() if v - free.get(k, 0.0) > 1e-9}
    if held:
        return f"resources still held: {held}"
    head = admin_call(cluster.address, "status", timeout=10.0)
    queued = {n["node_id"][:12]: n["queued"] for n in head["nodes"]
              if n.get("alive") and n["queued"]}
    if queued:
        return f"tasks still queued (the head's view): {queued}"
    head_id = cluster.head_node.node_id
    for node in nodes:
        status = head if node.node_id == head_id else \
            admin_call(node.address, "status", timeout=10.0)
        actors = status["actors"]
        live = actors.pending + actors.alive + actors.restarting + actors.unplaced
        if live:
            return f"node {node.node_id[:12]}: {live} actor(s) not dead"
        store = status.get("store")
        if store is not None and store.count:
            return f"node {node.node_id[:12]}: {store.count} object(s) left in its store"
    return None


@contextlib.contextmanager
def three_nodes() -> Iterator[tuple[Any, Any, Any]]:
    """A cluster of a head (1 CPU), A (1 CPU, resource ``A``) and B (1 CPU, resource
    ``B``), on ``STEADY``: the one the multi-node modules share among their tests
    that leave every node alive. Yields ``(cluster, a, b)``; shut down after."""
    from actorcore.testing import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "env_vars": STEADY})
    try:
        a = c.add_node(num_cpus=1, resources={"A": 1}, env_vars=STEADY)
        b = c.add_node(num_cpus=1, resources={"B": 1}, env_vars=STEADY)
        yield c, a, b
    finally:
        c.shutdown()


@contextlib.contextmanager
def two_nodes(env: dict[str, str], resources: dict[str, float]) -> Iterator[tuple[Any, Any]]:
    """A head (1 CPU) and one more node (1 CPU, ``resources``), both with ``env``, this
    process connected to them as a driver. Yields ``(cluster, other node)``; shut
    down (the driver first) after."""
    import actorcore
    from actorcore.testing import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "env_vars": env})
    try:
        other = c.add_node(num_cpus=1, resources=resources, env_vars=env)
        c.connect()
        yield c, other
    finally:
        actorcore.shutdown()
        c.shutdown()


@contextlib.contextmanager
def driver(cluster: Any, address: str | None = None, timeout: float = 30.0) -> Iterator[Any]:
    """Connect this process to ``cluster`` (at ``address``: the head by default) as
    a new driver for one test; afterwards disconnect it and wait until the cluster
    is at rest again (`at_rest`), failing after ``timeout`` seconds with what is left."""
    import actorcore

    info = actorcore.init(address=address or cluster.address)
    try:
        yield info
    finally:
        actorcore.shutdown()
    wait_at_rest(cluster, timeout=timeout)


def wait_at_rest(cluster: Any, timeout: float = 30.0) -> None:
    """Return once ``cluster`` is at rest (`at_rest`); fail after ``timeout``
    seconds naming what is still there."""
    left: list[str | None] = [None]

    def settled() -> bool:
        left[0] = at_rest(cluster)
        return left[0] is None

    try:
        until(settled, what="the cluster at rest", timeout=timeout)
    except AssertionError:
        raise AssertionError(f"the cluster is not at rest after the test: {left[0]}") from None


def tasks_seen(cluster: Any, refs: list) -> str:
    """What each node knows of the tasks of ``refs`` (the admin call ``task``): what
    a test that waited in vain prints, so that a hang seen once can be read."""
    from actorcore.session._admin import admin_call

    lines = []
    for ref in refs:
        task = ref.task_id().hex()
        lines.append(f"task {task} (of {ref.hex()}):")
        for node in cluster.list_all_nodes():
            try:
                seen = admin_call(node.address, "task", task, timeout=10.0)
            except Exception as exc:  # a node the faults took down: say so
                seen = f"no answer: {exc!r}"
            lines.append(f"  node {node.node_id[:8]}: {seen or 'knows nothing of it'}")
    return "\n".join(lines)
