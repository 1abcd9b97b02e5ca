"""Multi-node membership on real clusters: nodes join the head over TCP, register
and heartbeat; the cluster's API and tree cover every node; a node that stops
heartbeating is declared dead within the timeout; the CLI starts and stops nodes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

import actorcore
from actorcore.testing import Cluster

from .cluster_support import FAST, HANG_GUARD, until


@pytest.fixture
def cluster():
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "env_vars": FAST})
    try:
        yield c
    finally:
        c.shutdown()


def _alive(nodes: list[dict]) -> set[str]:
    return {n["NodeID"] for n in nodes if n["Alive"]}


_until = until


def test_nodes_join_and_the_api_covers_the_cluster(cluster):
    a = cluster.add_node(num_cpus=2, resources={"A": 1}, env_vars=FAST)
    b = cluster.add_node(num_cpus=1, resources={"B": 2}, env_vars=FAST)
    # Every node listens on a loopback address of its own.
    hosts = {n.node_ip_address for n in cluster.list_all_nodes()}
    assert hosts == {"127.0.0.1", "127.0.0.2", "127.0.0.3"}
    assert len({n.session_dir for n in cluster.list_all_nodes()}) == 3
    cluster.connect()
    nodes = actorcore.nodes()
    assert _alive(nodes) == {cluster.head_node.node_id, a.node_id, b.node_id}
    heads = [n for n in nodes if n["is_head"]]
    assert [n["NodeID"] for n in heads] == [cluster.head_node.node_id]
    total = actorcore.cluster_resources()
    assert total["CPU"] == 4 and total["A"] == 1 and total["B"] == 2
    _until(lambda: actorcore.available_resources().get("CPU") == 4, what="all CPUs free")
    tree = actorcore.tree()
    assert tree["name"] == "cluster"
    assert sorted(c["node_id"] for c in tree["children"]) == sorted(
        [cluster.head_node.node_id, a.node_id, b.node_id])
    for sub in tree["children"]:
        names = [c["name"] for c in sub["children"]]
        assert "local_scheduler" in names and "node_links" in names
        assert ("gcs" in names) == (sub["node_id"] == cluster.head_node.node_id)


def test_a_killed_node_is_declared_dead_and_a_graceful_one_at_once(cluster):
    a = cluster.add_node(num_cpus=1, env_vars=FAST)
    b = cluster.add_node(num_cpus=1, env_vars=FAST)
    cluster.connect()
    cluster.remove_node(a)  # SIGKILL: only the missing heartbeats tell
    dead = _until(lambda: [n for n in actorcore.nodes() if n["NodeID"] == a.node_id
                           and not n["Alive"]], what="node declared dead")
    assert "no heartbeat" in dead[0]["death_reason"]
    assert actorcore.cluster_resources()["CPU"] == 2
    cluster.remove_node(b, allow_graceful=True)
    dead = _until(lambda: [n for n in actorcore.nodes() if n["NodeID"] == b.node_id
                           and not n["Alive"]], timeout=120, what="stopped node dead")
    assert dead[0]["death_reason"] == "stopped"
    # A node started again on the same address joins as a new node.
    again = cluster.add_node(num_cpus=1, host="127.0.0.2", env_vars=FAST)
    assert again.node_id != a.node_id
    assert again.node_id in _alive(actorcore.nodes())


def test_cli_start_address_joins_and_stop_stops_every_node():
    root = tempfile.mkdtemp(prefix="acmn-", dir="/tmp")  # short: socket paths
    # Heartbeats far apart: a status that answered from the head's view as its last
    # heartbeat left it would miss the node that has just joined; it reads again.
    env = dict(os.environ, ACTORCORE_TMPDIR=root, ACTORCORE_HEARTBEAT_INTERVAL="30")
    cli = [sys.executable, "-m", "actorcore.cli"]

    def run(*args: str) -> str:
        out = subprocess.run(cli + list(args), env=env, capture_output=True, text=True,
                             timeout=HANG_GUARD)
        assert out.returncode == 0, out.stderr + out.stdout
        return out.stdout

    try:
        started = run("start", "--head", "--num-cpus", "1")
        tcp = next(line.split()[-1] for line in started.splitlines() if "tcp address" in line)
        joined = run("start", "--address", tcp.removeprefix("tcp:"), "--num-cpus", "2",
                     "--host", "127.0.0.4", "--resources", '{"J": 1}')
        assert "joined the cluster" in joined
        status = run("status")
        assert "2 node(s) alive" in status, status
        stopped = run("stop")
        assert stopped.count("stopped the actorcore") == 2, stopped
        assert "no running actorcore cluster" in run("stop")
    finally:  # a failed check leaves no node running
        subprocess.run(cli + ["stop"], env=env, capture_output=True, timeout=HANG_GUARD)


def test_joining_without_a_token_is_refused_with_what_to_do(tmp_path):
    env = dict(os.environ, ACTORCORE_TMPDIR=str(tmp_path / "none"))
    env.pop("ACTORCORE_TOKEN", None)
    out = subprocess.run([sys.executable, "-m", "actorcore.cli", "start", "--address",
                          "127.0.0.9:1"], env=env, capture_output=True, text=True, timeout=HANG_GUARD)
    assert out.returncode == 2
    assert "--token" in out.stderr and "ACTORCORE_TOKEN" in out.stderr
