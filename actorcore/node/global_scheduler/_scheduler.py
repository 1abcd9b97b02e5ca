"""The ``global_scheduler`` component: places what the local scheduler did not keep.

Bottom-up scheduling (paper §4.2.2). The local scheduler keeps a task when
``_placement.keep_local`` says so (on a one-node cluster: whenever the node can
ever run it) and otherwise leaves it in the scheduler state's ``infeasible``
table — "to be placed" — and wakes this component. For each such task it asks
``_placement.choose_node`` (feasibility, argument bytes per node, load,
``SPREAD``, ``NodeAffinity``) and then:

- this node: the task joins the local queue (``SchedulerState.accept``);
- another node: it is forwarded there (``_forwarding.ClusterTasks.forward``);
- no live node can ever run it: it waits, as Ray's infeasible tasks do, with a
  warning naming the request and the cluster (logged once per resource shape and
  shown by ``actorcore status``), until a node that can joins (membership wakes
  this loop) or it is cancelled;
- a hard ``NodeAffinity`` to a node that is dead or cannot run it: the task fails
  with ``TaskUnschedulableError`` saying so.

Load between heartbeats. The view's figures of other nodes are as fresh as their
last heartbeat (``ACTORCORE_HEARTBEAT_INTERVAL``). A burst placed on those figures
alone would all go to whichever node looked idlest. So the scheduler counts what
it sent to each node since the view's last refresh and charges it to that node
(its queue, and its free resources) before each decision; this node's own figures
are read live from its ledger and queues.

It keeps nothing of its own that matters: the tasks to place stay in the state's
``infeasible`` table (owned by the node) until each is decided, so a crash of this
component loses none; the restarted one starts with a pass over that table.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import attrs
import trio

from ...protocol._messages import TaskSpec
from ..gcs_client._membership import ClusterView
from ..local_scheduler._ledger import fits
from ..local_scheduler._queues import ReadyQueues
from ..local_scheduler._scheduler import SchedulerState
from ._forwarding import ClusterTasks
from ._placement import SpreadState, choose_node, format_resources

__all__ = ["RECHECK", "STALE_CHARGES", "GlobalScheduler"]

logger = logging.getLogger("actorcore.scheduler")

#: Seconds between passes while tasks wait for a node that can run them.
RECHECK = 1.0

#: Seconds after which what was sent to other nodes is no longer charged to them,
#: even if the view has not been refreshed meanwhile (see `_adjusted_view`).
STALE_CHARGES = 2.0


class SchedulingNode(Protocol):
    """What the global scheduler uses of its node (``_runtime.NodeRuntime``)."""

    @property
    def view(self) -> ClusterView: ...
    @property
    def sched(self) -> SchedulerState: ...
    @property
    def cluster(self) -> ClusterTasks: ...
    @property
    def remote(self) -> Any: ...


class GlobalScheduler:
    """The ``global_scheduler`` component (see the module docstring)."""

    def __init__(self, node: SchedulingNode) -> None:
        self._node = node
        self._state = node.sched
        self._spread = SpreadState()
        self._sent: dict[str, list[dict[str, float]]] = {}
        self._refreshes = -1
        self._sent_since = 0.0
        self.placed = 0

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        state = self._state
        task_status.started()
        while True:
            state.infeasible_added = trio.Event()
            if state.infeasible:
                view = self._adjusted_view()
                for spec in list(state.infeasible.values()):
                    view = self._place(spec, view)
            if state.infeasible:  # some wait for a node: look again later
                with trio.move_on_after(RECHECK):
                    await state.infeasible_added.wait()
            else:
                await state.infeasible_added.wait()

    def _adjusted_view(self) -> ClusterView:
        """The cluster view with what was sent since its last refresh charged to
        each node, and this node's own live figures (see the module docstring)."""
        node = self._node
        view = node.view
        now = trio.current_time()
        if view.refreshes != self._refreshes or now - self._sent_since > STALE_CHARGES:
            # A refresh brings heartbeats that count what was sent (or soon will).
            # Without one for STALE_CHARGES seconds (a loop starved on a loaded
            # machine), the charges are forgotten too: piled up, they would make
            # every other node look full and keep all work here.
            self._refreshes = view.refreshes
            self._sent = {}
            self._sent_since = now
        out = ClusterView(view.node_id)
        for nid, status in view.nodes.items():
            if nid == view.node_id:
                stats = self._state
                status = attrs.evolve(status, available=dict(stats.available),
                                      queued=len(stats.waiting) + len(stats.ready))
            else:
                sent = self._sent.get(nid)
                if sent:
                    available = dict(status.available)
                    for res in sent:
                        for k, v in res.items():
                            available[k] = available.get(k, 0.0) - v
                    status = attrs.evolve(status, available=available,
                                          queued=status.queued + len(sent))
            out.nodes[nid] = status
        return out

    def _place(self, spec: TaskSpec, view: ClusterView) -> ClusterView:
        node = self._node
        state = self._state
        if state.group_verdict is not None:
            # A task in a placement group waits while its group is pending (as
            # Ray's) and fails once the group is removed.
            verdict = state.group_verdict(spec)
            if isinstance(verdict, BaseException):
                state.fail_infeasible(spec, verdict)
                return view
            if verdict:
                return view
        if not view.multi:
            if fits(spec.resources, state.total):
                state.infeasible.pop(spec.task_id, None)
                state.accept(spec)
            else:
                self._warn(spec, f"no node can provide {format_resources(spec.resources)} (this "
                                 f"node has {format_resources(state.total)})")
            return view
        placement = choose_node(spec.resources, spec.strategy, view,
                                locality=node.remote.locality(spec.deps),
                                spread=self._spread)
        target = placement.node_id
        if target is None:
            if placement.infeasible:
                self._warn(spec, placement.reason)
            else:
                state.fail_unschedulable(spec, f"task {spec.name}: {placement.reason}")
            return view
        state.infeasible.pop(spec.task_id, None)
        self.placed += 1
        if target == view.node_id:
            state.accept(spec)
            return self._adjusted_view()
        if not node.cluster.forward(spec, target):
            state.infeasible[spec.task_id] = spec  # it just left: next pass
            return view
        self._sent.setdefault(target, []).append(dict(spec.resources))
        return self._adjusted_view()

    def _warn(self, spec: TaskSpec, reason: str) -> None:
        state = self._state
        shape = ReadyQueues.shape(spec)
        if shape not in state.unplaced_warnings:
            message = (f"tasks requesting {format_resources(spec.resources)} (first: {spec.name}) wait "
                       f"for a node that can run them: {reason}")
            state.unplaced_warnings[shape] = message
            logger.warning("%s", message)

    def snapshot(self) -> dict:
        return {"kind": "global_scheduler", "pending": len(self._state.infeasible),
                "placed": self.placed, **self._node.cluster.statistics()}
