"""``actorcore.testing.Cluster``: a real multi-node cluster on this machine.

The contract of Ray's ``ray.cluster_utils.Cluster``: a head and any number of
nodes, each a real node process with its own session directory, object store,
worker processes and TCP listener, joined over TCP with the cluster token::

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    node = cluster.add_node(num_cpus=2, resources={"GPU_BOX": 1})
    actorcore.init(address=cluster.address)
    ...
    cluster.remove_node(node)          # SIGKILL of its processes (a crash)
    cluster.shutdown()

Each node listens on a loopback address of its own (the head on 127.0.0.1, the
next nodes on 127.0.0.2, 127.0.0.3, ...), so that a node reaching into another
node's files, sockets or memory instead of its TCP listener shows up as a failure.

The nodes belong to the process that made the cluster: each stops when that
process exits, however it exits (a pipe only it holds closes, as for the embedded
cluster of ``init()``), so a test killed by a timeout leaves no cluster running.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import attrs

from ..session._config import ClusterConfig

__all__ = ["Cluster", "ClusterNode"]

logger = logging.getLogger("actorcore.testing")

@attrs.define(eq=False)
class ClusterNode:
    """A node of a `Cluster`: its process, id and addresses."""

    node_id: str
    address: str  # its TCP listener, "host:port"
    unix_address: str
    session_dir: Path
    head: bool
    resources: dict[str, float]
    process: Any = attrs.field(repr=False)  # session._launcher.HeadProcess

    @property
    def pid(self) -> int:
        return int(self.process.process.pid)

    @property
    def node_ip_address(self) -> str:
        return self.address.rsplit(":", 1)[0]

    def alive(self) -> bool:
        return self.process.process.poll() is None


class Cluster:
    """A cluster of real nodes on this machine (see the module docstring).

    Args:
      initialize_head: start the head node now (with ``head_node_args``).
      connect: ``actorcore.init(address=...)`` this process to it (needs the head).
      head_node_args: the head's arguments, as for `add_node`.
      shutdown_at_exit: stop every node when this process exits.
    """

    def __init__(
        self,
        initialize_head: bool = False,
        connect: bool = False,
        head_node_args: dict[str, Any] | None = None,
        shutdown_at_exit: bool = True,
    ) -> None:
        self.head_node: ClusterNode | None = None
        self.worker_nodes: list[ClusterNode] = []
        self._token: bytes | None = None
        self._next_host = 2
        self._connected = False
        if connect and not initialize_head:
            raise ValueError("Cluster(connect=True) needs initialize_head=True")
        if initialize_head:
            self.add_node(**(head_node_args or {}))
            if connect:
                self.connect()
        if shutdown_at_exit:
            atexit.register(self.shutdown)

    # -------------------------------------------------------------- properties

    @property
    def address(self) -> str:
        """The head node's address, for ``actorcore.init(address=...)``."""
        if self.head_node is None:
            raise RuntimeError("the cluster has no head node yet (add_node() starts one)")
        return self.head_node.address

    @property
    def gcs_address(self) -> str | None:
        return self.head_node.process.info.get("gcs_address") if self.head_node else None

    def list_all_nodes(self) -> list[ClusterNode]:
        """The head (first) and every node added since, removed ones excluded."""
        return ([self.head_node] if self.head_node else []) + list(self.worker_nodes)

    # ------------------------------------------------------------------ nodes

    def add_node(self, wait: bool = True, **node_args: Any) -> ClusterNode:
        """Start a node (the head, if there is none yet) and return its handle.

        ``node_args``: `ClusterConfig` fields (``num_cpus``, ``num_gpus``,
        ``resources``, ``object_store_memory``, ``num_workers``, ...), ``env_vars``
        (the node's and its workers' environment) and ``host`` (its loopback
        address; by default the next free one). ``wait``: return once the head
        lists the node as alive.
        """
        from ..session._launcher import start_node

        env_vars = node_args.pop("env_vars", None)
        host = node_args.pop("host", None)
        unknown = sorted(set(node_args) - set(attrs.fields_dict(ClusterConfig)))
        if unknown:
            raise TypeError(f"add_node() got unexpected argument(s): {', '.join(unknown)}")
        is_head = self.head_node is None
        if host is None:
            if is_head:
                host = "127.0.0.1"
            else:
                host = f"127.0.0.{self._next_host}"
                self._next_host += 1
        node_args.setdefault("port", 0)
        config = ClusterConfig.from_values(dict(node_args, host=host), "add_node")
        if is_head:
            proc = start_node(config, embedded=True, env_vars=env_vars)
            self._token = proc.token
        else:
            assert self.head_node is not None
            proc = start_node(config, head_address=self.head_node.process.info["tcp_address"],
                              token=self._token, embedded=True, env_vars=env_vars)
        info = proc.info
        node = ClusterNode(
            node_id=info["node_id"],
            address=info["tcp_address"].removeprefix("tcp:"),
            unix_address=info["address"],
            session_dir=Path(info["session_dir"]),
            head=is_head,
            resources=dict(info.get("resources", {})),
            process=proc,
        )
        if is_head:
            self.head_node = node
        else:
            self.worker_nodes.append(node)
            if wait:
                self._wait_alive({node.node_id}, timeout=30.0)
        return node

    def remove_node(self, node: ClusterNode, allow_graceful: bool = False) -> None:
        """Take ``node`` out: SIGKILL of its node process and its workers (a crash,
        which the cluster detects by the missing heartbeats), or with
        ``allow_graceful=True`` a clean stop (it tells the cluster it leaves)."""
        if node is self.head_node:
            self.head_node = None
        elif node in self.worker_nodes:
            self.worker_nodes.remove(node)
        else:
            raise ValueError(f"node {node.node_id[:12]} is not part of this cluster")
        if allow_graceful:
            node.process.stop()
            return
        # Its workers are below it, forked ones below its zygote; one whose zygote
        # died was adopted by init, and is found by its session in its environment.
        pids = [node.pid, *_descendants(node.pid)]
        pids += [p for p in _session_processes(node.session_dir) if p not in pids]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            node.process.process.wait(10)
        except subprocess.TimeoutExpired:
            logger.warning("node %s (pid %d) outlived SIGKILL", node.node_id[:12], node.pid)
        node.process.stop(timeout=1.0)  # its shared memory and spill files

    def wait_for_nodes(self, timeout: float = 30.0) -> None:
        """Return once every node of this cluster is alive in the GCS nodes table."""
        self._wait_alive({n.node_id for n in self.list_all_nodes()}, timeout=timeout)

    def _wait_alive(self, want: set[str], timeout: float) -> None:
        from ..session._admin import admin_call

        deadline = time.monotonic() + timeout
        alive: set[str] = set()
        while True:
            try:
                listed = admin_call(self.address, "nodes", timeout=5.0)
                alive = {n["NodeID"] for n in listed if n.get("Alive")}
            except Exception as exc:  # the head may be busy starting
                logger.debug("listing nodes: %r", exc)
            if want <= alive:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nodes {sorted(n[:12] for n in want - alive)} were not alive within "
                    f"{timeout:g} s (alive: {sorted(n[:12] for n in alive)})")
            time.sleep(0.1)

    # -------------------------------------------------------------- lifetime

    def connect(self, namespace: str | None = None) -> Any:
        """``actorcore.init(address=self.address)`` for this process."""
        import actorcore

        info = actorcore.init(address=self.address, namespace=namespace)
        self._connected = True
        return info

    def shutdown(self) -> None:
        """Disconnect this process (if `connect` did it) and stop every node."""
        if self._connected:
            import actorcore

            self._connected = False
            actorcore.shutdown()
        for node in reversed(self.list_all_nodes()):
            try:
                node.process.stop(timeout=10.0)
            except Exception as exc:
                logger.warning("stopping node %s failed: %r", node.node_id[:12], exc)
        self.worker_nodes = []
        self.head_node = None


def _session_processes(session_dir: Path) -> list[int]:
    """The processes started with ``ACTORCORE_SESSION_DIR=<session_dir>`` in their
    environment (from /proc): the node's workers and its zygote, wherever they hang
    in the process tree."""
    want = f"ACTORCORE_SESSION_DIR={session_dir}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if want in f.read().split(b"\0"):
                    out.append(int(entry))
        except OSError:
            continue
    return out


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (from /proc), e.g. a node's workers."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out
