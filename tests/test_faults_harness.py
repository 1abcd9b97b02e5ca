"""The fault-injection harness (``actorcore.testing.faults``) on real multi-node
clusters: crash and kill on any node, link rules installed in every process and
healed, seeded schedules that replay, and clear errors for bad use."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import actorcore
import transport
from actorcore.testing import Cluster, faults

from . import cluster_support
from .cluster_support import FAST, until

_until = until


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours is dead too.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def two_nodes():
    with cluster_support.two_nodes(FAST, {"OTHER": 1}) as nodes:
        yield nodes


@actorcore.remote
def plus_one(x):
    return x + 1


@actorcore.remote
def task_pid():
    return os.getpid()


def _entry(path: str) -> dict:
    for p, e in faults.Faults().paths():
        if p == path:
            return e
    raise AssertionError(f"{path} not in the tree")


def test_crash_a_component_of_another_node(two_nodes):
    cluster, other = two_nodes
    before = _entry(f"node:{other.node_id[:8]}/local_scheduler")["restarts"]
    what = faults.crash(f"node:{other.node_id[:6]}/local_scheduler")
    assert "crashed local_scheduler" in what and other.node_id[:8] in what
    _until(lambda: _entry(f"node:{other.node_id[:8]}/local_scheduler")["restarts"] > before
           and _entry(f"node:{other.node_id[:8]}/local_scheduler")["state"] == "running",
           what="the other node's local_scheduler restarted")
    # The old single-node paths still mean the node this driver is connected to.
    assert cluster.head_node.node_id[:8] in faults.crash("cluster/node/global_scheduler")
    assert actorcore.get(plus_one.remote(1), timeout=30) == 2
    last = faults.record()[-1]
    assert last.kind == "crash" and last.ok and last.target == "cluster/node/global_scheduler"


def _workers(node_id: str) -> dict[str, int]:
    """path -> pid of the node's live worker processes, from the cluster's tree."""
    return {p: e["pid"] for p, e in faults.Faults().paths()
            if p.startswith(f"node:{node_id[:8]}/") and e.get("kind") == "worker"
            and e.get("pid") and _pid_alive(e["pid"])}


def test_kill_a_worker_of_another_node_by_path_and_by_pid(two_nodes):
    cluster, other = two_nodes
    workers = _until(lambda: _workers(other.node_id), what="a worker on the other node")
    path, pid = sorted(workers.items())[0]
    done = faults.kill(path)
    assert done["pid"] == pid and done["node_id"] == other.node_id
    assert done["signal"] == "SIGKILL"
    _until(lambda: not _pid_alive(pid), what="the worker gone")
    # The node's pool starts another; kill that one by pid (found on the other node).
    pid2 = _until(lambda: [p for p in _workers(other.node_id).values() if p != pid],
                  what="a new worker on the other node")[0]
    done = faults.kill(pid2, signal.SIGTERM)
    assert done["signal"] == "SIGTERM" and done["node_id"] == other.node_id
    _until(lambda: not _pid_alive(pid2), what="the worker gone")
    assert actorcore.get(plus_one.remote(1), timeout=30) == 2


def test_bad_use_gets_clear_errors(two_nodes):
    cluster, other = two_nodes
    with pytest.raises(ValueError, match="nonesuch.*local_scheduler"):
        faults.crash(f"node:{other.node_id[:8]}/nonesuch")
    with pytest.raises(ValueError, match="no live node with id prefix 'ffffffffff'"):
        faults.crash("node:ffffffffff/local_scheduler")
    with pytest.raises(ValueError, match="non-empty tree path"):
        faults.crash("")
    with pytest.raises(ValueError, match=r"pid 1 is not a process of this cluster"):
        faults.kill(1)
    with pytest.raises(ValueError, match="runs inside the process of node"):
        faults.kill(f"node:{other.node_id[:8]}/local_scheduler")
    with pytest.raises(ValueError, match="no 'worker_pool/worker_99'"):
        faults.kill(f"node:{other.node_id[:8]}/worker_pool/worker_99")
    with pytest.raises(ValueError, match="unknown fault kind 'meteor'"):
        faults.schedule(seed=1, kinds=["meteor"])
    with pytest.raises(ValueError, match="'node:' takes a hex node id prefix"):
        faults.partition("node:xyz", "gcs")
    with pytest.raises(ValueError, match="unknown endpoint 'nodes:ab'"):
        faults.partition("nodes:ab", "gcs")
    with pytest.raises(ValueError, match="no live node has an id starting with 'fffff'"):
        faults.drop(0.5, a="node:fffff", b="gcs")
    with pytest.raises(ValueError, match=r"probability must be within \[0, 1\]"):
        faults.drop(2.0, a="worker", b="gcs")
    with pytest.raises(ValueError, match="is not a signal"):
        faults.kill(f"node:{other.node_id[:8]}/worker_pool/worker_0", signal=12345)
    assert transport.faults.rules() == {}
    with pytest.raises(ValueError, match="unknown fault action"):
        transport.faults.Rule("explode")
    failed = [e for e in faults.record() if not e.ok]
    assert len(failed) >= 5
    assert actorcore.get(plus_one.remote(41), timeout=30) == 42  # still healthy


def test_link_faults_reach_every_process_and_heal(two_nodes):
    cluster, other = two_nodes
    head = cluster.head_node.node_id[:8]

    def round_trip() -> float:
        t0 = time.monotonic()
        actorcore.get(task_pid.remote(), timeout=30)
        return time.monotonic() - t0

    fast = min(round_trip() for _ in range(3))
    # Between the head's workers and the head, both ways: 2 x 0.25 s at least.
    with faults.delay(0.25, a="worker", b=f"node:{head}") as lf:
        assert lf.kind == "delay" and not lf.healed
        slow = round_trip()
        assert slow >= 0.5, (fast, slow)
        # A worker started now gets the rule at its hello.
        pid = actorcore.get(task_pid.remote(), timeout=30)
        faults.kill(pid)
        _until(lambda: not _pid_alive(pid), what="the worker gone")
        assert round_trip() >= 0.5
    assert lf.healed
    assert round_trip() < 0.4, fast
    assert transport.faults.rules() == {}
    # heal_all clears what was left behind, everywhere. (Not a rule on this driver's
    # own link: heal_all travels on it, and half its frames breaking the link can
    # keep the driver from rejoining until its reconnect window ends.)
    faults.duplicate(0.5, a="worker", b="node:" + cluster.head_node.node_id[:8])
    assert transport.faults.rules()
    done = faults.heal_all()
    assert set(done) == {cluster.head_node.node_id, other.node_id}
    assert transport.faults.rules() == {}
    assert actorcore.get([plus_one.remote(i) for i in range(5)], timeout=30) == [1, 2, 3, 4, 5]


def test_seeded_schedule_replays(two_nodes):
    cluster, other = two_nodes

    def run() -> list[tuple[str, str, int | None]]:
        s = faults.schedule(seed=1234, kinds=["delay", "duplicate", "partition", "crash"],
                            rate=20.0, duration=2.0, hold=0.02,
                            targets={"crash": ["node:*/global_scheduler"]})
        s.join(timeout=30)
        assert s.record and not s.errors, (s.record, s.errors)
        assert sum(s.counts().values()) == len([e for e in s.record if e.kind != "heal"])
        return [(e.kind, e.target, e.step) for e in s.record if e.kind != "heal"]

    first = run()
    assert transport.faults.rules() == {}  # healed at the end
    second = run()
    # How many fit in the second depends on how fast the cluster answers (each is a
    # call over a control link); those that did are the same, in the same order.
    n = min(len(first), len(second))
    assert n >= 3 and first[:n - 1] == second[:n - 1], (first, second)
    assert actorcore.get(plus_one.remote(0), timeout=30) == 1


def _chaos(cluster, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "actorcore.cli", "chaos", "--address", cluster.address, *args],
        capture_output=True, text=True, timeout=timeout)


def test_chaos_cli(two_nodes):
    cluster, other = two_nodes
    _until(lambda: len(_workers(other.node_id)) and len(_workers(cluster.head_node.node_id)),
           what="workers on both nodes")
    out = _chaos(cluster, "kill", "worker", "--every", "0.4s", "--for", "1s", "--seed", "1")
    assert out.returncode == 0, out.stderr
    kills = [line for line in out.stdout.splitlines() if " kill " in line]
    assert len(kills) >= 2 and "[seed 1 step 0]" in kills[0], out.stdout
    assert "SIGKILL to worker_pool/worker_" in kills[0]
    a, b = f"node:{cluster.head_node.node_id[:8]}", f"node:{other.node_id[:8]}"
    out = _chaos(cluster, "partition", a, b, "--for", "0.2s")
    assert out.returncode == 0, out.stderr
    assert "partition" in out.stdout and "healed" in out.stdout, out.stdout
    out = _chaos(cluster, "delay", "worker", a, "--ms", "20")
    assert "stays until `actorcore chaos heal`" in out.stdout, (out.stdout, out.stderr)
    out = _chaos(cluster, "heal")
    assert out.returncode == 0 and "healed every link fault on 2 node(s)" in out.stdout
    bad = _chaos(cluster, "kill", "424242")
    assert bad.returncode == 1 and "pid 424242 is not a process of this cluster" in bad.stderr
    bad = _chaos(cluster, "schedule", "--seed", "1", "--kinds", "meteor")
    assert bad.returncode != 0 and "unknown fault kind 'meteor'" in bad.stderr
    assert actorcore.get(plus_one.remote(2), timeout=30) == 3


def test_kill_a_gcs_replica_process():
    """Replicas in processes of their own: kill by path; the shard restarts it."""
    actorcore.shutdown()  # the module cluster's driver; this test has its own cluster
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "gcs_replicas": 2})
    try:
        c.connect()
        old = _entry(f"node:{c.head_node.node_id[:8]}/gcs/shard_0/replica_1")["pid"]
        done = faults.kill("gcs/shard_0/replica_1")
        assert done["pid"] == old and done["path"] == "gcs/shard_0/replica_1"
        _until(lambda: not _pid_alive(old), what="the replica's process gone")
        _until(lambda: (e := _entry(f"node:{c.head_node.node_id[:8]}/gcs/shard_0/replica_1"))
               ["state"] == "running" and e["pid"] not in (None, old),
               what="the replica restarted in a new process")
        with pytest.raises(ValueError, match="runs inside the process of node"):
            faults.kill("gcs/coordinator")
        assert actorcore.get(plus_one.remote(1), timeout=30) == 2
    finally:
        actorcore.shutdown()
        c.shutdown()


def test_kill_a_whole_node_and_partition_one_from_the_gcs(two_nodes):
    # Last of the module: it kills the module cluster's second node.
    c, a = two_nodes
    if not actorcore.is_initialized():
        c.connect()
    pid = sorted(_until(lambda: _workers(a.node_id), what="a worker on node a").values())[0]
    done = faults.kill(f"node:{a.node_id[:8]}")
    assert done["pid"] == a.pid and pid in done["processes"]
    _until(lambda: not a.alive() and not _pid_alive(pid), what="node a and its worker gone")
    _until(lambda: any(n["NodeID"] == a.node_id and not n["Alive"]
                       for n in actorcore.nodes()), what="node a declared dead")
    # Node b cut from the GCS: its heartbeats are lost, the head declares it dead.
    b = c.add_node(num_cpus=1, env_vars=FAST)
    with faults.partition(f"node:{b.node_id[:8]}", "gcs"):
        dead = _until(lambda: [n for n in actorcore.nodes()
                               if n["NodeID"] == b.node_id and not n["Alive"]],
                      what="node b declared dead")
    assert "heartbeat" in dead[0]["death_reason"]
    assert actorcore.get(plus_one.remote(1), timeout=30) == 2
    assert transport.faults.rules() == {}


def test_tagged_rules_and_control_links_in_transport():
    """Rules by tag install idempotently and heal together; no rule touches a
    ``faults-*`` endpoint (the harness's control links), so a heal gets through."""
    f = transport.faults
    f.clear()
    try:
        rules = [f.Rule("refuse", None, None).to_dict()]
        f.apply({"op": "install", "tag": "t1", "rules": rules})
        f.apply({"op": "install", "tag": "t1", "rules": rules})  # again: still one
        f.apply({"op": "install", "tag": "t2", "rules": [f.Rule("drop", "a", "b").to_dict()]})
        assert sorted(r.tag for r in f.rules().values()) == ["t1", "t2"]
        assert f.decide("node-1", "node-2", "request") is not None
        assert f.refused("node-1", "gcs/coordinator") is not None
        assert f.decide("faults-1234", "node-2", "request") is None
        assert f.decide("node-2", "faults-1234", "reply") is None
        assert f.refused("faults-1234", "node-2-tcp") is None
        assert f.apply({"op": "heal", "tag": "t1"}) == 1
        assert [r.tag for r in f.rules().values()] == ["t2"]
        with pytest.raises(ValueError, match="unknown fault command op 'explode'"):
            f.apply({"op": "explode"})
    finally:
        f.clear()
