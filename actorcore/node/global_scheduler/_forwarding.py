"""Tasks between nodes: forwarding, results going home, retries on node death.

A task leaves its node only through the global scheduler (``_scheduler``), which
hands it to ``ClusterTasks.forward``. From then on two nodes know of it:

- the *origin* (where it was submitted, the node of its owner) keeps it in
  ``forwarded_out`` (task id -> spec, target node) until its results come back;
- the *target* keeps its origin in ``forwarded_in`` and runs it as its own task,
  except that it never spills it again (no ping-pong between two nodes that each
  think the other is less loaded) unless it cannot run there at all.

Messages between the two (over ``node.peers``; node ids are hex strings)::

    origin -> target  ForwardTasks(origin, [TaskSpec, ...], {function_id: record})
                      run these (with the code of the functions not sent there yet:
                      the target must not depend on the GCS having the export yet)
    target -> origin  ForwardedResults(target, [(oid, is_error, data), ...])
                      a forwarded task ended (its value, error, or STORE: the value
                      stays in the target's store, the origin records where)
    origin -> target  CancelForwarded(task_id, force, recursive)

The target asks the origin for the task's arguments itself, as for any object it
needs (``object_manager._remote``): the origin's directory is the authority of the
objects its processes own, and the origin answers once each one is ready.

Node death. ``on_node_dead`` re-places every task forwarded to the dead node while
it has retries left (as for a worker's death: ``max_retries``), and fails the rest
with ``NodeDiedError`` naming the node. Tasks the dead node forwarded *here* run on:
their results have nobody to go to and are dropped (their owner died with it).

The state lives here, owned by the node; the messages are served by the node's
handler table, so a crash of the ``global_scheduler`` component loses nothing.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from ...exceptions import NodeDiedError
from ...protocol import _wire as w
from ...protocol._ids import DYNAMIC, is_stream_item, task_id_of
from ...protocol._messages import TaskSpec
from .._peers import NodePeers, PeerUnavailable
from ..gcs_client._membership import ClusterView, NodeStatus
from ..local_scheduler._scheduler import SchedulerState

__all__ = ["ClusterTasks", "ForwardingNode"]

logger = logging.getLogger("actorcore.scheduler")


class ResultsSink(Protocol):
    """Where the results of a task forwarded from here go (``object_manager._remote``)."""

    def results_arrived(self, owner: bytes, sender: str, results: list,
                        deliver: bool = True) -> None: ...


class ForwardingNode(Protocol):
    """What forwarding uses of its node (``_runtime.NodeRuntime``)."""

    @property
    def node_hex(self) -> str: ...
    @property
    def view(self) -> ClusterView: ...
    @property
    def peers(self) -> NodePeers: ...
    @property
    def sched(self) -> SchedulerState: ...
    @property
    def remote(self) -> ResultsSink: ...
    @property
    def functions(self) -> dict[bytes, dict]: ...


class ClusterTasks:
    """The tasks this node forwarded and was forwarded (see the module docstring)."""

    def __init__(self, node: ForwardingNode) -> None:
        self.node = node
        #: task id -> (spec, node it went to): tasks of this node running elsewhere.
        self.forwarded_out: dict[bytes, tuple[TaskSpec, str]] = {}
        #: task id -> node it came from: tasks of other nodes running here.
        self.forwarded_in: dict[bytes, str] = {}
        #: node id -> the function ids whose code was sent there with a task.
        self.functions_sent: dict[str, set[bytes]] = {}
        self.sent = 0
        self.received = 0
        node.view.on_node_dead(self.on_node_dead)

    def register(self, dispatcher: Any) -> None:
        """Route the task messages of other nodes to this component."""
        dispatcher.register(w.ForwardTasks, self._h_forward, oneway=True)
        dispatcher.register(w.ForwardedResults, self._h_results, oneway=True)
        dispatcher.register(w.CancelForwarded, self._h_cancel, oneway=True)

    # -- origin side -------------------------------------------------------------

    def forward(self, spec: TaskSpec, node_id: str) -> bool:
        """Send ``spec`` to ``node_id``; False if that node is gone (place it again)."""
        functions: dict[bytes, dict] = {}
        sent = self.functions_sent.setdefault(node_id, set())
        if spec.function_id not in sent:
            record = self.node.functions.get(spec.function_id)
            if record is not None:
                functions[spec.function_id] = record
        try:
            self.node.peers.send(node_id, w.ForwardTasks(self.node.node_hex, [spec], functions))
        except PeerUnavailable:
            return False
        sent.update(functions)
        self.forwarded_out[spec.task_id] = (spec, node_id)
        self.sent += 1
        return True

    def cancel(self, task_id: bytes, force: bool, recursive: bool) -> bool:
        """Pass a cancel on to the node running ``task_id``; False if it runs here."""
        entry = self.forwarded_out.get(task_id)
        if entry is None:
            return False
        try:
            self.node.peers.send(entry[1], w.CancelForwarded(task_id, force, recursive))
        except PeerUnavailable:
            pass  # its death re-places or fails it
        return True

    def _h_results(self, conn: Any, m: w.ForwardedResults) -> None:
        sender, results = m.target, m.results
        if not results:
            return
        tid = task_id_of(results[0][0])
        ends = _ends(results)
        entry = self.forwarded_out.pop(tid, None) if ends else self.forwarded_out.get(tid)
        if entry is None:
            # Not (or no longer) ours: e.g. re-placed after its first node was
            # declared dead, yet the results of that first attempt arrived.
            logger.info("dropping results of task %s from node %s: not forwarded there",
                        task_id_of(results[0][0]).hex(), sender[:12])
            return
        spec = entry[0]
        # The items of a dynamic generator are not pushed to their owner: the refs
        # in the task's value (its end) fetch them from here.
        self.node.remote.results_arrived(spec.owner, sender, results,
                                         deliver=ends or spec.num_returns != DYNAMIC)
        if ends:
            self.node.sched.release_held(spec.task_id)

    def on_node_dead(self, status: NodeStatus) -> None:
        dead = status.node_id
        for task_id in [t for t, (_s, n) in self.forwarded_out.items() if n == dead]:
            spec, _node = self.forwarded_out.pop(task_id)
            if spec.max_retries != 0:
                logger.info("node %s died: placing task %s again", dead[:12], spec.name)
                self.node.sched.retry_elsewhere(spec)
            else:
                self.node.sched.fail_task(spec, NodeDiedError(
                    f"the node running task {spec.name} ({dead[:12]}, pid {status.pid}) "
                    f"died ({status.death_reason or 'unreachable'}) and no retries are left"))
        for task_id in [t for t, n in self.forwarded_in.items() if n == dead]:
            del self.forwarded_in[task_id]
        self.functions_sent.pop(dead, None)

    # -- target side -------------------------------------------------------------

    def _h_forward(self, conn: Any, m: w.ForwardTasks) -> None:
        origin, specs, functions = m.origin, m.specs, m.functions
        for fid, record in functions.items():
            self.node.functions.setdefault(fid, record)
        for spec in specs:
            self.forwarded_in[spec.task_id] = origin
            self.received += 1
            self.node.sched.accept(spec, dep_node=origin)

    def _h_cancel(self, conn: Any, m: w.CancelForwarded) -> None:
        self.node.sched.cancel(m.task_id, m.force, m.recursive)

    def send_home(self, task_id: bytes, results: list) -> bool:
        """``results`` of a forwarded task: to its origin. False if not forwarded.
        The items a generator yields go home as they come; the task is done here
        with its end (`_ends`)."""
        if _ends(results):
            origin = self.forwarded_in.pop(task_id, None)
        else:
            origin = self.forwarded_in.get(task_id)
        if origin is None:
            return False
        try:
            self.node.peers.send(origin, w.ForwardedResults(self.node.node_hex, results))
        except PeerUnavailable:
            logger.info("task %s: its origin node %s is gone, results dropped",
                        task_id.hex(), origin[:12])
        return True

    def statistics(self) -> dict:
        return {"forwarded_out": len(self.forwarded_out),
                "forwarded_in": len(self.forwarded_in), "sent": self.sent,
                "received": self.received}


def _ends(results: list) -> bool:
    """Whether ``results`` end their task: its returns, not only items a generator
    yielded (those go home one batch at a time while it runs, before its end)."""
    return not all(is_stream_item(r[0]) for r in results)
