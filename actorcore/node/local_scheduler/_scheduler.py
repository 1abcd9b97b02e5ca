"""The local scheduler (one per node) and the global scheduler.

Task life on a node (paper §4.2.2, bottom-up scheduling)::

    submit ──► keep it here? ──no──► global scheduler (this node, another node, or
       │       (``keep_local``)          a wait, with a warning, for a node that can)
       ▼ yes
    waiting (data edges: each top-level ref argument must be ready; the deps are
       │     pinned in the directory so their owner's free cannot drop them)
       ▼ all ready (any of them an error: the task fails with that same error)
    ready queue ──► resources free and an idle worker? ──► running on that worker
                        └─ no idle worker: ask the pool for one
    running ──► done: results into the directory, pushed to the owner; retried if
                the worker said the exception is retryable and retries are left
            ──► worker died: retried (max_retries) or WorkerCrashedError
            ──► blocked in get: its CPU goes back to the pool until it unblocks

All of it is synchronous code on the node's Trio loop. The message handlers record
what happened (a submit, a result, a block, a cancel) in ``SchedulerState`` and wake
the ``local_scheduler`` component, which alone places work (``dispatch``). The state
is owned by the node, outside the components, so that component can crash — an
unexpected exception in placement does crash it — and restart without losing a
task. While it is down nothing new starts; nothing is lost.

Resources are taken and given back through the node's one ``ResourceLedger``
(``_ledger``), shared with the actor manager; the node reaches the rest of itself
(owners' links, the worker pool, lineage) only through ``SchedulerHost``.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import Protocol

import attrs
import trio

import transport

from ...core_worker._store_link import STORE
from ...exceptions import (
    MessageTooLargeError,
    TaskCancelledError,
    WorkerCrashedError,
)
from ...protocol import _serialization
from ...protocol._messages import ObjectData, TaskSpec
from ...protocol._wire import Execute, ExitWorker
from ..object_manager._directory import ObjectDirectory
from . import _cancels
from ._leases import LeaseBook
from ._ledger import ResourceLedger, fits
from ._queues import ReadyQueues, WaitingTask, env_key
from ._statistics import SchedulerStatistics
from ._workers import WorkerInfo

__all__ = [
    "SchedulerHost",
    "SchedulerState",
    "SchedulerStatistics",
    "WorkerInfo",
]

logger = logging.getLogger("actorcore.scheduler")


class SchedulerHost(Protocol):
    """What the scheduler asks of the node it runs in (``_runtime.NodeRuntime``
    provides it). Everything the scheduler does outside its own state goes through
    these calls; they are synchronous and never block."""

    def deliver(self, owner: bytes, results: list[ObjectData]) -> None:
        """Send ``results`` to the connection of the worker or driver ``owner``."""
    def request_worker(self) -> None:
        """Ask the worker pool for one more worker (it decides whether to start one)."""
    def kill_worker(self, worker: WorkerInfo) -> None:
        """Kill ``worker``'s process (a force cancel); its death is reported back."""
    def record_lineage(self, spec: TaskSpec) -> None:
        """Record ``spec`` (or its new attempt) as the lineage of its returns: kept
        on the node and written to the GCS task table."""
    def keep_lineage(self, spec: TaskSpec) -> None:
        """Keep ``spec`` on the node as the lineage of its returns; its GCS record
        is written later (``write_lineage``)."""
    def write_lineage(self, spec: TaskSpec) -> None:
        """Write the GCS record of ``spec``, kept by ``keep_lineage``."""
    def call_later(self, delay: float, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the node's loop after ``delay`` seconds."""
    def owner_address(self, owner: bytes) -> str | None:
        """Where ``owner`` takes results pushed by workers directly, or None."""
    def watch_deps(self, oids: list[bytes], dep_node: str | None = None) -> None:
        """Watch arguments a task waits for that may never become ready; fetch
        those owned on other nodes (``dep_node``: the node to ask for them)."""
    def keep_local(self, spec: TaskSpec, state: SchedulerState) -> bool:
        """Whether this node runs ``spec`` itself rather than the global scheduler
        placing it (on a one-node cluster: whenever the node can ever run it)."""
    def pool_starting(self) -> int:
        """Workers the pool is starting now."""
    def pool_can_grow(self) -> bool:
        """Whether the pool may start one more worker now (below its limit)."""


@attrs.define(eq=False)
class SchedulerState:
    """Everything the local scheduler knows; survives its component's restarts."""

    directory: ObjectDirectory
    total: dict[str, float]
    host: SchedulerHost
    # The one account of the node's resources, for tasks and actors both.
    ledger: ResourceLedger = attrs.field(init=False)
    # Workers lent to submitters for direct task submission (``_leases``).
    leases: LeaseBook = attrs.field(init=False)
    waiting: dict[bytes, WaitingTask] = attrs.Factory(dict)
    # ``_dep_ready`` bound once, for every waiting task to hold (a bound method of
    # its own was 64 bytes a task).
    _on_dep_ready: Callable[[WaitingTask], None] = attrs.field(init=False)
    ready: ReadyQueues = attrs.Factory(ReadyQueues)
    running: dict[bytes, WorkerInfo] = attrs.Factory(dict)
    idle: collections.deque = attrs.Factory(collections.deque)
    cancelled: set[bytes] = attrs.Factory(set)
    # Control edges among the unfinished tasks here: parent task id -> the ids of the
    # tasks it submitted (for ``cancel(recursive=True)``).
    children: dict[bytes, set[bytes]] = attrs.Factory(dict)
    # Tasks cancelled with recursive=True, running here or not, ended or not (-> the
    # cancel's ``force``): a task they submit from now on (its submit may have been
    # on its way when the cancel came) is cancelled too, and so is a child pushed to
    # a leased worker whose report comes after the cancel, even after its parent's
    # end (``core_worker._leased_tasks``, "A recursive cancel and leased children").
    # The newest CANCELLED_TREES_KEPT.
    cancelled_trees: dict[bytes, bool] = attrs.Factory(dict)
    wakeup: trio.Event = attrs.Factory(trio.Event)
    # Tasks no resources of this node can ever satisfy, for the global scheduler to
    # place (in arrival order). They stay here until it has decided, so that a crash
    # of the global scheduler loses none of them; ``infeasible_added`` wakes it.
    infeasible: dict[bytes, TaskSpec] = attrs.Factory(dict)
    infeasible_added: trio.Event = attrs.Factory(trio.Event)
    # The global scheduler's warning per resource shape of tasks that wait for a
    # node (logged once per shape, also across its restarts).
    unplaced_warnings: dict[tuple, str] = attrs.Factory(dict)
    # Running tasks whose worker is killed on purpose, and the error each fails
    # with (``fail_where``), instead of a retry.
    doomed: dict[bytes, BaseException] = attrs.Factory(dict)
    # Whether the global scheduler lets a task it cannot place wait instead of
    # failing it (a placement group's task), or the error it fails with: set by the
    # node's placement groups; None: no placement groups.
    group_verdict: Callable[[TaskSpec], BaseException | bool | None] | None = None
    # Arguments pinned for tasks that left the local queue's reach: placed by the
    # global scheduler, or running on another node (task id -> its deps). The node
    # that runs such a task asks this one for them, perhaps long after their owner
    # dropped its refs (a retry after that node died, a lineage rebuild), so they
    # stay in the directory until the task has ended here (``_finish``) or its
    # results came back (``release_held``).
    held: dict[bytes, list[bytes]] = attrs.Factory(dict)
    node_id: str = ""
    dispatch_passes: int = 0
    tasks_finished: int = 0
    tasks_retried: int = 0
    tasks_failed: int = 0

    def __attrs_post_init__(self) -> None:
        self.ledger = ResourceLedger(self.total, on_release=self._wake)
        self.leases = LeaseBook(self)
        self._on_dep_ready = self._dep_ready

    @property
    def available(self) -> dict[str, float]:
        """Resources free now (the ledger's; read only: take and give through it)."""
        return self.ledger.available

    def available_to_report(self) -> dict[str, float]:
        """Resources free now as the node reports them (``available_resources()``,
        heartbeats, statistics): ``available`` plus what idle leases hold, which
        their submitters give back within a linger when not using them."""
        out = dict(self.ledger.available)
        if self.leases.active:
            for name, amount in self.leases.idle_resources().items():
                out[name] = out.get(name, 0.0) + amount
        return out

    # -- entry points (called by the node's handlers) -------------------------------

    def submit(self, spec: TaskSpec) -> None:
        # A task that may wait for its arguments is kept in the node's lineage now
        # and written to the GCS task table once it can run (``WaitingTask.owed``):
        # a task that has not run has no return to rebuild, and a million queued
        # behind one argument took a million GCS records (700 bytes each in the
        # GCS's memory, a third of the node's time while they queued). A task of no
        # return is marked done as it is kept, so it is written at once: a mark
        # must never reach the GCS before its record.
        owed = bool(spec.deps) and spec.num_returns != 0
        if owed:
            self.host.keep_lineage(spec)
        else:
            self.host.record_lineage(spec)
        parent = spec.parent_task_id
        if parent is not None:
            if parent in self.cancelled_trees:
                if owed:
                    self.host.write_lineage(spec)
                self._fail(spec, TaskCancelledError(
                    spec.task_id, f"task {spec.name} was cancelled: the task that "
                    f"submitted it ({parent.hex()}) was cancelled"))
                return
            kids = self.children.get(parent)
            if kids is None:
                self.children[parent] = {spec.task_id}
            else:
                kids.add(spec.task_id)
        if not self.host.keep_local(spec, self):
            if owed:
                self.host.write_lineage(spec)
            if spec.deps and spec.task_id not in self.held:
                self.directory.pin(spec.deps)
                self.held[spec.task_id] = spec.deps
            self.infeasible[spec.task_id] = spec
            self.infeasible_added.set()
            return
        self._enqueue(spec, None, owed)

    def accept(self, spec: TaskSpec, dep_node: str | None = None) -> None:
        """Queue ``spec`` here without asking whether to: the global scheduler chose
        this node, or another node forwarded it (``dep_node``: where to ask for its
        arguments). Only a task this node can never run goes back to be placed."""
        if not fits(spec.resources, self.total):
            self.infeasible[spec.task_id] = spec
            self.infeasible_added.set()
            return
        self._enqueue(spec, dep_node)

    def retry_elsewhere(self, spec: TaskSpec) -> None:
        """The node ``spec`` was forwarded to died: place it again (one retry)."""
        if spec.max_retries > 0:
            spec.max_retries -= 1
        spec.attempt += 1
        self.tasks_retried += 1
        self.host.record_lineage(spec)
        self.infeasible[spec.task_id] = spec
        self.infeasible_added.set()

    def release_held(self, task_id: bytes) -> None:
        """The arguments of ``task_id`` may go (see ``held``)."""
        deps = self.held.pop(task_id, None)
        if deps:
            self.directory.unpin(deps)

    def fail_task(self, spec: TaskSpec, error: BaseException) -> None:
        """``spec`` (not queued here) fails with ``error``, delivered to its owner."""
        self._fail(spec, error)

    def _enqueue(self, spec: TaskSpec, dep_node: str | None, owed: bool = False) -> None:
        """Queue ``spec``: ready, or waiting for its arguments. ``owed``: its GCS
        record is written when it leaves the waiting (see ``submit``)."""
        deps = spec.deps
        if not deps:
            self.ready.append(spec)
            self._wake()
            return
        self.directory.pin(deps)
        record = self.waiting[spec.task_id] = WaitingTask(
            spec, len(deps), self._on_dep_ready, owed)
        for oid in deps:
            self.directory.when_ready(oid, record)
        if record.missing != 0:  # some dep is not ready yet
            self.host.watch_deps(deps, dep_node)

    def _dep_ready(self, record: WaitingTask) -> None:
        record.missing -= 1
        if record.missing > 0:
            return
        spec = record.spec
        if self.waiting.pop(spec.task_id, None) is None:
            return  # cancelled meanwhile
        if record.owed:
            self.host.write_lineage(spec)
        for oid in spec.deps:
            e = self.directory.entries.get(oid)
            if e is not None and e.is_error:
                # Errors flow through data edges: the task fails with its input's error.
                self.directory.unpin(spec.deps)
                self._finish(spec, [(oid2, True, e.data) for oid2 in spec.return_ids()])
                return
        self.ready.append(spec)
        self._wake()

    def task_done(
        self, worker: WorkerInfo, task_id: bytes, results: list, retry: bool, pushed: bool = False
    ) -> None:
        """``pushed``: the worker already sent the results to their owner directly."""
        spec = worker.tasks.get(task_id)
        if spec is None:
            logger.warning("worker %s reported unknown task %s", worker.index, task_id.hex())
            return
        self._release(worker, task_id)
        self._promote(worker)
        worker.tasks_done += 1
        worker.note_end(time.monotonic())
        if spec.max_calls:
            n = worker.calls[spec.function_id] = worker.calls.get(spec.function_id, 0) + 1
            if n >= spec.max_calls and worker.retiring is None:
                worker.retiring = f"it ran {n} tasks of {spec.name} (max_calls={spec.max_calls})"
        if spec.task_id in self.cancelled:
            retry = False
        if retry and spec.max_retries != 0:
            self._retry(spec)
        else:
            self.directory.unpin(spec.deps)
            self._finish(spec, results, delivered=pushed)
        self._make_available(worker)
        self._wake()  # refill its pipeline, or give its resources to another task

    def worker_ready(self, worker: WorkerInfo) -> None:
        worker.state = "idle"
        self._make_available(worker)

    def worker_died(self, worker: WorkerInfo, reason: str) -> None:
        """A worker's process or link died; its tasks are retried or fail."""
        if worker.state == "dead":
            return
        worker.state = "dead"
        for task_id in list(worker.tasks):
            spec = worker.tasks[task_id]
            forced = task_id in worker.force_cancelled
            self._release(worker, task_id)
            doom = self.doomed.pop(task_id, None) if self.doomed else None
            if doom is not None:
                self.directory.unpin(spec.deps)
                self._fail(spec, doom)
            elif forced or task_id in self.cancelled:
                self.directory.unpin(spec.deps)
                err = TaskCancelledError(task_id, f"task {spec.name} was cancelled (force)")
                self._fail(spec, err)
            elif spec.max_retries != 0:
                logger.info("retrying %s after worker death (%s)", spec.name, reason)
                self._retry(spec)
            else:
                self.directory.unpin(spec.deps)
                self._fail(
                    spec,
                    WorkerCrashedError(
                        f"the worker running task {spec.name} (pid {worker.pid}) died "
                        f"({reason}) and no retries are left"
                    ),
                )
        self.leases.worker_died(worker)
        self.leases.drop_owner(worker.worker_id)  # what it leased as a submitter
        self._wake()

    # A task queued on a busy worker (``_pipeline``) holds nothing until the one
    # ahead ends here (``_promote``), but the worker may start it, and it may block,
    # before that one's "done" arrives (sent once its results pushed to their owner
    # have left: ``worker._process._done_once_pushed``). Promoted at its `Blocked`,
    # it held its CPU while blocked until it ended; a tree whose CPUs were all held
    # so stopped. So it starts here as blocked, lending its CPU from the start.

    def blocked(self, worker: WorkerInfo, task_id: bytes) -> None:
        """``task_id`` waits in ``get``: its CPU goes back, its worker may take a task."""
        if task_id not in worker.tasks or task_id in worker.blocked_tasks:
            return
        worker.blocked_tasks.add(task_id)
        if task_id in worker.queued:  # started there before it was promoted here:
            worker.queued.remove(task_id)  # it takes all but its CPU from the start
            resources = worker.tasks[task_id].resources
            rest = {k: v for k, v in resources.items() if k != "CPU"}
            if rest:
                self.ledger.take(rest)
            held = worker.held[task_id] = dict(rest)
            cpu = resources.get("CPU", 0.0)
        else:
            held = worker.held.get(task_id, {})
            cpu = held.pop("CPU", 0.0)
            if cpu:
                self.ledger.release({"CPU": cpu})
        if cpu:
            held["_blocked_cpu"] = cpu
        self._promote(worker)
        self._make_available(worker)

    def unblocked(self, worker: WorkerInfo, task_id: bytes) -> None:
        if task_id not in worker.blocked_tasks:
            return
        worker.blocked_tasks.discard(task_id)
        held = worker.held.get(task_id, {})
        cpu = held.pop("_blocked_cpu", 0.0)
        if cpu:
            # May go below zero for a moment (oversubscription), as in Ray.
            self.ledger.take({"CPU": cpu})
            held["CPU"] = cpu

    # -- tasks ended from outside: cancels, departed owners, failed placements
    # (``_cancels``)

    def cancel(self, task_id: bytes, force: bool, recursive: bool = False) -> None:
        """Cancel ``task_id``, queued or running (`_cancels.cancel`)."""
        _cancels.cancel(self, task_id, force, recursive)

    def drop_owner(self, owner: bytes) -> int:
        """Forget a departed owner's queued tasks (`_cancels.drop_owner`)."""
        return _cancels.drop_owner(self, owner)

    def resources_added(self) -> None:
        """The node grew (a placement-group bundle was reserved here): the tasks
        that waited for resources it now has are queued here."""
        for spec in [s for s in self.infeasible.values() if fits(s.resources, self.total)]:
            del self.infeasible[spec.task_id]
            self._enqueue(spec, None)

    def fail_where(self, match: Callable[[TaskSpec], bool], error: BaseException) -> int:
        """Fail every task here that ``match``es (`_cancels.fail_where`)."""
        return _cancels.fail_where(self, match, error)

    def fail_infeasible(self, spec: TaskSpec, error: BaseException) -> None:
        """A task waiting for the global scheduler fails with ``error``."""
        _cancels.fail_infeasible(self, spec, error)

    def fail_unschedulable(self, spec: TaskSpec, message: str) -> None:
        """The global scheduler found no node for ``spec`` (`_cancels`)."""
        _cancels.fail_unschedulable(self, spec, message)

    # -- dispatch (the local_scheduler component's loop) -----------------------------

    def dispatch(self) -> None:
        """Place every ready task that fits on an idle worker (each shape's head).

        When a shape's head does not fit the free resources, some of its tasks are
        queued behind running tasks of the same shape (pipelining): they would wait
        for those resources anyway, and now start without a round trip.

        When it fits but no worker is idle, the resources are free and only a process
        is missing (the pool lost a worker, or fractional and zero-CPU tasks outnumber
        the workers): the pool starts one and the task waits in the ready queue for
        it. Queued behind a busy worker instead, it would wait for the whole of that
        worker's task with a CPU idle: two long tasks on a two-CPU node would run one
        after the other. Only when the pool is at its limit and none is on its way do
        tasks that need a CPU go behind busy workers of their shape.
        """
        ready = self.ready
        available = self.available
        for key in list(ready.queues):
            while key in ready.queues:
                spec = ready.queues[key][0]
                if not fits(spec.resources, available):
                    self._pipeline(key)
                    break
                worker = self._idle_worker_for(spec)
                if worker is None:
                    # Resources are free but no worker is idle: the pool starts one
                    # (see the docstring); tasks needing no CPU always wait for a new
                    # worker so that they run side by side.
                    self.host.request_worker()
                    if (
                        spec.resources.get("CPU", 0.0) > 0
                        and not self.workers_starting()
                        and not self.host.pool_can_grow()
                    ):
                        self._pipeline(key)
                    break
                ready.popleft(key)
                self._start(worker, spec)

    def _idle_worker_for(self, spec: TaskSpec) -> WorkerInfo | None:
        """An idle worker that may run ``spec``: one of its runtime env, or one that
        ran nothing yet. Idle workers of other envs stay idle; when the pool is full
        of them and none is starting, one is let go so that the pool can start a
        worker for ``spec`` (as Ray's pool evicts idle workers of other envs)."""
        env = env_key(spec)
        other: list[WorkerInfo] = []
        worker = None
        while self.idle:
            w = self.idle.popleft()
            w.in_idle = False
            if not w.available():
                continue
            if w.env_key is not None and w.env_key != env:
                other.append(w)
                continue
            worker = w
            break
        if worker is None and other and not self.host.pool_can_grow() \
                and not self.workers_starting():
            victim = other.pop(0)
            conn = victim.conn
            self.worker_died(victim, "idle, of another runtime_env: let go")
            try:
                conn.send_nowait(ExitWorker())
            except Exception as exc:
                logger.info("letting worker_%d go failed (%r): killing it", victim.index, exc)
                self.host.kill_worker(victim)
        for w in other:
            w.in_idle = True
            self.idle.append(w)
        return worker

    def workers_starting(self) -> bool:
        return self.host.pool_starting() > 0

    def _pipeline(self, key: tuple) -> None:
        ready = self.ready
        if key not in ready.queues:
            return
        if self.leases.active and self.leases.idle_resources():
            # An idle lease gives its resources back within its linger: a task
            # queued behind a busy worker now could wait for that worker's whole
            # task instead (``_leases``).
            return
        if any(name == "GPU" for name, _amount in key):
            return  # its GPU ids are chosen when it starts, and sent with it
        if key not in ready.queues or ready.queues[key][0].max_calls:
            return  # (a task with max_calls goes to an idle worker only)
        for worker in list({id(w): w for w in self.running.values()}.values()):
            while key in ready.queues and worker.can_pipeline(key):
                spec = ready.popleft(key)
                worker.tasks[spec.task_id] = spec
                worker.queued.append(spec.task_id)
                self.running[spec.task_id] = worker
                self._send(worker, spec)
            if key not in ready.queues:
                return

    def _promote(self, worker: WorkerInfo) -> None:
        """The worker starts its next queued task when nothing of its own runs."""
        while worker.queued and worker.active() == 0:
            tid = worker.queued.popleft()
            spec = worker.tasks[tid]
            self.ledger.take(spec.resources)
            worker.held[tid] = dict(spec.resources)
            self._assign_gpus(worker, spec)

    def _start(self, worker: WorkerInfo, spec: TaskSpec) -> None:
        """Hand ``spec`` to ``worker``: take its resources, send it with its inputs."""
        self.ledger.take(spec.resources)
        worker.held[spec.task_id] = dict(spec.resources)
        self._assign_gpus(worker, spec)
        worker.env_key = env_key(spec)
        worker.tasks[spec.task_id] = spec
        worker.state = "busy"
        worker.shape = ReadyQueues.shape(spec)
        self.running[spec.task_id] = worker
        self._send(worker, spec)

    def _assign_gpus(self, worker: WorkerInfo, spec: TaskSpec) -> None:
        """Name the GPUs a task that took some holds (its ``CUDA_VISIBLE_DEVICES``)."""
        amount = spec.resources.get("GPU")
        if amount:
            ids = self.ledger.gpus.assign(amount)
            if ids:
                worker.gpu_ids[spec.task_id] = ids

    def _send(self, worker: WorkerInfo, spec: TaskSpec) -> None:
        entries = self.directory.entries
        if spec.deps:
            missing = [oid for oid in spec.deps
                       if (e := entries.get(oid)) is None or not e.ready]
            if missing:
                self._unsend(worker, spec, missing)
                return
        dep_data = [(entries[oid].is_error, entries[oid].data) for oid in spec.deps]
        direct = self.host.owner_address(spec.owner)
        gpus = worker.gpu_ids.get(spec.task_id)
        try:
            worker.conn.send_nowait(Execute(spec, dep_data, direct, tuple(gpus) if gpus else ()))
        except transport.FrameTooLarge as exc:
            self._refuse_too_large(worker, spec, dep_data, exc)
        except Exception as exc:  # its link just died: the death handler retries
            logger.info("dispatch to worker_%d failed: %s", worker.index, exc)

    def _unsend(self, worker: WorkerInfo, spec: TaskSpec, missing: list[bytes]) -> None:
        """An argument of ``spec`` was lost after the task became ready (every copy
        of its value went, and lineage made it pending again to rebuild it): the
        task gives its worker and resources back and waits for the rebuilt value,
        as it waited for the first one. Its arguments stay pinned, as they were."""
        self._release(worker, spec.task_id)
        self._promote(worker)
        self._make_available(worker)
        record = self.waiting[spec.task_id] = WaitingTask(spec, len(missing), self._on_dep_ready)
        for oid in missing:
            self.directory.when_ready(oid, record)
        if record.missing != 0:
            self.host.watch_deps(missing)

    def _refuse_too_large(
        self, worker: WorkerInfo, spec: TaskSpec, dep_data: list, exc: BaseException
    ) -> None:
        """``spec`` with its inline arguments and dependencies is larger than the
        worker's frame limit: it could never be sent (to any worker of this node), so
        the task fails now with ``MessageTooLargeError`` naming the sizes, instead of
        holding its worker and resources with nobody to run it. The worker is free for
        the next task; the connection stays up (the transport refuses the frame at
        the sender)."""
        args = len(spec.args)
        inline = [len(data) for _is_error, data in dep_data if data != STORE]
        limit = getattr(worker.conn, "peer_max_frame_size", None)
        error = MessageTooLargeError(
            f"task {spec.name} cannot be sent to a worker: its inline arguments "
            f"({args} bytes) and {len(inline)} inline values of the refs it takes "
            f"({sum(inline)} bytes) are more than the worker's frame limit of {limit} "
            f"bytes ({exc}); pass fewer or smaller values, or refs of values put in "
            f"the object store"
        )
        logger.warning("%s", error)
        self._release(worker, spec.task_id)
        self._promote(worker)
        self.directory.unpin(spec.deps)
        self._fail(spec, error)
        self._make_available(worker)

    def demand(self, limit: int) -> int:
        """How many more workers would start tasks right now (at most ``limit``).

        Scans at most ``limit + idle`` queued tasks: the answer only matters up to
        how many workers the pool may still start, and a full scan of a long queue
        on every wake-up would make scheduling quadratic.
        """
        n = 0
        idle = collections.Counter(w.env_key for w in self.idle if w.available())
        want = limit + sum(idle.values())
        avail = dict(self.available)
        for i, spec in enumerate(self.ready):
            if i >= 4 * want + 16 or n >= want:
                break
            if fits(spec.resources, avail):
                # An idle worker of its runtime env (or one that ran nothing yet)
                # takes it; else it needs a new worker.
                env = env_key(spec)
                if idle[env] > 0:
                    idle[env] -= 1
                elif idle[None] > 0:
                    idle[None] -= 1
                else:
                    n += 1
                for k, v in spec.resources.items():
                    avail[k] = avail.get(k, 0.0) - v
        return n

    # -- internals ---------------------------------------------------------------------

    def _wake(self) -> None:
        # Only marks: the ``local_scheduler`` component places the work (see
        # ``LocalScheduler``), so a fault in placement crashes that component, not
        # the message handler that happened to wake it.
        self.wakeup.set()

    def make_available(self, worker: WorkerInfo) -> None:
        """``worker`` may take tasks from the queue again (its lease ended)."""
        self._make_available(worker)

    def _make_available(self, worker: WorkerInfo) -> None:
        if worker.retiring is not None:
            if not worker.tasks and worker.state != "dead":
                self._retire(worker)
            return
        if not worker.available():
            return
        if not worker.tasks:
            worker.state = "idle"
            worker.idle_since = time.monotonic()
        if not worker.in_idle:
            worker.in_idle = True
            self.idle.append(worker)
        self._wake()

    def _retire(self, worker: WorkerInfo) -> None:
        """``worker`` reached a function's ``max_calls`` and has no task left: it is
        told to exit (killed if its link is gone); its resources are free already,
        and the pool starts another worker in its place when one is needed."""
        conn = worker.conn
        logger.info("worker_%d (pid %s) exits: %s", worker.index, worker.pid, worker.retiring)
        self.worker_died(worker, f"retired: {worker.retiring}")  # no task: nothing to retry
        self.host.request_worker()
        try:
            conn.send_nowait(ExitWorker())
        except Exception as exc:  # its link is gone: make sure the process goes too
            logger.info("telling worker_%d to exit failed (%r): killing it", worker.index, exc)
            self.host.kill_worker(worker)

    def _release(self, worker: WorkerInfo, task_id: bytes) -> None:
        worker.tasks.pop(task_id, None)
        if task_id in worker.queued:
            worker.queued.remove(task_id)
        worker.blocked_tasks.discard(task_id)
        worker.force_cancelled.discard(task_id)
        self.running.pop(task_id, None)
        held = worker.held.pop(task_id, None)
        gpus = worker.gpu_ids.pop(task_id, None)
        if gpus and held:
            self.ledger.gpus.release(gpus, held.get("GPU", 0.0))
        if held:
            held.pop("_blocked_cpu", None)
            self.ledger.release(held)
        if worker.lease is not None:
            self.leases.released(worker, task_id)

    def _retry(self, spec: TaskSpec) -> None:
        if spec.max_retries > 0:
            spec.max_retries -= 1
        spec.attempt += 1
        self.tasks_retried += 1
        self.host.record_lineage(spec)
        self.ready.append(spec)
        self._wake()

    def _fail(self, spec: TaskSpec, error: BaseException) -> None:
        payload = _serialization.dumps(error)
        self.tasks_failed += 1
        self._finish(spec, [(oid, True, payload) for oid in spec.return_ids()])

    def _forget_edge(self, spec: TaskSpec) -> None:
        """``spec`` is done here: drop it from its parent's children."""
        parent = spec.parent_task_id
        if parent is not None:
            kids = self.children.get(parent)
            if kids is not None:
                kids.discard(spec.task_id)
                if not kids:
                    del self.children[parent]

    def _finish(self, spec: TaskSpec, results: list, delivered: bool = False) -> None:
        self.tasks_finished += 1
        if self.held:
            self.release_held(spec.task_id)
        self.cancelled.discard(spec.task_id)
        if spec.parent_task_id is not None:
            self._forget_edge(spec)
        self.directory.put_many(results)
        if not delivered:
            self.host.deliver(spec.owner, results)

    def held_by_tasks(self) -> dict[str, float]:
        """What the tasks running here hold in the ledger now (``WorkerInfo.held``;
        a task blocked in ``get`` has lent its CPU back). With what the leases hold
        (``LeaseBook.held``), actors and placement groups, it is what the ledger
        has taken: ``SchedulerStatistics.held_elsewhere``."""
        out: dict[str, float] = {}
        for worker in {id(w): w for w in self.running.values()}.values():
            for held in worker.held.values():
                for name, amount in held.items():
                    if name != "_blocked_cpu":
                        out[name] = out.get(name, 0.0) + amount
        return out

    def statistics(self) -> SchedulerStatistics:
        return SchedulerStatistics(
            waiting=len(self.waiting),
            ready=len(self.ready),
            running=len(self.running),
            idle_workers=sum(1 for w in self.idle if w.available()),
            finished=self.tasks_finished,
            retried=self.tasks_retried,
            failed=self.tasks_failed,
            available=self.available_to_report(),
            total=dict(self.total),
            unplaced=len(self.infeasible),
            leased_workers=len(self.leases.active),
            leases_granted=self.leases.granted,
            leases_refused=self.leases.refused,
            leases=self.leases.describe(),
            leases_awaiting_lost=len(self.leases.ended),
            ledger_available=dict(self.ledger.available),
            held_by_tasks=self.held_by_tasks(),
            held_by_leases=self.leases.held(),
            unplaced_warnings=tuple(
                self.unplaced_warnings[shape]
                for shape in {ReadyQueues.shape(spec) for spec in self.infeasible.values()}
                if shape in self.unplaced_warnings
            ),
        )
