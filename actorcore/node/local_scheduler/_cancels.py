"""Tasks ended from outside their run: cancels, departed owners, failed placements.

Functions of the node's `SchedulerState` (``_scheduler``), which calls them from
its methods of the same names: ``cancel`` (a queued task fails at once, a running
one is interrupted or its worker killed, ``recursive`` takes its descendants),
``drop_owner`` (a departed owner's queued tasks are forgotten), ``fail_where`` (a
removed placement group's tasks fail), and the global scheduler's two verdicts
``fail_infeasible`` / ``fail_unschedulable``. Same loop, same state, same rules as
the rest of the scheduler: split out of ``_scheduler`` by job, to keep each module
one job and readable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ...exceptions import TaskCancelledError, TaskUnschedulableError
from ...protocol._messages import TaskSpec
from ...protocol._wire import InterruptTask
from ..object_manager._directory import ObjectDirectory
from ._leases import LeaseBook
from ._queues import ReadyQueues, WaitingTask
from ._workers import WorkerInfo

__all__ = [
    "CANCELLED_TREES_KEPT",
    "CANCEL_GRACE",
    "CancelState",
    "cancel",
    "drop_owner",
    "fail_infeasible",
    "fail_unschedulable",
    "fail_where",
]

#: Seconds a running task has to honour a (non-force) cancel before its worker is killed.
CANCEL_GRACE = 1.0

#: Recursively cancelled tasks remembered after their end (``cancelled_trees``).
CANCELLED_TREES_KEPT = 4096


class CancelState(Protocol):
    """What these functions read and call of the scheduler's state
    (``_scheduler.SchedulerState``)."""

    host: Any
    directory: ObjectDirectory
    leases: LeaseBook
    waiting: dict[bytes, WaitingTask]
    ready: ReadyQueues
    running: dict[bytes, WorkerInfo]
    infeasible: dict[bytes, TaskSpec]
    cancelled: set[bytes]
    children: dict[bytes, set[bytes]]
    cancelled_trees: dict[bytes, bool]
    doomed: dict[bytes, BaseException]

    def release_held(self, task_id: bytes) -> None: ...
    def _fail(self, spec: TaskSpec, error: BaseException) -> None: ...
    def _forget_edge(self, spec: TaskSpec) -> None: ...


def cancel(state: CancelState, task_id: bytes, force: bool, recursive: bool = False) -> None:
    """Cancel ``task_id``: a queued task fails at once; a running one is interrupted
    (``force``: its worker is killed). ``recursive``: the tasks it submitted, and
    theirs, are cancelled the same way, and so are those it submits later while
    it still runs (as Ray's ``cancel(recursive=True)``, for tasks; the actor
    calls it made are not cancelled)."""
    if not recursive:
        _cancel_one(state, task_id, force)
        return
    # Its descendants (iteratively: a chain of nested tasks may be deep).
    seen = {task_id}
    stack = list(state.children.get(task_id, ()))
    order = []
    while stack:
        tid = stack.pop()
        if tid in seen:
            continue
        seen.add(tid)
        order.append(tid)
        stack.extend(state.children.get(tid, ()))
    # Marked whether it runs here or not: it may have ended already with children
    # pushed on leases whose start is still on its way (see ``cancelled_trees``);
    # and every running task of the tree, for what it submits later.
    _mark_cancelled_tree(state, task_id, force)
    running = [tid for tid in [task_id, *order] if tid in state.running]
    for tid in running:
        if tid != task_id:
            _mark_cancelled_tree(state, tid, force)
    # The running tasks are interrupted before anything else is done: a process
    # learns that a task of its own was cancelled with its tree (the interrupt says
    # ``recursive``) before it can see any other effect of the cancel, such as a
    # queued child failed below, whose results go to it on the same ordered link,
    # and what it submits from then on comes here, which fails it (the worker
    # sends the ends of its cancelled tasks through here too: ``worker._process``,
    # `_h_interrupt`). Those not started yet first: a worker that ends an
    # interrupted task must not start a pipelined sibling whose cancel is still on
    # its way.
    running.sort(key=lambda t: t not in state.running[t].queued)
    for tid in running:
        _cancel_one(state, tid, force, recursive=True)
    interrupted = set(running)
    for tid in order:
        if tid not in interrupted:
            _cancel_one(state, tid, force, recursive=True)
    if task_id not in interrupted:
        _cancel_one(state, task_id, force, recursive=True)


def _mark_cancelled_tree(state: CancelState, task_id: bytes, force: bool) -> None:
    trees = state.cancelled_trees
    trees.pop(task_id, None)
    trees[task_id] = force
    while len(trees) > CANCELLED_TREES_KEPT:
        del trees[next(iter(trees))]


def _cancel_one(state: CancelState, task_id: bytes, force: bool, recursive: bool = False) -> None:
    spec = state.infeasible.pop(task_id, None)
    if spec is not None:
        state._fail(spec, TaskCancelledError(task_id, f"task {spec.name} was cancelled"))
        return
    record = state.waiting.pop(task_id, None)
    if record is not None:
        spec = record.spec
        state.directory.unpin(spec.deps)
        state._fail(spec, TaskCancelledError(task_id, f"task {spec.name} was cancelled"))
        return
    spec = state.ready.remove_task(task_id)
    if spec is not None:
        state.directory.unpin(spec.deps)
        state._fail(spec, TaskCancelledError(task_id, f"task {spec.name} was cancelled"))
        return
    worker = state.running.get(task_id)
    if worker is not None:
        state.cancelled.add(task_id)
        if force:
            worker.force_cancelled.add(task_id)
            state.host.kill_worker(worker)
        elif worker.conn is not None:
            # Raised inside the task; a task stuck in a blocking C call (sleep,
            # I/O) cannot see it, so after a grace period its worker is killed.
            worker.conn.send_nowait(InterruptTask(task_id, recursive))

            def escalate() -> None:
                if state.running.get(task_id) is worker:
                    worker.force_cancelled.add(task_id)
                    state.host.kill_worker(worker)

            state.host.call_later(CANCEL_GRACE, escalate)
        return
    if state.leases.awaiting_death(task_id):
        # Pushed on a lease, handed back as lost by its submitter, never
        # reported by its worker: settled at that worker's death, as cancelled.
        state.cancelled.add(task_id)


def drop_owner(state: CancelState, owner: bytes) -> int:
    """Forget the queued (not running) tasks of a departed owner, and end its
    leases once their tasks have; return how many tasks."""
    state.leases.drop_owner(owner)
    dropped = 0
    for spec in [s for s in state.infeasible.values() if s.owner == owner]:
        del state.infeasible[spec.task_id]
        state.release_held(spec.task_id)
        state._forget_edge(spec)
        dropped += 1
    for task_id, record in list(state.waiting.items()):
        if record.spec.owner == owner:
            del state.waiting[task_id]
            state.directory.unpin(record.spec.deps)
            state._forget_edge(record.spec)
            dropped += 1
    for spec in [s for s in state.ready if s.owner == owner]:
        state.ready.remove_task(spec.task_id)
        state.directory.unpin(spec.deps)
        state._forget_edge(spec)
        dropped += 1
    return dropped


def fail_where(state: CancelState, match: Callable[[TaskSpec], bool], error: BaseException) -> int:
    """Every task here that ``match``es fails with ``error`` (a removed placement
    group's): queued ones at once, running ones by killing their worker (as Ray
    does). Returns how many."""
    n = 0
    for spec in [s for s in state.infeasible.values() if match(s)]:
        del state.infeasible[spec.task_id]
        state._fail(spec, error)
        n += 1
    for task_id, record in list(state.waiting.items()):
        if match(record.spec):
            del state.waiting[task_id]
            state.directory.unpin(record.spec.deps)
            state._fail(record.spec, error)
            n += 1
    for spec in [s for s in state.ready if match(s)]:
        state.ready.remove_task(spec.task_id)
        state.directory.unpin(spec.deps)
        state._fail(spec, error)
        n += 1
    for task_id, worker in list(state.running.items()):
        run = worker.tasks.get(task_id)
        if run is not None and match(run):
            state.doomed[task_id] = error
            state.host.kill_worker(worker)
            n += 1
    return n


def fail_infeasible(state: CancelState, spec: TaskSpec, error: BaseException) -> None:
    """A task waiting for the global scheduler fails with ``error``."""
    if state.infeasible.pop(spec.task_id, None) is not None:
        state._fail(spec, error)


def fail_unschedulable(state: CancelState, spec: TaskSpec, message: str) -> None:
    """The global scheduler found no node for ``spec``: it fails with ``message``."""
    if state.infeasible.pop(spec.task_id, None) is None:
        return  # cancelled (or its owner left) while it was being placed
    state._fail(spec, TaskUnschedulableError(message))
