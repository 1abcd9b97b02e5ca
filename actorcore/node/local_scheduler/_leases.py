"""Worker leases: the local scheduler's side of direct task submission
(``core_worker._leased_tasks`` is the submitter's side, ``worker._leased`` the
worker's).

A lease gives one submitter one idle worker of this node for one scheduling class,
and holds that class's resources in the node's ledger while it lasts, so the
submitter's tasks never wait for the node and nothing else runs on what they use.
The node grants a lease only when it would start such a task right now itself: the
resources fit what is free, an idle worker (of no runtime env) listens for direct
links, and no task of that shape is already queued here (those go first). Otherwise
it refuses, and the submitter sends its tasks through the queue as before: queueing,
spill-back to the global scheduler and multi-node placement stay here.

Once the worker reports a leased task (`LeasedStart`), the scheduler tracks it as one
of its running tasks, holding the lease's resources (``SchedulerState``'s
``worker.held``): lineage, control edges, a blocked ``get`` lending the CPU, a cancel,
a retry of a retryable exception and the worker's death all take the ordinary path.
When the task's resources are released, the lease takes them back while it lasts.

A lease ends when its submitter gives it back (`ReturnLease`, once every task it
pushed has been reported here), when its submitter's link is gone, or when its worker
dies; then its resources return to the ledger and the worker to the idle set. Tasks
pushed on a lease whose worker died before reporting them come back from the
submitter (`LeasedTasksLost`): each one this node never heard of is retried
(``max_retries``) or fails with ``WorkerCrashedError``, as the node's own would.

The account
-----------
Per resource, at every point between two handlers::

    ledger taken (total - available) == held by running tasks (``worker.held``,
        less the CPU a task blocked in ``get`` lent back)
      + held by leases themselves (``Lease.holds``: no task of theirs runs)
      + held by actors and placement groups

(``SchedulerStatistics.held_elsewhere`` is the last term; the task test modules
check after each test that an idle node holds nothing.) A lease's resources are
held by exactly one of the lease and its running task: ``started`` moves them
from the lease to the task, ``released`` back, ``_end`` gives the lease's share
back to the ledger. Each path, and what keeps it exact:

- granted, and the submitter leaves or drops its link before using it: its
  leases end with it (``drop_owner``, once the node decides the driver is gone).
- the grant's answer never reaches the submitter (a timeout, a broken link): it
  named the lease, and gives it back by that id behind the request.
- ``ReturnLease`` before the worker's `LeasedStart` or `TaskDone` (two links):
  the lease ends only once as many of its tasks ended here as were pushed.
- `LeasedTasksLost`: the node kills the worker; the lease ends at its death,
  which settles the tasks it reported as running ones and the rest as lost.
- a task blocked in ``get``: its task's CPU goes back and comes back
  (``SchedulerState.blocked``), the lease's share is the task's meanwhile.
- cancel: a task on a lease is one of the node's running tasks (interrupt, force
  kill, recursive); a force kill is a worker death. A task handed back as lost
  whose cancel its submitter had asked for comes with a `CancelTask` behind the
  `LeasedTasksLost`: it finds the task running, retried, or among the lost ones
  still to settle (``awaiting_death``), which are then settled as cancelled.
- the worker dies mid-task: the pool reports the death once the node has read its
  link to the end, so a `LeasedStart` is never read after it.
- ``ReturnLease`` after the worker died: the lease ended at the death already.
- a lent worker is busy from its grant: the pool's idle reaper never takes it.
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Protocol

import attrs

from ...exceptions import TaskCancelledError, WorkerCrashedError
from ...protocol._leases import LeaseReply
from ...protocol._messages import TaskSpec
from ._ledger import ResourceLedger, fits
from ._queues import ReadyQueues
from ._statistics import LeaseStatus
from ._workers import WorkerInfo

__all__ = ["Lease", "LeaseBook", "LeaseState"]

#: Task ids of a lease remembered as reported (``Lease.reported``).
REPORTED_KEPT = 16

logger = logging.getLogger("actorcore.scheduler.leases")


@attrs.define(eq=False)
class Lease:
    """One worker lent to one submitter for one scheduling class."""

    lease_id: bytes
    owner: bytes  # the submitter's worker id
    worker: WorkerInfo
    resources: dict[str, float]
    # Whether the lease itself holds ``resources`` in the ledger now (False while a
    # task of it runs: the task holds them, as ``worker.held``).
    holds: bool = True
    running: set[bytes] = attrs.Factory(set)  # tasks the worker reported, not ended
    # The last tasks the worker reported (a submitter has one in flight per lease):
    # those handed back as lost after its death were handled as running tasks.
    reported: collections.deque[bytes] = attrs.Factory(
        lambda: collections.deque(maxlen=REPORTED_KEPT))
    finished: int = 0  # tasks reported that ended here
    returned: bool = False
    pushed: int = 0  # how many its submitter pushed (known once returned)
    lost: list[TaskSpec] = attrs.Factory(list)  # handed back, for after the death
    ended: bool = False


class LeaseState(Protocol):
    """What the lease book reads and calls of the scheduler's state
    (``_scheduler.SchedulerState``)."""

    host: Any
    ledger: ResourceLedger
    ready: ReadyQueues
    idle: collections.deque[Any]
    running: dict[bytes, WorkerInfo]
    children: dict[bytes, set[bytes]]
    cancelled: set[bytes]
    cancelled_trees: dict[bytes, bool]
    tasks_retried: int

    @property
    def available(self) -> dict[str, float]: ...
    def submit(self, spec: TaskSpec) -> None: ...
    def fail_task(self, spec: TaskSpec, error: BaseException) -> None: ...
    def cancel(self, task_id: bytes, force: bool, recursive: bool = False) -> None: ...
    def make_available(self, worker: WorkerInfo) -> None: ...


class LeaseBook:
    """The leases of one node (see the module docstring); part of the scheduler's
    state, so it survives the ``local_scheduler`` component's restarts."""

    def __init__(self, state: LeaseState) -> None:
        self._state = state
        self.active: dict[bytes, Lease] = {}
        # Leases whose worker died, until their submitter hands back what it had
        # pushed or gives the lease back (or leaves).
        self.ended: dict[bytes, Lease] = {}
        self.granted = 0
        self.refused = 0

    # -- the submitter's requests ----------------------------------------------------

    def grant(self, owner: bytes, resources: dict[str, float], lease_id: bytes) -> LeaseReply:
        """A lease named ``lease_id`` (by its submitter) for tasks taking
        ``resources``, or a refusal saying why. A request sent again (the same id,
        still active) gets the same lease."""
        state = self._state
        again = self.active.get(lease_id)
        if again is not None and again.owner == owner:
            lent = again.worker
            return LeaseReply(lease_id, lent.worker_id, lent.direct_address)
        shape = tuple(sorted(resources.items()))
        if shape in state.ready.queues:
            return self._refuse("tasks of this shape are queued at the node")
        if not fits(resources, state.available):
            return self._refuse(f"resources {resources} are not free now "
                                f"(free: {dict(state.available)})")
        worker = None
        for candidate in state.idle:
            if candidate.available() and not candidate.tasks and candidate.direct_address \
                    and candidate.env_key in (None, ""):
                worker = candidate
                break
        if worker is None:
            state.host.request_worker()
            return self._refuse("no idle worker")
        lease = Lease(lease_id, owner, worker, dict(resources))
        state.ledger.take(resources)
        worker.lease = lease
        worker.env_key = ""
        worker.shape = shape
        # Lent from now on, though no task of it is reported yet: the pool's idle
        # reaper must not let it go before its first task arrives.
        worker.state = "busy"
        self.active[lease.lease_id] = lease
        self.granted += 1
        return LeaseReply(lease.lease_id, worker.worker_id, worker.direct_address)

    def _refuse(self, reason: str) -> LeaseReply:
        self.refused += 1
        return LeaseReply(None, reason=reason)

    def returned(self, lease_id: bytes, pushed: int) -> None:
        """The submitter gave the lease back after pushing ``pushed`` tasks on it."""
        lease = self.active.get(lease_id)
        if lease is None:
            self.ended.pop(lease_id, None)
            return
        lease.returned = True
        lease.pushed = pushed
        self._maybe_end(lease)

    def lost(self, lease_id: bytes, specs: list[TaskSpec]) -> None:
        """The submitter's link to the lease's worker broke with ``specs`` unanswered."""
        lease = self.active.get(lease_id)
        if lease is not None:
            # The worker is alive as far as this node knows, but its submitter lost
            # it: it is unusable for this lease. Its death settles the tasks (those it
            # reported, as running tasks; the rest below).
            lease.returned = True
            lease.lost.extend(specs)
            if lease.worker.state != "dead":
                self._state.host.kill_worker(lease.worker)
            return
        lease = self.ended.pop(lease_id, None)
        self._settle_lost(lease, specs)

    # -- what the worker reports -----------------------------------------------------

    def started(self, worker: WorkerInfo, lease_id: bytes, spec: TaskSpec) -> None:
        """The leased worker took ``spec``: track it as a running task here."""
        state = self._state
        lease = self.active.get(lease_id)
        state.host.record_lineage(spec)
        parent = spec.parent_task_id
        if parent is not None:
            kids = state.children.get(parent)
            if kids is None:
                state.children[parent] = {spec.task_id}
            else:
                kids.add(spec.task_id)
        worker.tasks[spec.task_id] = spec
        state.running[spec.task_id] = worker
        worker.state = "busy"
        if lease is not None and lease.worker is worker:
            lease.running.add(spec.task_id)
            lease.reported.append(spec.task_id)
            if lease.holds:
                lease.holds = False
                worker.held[spec.task_id] = dict(lease.resources)
            else:  # a second task beside a blocked one: it takes its own
                state.ledger.take(spec.resources)
                worker.held[spec.task_id] = dict(spec.resources)
        else:
            # Its lease ended first (its submitter left): it runs on what it takes.
            logger.info("leased task %s reported after its lease ended", spec.name)
            state.ledger.take(spec.resources)
            worker.held[spec.task_id] = dict(spec.resources)
        if parent is not None and parent in state.cancelled_trees:
            # Its parent was cancelled recursively (perhaps it has ended since): so
            # is it, the same way, and what it submits.
            state.cancel(spec.task_id, state.cancelled_trees[parent], recursive=True)

    def released(self, worker: WorkerInfo, task_id: bytes) -> None:
        """A task of ``worker`` gave its resources back (it ended, or its worker
        died): the lease takes its own back while it lasts."""
        lease = worker.lease
        if lease is None or task_id not in lease.running:
            return
        lease.running.discard(task_id)
        lease.finished += 1
        if not lease.holds and not lease.running and not lease.ended:
            lease.holds = True
            self._state.ledger.take(lease.resources)
        self._maybe_end(lease)

    def worker_died(self, worker: WorkerInfo) -> None:
        """``worker``'s death is processed: its lease ends; what its submitter
        handed back already is settled now, the rest when it arrives."""
        lease = worker.lease
        if lease is None:
            return
        self._end(lease)
        if lease.lost:
            lost, lease.lost = lease.lost, []
            self._settle_lost(lease, lost)
        elif not lease.returned:
            self.ended[lease.lease_id] = lease

    def drop_owner(self, owner: bytes) -> None:
        """The submitter ``owner`` left: its leases end once their tasks have."""
        for lease in [x for x in self.active.values() if x.owner == owner]:
            lease.returned = True
            lease.pushed = 0
            self._maybe_end(lease)
        for lease_id in [i for i, x in self.ended.items() if x.owner == owner]:
            del self.ended[lease_id]

    # -- internals -------------------------------------------------------------------

    def _maybe_end(self, lease: Lease) -> None:
        # Not while tasks handed back as lost wait for the worker's death (the node
        # kills it): they are settled then (``worker_died``), which needs the lease.
        if lease.returned and not lease.running and not lease.lost \
                and lease.finished >= lease.pushed:
            self._end(lease)
            self._state.make_available(lease.worker)

    def _end(self, lease: Lease) -> None:
        if lease.ended:
            return
        lease.ended = True
        self.active.pop(lease.lease_id, None)
        if lease.holds:
            lease.holds = False
            self._state.ledger.release(lease.resources)
        if lease.worker.lease is lease:
            lease.worker.lease = None

    def awaiting_death(self, task_id: bytes) -> bool:
        """Whether ``task_id`` is among the tasks handed back as lost that wait for
        their worker's death to be settled (``lost``)."""
        return any(spec.task_id == task_id
                   for lease in self.active.values() for spec in lease.lost)

    def _settle_lost(self, lease: Lease | None, specs: list[TaskSpec]) -> None:
        state = self._state
        for spec in specs:
            if lease is not None and spec.task_id in lease.reported:
                continue  # reported by the worker: its death handled it
            if spec.task_id in state.cancelled:  # its cancel came first (``cancel``)
                state.fail_task(spec, TaskCancelledError(
                    spec.task_id, f"task {spec.name} was cancelled"))
            elif spec.max_retries != 0:
                if spec.max_retries > 0:
                    spec.max_retries -= 1
                spec.attempt += 1
                state.tasks_retried += 1
                logger.info("retrying %s: its leased worker died before this node "
                            "heard of it", spec.name)
                state.submit(spec)
            else:
                # The worker's `LeasedStart` leaves with its next message (lazily):
                # the task may have started, and ended the process itself.
                pid = lease.worker.pid if lease is not None else None
                where = f" (pid {pid})" if pid is not None else ""
                state.fail_task(spec, WorkerCrashedError(
                    f"the worker running task {spec.name}{where} died, leased to its "
                    f"submitter, before its node heard of the task; no retries are left"))

    def idle_resources(self) -> dict[str, float]:
        """What idle leases hold (no task of theirs runs): theirs until their
        submitter gives them back, within its linger, or needs them again."""
        out: dict[str, float] = {}
        for lease in self.active.values():
            if lease.holds and not lease.running:
                for name, amount in lease.resources.items():
                    out[name] = out.get(name, 0.0) + amount
        return out

    def held(self) -> dict[str, float]:
        """What the leases themselves hold in the ledger now (``Lease.holds``)."""
        out: dict[str, float] = {}
        for lease in self.active.values():
            if lease.holds:
                for name, amount in lease.resources.items():
                    out[name] = out.get(name, 0.0) + amount
        return out

    def describe(self) -> tuple[LeaseStatus, ...]:
        """Each active lease as a `LeaseStatus` (statistics, diagnostics)."""
        return tuple(
            LeaseStatus(lease_id=lease.lease_id.hex(), owner=lease.owner.hex(),
                        worker=lease.worker.index, resources=dict(lease.resources),
                        holds=lease.holds, running=len(lease.running),
                        finished=lease.finished, pushed=lease.pushed,
                        returned=lease.returned)
            for lease in self.active.values())

    def statistics(self) -> tuple[int, int, int]:
        """(leased workers now, leases granted, leases refused)."""
        return len(self.active), self.granted, self.refused

