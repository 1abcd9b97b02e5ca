"""The node as its local scheduler sees it (``local_scheduler.SchedulerHost``).

Everything the scheduler does outside its own state goes through these calls on
the node's parts: results to their owners, the worker pool, lineage, the argument
watch and where a task runs. Synchronous, on the node's loop.
"""

from __future__ import annotations

from typing import Any

from ..protocol._messages import TaskSpec
from .global_scheduler._placement import keep_local
from .local_scheduler._ledger import fits
from .local_scheduler._scheduler import SchedulerState
from .local_scheduler._workers import WorkerInfo

__all__ = ["SchedulerHostOfNode"]


class SchedulerHostOfNode:
    """The node as the scheduler sees it (``local_scheduler.SchedulerHost``)."""

    def __init__(self, node: Any) -> None:  # the ``_runtime.NodeRuntime`` (it imports this)
        self._node = node

    def deliver(self, owner: bytes, results: list) -> None:
        self._node.deliver(owner, results)

    def request_worker(self) -> None:
        self._node.pool.wakeup.set()

    def kill_worker(self, worker: WorkerInfo) -> None:
        self._node.pool.kill(worker)

    def record_lineage(self, spec: TaskSpec) -> None:
        self._node.objects.record_lineage(spec)

    def keep_lineage(self, spec: TaskSpec) -> None:
        self._node.objects.lineage.record(spec)

    def write_lineage(self, spec: TaskSpec) -> None:
        self._node.control.record_task(spec)

    def call_later(self, delay: float, fn: Any) -> None:
        self._node._call_later(delay, fn)

    def owner_address(self, owner: bytes) -> str | None:
        return self._node.clients.owner_address(owner)

    def watch_deps(self, oids: list[bytes], dep_node: str | None = None) -> None:
        self._node.remote.need(oids, dep_node)
        self._node.dep_watch.watch(oids)

    def keep_local(self, spec: TaskSpec, state: SchedulerState) -> bool:
        node = self._node
        view = node.view
        if not view.multi:
            return fits(spec.resources, state.total)
        if spec.deps:
            # Its arguments' bytes mostly elsewhere: the global scheduler weighs that.
            here = node.remote.locality(spec.deps)
            mine = here.pop(node.node_hex, 0)
            if here and max(here.values()) > mine:
                return False
        return keep_local(spec.resources, spec.strategy, view, available=state.available,
                          total=state.total,
                          queued=len(state.waiting) + len(state.ready))

    def pool_starting(self) -> int:
        return self._node.pool.starting

    def pool_can_grow(self) -> bool:
        return self._node.pool.can_grow()
