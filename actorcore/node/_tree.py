"""The node's supervision tree, built from its config and (on a head) the GCS plan.

::

    node (one_for_one)
    ├── rpc_server        transport.Server on the node's Unix socket (and TCP on a head)
    ├── gcs               (head only) the global control store
    ├── gcs_client        the node's GCS link, the lineage flusher, heartbeats and
    │                     its view of the cluster's nodes
    ├── node_links        its TCP links to the other nodes of the cluster
    ├── global_scheduler  places what the local scheduler cannot
    ├── local_scheduler   the dispatch loop over the node's task queue
    ├── object_manager    the node's object store
    ├── store_link        the node's own link to it (its refs on large objects)
    ├── object_directory  the directory's watch over arguments that can never arrive
    ├── worker_pool       worker processes, one per CPU to start with
    ├── actor_manager     actors: creation, calls, restarts; writes their records
    └── placement_groups  retries the pending placement groups this node coordinates

The components here are the node-side wrappers the tree needs: the listeners
(``_RpcServer``) and the GCS's own ``gcs.ServiceSpec`` tree translated into
kernel child specs (``_to_child_spec``).
"""

from __future__ import annotations

import functools
import os
from typing import Any, Protocol

import trio

import transport

from ..core_worker._store_link import StoreLink
from ..kernel import ChildSpec, Supervisor
from ..protocol._ids import short
from ..protocol._wire import AdminCall
from ._peers import NodeLinks, NodePeers
from .gcs_client._link import GcsClientLink
from .gcs_client._membership import ClusterView, Membership
from .global_scheduler._forwarding import ClusterTasks
from .global_scheduler._scheduler import GlobalScheduler
from .local_scheduler._component import LocalScheduler
from .local_scheduler._scheduler import SchedulerState
from .object_manager._dep_watch import DependencyWatch
from .object_manager._link import StoreLinkService
from .placement_groups import PlacementGroups, PlacementGroupsService
from .worker_pool._pool import PoolState, WorkerPool

__all__ = ["TreeHost", "build_tree"]


class _TreeConfig(Protocol):
    """The parts of ``NodeConfig`` the tree reads."""

    @property
    def head(self) -> bool: ...
    @property
    def use_gcs(self) -> bool: ...
    @property
    def gcs_shards(self) -> int: ...
    @property
    def gcs_replicas(self) -> int: ...
    @property
    def host(self) -> str: ...
    @property
    def token(self) -> bytes: ...
    @property
    def head_address(self) -> str | None: ...


class TreeHost(Protocol):
    """What the tree reads and sets on the node (``_runtime.NodeRuntime``).

    The node builds its tree from itself; naming here the parts the tree uses keeps
    this module below ``_runtime`` (which imports ``build_tree``) instead of the two
    importing each other.
    """

    # Set by the tree: the TCP address (a head's listener picks its port).
    tcp_address: str | None
    # Set by the tree on a head: the GCS it runs (its replica processes' fault rules).
    gcs_plan: Any

    @property
    def config(self) -> _TreeConfig: ...
    @property
    def control(self) -> Any: ...
    @property
    def actors(self) -> Any: ...
    @property
    def groups(self) -> PlacementGroups: ...
    @property
    def node_id(self) -> bytes: ...
    @property
    def store_link(self) -> StoreLink | None: ...
    @property
    def dep_watch(self) -> DependencyWatch: ...
    @property
    def node_hex(self) -> str: ...
    @property
    def pool(self) -> PoolState: ...
    @property
    def sched(self) -> SchedulerState: ...
    @property
    def cluster(self) -> ClusterTasks: ...
    @property
    def remote(self) -> Any: ...
    @property
    def unix_address(self) -> str: ...
    @property
    def server(self) -> transport.Server: ...
    @property
    def tcp_server(self) -> transport.Server | None: ...
    @property
    def store_service(self) -> Any: ...
    @property
    def link_nursery(self) -> trio.Nursery | None: ...  # where links live (they outlive rpc_server)
    @property
    def view(self) -> ClusterView: ...
    @property
    def peers(self) -> NodePeers: ...
    def node_info(self) -> dict: ...
    def heartbeat_report(self) -> dict: ...
    def declared_dead(self, reason: str) -> None: ...
    async def republish_control_state(self) -> None: ...


def build_tree(node: TreeHost) -> Supervisor:
    """The node's supervision tree (see the module docstring), GCS included on a head."""
    config = node.config
    children = [ChildSpec("rpc_server", lambda: _RpcServer(node), kind="rpc_server")]
    # (The head's rpc_server listens on TCP when the cluster may grow: ``--port``.)
    gcs_address = None
    if config.head and config.use_gcs:
        import gcs

        plan = gcs.plan(
            gcs.GcsConfig(
                shards=config.gcs_shards,
                replicas=config.gcs_replicas,
                host=config.host,
                lineage_cap=lineage_cap(config),
            ),
            config.token,
        )
        children.append(_to_child_spec(plan.tree))
        node.gcs_plan = plan
        gcs_address = functools.partial(plan.wait_ready, timeout=60)
    elif config.head_address is not None:
        gcs_address = functools.partial(_gcs_address_from_head, config.head_address,
                                        config.token)

    def gcs_client() -> GcsClientLink:
        membership = None
        if gcs_address is not None:
            membership = Membership(
                view=node.view, record=node.node_info, report=node.heartbeat_report,
                monitor=config.head, on_self_dead=node.declared_dead)
        return GcsClientLink(node.control, gcs_address=gcs_address, token=config.token,
                             name=f"node-{short(node.node_id)}", membership=membership,
                             republish=node.republish_control_state)

    children.append(ChildSpec("gcs_client", gcs_client, kind="gcs_client"))
    children.append(ChildSpec("node_links", lambda: NodeLinks(node.peers), kind="node_links"))
    children += [
        ChildSpec(
            "global_scheduler",
            lambda: GlobalScheduler(node),
            kind="global_scheduler",
        ),
        ChildSpec("local_scheduler", lambda: LocalScheduler(node.sched), kind="local_scheduler"),
        ChildSpec("object_manager", lambda: node.store_service, kind="object_manager"),
        ChildSpec("store_link", functools.partial(_store_link, node), kind="store_link"),
        # The node owns the watch (and the directory); the child runs its sweep.
        ChildSpec("object_directory", lambda: node.dep_watch, kind="object_directory"),
        ChildSpec("worker_pool", lambda: WorkerPool(node.pool, node.sched), kind="worker_pool"),
        # The node owns the actor manager; the child runs its loop (see its ``run``).
        ChildSpec("actor_manager", lambda: node.actors, kind="actor_manager"),
        # The node owns its placement groups; the child retries the pending ones.
        ChildSpec("placement_groups", lambda: PlacementGroupsService(node.groups),
                  kind="placement_groups"),
    ]
    return Supervisor(
        "node",
        children,
        strategy="one_for_one",
        max_restarts=20,
        max_seconds=10.0,
        kind="node",
        node_id=node.node_hex,
    )


class _RpcServer:
    """The ``rpc_server`` component: the node's listeners (Unix, and TCP when the node
    is or may be one of many).

    The connections it accepted run in the node's nursery, not in this component:
    like the worker processes of the pool (``PoolState``), they are state the node
    owns. A crash of the listeners restarts them and drops no driver, worker or
    actor process link — before, every link dropped with it, every worker process
    exited with its link, and the actors in them died.
    """

    def __init__(self, node: TreeHost) -> None:
        self.node = node

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        node = self.node
        links = node.link_nursery
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(node.server.run, connection_nursery=links))
            if node.tcp_server is not None:
                node.tcp_address = await nursery.start(
                    functools.partial(node.tcp_server.run, connection_nursery=links)
                )
            task_status.started(node.unix_address)

    def snapshot(self) -> dict:
        node = self.node
        conns = len(node.server.connections)
        if node.tcp_server is not None:
            conns += len(node.tcp_server.connections)
        return {
            "kind": "rpc_server",
            "address": node.unix_address,
            "tcp_address": node.tcp_address,
            "connections": conns,
        }


def _store_link(node: TreeHost) -> StoreLinkService:
    if node.store_link is None:
        raise RuntimeError("the node's store link is made by NodeRuntime.run, before its tree")
    return StoreLinkService(node.store_link)


async def check_join(head_address: str, token: bytes, patience: float = 30.0) -> str:
    """Dial the head once before a joining node starts its tree; return the GCS's
    address. A refusal that no retry can cure — the two ends disagree on TLS
    (`transport.TlsMismatch`), the head's CA does not sign our certificate
    (`transport.TlsError`), the token is wrong (`transport.AuthenticationFailed`) —
    raises here, so the node stops at once with that error instead of its
    ``gcs_client`` crashing on it until the node's restart intensity is spent.
    Nothing listening there for ``patience`` seconds (a head still starting is
    waited for) raises `transport.ConnectError`, within the launcher's wait."""
    return await _gcs_address_from_head(head_address, token, patience=patience)


async def _gcs_address_from_head(head_address: str, token: bytes,
                                 patience: float = 60.0) -> str:
    """Where the GCS is, asked of the head node (a node joining the cluster). The
    head may still be starting: dial for up to ``patience`` s before giving up."""
    deadline = trio.current_time() + patience
    while True:
        try:
            async with transport.open_connection(head_address, token,
                                                 name="node-join") as conn:
                info = await conn.request(AdminCall("cluster_info"), timeout=10.0)
        except (transport.ConnectError, transport.ConnectionLost, trio.TooSlowError):
            if trio.current_time() > deadline:
                raise
            await trio.sleep(0.5)
            continue
        address = info.get("gcs_address")
        if not address:
            raise RuntimeError(f"the head node at {head_address} runs no GCS "
                               f"(started with --no-gcs): nodes cannot join it")
        return str(address)


def lineage_cap(config: Any) -> int:
    """Task specs a node keeps for rebuilding lost objects, and marked lineage
    entries each GCS shard keeps in memory: the node's ``lineage_cap``
    (``init(lineage_cap=...)``), else ``ACTORCORE_GCS_LINEAGE_CAP``."""
    if getattr(config, "lineage_cap", None) is not None:
        return int(config.lineage_cap)
    raw = os.environ.get("ACTORCORE_GCS_LINEAGE_CAP", "10000")
    try:
        cap = int(raw)
    except ValueError:
        raise ValueError(f"ACTORCORE_GCS_LINEAGE_CAP must be an integer, got {raw!r}") from None
    if cap < 0:
        raise ValueError(f"ACTORCORE_GCS_LINEAGE_CAP must be >= 0, got {cap}")
    return cap


def _to_child_spec(spec: Any) -> ChildSpec:
    """A ``gcs.ServiceSpec`` tree as kernel child specs (the GCS never imports us)."""
    if spec.factory is not None:
        return ChildSpec(spec.name, spec.factory, restart=spec.restart, kind=spec.kind)
    return Supervisor.spec(
        spec.name,
        [_to_child_spec(c) for c in spec.children],
        restart=spec.restart,
        strategy=spec.strategy,
        max_restarts=spec.max_restarts,
        max_seconds=spec.max_seconds,
        kind="gcs" if spec.name == "gcs" else spec.kind,
    )

