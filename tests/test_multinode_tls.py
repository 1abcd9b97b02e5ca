"""TLS between the nodes of a real multi-node cluster: a node joins a TLS head over
TLS (node -> GCS, node -> node over ``node_links``, drivers on either node), the
cluster's API and tree reach it over those links; a plaintext node, or one whose
certificate another CA signed, is refused at once with the typed error naming the
mismatch, and the head keeps serving."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import actorcore
import transport
from actorcore.testing import Cluster

from .cluster_support import FAST, HANG_GUARD, STEADY, driver

pytestmark = pytest.mark.usefixtures("plaintext_default")  # tests/conftest.py


def _tls_args(tls: transport.TlsConfig) -> dict[str, Any]:
    return {"tls_cert": tls.cert, "tls_key": tls.key, "tls_ca": tls.ca}


@pytest.fixture(scope="module")
def node_certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, transport.TlsConfig]:
    """The cluster's CA and a certificate naming the nodes' loopback addresses (what
    ``actorcore tls init DIR --host 127.0.0.2 --host 127.0.0.3`` makes), and
    another cluster's."""
    root = tmp_path_factory.mktemp("mn-tls")
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
    return {"a": transport.create_cluster_certs(root / "a", hosts=hosts),
            "b": transport.create_cluster_certs(root / "b", hosts=hosts)}


@pytest.fixture(scope="module")
def tls_cluster(node_certs: dict[str, transport.TlsConfig]) -> Any:
    """A TLS head and a TLS node (resource OTHER) joined over TLS, shared by the
    module: no test kills a node, and a refused node never becomes one of it."""
    c = Cluster(initialize_head=True,
                head_node_args={"num_cpus": 1, "env_vars": STEADY, **_tls_args(node_certs["a"])})
    try:
        c.add_node(num_cpus=1, resources={"OTHER": 1}, env_vars=STEADY,
                   **_tls_args(node_certs["a"]))
        yield c
    finally:
        c.shutdown()


@pytest.fixture
def tls_driver(tls_cluster: Cluster) -> Any:
    """``tls_cluster``, this process a new driver on its head for the test."""
    with driver(tls_cluster):
        yield tls_cluster


DRIVER = textwrap.dedent(
    """
    import sys
    import actorcore as ray
    import transport
    try:
        ray.init(address=sys.argv[1])
    except transport.TlsError as exc:
        print("REFUSED", type(exc).__name__, exc)
        raise SystemExit(0)

    @ray.remote
    def where():
        return ray.get_runtime_context().get_node_id()

    print("OK", ray.get(where.remote(), timeout=60), len(ray.nodes()))
    ray.shutdown()
    """
)


def _driver(address: str, token: bytes, tmp: Path, tls: transport.TlsConfig | None) -> str:
    """A driver on "another machine" (its own session root; the token and the TLS
    files from its environment only) connecting to ``address``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACTORCORE_")}
    env.update(ACTORCORE_TMPDIR=str(tmp / "elsewhere"), ACTORCORE_TOKEN=token.hex())
    if tls is not None:
        env.update(ACTORCORE_TLS_CERT=tls.cert, ACTORCORE_TLS_KEY=tls.key,
                   ACTORCORE_TLS_CA=tls.ca)
    result = subprocess.run([sys.executable, "-c", DRIVER, address], env=env,
                            capture_output=True, text=True, timeout=HANG_GUARD)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def _alive(nodes: list[dict]) -> set[str]:
    return {n["NodeID"] for n in nodes if n["Alive"]}


def test_a_node_joins_a_tls_cluster_over_tls(tls_driver: Cluster,
                                            node_certs: dict[str, transport.TlsConfig],
                                            tmp_path: Path) -> None:
    a = node_certs["a"]
    tls_cluster = tls_driver
    [other] = tls_cluster.worker_nodes
    head = tls_cluster.head_node
    assert head is not None
    for node in (head, other):
        security = node.process.info["security"]
        assert security["mode"] == "tls" and security["tls"] == a.as_dict(), security
    assert other.node_ip_address == "127.0.0.2"
    assert _alive(actorcore.nodes()) == {head.node_id, other.node_id}
    assert actorcore.cluster_resources().get("OTHER") == 1
    # The tree of the other node comes over the head's TLS link to it (node_links).
    tree = actorcore.tree()
    assert sorted(c["node_id"] for c in tree["children"]) == sorted([head.node_id,
                                                                       other.node_id])
    sub = next(c for c in tree["children"] if c["node_id"] == other.node_id)
    names = [c["name"] for c in sub["children"]]
    assert "gcs_client" in names and "node_links" in names and "gcs" not in names
    # A driver elsewhere joins through the other node's TLS listener; a plaintext
    # one is refused there with the mismatch named.
    token = head.process.token
    addr = f"tcp:{other.address}"
    assert _driver(addr, token, tmp_path, a) == f"OK {other.node_id} 2"
    refused = _driver(addr, token, tmp_path, None)
    assert refused.startswith("REFUSED TlsMismatch") and "TLS listener" in refused, refused

    @actorcore.remote
    def where() -> str:
        return actorcore.get_runtime_context().get_node_id()

    assert actorcore.get(where.remote(), timeout=60) == head.node_id


def test_a_task_placed_on_the_other_node_over_tls(tls_driver: Cluster) -> None:
    [other] = tls_driver.worker_nodes

    @actorcore.remote
    def where() -> str:
        return actorcore.get_runtime_context().get_node_id()

    # A task only the other node can run: it needs task forwarding between nodes
    # (not on this branch yet: then it waits, infeasible here, and the test stops).
    ref = where.options(resources={"OTHER": 1}).remote()
    ready, _ = actorcore.wait([ref], timeout=10)
    if not ready:
        pytest.skip("tasks are not forwarded between nodes yet: the OTHER task waits")
    assert actorcore.get(ref) == other.node_id


@pytest.mark.parametrize("which", ["plaintext", "other CA"])
def test_a_node_refused_by_a_tls_cluster_fails_at_once_and_the_head_serves_on(
        tls_cluster: Cluster, node_certs: dict[str, transport.TlsConfig], which: str,
        tmp_path: Path) -> None:
    args: dict[str, Any] = {} if which == "plaintext" else _tls_args(node_certs["b"])
    with pytest.raises(transport.TlsError) as info:
        tls_cluster.add_node(num_cpus=1, env_vars=FAST, host="127.0.0.3", **args)
    message = str(info.value)
    assert tls_cluster.address in message, message
    if which == "plaintext":
        assert type(info.value) is transport.TlsMismatch
        assert "is a TLS listener but this end is plaintext" in message, message
    else:
        assert type(info.value) is transport.TlsError
        assert "not accepted by our CA" in message, message
    head = tls_cluster.head_node
    assert head is not None and head.alive()
    [other] = tls_cluster.worker_nodes  # the refused one did not become a node
    # The head serves on: a driver connects over TLS, sees the cluster's two nodes
    # (not the refused one), runs a task.
    with driver(tls_cluster):
        assert _alive(actorcore.nodes()) == {head.node_id, other.node_id}

        @actorcore.remote
        def double(x: int) -> int:
            return 2 * x

        assert actorcore.get(double.remote(21), timeout=60) == 42


def test_a_node_with_another_token_is_refused_at_once() -> None:
    from actorcore.session._config import ClusterConfig
    from actorcore.session._launcher import start_node

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "env_vars": FAST})
    try:
        head = cluster.head_node
        assert head is not None
        config = ClusterConfig.from_values({"num_cpus": 1, "host": "127.0.0.4", "port": 0},
                                           "test")
        with pytest.raises(transport.AuthenticationFailed, match="failed to prove the cluster token"):
            start_node(config, head_address=head.process.info["tcp_address"],
                       token=os.urandom(32), embedded=False, timeout=30)
        cluster.connect()
        assert _alive(actorcore.nodes()) == {head.node_id}
    finally:
        cluster.shutdown()
