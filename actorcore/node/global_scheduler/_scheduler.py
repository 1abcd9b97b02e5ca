"""The ``global_scheduler`` component: places tasks no single node could take.

A local scheduler forwards a task whose resource request its node can never
satisfy. The global scheduler looks at every registered node (GCS nodes table): if
one could run it, the task goes there (multi-node placement arrives with multi-node
clusters: by feasibility, load and where the argument bytes live); if none can, the
task fails at once with a ``TaskUnschedulableError`` naming the request and the
cluster's capacity — an infeasible request is an error, never a hang.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable
from typing import Any

import trio

from ...protocol._messages import TaskSpec
from ..local_scheduler._ledger import fits
from ..local_scheduler._scheduler import SchedulerState

__all__ = ["GlobalScheduler"]


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
            while state.infeasible:
                # The nodes table is read once per batch: a burst of infeasible
                # submits costs one GCS read.
                nodes = await self._list_nodes()
                for spec in list(state.infeasible.values()):
                    self._decide(spec, nodes)
            await state.infeasible_added.wait()

    def _decide(self, spec: TaskSpec, nodes: list[dict]) -> None:
        capable = [n for n in nodes if fits(spec.resources, n.get("resources", {}))]
        if not capable:
            totals: dict[str, float] = collections.defaultdict(float)
            for n in nodes:
                for k, v in n.get("resources", {}).items():
                    totals[k] += v
            self._state.fail_unschedulable(
                spec,
                f"task {spec.name} requests {_fmt(spec.resources)} but no node in the "
                f"cluster can ever provide it (largest node: "
                f"{_fmt(max((n.get('resources', {}) for n in nodes), key=len, default={}))}, "
                f"cluster total: {_fmt(dict(totals))})",
            )
        else:
            # Single-node runtime: a capable node other than ours cannot exist yet.
            self._state.fail_unschedulable(spec, f"task {spec.name}: no capable node reachable")

    def snapshot(self) -> dict:
        return {"kind": "global_scheduler", "pending": len(self._state.infeasible)}


def _fmt(res: dict[str, float]) -> str:
    return "{" + ", ".join(
        f"{k}: {int(v) if math.isfinite(v) and v == int(v) else v}" for k, v in sorted(res.items())
    ) + "}"
