"""The ``global_scheduler`` component: places tasks no single node could take.

A local scheduler forwards a task whose resource request its node can never
satisfy. The global scheduler looks at every live node in the GCS nodes table:

- if none could ever run it (the request is larger than every node), the task fails
  at once with a ``TaskUnschedulableError`` naming the request and the cluster's
  capacity. Ray would let it wait for an autoscaler; this runtime has none, so a
  wait would be a silent hang for what is nearly always a typo or a missing
  ``--resources``: an error that says what is missing is kept (the tests check it);
- if another node could run it, the task waits, as Ray's infeasible tasks do, with
  a warning naming the request and the cluster's capacity — logged once per
  resource shape and shown by ``actorcore status`` — until a node takes it. Tasks
  go to other nodes when multi-node placement arrives (by feasibility, load and
  where the argument bytes live); until then they wait until cancelled, or fail as
  above once no live node could run them any more (the table is read again every
  ``RECHECK`` seconds while any wait, and at every new arrival).
"""

from __future__ import annotations

import collections
import logging
import math
from collections.abc import Callable
from typing import Any

import trio

from ...protocol._messages import TaskSpec
from ..local_scheduler._ledger import fits
from ..local_scheduler._scheduler import ReadyQueues, SchedulerState

__all__ = ["RECHECK", "GlobalScheduler"]

logger = logging.getLogger("actorcore.scheduler")

#: Seconds between reads of the nodes table while tasks wait for a node.
RECHECK = 1.0


class GlobalScheduler:
    """The ``global_scheduler`` component: places tasks no single node could take.

    A local scheduler forwards a task whose resource request its node can never
    satisfy. The global scheduler looks at every registered node (GCS nodes table):
    if one could run it, the task goes there (multi-node placement arrives with
    multi-node clusters); if none can, the task fails at once with a
    ``TaskUnschedulableError`` naming the request and the cluster's capacity — an
    infeasible request is an error, never a hang.

    It keeps nothing of its own: the tasks it has to place stay in the scheduler
    state's ``infeasible`` table (which the node owns) until it has decided on each.
    A crash while it reads the nodes table — with tasks taken but not decided —
    loses none: the restarted component starts with a pass over that table.
    """

    def __init__(self, state: SchedulerState, list_nodes: Callable[[], Any]) -> None:
        self._state = state
        self._list_nodes = list_nodes
        self.placed = 0

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        state = self._state
        task_status.started()
        while True:
            state.infeasible_added = trio.Event()
            if state.infeasible:
                # The nodes table is read once per batch: a burst of infeasible
                # submits costs one GCS read.
                nodes = await self._list_nodes()
                for spec in list(state.infeasible.values()):
                    self._decide(spec, nodes)
            if state.infeasible:  # some wait for a node: read the table again later
                with trio.move_on_after(RECHECK):
                    await state.infeasible_added.wait()
            else:
                await state.infeasible_added.wait()

    def _decide(self, spec: TaskSpec, nodes: list[dict]) -> None:
        state = self._state
        if state.group_verdict is not None:
            # A task in a placement group waits while its group is pending (as
            # Ray's) and fails once the group is removed.
            verdict = state.group_verdict(spec)
            if isinstance(verdict, BaseException):
                state.fail_infeasible(spec, verdict)
                return
            if verdict:
                return
        alive = [n for n in nodes if n.get("alive", True)]
        capable = [n for n in alive
                   if n.get("node_id") != state.node_id
                   and fits(spec.resources, n.get("resources", {}))]
        totals: dict[str, float] = collections.defaultdict(float)
        for n in alive:
            for k, v in n.get("resources", {}).items():
                totals[k] += v
        if not capable:
            largest: dict[str, float] = max(
                (n.get("resources", {}) for n in alive), key=len, default={})
            state.fail_unschedulable(
                spec,
                f"task {spec.name} requests {_fmt(spec.resources)} but no node in the "
                f"cluster can ever provide it (largest node: {_fmt(largest)}, "
                f"cluster total: {_fmt(dict(totals))})",
            )
            return
        shape = ReadyQueues.shape(spec)
        if shape not in state.unplaced_warnings:
            message = (
                f"tasks requesting {_fmt(spec.resources)} (first: {spec.name}) wait: this "
                f"node cannot run them and cannot yet hand them to "
                f"{_count(len(capable), 'node')} that could "
                f"({', '.join(str(n.get('node_id', '?'))[:12] for n in capable)}); "
                f"cluster total: {_fmt(dict(totals))}"
            )
            state.unplaced_warnings[shape] = message
            logger.warning("%s", message)

    def snapshot(self) -> dict:
        return {"kind": "global_scheduler", "pending": len(self._state.infeasible)}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _fmt(res: dict[str, float]) -> str:
    return "{" + ", ".join(
        f"{k}: {int(v) if math.isfinite(v) and v == int(v) else v}" for k, v in sorted(res.items())
    ) + "}"
