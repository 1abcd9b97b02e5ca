"""A task worker as the local scheduler sees it: what it runs, what it holds, and
whether it can take one more task now.

The scheduler keeps one `WorkerInfo` per task worker of its node (the worker pool
starts and reaps the processes; ``worker_pool``). It answers the two questions
dispatch asks of a worker: may it start a task now (`WorkerInfo.available`: every
task it runs is blocked in ``get``, so a nested task needs no new process), and may
a task queue behind the one it runs (`WorkerInfo.can_pipeline`: Ray's lease reuse).
"""

from __future__ import annotations

import collections
import time
from typing import Any

import attrs
import trio

from ...protocol._messages import TaskSpec
from ._queues import ReadyQueues

__all__ = ["DEEP_PIPELINE_DEPTH", "PIPELINE_DEPTH", "SHORT_RUN_KEPT", "SHORT_TASK", "WorkerInfo"]

#: Tasks queued on a busy worker behind the one it runs, when more wait than there
#: are free workers: the worker starts the next one the moment it reports the last,
#: with no round trip to the node in between (Ray's lease reuse / pipelining).
PIPELINE_DEPTH = 4
#: ... and on a worker that is ending short tasks back to back: its last
#: `PIPELINE_DEPTH` ends each came within `SHORT_TASK` seconds of the one before,
#: the last of them less than `SHORT_RUN_KEPT` seconds ago.
DEEP_PIPELINE_DEPTH = 16
SHORT_TASK = 0.002
SHORT_RUN_KEPT = 0.1

# A deeper pipeline for short tasks. In a burst of tiny tasks a worker runs its
# four queued tasks in well under a millisecond, and the node, whose loop also
# handles the submits, the frees and the lineage of the whole burst, often reads
# the ends later than that: the worker then runs dry, its thread goes to sleep in
# `poll` and is woken by a lone `Execute` written straight to the socket (a system
# call of the node's per task, another wake-up of the worker's). Sixteen queued
# tasks keep it fed across such gaps and let the node write them in fewer, larger
# frames: ~10 % less CPU per task of a 10,000-task burst over all processes
# (benchmarks/README.md). Queued tasks wait for the one in front of them, so the
# depth grows only while the worker's ends come quickly, which bounds what a task
# queued behind short ones can wait (16 x 2 ms); one long end sets it back to
# `PIPELINE_DEPTH`, and so does a pause: a run of short ends long past (the
# worker idle since) says nothing of the next tasks. The tasks already queued
# stay (a task queued behind a long one waits for it, as at depth 4).


@attrs.define(eq=False)
class WorkerInfo:
    """A worker process as the node sees it.

    A worker runs one task at a time, except that while all its tasks are blocked in
    ``get`` it may take one more (in another executor thread of the same process):
    a nested task then needs no new process, which is what keeps deep task trees
    from spawning a process per level.
    """

    index: int
    worker_id: bytes
    pid: int | None = None
    process: Any = None
    conn: Any = None
    state: str = "starting"  # starting | idle | busy | dead
    tasks: dict[bytes, TaskSpec] = attrs.Factory(dict)
    blocked_tasks: set[bytes] = attrs.Factory(set)
    held: dict[bytes, dict[str, float]] = attrs.Factory(dict)  # task id -> resources
    gpu_ids: dict[bytes, tuple[int, ...]] = attrs.Factory(dict)  # task id -> its GPUs
    queued: collections.deque[bytes] = attrs.Factory(collections.deque)  # not started yet
    shape: tuple = ()
    # The runtime env (``api._runtime_env`` key) of the tasks it runs: set by its
    # first task ("" for none); None while it has run none. A worker runs tasks of
    # one runtime env only, as Ray's pool is keyed by it: the env vars, working
    # directory and modules a task imported stay in its process.
    env_key: str | None = None
    force_cancelled: set[bytes] = attrs.Factory(set)
    in_idle: bool = False
    idle_since: float = 0.0
    tasks_done: int = 0
    # When its last task ended, and how many of its ends in a row came within
    # `SHORT_TASK` of the one before (``note_end``; the pipeline's depth).
    last_end: float = 0.0
    quick_ends: int = 0
    # ``max_calls``: tasks run here per function id (of functions that have a
    # limit); once one reaches its limit the worker retires: it takes no more work
    # and exits when its tasks are done (``SchedulerState._retire``).
    calls: dict[bytes, int] = attrs.Factory(dict)
    retiring: str | None = None  # why, once it retires
    # Where submitters holding a lease on it push tasks (None: it does not listen),
    # and the lease it is lent under now (``_leases.Lease``): a leased worker takes
    # no task from the node's queue.
    direct_address: str | None = None
    lease: Any = None
    # Set once the node has read its link to the end (``_runtime``): every message
    # the worker sent before it died has been handled (``worker_pool``'s watcher
    # waits for it before it reports the death).
    link_closed: trio.Event = attrs.Factory(trio.Event)

    @property
    def blocked(self) -> bool:
        return bool(self.blocked_tasks)

    def available(self) -> bool:
        """Can start a task now: alive, registered, every task it runs is blocked,
        and none of those holds GPUs (the process's ``CUDA_VISIBLE_DEVICES`` is
        theirs until they end)."""
        return (
            self.state != "dead"
            and self.conn is not None
            and self.retiring is None
            and self.lease is None
            and not self.queued
            and len(self.tasks) == len(self.blocked_tasks)
            and not self.gpu_ids
            # a task with max_calls blocked in get keeps its worker to itself: a
            # second one started beside it would pass the limit in one process
            and not any(t.max_calls for t in self.tasks.values())
        )

    def can_pipeline(self, shape: tuple) -> bool:
        """Can queue one more task of ``shape`` behind the one it runs (see
        "Queued beside a blocked parent" below)."""
        return (
            self.state == "busy"
            and self.conn is not None
            and self.retiring is None
            and self.lease is None
            and self.shape == shape
            and len(self.queued) < self.pipeline_depth()
            # a task with max_calls may retire its worker: nothing queues behind it
            and not any(t.max_calls for t in self.tasks.values())
            and (not self.blocked_tasks or self._beside_blocked(shape))
        )

    # Queued beside a blocked parent. In a task tree a worker whose tasks are all
    # blocked in ``get`` takes one more task (``available``): the leaves of the
    # nested tree run beside their blocked parents, two at a time on two CPUs. The
    # rest waited at the node, each sent (`Execute`) only when a leaf's `TaskDone`
    # had come and freed its CPU: a round trip through the node per leaf, the
    # worker idle meanwhile. Such a worker now takes queued tasks behind the one it
    # runs, as a worker with no blocked task does. The rules that keep the worker
    # and the node counting alike hold unchanged: a queued task starts when nothing
    # of the worker's runs unblocked (the node's ``_promote``, the worker's
    # ``_pump``), so at most one task of the worker holds a CPU, and one queued
    # behind a task that blocks starts then (the blocked task lends its CPU). What
    # it costs: a queued task may wait for a parent that unblocks, as well as for
    # the task ahead of it. Only when every task of the worker has the shape queued
    # (a blocked task taking other resources or a runtime env of its own keeps the
    # old rule), and only behind a task that runs: a worker whose tasks are all
    # blocked would start a queued task at once, with no CPU taken for it.

    def _beside_blocked(self, shape: tuple) -> bool:
        if self.active() < 1:
            return False
        for spec in self.tasks.values():
            if ReadyQueues.shape(spec) != shape:
                return False
        return True

    def pipeline_depth(self) -> int:
        """How many tasks may queue behind the one it runs (see `DEEP_PIPELINE_DEPTH`)."""
        if self.quick_ends >= PIPELINE_DEPTH and time.monotonic() - self.last_end < SHORT_RUN_KEPT:
            return DEEP_PIPELINE_DEPTH
        return PIPELINE_DEPTH

    def note_end(self, now: float) -> None:
        """One of its tasks ended at ``now`` (the node's monotonic clock)."""
        self.quick_ends = self.quick_ends + 1 if now - self.last_end < SHORT_TASK else 0
        self.last_end = now

    def active(self) -> int:
        """Tasks it runs right now (started, not blocked)."""
        return len(self.tasks) - len(self.queued) - len(self.blocked_tasks)

    def snapshot(self, node_id: str) -> dict:
        children: list[dict] = [
            {
                "name": f"task:{spec.name}",
                "kind": "task",
                "state": "running",
                "blocked": tid in self.blocked_tasks,
                "restarts": spec.attempt,
                "pid": self.pid,
                "node_id": node_id,
                "task_id": tid.hex(),
                "children": [],
            }
            for tid, spec in self.tasks.items()
        ]
        return {
            "name": f"worker_{self.index}",
            "kind": "worker",
            "state": {"starting": "starting", "dead": "stopped"}.get(self.state, "running"),
            "restarts": 0,
            "pid": self.pid,
            "node_id": node_id,
            "worker_id": self.worker_id.hex(),
            "activity": self.state,
            "tasks_done": self.tasks_done,
            "children": children,
        }
