"""The node process: its state and lifecycle, serving drivers and workers.

The node runs one supervision tree (``rpc_server``, the ``gcs`` on a head,
``gcs_client``, the global and local schedulers, ``object_manager``,
``store_link``, ``object_directory``, ``worker_pool``, ``actor_manager``), built in
``_tree``. Object bookkeeping (puts, fetches, frees, store refs and lineage
live-return counts) is in ``object_manager._objects``; introspection and admin calls in
``_calls``.

State and components
--------------------
The components are loops around state the node owns (``NodeRuntime``) and hands
them: the object directory and the watched arguments, the scheduler's queues and
resources, the process table, the actor table, the store link and its refs, the
control state (lineage buffer, function cache). Durable cluster state (nodes,
functions, task lineage, jobs, actor records) is written through ``ControlState``
to the GCS. A component that crashes is restarted by the supervisor and carries on
over the same state: nothing queued, running or stored is lost.
``actorcore.testing.faults.crash`` uses exactly that. Every long-lived loop of the
node is such a child; handlers start only per-request tasks, through ``spawn``.
Components reach the node through its public attributes and ``spawn``,
``serving``, ``deliver`` and its table of connected processes (``_clients``);
none touches its private ones.

Messages
--------
Every connection (drivers, workers, CLI) is served by one handler, inline and in
order per connection (the transport's contract), which dispatches on the message's
op (see ``protocol._messages``). Handlers are synchronous state changes plus non-blocking
sends; anything that waits (a ``fetch`` of pending objects, a GCS read) answers its
``Reply`` later from a callback or a task, so one slow request never stalls a link.

Lifetime
--------
The node stops on SIGTERM/SIGINT, on ``actorcore stop`` (a ``shutdown`` call), and
— for an embedded cluster — when the pipe from its driver closes (the driver
exited or was SIGKILLed). Stopping cancels the tree (reverse start order), kills the
workers (SIGTERM, then SIGKILL), and removes the socket files and session link.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import attrs
import trio

import transport

from ..core_worker._store_link import StoreLink
from ..kernel import Supervisor
from ..protocol import _wire as w
from ..protocol._actors import CallSpec
from ..protocol._ids import short, task_id_of
from ..protocol._messages import DRIVER_GRACE, TaskSpec, max_frame_size
from ..session._session import pid_alive, unlink_latest, write_session_info
from ._clients import Client, Clients, local_peer_pid
from ._faults import NodeFaults
from ._peers import NodePeers
from ._scheduler_host import SchedulerHostOfNode
from ._tree import build_tree, lineage_cap
from .actor_manager._manager import ActorManager
from .gcs_client._control import GcsControlState, MemoryControlState
from .gcs_client._membership import ClusterView
from .global_scheduler._forwarding import ClusterTasks
from .local_scheduler._scheduler import SchedulerState
from .object_manager._dep_watch import DependencyWatch
from .object_manager._directory import ObjectDirectory
from .object_manager._objects import NodeObjects
from .object_manager._remote import RemoteObjects
from .object_manager._store_setup import (
    default_store_capacity,
    default_task_memory,
    make_store_service,
)
from .object_manager._transfer import ObjectTransfers
from .placement_groups import PlacementGroups
from .worker_pool._actor_processes import START_TIMEOUT
from .worker_pool._pool import PoolState

__all__ = ["DRIVER_GRACE", "NodeConfig", "NodeRuntime"]

logger = logging.getLogger("actorcore.node")


@attrs.define
class NodeConfig:
    session_dir: Path
    token: bytes
    node_id: bytes
    head: bool = True
    resources: dict[str, float] = attrs.Factory(dict)
    num_workers: int | None = None
    port: int | None = None  # head's TCP port (0: any); None: Unix socket only
    host: str = "127.0.0.1"  # the TCP listeners' interface (the node's and the GCS's)
    # TLS for every TCP link (None: plaintext, refused off loopback unless insecure);
    # the node process makes these its transport default (``_security.apply``).
    tls: transport.TlsConfig | None = None
    insecure: bool = False
    gcs_shards: int = 1
    gcs_replicas: int = 1
    # Task specs kept for rebuilding lost objects (and marked lineage entries each
    # GCS shard keeps); None: ``ACTORCORE_GCS_LINEAGE_CAP``.
    lineage_cap: int | None = None
    object_store_memory: int | None = None
    use_gcs: bool = True
    spill_dir: Path | None = None  # None: the session's spill/
    # A node that joins a cluster: the head node's TCP address (``None``: a head).
    head_address: str | None = None
    # Started by ``init()`` for one driver (it stops when that driver exits).
    embedded: bool = False

    @property
    def joins(self) -> bool:
        return self.head_address is not None

    @property
    def listens_tcp(self) -> bool:
        """Every node of a multi-node cluster listens on TCP (port 0: any free one)."""
        return self.port is not None or self.joins


class NodeRuntime:
    """The node's state and message handlers; ``run`` runs its supervision tree."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.node_id = config.node_id
        self.node_hex = config.node_id.hex()
        self.started_at = time.time()
        self.unix_address = f"unix:{config.session_dir / 'sockets' / 'node.sock'}"
        self.tcp_address: str | None = None
        #: The GCS this head runs (``gcs.GcsPlan``, set by the tree), else None.
        self.gcs_plan: Any = None
        self.clients = Clients()  # the processes connected here
        # puts, fetches, frees, store refs, the lineage kept for rebuilding objects
        self.objects = NodeObjects(self, lineage_cap(config))
        self.directory = ObjectDirectory(on_drop=self.objects.on_object_dropped)
        self.dep_watch = DependencyWatch(self)  # arguments that can never become ready
        # The control state outlives the ``gcs_client`` component that links it to
        # the GCS (a head runs one; other nodes and ``--no-gcs`` keep it in memory).
        self.control: GcsControlState | MemoryControlState = (
            GcsControlState() if (config.head and config.use_gcs) or config.joins
            else MemoryControlState())
        # Every node of the cluster as this one knows it (from the GCS, refreshed by
        # ``gcs_client``), and its links to the others (run by ``node_links``).
        self.view: ClusterView = ClusterView(self.node_hex)
        # The handler of every connection to the node (drivers, workers, actor
        # processes, other nodes, admin tools): one registry of the messages they
        # may send (``protocol._wire``), filled below by the node and its components.
        self.dispatcher = transport.Dispatcher(f"node-{short(self.node_id)}")
        self.peers = NodePeers(self.view, config.token, self.node_hex, self.dispatcher)
        cpus = config.resources.get("CPU", float(os.cpu_count() or 1))
        self.resources = dict(config.resources)
        self.resources["CPU"] = cpus
        # ``memory=`` of tasks and actors is accounted against this, as in Ray.
        self.resources.setdefault("memory", float(default_task_memory(
            config.object_store_memory or default_store_capacity())))
        self.sched: SchedulerState = SchedulerState(
            directory=self.directory,
            total=self.resources,
            host=SchedulerHostOfNode(self),
            node_id=self.node_hex,
        )
        # A burst's lineage is written once its tasks no longer wait for a CPU
        # (``gcs_client._control._LineageBuffer``, "A burst").
        self.control.defer_lineage_while(self.sched.ready.__bool__)
        n = config.num_workers
        if n is None:
            n = max(1, int(cpus))
        self.pool = PoolState(
            node_id=self.node_id,
            address=self.unix_address,
            store_address=f"unix:{config.session_dir / 'sockets' / 'store.sock'}",
            token=config.token,
            session_dir=config.session_dir,
            min_workers=n,
            max_workers=max(n, int(cpus)) * 4 + 4,
            forward_log=self.clients.forward_log,
            spawn=self.spawn,
        )
        self.functions: dict[bytes, dict] = {}
        self.jobs: dict[bytes, dict] = {}
        self.supervisor: Supervisor | None = None
        self.shutdown_requested = trio.Event()
        # Set once this node has told the cluster it leaves (or could not): whoever
        # stops the node waits for it before cancelling the tree, whose GCS link
        # that message needs (``__main__``).
        self.left = trio.Event()
        self._nursery: trio.Nursery | None = None
        self.server = transport.Server(
            self.unix_address,
            config.token,
            self.dispatcher,
            name=f"node-{short(self.node_id)}",
            on_disconnect=self._on_disconnect,
            max_frame_size=max_frame_size(),
            # Its workers and actor processes connect here while many start at once:
            # they have the start budget to say hello, not the transport's 10 s.
            handshake_timeout=START_TIMEOUT,
        )
        self.store_address = f"unix:{config.session_dir / 'sockets' / 'store.sock'}"
        self.store_service = make_store_service(
            self.store_address, config.token, config.object_store_memory,
            config.spill_dir or config.session_dir / "spill",
            prefix=f"actorcore-{config.session_dir.name}")
        self.store_link: StoreLink | None = None  # set by ``run``
        self.tcp_server: transport.Server | None = None
        if config.listens_tcp:
            self.tcp_server = transport.Server(
                f"tcp:{config.host}:{config.port or 0}",
                config.token,
                self.dispatcher,
                name=f"node-{short(self.node_id)}-tcp",
                on_disconnect=self._on_disconnect,
            )
        d = self.dispatcher  # the node's own messages here, its components' below
        d.register(w.Hello, self._h_hello)
        d.register(w.Bye, self._h_bye, oneway=True)
        d.register(w.Export, self._h_export, oneway=True)
        d.register(w.Submit, self._h_submit, oneway=True)
        d.register(w.CancelTask, self._h_cancel, oneway=True)
        d.register(w.Blocked, self._h_blocked, oneway=True)
        d.register(w.Unblocked, self._h_unblocked, oneway=True)
        d.register(w.TaskDone, self._h_done, oneway=True)
        d.register(w.RequestLease, self._h_request_lease)
        d.register(w.ReturnLease, self._h_return_lease, oneway=True)
        d.register(w.LeasedTasksLost, self._h_leased_lost, oneway=True)
        d.register(w.LeasedStart, self._h_leased_start, oneway=True)
        d.register(w.StreamItems, self._h_stream_items, oneway=True)
        d.register(w.GetFunction, self._h_get_function)
        d.register(w.AdminCall, self._h_call)
        d.register(w.PeerBatch, self._h_peer_batch, oneway=True)
        d.register(w.PeerAck, self._h_peer_ack, oneway=True)
        self.actors = ActorManager(self)  # issue 6: actors (creation, calls, restarts)
        # Tasks and objects between nodes (idle on a one-node cluster).
        self.cluster = ClusterTasks(self)
        self.remote = RemoteObjects(self)
        self.view.on_node_joined(lambda _status: self.sched.infeasible_added.set())
        self.groups = PlacementGroups(self)  # placement groups: bundles, gang reservation
        self.objects.register(d)
        # Objects between nodes: pulls here, chunks served to the others.
        self.transfers = ObjectTransfers(self)
        self.transfers.register(d)
        self.cluster.register(d)
        self.remote.register(d)
        self.actors.register(d)
        self.groups.register(d)
        # Fault injection (``actorcore.testing.faults``): crash, kill, link rules.
        self.faults = NodeFaults(self)

    # ------------------------------------------------- what components may use

    # The node's narrow interface to its components and handlers: they start their
    # per-request tasks through ``spawn`` (a fetch's watchdog, a lookup that answers
    # later), never through the node's nursery; long-lived loops are tree children.

    def spawn(self, fn: Any, *args: Any) -> bool:
        """Start ``fn(*args)`` as a short-lived task of the node (work that outlives
        the handler that asked for it). Returns ``False``, starting nothing, before
        ``run`` or once the node has stopped."""
        nursery = self._nursery
        if nursery is None:
            return False
        try:
            nursery.start_soon(_logged, fn, *args)
        except RuntimeError:  # the nursery closed: the node stopped
            return False
        return True

    @property
    def serving(self) -> bool:
        """The node runs and is not stopping (new processes may be started)."""
        return self._nursery is not None and not self._nursery.cancel_scope.cancel_called

    @property
    def link_nursery(self) -> trio.Nursery | None:
        """Where accepted connections run: they outlive ``rpc_server`` (see ``_tree``)."""
        return self._nursery

    # ------------------------------------------------------------------- tree

    def build_tree(self) -> Supervisor:
        """The node's supervision tree (see ``_tree``)."""
        return build_tree(self)

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the node until ``shutdown_requested`` (or cancellation)."""
        sup = self.build_tree()
        self.supervisor = sup
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                # First: its imports run while the tree starts, so the first workers
                # can already be forked (the pool spawns them until it is ready).
                self.pool.start_zygote()
                # Owned here, served by the ``store_link`` component (its refs must
                # outlive a restart of that component).
                self.store_link = StoreLink(
                    self.store_address, self.config.token, f"node-{short(self.node_id)}",
                    trio.lowlevel.current_trio_token(),
                )
                self.view.seed(self.node_info())
                if self.config.listens_tcp:
                    _import_pyarrow_in_background()
                await nursery.start(sup.run)
                await self.control.register_node(self.node_hex, self.node_info())
                info = self.session_info()
                write_session_info(self.config.session_dir, info)
                task_status.started(info)
                await self.shutdown_requested.wait()
                # While the GCS link is still up (the tree is about to stop).
                with trio.CancelScope(shield=True):
                    await self._leave_cluster()
                self.left.set()
                nursery.cancel_scope.cancel()
        finally:
            self.left.set()
            with trio.CancelScope(shield=True):
                await self.pool.kill_all()
                await self.actors.kill_all()
                try:
                    self.store_service.remove_files()
                except OSError as exc:
                    logger.warning("removing the object store's files failed: %s", exc)
                if self.config.head:
                    unlink_latest(self.config.session_dir)
                try:
                    (self.config.session_dir / "session.json").unlink()
                except FileNotFoundError:
                    pass
                for sock in (self.config.session_dir / "sockets").glob("*"):
                    try:
                        sock.unlink()
                    except OSError:
                        pass

    async def _leave_cluster(self) -> None:
        """Mark this node dead (reason "stopped") in the nodes table, so the others
        act at once instead of after the heartbeat timeout. Best effort, bounded."""
        client = getattr(self.control, "client", None)
        if client is None or (self.config.head and not self.view.multi):
            return
        with trio.move_on_after(2.0):
            try:
                await client.nodes.set_fields(self.node_hex, alive=False,
                                              death_reason="stopped", died_at=time.time())
            except Exception as exc:
                logger.info("could not mark this node stopped in the GCS: %s", exc)

    def declared_dead(self, reason: str) -> None:
        """The cluster declared this node dead (it was cut off longer than the node
        timeout): its work is being redone elsewhere, so it stops, as Ray's raylet
        does, instead of running on as a second copy."""
        if not self.shutdown_requested.is_set():
            logger.error("stopping: the cluster declared this node dead (%s)", reason)
            self.shutdown_requested.set()

    async def republish_control_state(self) -> None:
        """The GCS restarted empty (``gcs_client`` noticed): write again what this
        node holds that the GCS must know. Its owners here are the truth: the
        functions and jobs (``control``), the actors, names and checkpoints
        (``actors``), the lineage of tasks with live returns (``objects``), the copies
        pulled here (``transfers``). The node registers itself (``Membership``)."""
        control = self.control
        if control.backend != "gcs":
            return
        functions, jobs = await control.republish()
        lineage = self.objects.republish_lineage()
        actors, names = await self.actors.republish()
        copies = await self.transfers.republish_locations()
        logger.warning("wrote again to the restarted GCS: %d functions, %d jobs, the lineage "
                       "of %d live tasks, %d actor records, %d names, %d object locations",
                       functions, jobs, lineage, actors, names, copies)

    def heartbeat_report(self) -> dict:
        """What this node's heartbeats say of it (its free resources and queue)."""
        sched = self.sched
        report = {
            "available": sched.available_to_report(),
            "queued": len(sched.waiting) + len(sched.ready),
            "running": len(sched.running),
        }
        if self.groups.held:  # its capacity grew by placement-group bundles
            report["resources"] = dict(sched.total)
        return report

    @property
    def gcs_address(self) -> str | None:
        """The GCS coordinator's address (``None`` without a GCS)."""
        return self.control.address

    def node_info(self) -> dict:
        return {
            "node_id": self.node_hex,
            "address": self.unix_address,
            "tcp_address": self.tcp_address,
            "resources": dict(self.resources),
            "alive": True,
            "head": self.config.head,
            "host": self.config.host,
            "pid": os.getpid(),
            "session_dir": str(self.config.session_dir),
            "started_at": self.started_at,
        }

    def security_info(self) -> dict:
        """How this node's links are secured (``actorcore status`` shows it)."""
        from ..session._security import describe

        config = self.config
        tcp = config.listens_tcp or (config.head and config.use_gcs)
        return describe(config.host, tcp, config.tls, config.insecure)

    def session_info(self) -> dict:
        return {
            "address": self.unix_address,
            "tcp_address": self.tcp_address,
            "security": self.security_info(),
            "gcs_address": self.gcs_address,
            "node_id": self.node_hex,
            "pid": os.getpid(),
            "session_dir": str(self.config.session_dir),
            "log_dir": str(self.config.session_dir / "logs"),
            "resources": dict(self.resources),
            "head": self.config.head,
            "head_address": self.config.head_address,
            "embedded": self.config.embedded,
        }

    # --------------------------------------------------------------- callbacks

    def deliver(self, owner: bytes, results: list) -> None:
        """Send ``results`` (ready objects) to their owner, if it is connected; the
        results of a task forwarded here go back to its node."""
        client = self.clients.connected(owner)
        if client is None:
            if self.cluster.forwarded_in and results:
                self.cluster.send_home(task_id_of(results[0][0]), results)
            return
        client.send_in_order(w.ObjectsReady(results), self.spawn)

    def _call_later(self, delay: float, fn: Any) -> None:
        async def later() -> None:
            await trio.sleep(delay)
            fn()

        self.spawn(later)

    async def _on_disconnect(self, conn: Any) -> None:
        client = self.clients.remove(conn)
        if client is None:
            return
        if client.role == "driver" and client.worker_id is not None:
            self._driver_departed(client)
            return
        if client.role == "node":  # a peer's link: its death is the membership's to judge
            return
        self.actors.client_gone(client)
        if client.worker_id is not None:  # what it leased as a submitter
            self.sched.leases.drop_owner(client.worker_id)
        if client.worker is not None:
            worker = client.worker
            worker.conn = None
            worker.link_closed.set()
            self.sched.worker_died(worker, "its connection to the node was lost")
            self.pool.kill(worker)

    # A driver's link closing is not its death. The link can drop while the driver
    # lives on (a dropped or partitioned connection; the driver dials again within
    # its ``RECONNECT_WINDOW``) — ending its actors then would kill the actors of a
    # live program. So the node decides by the driver itself: it said goodbye
    # (``bye``, sent by ``shutdown()``), or its process is gone (a peer on the
    # node's Unix socket: the kernel names its pid), or it did not rejoin within
    # ``DRIVER_GRACE`` (the driver's reconnect window and then some, so a driver
    # that rejoins at all finds everything kept: ``protocol._messages``). Only then do its queued tasks, the objects it owned (those
    # that escaped into other objects stay while those live) and the actors it owns
    # (not the detached ones) go. A rejoin (``hello`` with the same worker id)
    # within the grace keeps all of it.

    def _driver_departed(self, client: Client) -> None:
        wid = client.worker_id
        assert wid is not None
        self.clients.departed[wid] = client
        if client.leaving or self._nursery is None:
            self._driver_gone(client, "exited")
            return
        pid = local_peer_pid(client.conn)

        async def decide() -> None:
            reason = f"did not reconnect within {DRIVER_GRACE} s"
            with trio.move_on_after(DRIVER_GRACE):
                while self.clients.departed.get(wid) is client:
                    if pid is not None and not pid_alive(pid):
                        reason = "exited"
                        break
                    await trio.sleep(0.05)
            self._driver_gone(client, reason)

        self.spawn(decide)

    def _driver_gone(self, client: Client, how: str) -> None:
        """The driver ``client`` is gone for good (unless it rejoined meanwhile)."""
        wid = client.worker_id
        assert wid is not None
        if self.clients.departed.get(wid) is not client:
            return  # it rejoined
        del self.clients.departed[wid]
        logger.info("driver (pid %s) %s: dropping its tasks, objects and actors", client.pid, how)
        self.sched.drop_owner(wid)
        self.directory.free(client.owned)
        client.owned = set()
        self.actors.client_gone(client, how)
        self.groups.driver_gone(wid)

    # ---------------------------------------------------------------- handlers

    async def _h_peer_batch(self, conn: Any, m: w.PeerBatch) -> None:
        """One-way messages another node queued together (``_peers``), in order,
        each through the registry (one that is refused is logged and dropped); each
        numbered batch once (one sent again after a broken link is skipped),
        acknowledged on the link it came by."""
        if not self.peers.handled_batch(m.sender, m.seq):
            self._ack_peer(conn, m.seq)
            return
        dispatch = self.dispatcher.dispatch
        for message in m.messages:
            try:
                await dispatch(conn, message, None)
            except Exception:
                logger.exception("a peer's %s message failed", type(message).__name__)
        self._ack_peer(conn, m.seq)

    def _ack_peer(self, conn: Any, seq: int) -> None:
        try:
            conn.send_nowait(w.PeerAck(self.node_hex, seq))
        except (transport.TransportError, trio.WouldBlock):
            pass  # the link broke (the peer resumes from our hello) or is full (a later ack covers it)

    def _h_peer_ack(self, conn: Any, m: w.PeerAck) -> None:
        self.peers.acked(m.receiver, m.seq)

    def _h_hello(self, conn: Any, m: w.Hello, reply: Any) -> None:
        role, worker_id, pid, info = m.role, m.worker_id, m.pid, m.info
        client = Client(conn=conn, role=role, worker_id=worker_id, pid=pid,
                         id_prefix=info.id_prefix)
        previous = self.clients.departed.pop(worker_id, None) if worker_id is not None else None
        if previous is not None:  # a driver back after losing its link
            client.owned = previous.owned
        if role == "worker":
            worker = self.pool.workers.get(worker_id) if worker_id is not None else None
            if worker is None:
                reply.fail(ValueError(f"unknown worker id {worker_id!r}"))
                return
            client.worker = worker
            worker.conn = conn
            worker.direct_address = info.direct_address
            # Its direct socket takes the results of the tasks it submitted, pushed
            # by the workers that ran them (``worker._leased``), as a driver's does.
            client.direct_address = info.direct_address
            if worker.state == "starting":
                self.pool.starting -= 1
            self.sched.worker_ready(worker)
        else:
            client.log_to_driver = info.log_to_driver
            client.direct_address = info.direct_address
            job_id = info.job_id
            if job_id is not None:
                self.jobs[job_id] = dict(attrs.asdict(info), pid=pid, started_at=time.time())
                self.spawn(_quietly, self.control.put_job, job_id.hex(), {"pid": pid, "role": role})
        self.clients.add(client)
        if self.faults.installed and role != "node":
            self.faults.greet(conn)
        reply.send(w.HelloReply(
            node_id=self.node_id,
            address=self.unix_address,
            store_address=self.store_address,
            gcs_address=self.gcs_address,
            session_dir=str(self.config.session_dir),
            # So that a driver can say which node died and where its logs are.
            log_dir=str(self.config.session_dir / "logs"),
            pid=os.getpid(),
            head=self.config.head,
            # A node resumes its numbered batches after the last one handled here.
            peer_handled=self.peers.handled.get(info.node_id or "", 0) if role == "node" else 0,
        ))

    def _h_bye(self, conn: Any, m: w.Bye) -> None:
        """A driver shuts down: when its link closes, it is gone (no grace period)."""
        client = self.clients.by_conn.get(conn)
        if client is not None:
            client.leaving = True

    def _h_export(self, conn: Any, m: w.Export) -> None:
        fid, blob, name, sys_path = m.function_id, m.blob, m.name, m.sys_path
        if fid in self.functions:
            return
        record = {"blob": bytes(blob), "name": name, "sys_path": sys_path}
        self.functions[fid] = record
        self.spawn(_quietly, self.control.put_function, fid, record)

    def _h_submit(self, conn: Any, m: w.Submit) -> None:
        submit = self.sched.submit
        owned = self.clients.owned_by(conn)
        for spec in m.specs:
            if owned is not None:  # a driver's: freed when it leaves
                owned.update(spec.return_ids())
            if spec.__class__ is not TaskSpec:  # an actor creation or method call
                if spec.__class__ is CallSpec:
                    self.objects.lineage.actor_call(spec.task_id)
                self.actors.submit(conn, spec)
                continue
            submit(spec)

    def _h_cancel(self, conn: Any, m: w.CancelTask) -> None:
        if not self.cluster.cancel(m.task_id, m.force, m.recursive):  # not forwarded: here
            self.sched.cancel(m.task_id, m.force, m.recursive)

    def _h_blocked(self, conn: Any, m: w.Blocked) -> None:
        worker = self.clients.worker_of(conn)
        if worker is not None:
            self.sched.blocked(worker, m.task_id)

    def _h_unblocked(self, conn: Any, m: w.Unblocked) -> None:
        worker = self.clients.worker_of(conn)
        if worker is not None:
            self.sched.unblocked(worker, m.task_id)

    def _h_done(self, conn: Any, m: w.TaskDone) -> None:
        worker = self.clients.worker_of(conn)
        if worker is not None:
            self.objects.hold_store_objects(m.results, conn)
            self.sched.task_done(worker, m.task_id, m.results, m.retry, m.pushed)

    # Direct task submission (``local_scheduler._leases``).

    def _h_request_lease(self, conn: Any, m: w.RequestLease, reply: Any) -> None:
        client = self.clients.by_conn.get(conn)
        if client is None or client.worker_id is None:
            reply.send(w.LeaseReply(None, reason="the link is not registered"))
            return
        reply.send(self.sched.leases.grant(client.worker_id, dict(m.resources), m.lease_id))

    def _h_return_lease(self, conn: Any, m: w.ReturnLease) -> None:
        self.sched.leases.returned(m.lease_id, m.pushed)

    def _h_leased_lost(self, conn: Any, m: w.LeasedTasksLost) -> None:
        self.sched.leases.lost(m.lease_id, list(m.specs))

    def _h_leased_start(self, conn: Any, m: w.LeasedStart) -> None:
        worker = self.clients.worker_of(conn)
        if worker is None:
            return
        spec = m.spec
        owner = self.clients.by_id.get(spec.owner)
        if owner is not None and owner.role == "driver":
            owner.owned.update(spec.return_ids())  # freed when it leaves
        self.sched.leases.started(worker, m.lease_id, spec)

    def _h_stream_items(self, conn: Any, m: w.StreamItems) -> None:
        """Values a generator task or actor method yielded (``core_worker._generator``):
        recorded as its results are, and pushed to the caller who owns them, unless
        its one return will carry their refs (``num_returns="dynamic"``)."""
        owner, results, push = m.owner, m.results, m.push
        if not results:
            return
        self.objects.hold_store_objects(results, conn)
        entries = self.directory.entries
        existed = {oid for oid, _e, _d in results if oid in entries}
        self.directory.put_many(results)
        # Counted in the lineage of a generator task submitted here; those a
        # rebuild's re-run yields again but nobody holds are let go at once.
        unwanted = self.objects.lineage.items_made([r[0] for r in results], existed)
        if unwanted:
            self.directory.free(unwanted)
            gone = set(unwanted)
            results = [r for r in results if r[0] not in gone]
        client = self.clients.by_id.get(owner)
        if client is not None and client.role == "driver":
            client.owned.update(oid for oid, _e, _d in results)  # freed with the driver
        if push and results:
            self.deliver(owner, results)
        elif results and self.cluster.forwarded_in:
            # A dynamic generator's items of a task forwarded here: home to its
            # node, where the refs in its value look for them.
            self.cluster.send_home(task_id_of(results[0][0]), results)

    def _h_get_function(self, conn: Any, m: w.GetFunction, reply: Any) -> None:
        fid = m.function_id
        record = self.functions.get(fid)
        if record is not None:
            reply.send(record)
            return

        async def lookup() -> None:
            try:
                rec = await self.control.get_function(fid)
            except Exception as exc:
                reply.fail(exc)
                return
            if rec is None:
                reply.fail(KeyError(f"function {fid.hex()} was never exported"))
            else:
                self.functions[fid] = rec
                reply.send(rec)

        if not self.spawn(lookup):
            reply.fail(RuntimeError("the node is stopping"))

    def _h_call(self, conn: Any, m: w.AdminCall, reply: Any) -> None:
        from ._calls import dispatch_call

        if m.name == "fault":  # fault injection (``_faults``): it needs the caller's link
            if not m.args:
                raise ValueError("the admin call 'fault' needs an op (crash, kill, rules, ...)")
            self.faults.call(conn, m.args, reply)
            return
        dispatch_call(self, m.name, m.args, reply)


def _import_pyarrow_in_background() -> None:
    """Import pyarrow in a thread of its own now, not on the node's loop at the first
    object it serves to another node: the import costs the loop 0.1-0.2 s of CPU on a
    quiet machine and over a second on a loaded one, during which no heartbeat goes
    out, and a node silent for ``node_timeout()`` is declared dead. (The loop still
    waits for the import's lock if it needs pyarrow before the thread is done.)"""

    def run() -> None:
        try:
            import pyarrow  # noqa: F401
        except Exception as exc:  # the first zero-copy use will say it again
            logger.warning("importing pyarrow failed: %r", exc)

    threading.Thread(target=run, name="import-pyarrow", daemon=True).start()


async def _logged(fn: Any, *args: Any) -> None:
    """A short-lived task of the node (``spawn``): an exception in it is a bug in
    that request's handling, logged with its traceback; it must not take the whole
    node (and every worker and actor on it) down."""
    try:
        await fn(*args)
    except Exception:
        logger.exception("a task of the node (%s) failed", getattr(fn, "__qualname__", fn))


async def _quietly(fn: Any, *args: Any) -> None:
    try:
        await fn(*args)
    except Exception as exc:
        logger.warning("%s failed: %s", getattr(fn, "__name__", fn), exc)
