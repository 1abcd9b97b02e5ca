"""Direct task submission: tasks pushed straight to a worker leased from the node.

A task through the node wakes three processes in turn (submitter, node, worker, and
back). Here, as in Ray, the submitting process (driver or worker) asks its node for
a *lease* on a worker for one scheduling class (the function and the resources each
task takes): the node's local scheduler picks an idle worker, holds the class's
resources in its ledger for the lease (``node.local_scheduler._leases``), and
answers with the worker's direct socket. The submitter dials it (one link per worker,
kept across leases) and pushes that class's tasks on it, one at a time per lease;
each ends with a `LeasedTaskDone` on the same link carrying small results inline,
so a task costs one hop each way. The lease is kept while tasks of the class are
queued here and given back (`ReturnLease`) once it has been idle ``LEASE_LINGER``
seconds.

What stays exact, and how
-------------------------
The node still tracks every leased task as one of its running tasks: the worker
reports `LeasedStart` on its own node link before it starts the task, so lineage
(the GCS task table), control edges (``cancel(recursive=True)``), a blocked ``get``
lending the lease's CPU, retries of a retryable exception, and a worker's death while
the task runs are all the node's existing machinery. Only a task pushed and not yet
reported when the worker died is unknown to the node: the submitter sees the link
break and sends the unanswered tasks back (`LeasedTasksLost`); the node retries
(``max_retries``) or fails with ``WorkerCrashedError`` exactly those it never heard
of, once the worker's death is processed. ``cancel(ref)`` of a pushed task travels on
the link behind it (`CancelLeasedTask`) and the worker passes it to its node behind
the `LeasedStart`, so the node never sees a cancel before the task.

A thread blocked in ``get`` of a pushed task's result reads its
`LeasedTaskDone` off the link itself (``_reply_reads``; ``_Link.reply``):
``_accept_done`` and ``_finish_done`` are ``_h_done`` done in that thread, the lease
released under ``_lock`` as ``_lose_link`` decides under it.

Which tasks: only those the fast path handles exactly. A driver and a task worker
lease (an actor's calls submit through the node); a nested task's lease is exact
under a recursive cancel of its parent as the next section says. A task with ref
arguments
(data edges: its arguments may be pending, elsewhere, or lost), a placement group or
strategy, resources other than CPU (custom, GPU, memory), a runtime env, a generator,
or ``max_calls`` goes through the node as before. The function's `Export` is sent
before the lease request on the same ordered link (no lease is asked for while that
link is backed up), so the node knows the function before any worker asks for it;
queued `Put`s are flushed before a push, and a worker's fetch of a ref nested in the
arguments waits at the node until the object is there. A task goes through the node
also when the node refuses a lease (no idle worker, no
free resources, tasks of that shape already queued at the node: multi-node placement
and spill-back stay the node's), and every task of a class whose tasks pile up here
beyond ``QUEUE_PER_LEASE`` per lease (a burst is better batched through the node).
Such a burst counts as a refusal of its class: while the class holds no lease, the
rest of the burst and its tasks for ``REFUSAL_BACKOFF`` go straight to the node, even
with a lease request on its way, instead of waiting here for an answer the node's
queue of that shape would make a refusal (a nested task's eight children waited a
round trip for it, its ``get`` blocked meanwhile). A lease granted when nothing of its
class waits here any more goes back at once: those tasks are in the node's queue,
which would wait for the CPU it holds.
The fast path is on by default; ``ACTORCORE_DIRECT_TASKS=0`` turns it off. A lease
request carries the lease id this process chose: when its answer does not come (a
timeout, a broken link), a `ReturnLease` of that id follows the request on the same
link, so a grant nobody heard of never holds the node's CPU.

A recursive cancel and leased children
--------------------------------------
On the node path the node hears of a child C before its parent P ends: C's `Submit`
leaves P's worker ahead of P's `TaskDone`, on the same ordered link. So
``cancel(P, recursive=True)`` finds C among P's children, queued (it fails, never
runs) or running (it is interrupted), and a C submitted after the cancel reached the
node fails there (``cancelled_trees``). A leased C is reported by *another* worker
(its `LeasedStart`), which can reach the node after the cancel and after P's end;
and C may wait in P's process for a lease meanwhile. Four rules make the lease path
end exactly where the node path does:

1. The node marks P as a cancelled tree whether P runs there or not, ended or not
   (``SchedulerState.cancel``), before it sends anything about the cancel. A C
   reported after that is cancelled at its report (``LeaseBook.started``): a C
   pushed before the cancel is handled as a child that was running at the cancel.
2. The node's `InterruptTask` of a running P says ``recursive``; P's worker calls
   `cancel_children` in its loop before the task can see the cancel: the children
   of P still waiting here fail here (as queued ones fail at the node), and every
   task P submits from then on goes through the node, which fails it (rule 1 came
   first: the node marked P before it sent the interrupt). So a child submitted
   after P saw its cancel never starts; one submitted before it could have been
   started before the cancel on the node path too (nothing orders the two).
3. When P ends, its children still waiting here for a lease go to the node
   (`parent_ended`, from P's thread before its `TaskDone` is queued on the same
   link), so a cancel after P's end finds them queued, as on the node path, instead
   of their being pushed later and started. A C pushed before P's end may start
   before a cancel that comes after P's end: on the node path it could have started
   then too, and rule 1 cancels it at its report.
4. P's process hears of the cancel (rule 2) before P can see any other effect of
   it. The node sends the interrupts of the tree's running tasks before it fails
   any of its queued ones (``_cancels.cancel``: their results go to P's process on
   the same link, behind P's interrupt), and a worker sends the end of a task it
   was told to interrupt through the node, never on a direct link
   (``worker._process``, `_h_interrupt`): so it reaches P's process behind P's
   interrupt too. Else P saw a running child cancelled (its end back on the
   lease's link), submitted another, and this process pushed it on the idle
   lease before it read P's interrupt: it started before rule 1 cancelled it.
A force cancel kills P's worker: the children waiting in it die with it (their
owner), and the pushed ones are killed at their report by rule 1.

Cancel, wherever the task is
----------------------------
A task cancelled while it still waits here never leaves this process: its results
fail here (`_cancelled_here`). A pushed task's cancel goes on its link, and is kept
until the task's end comes back: if the task leaves the link first (refused, or
handed back as lost), the cancel goes with it (`_send_cancel`). On the worker, a
cancel that comes after the task was handed to an executor thread and before that
thread started it stops it from starting (``worker._cancel.TaskStartGate``).
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import threading
import time
from typing import Any

import attrs
import trio

import transport

from ..exceptions import TaskCancelledError
from ..protocol import _serialization
from ..protocol import _wire as w
from ..protocol._messages import TaskSpec
from ..session._config import env_value
from ._node_link import THREAD_SEND_GAP
from ._reply_reads import CALLER_READS, ReplyReads

__all__ = ["DIRECT_TASKS", "LEASE_LINGER", "LeasedTasks", "LeaseStatistics"]

logger = logging.getLogger("actorcore.leased_tasks")

DIRECT_TASKS: bool = env_value("ACTORCORE_DIRECT_TASKS")

#: Seconds an idle lease is kept before it goes back to the node.
LEASE_LINGER = 0.05

#: After a refusal, seconds before this class asks the node for a lease again.
REFUSAL_BACKOFF = 0.05

#: Tasks of a class waiting here for a free lease, per lease held (at least one
#: lease's worth); more go through the node, which batches them.
QUEUE_PER_LEASE = 4

#: Seconds a lease request may take before the task goes through the node.
LEASE_REQUEST_TIMEOUT = 30.0

#: Tasks cancelled with recursive=True remembered by their submitter
#: (``LeasedTasks.cancel_children``).
CANCELLED_PARENTS_KEPT = 1024


@attrs.frozen
class LeaseStatistics:
    """What a process's direct task submission did (``LeasedTasks.statistics``)."""

    leases_held: int
    leases_granted: int
    leases_refused: int
    leases_returned: int
    tasks_pushed: int
    #: Of ``tasks_pushed``, those written by the submitting thread itself.
    tasks_pushed_from_threads: int
    tasks_via_node: int
    tasks_lost: int
    #: Tasks cancelled while they waited here for a lease: failed here, never sent.
    tasks_cancelled_here: int
    #: Cancels of pushed tasks sent on their link to the worker.
    cancels_pushed: int


@attrs.define(eq=False)
class _Lease:
    lease_id: bytes
    worker_id: bytes
    link: _Link
    klass: _Class
    pushed: int = 0
    running: TaskSpec | None = None
    idle_since: float = 0.0
    returned: bool = False


@attrs.define(eq=False)
class _Link:
    """The direct link to one worker, kept across its leases."""

    address: str
    conn: Any = None
    leases: set[bytes] = attrs.Factory(set)
    dead: bool = False
    reply: ReplyReads | None = None  # its answers as a waiting thread reads them


@attrs.define(eq=False)
class _Class:
    """A scheduling class: tasks of one function taking the same resources."""

    key: tuple
    function_id: bytes
    resources: dict[str, float]
    leases: list[_Lease] = attrs.Factory(list)
    requesting: bool = False
    refused_at: float = -1e9

    def idle_lease(self) -> _Lease | None:
        for lease in self.leases:
            if lease.running is None and not lease.returned and not lease.link.dead:
                return lease
        return None


def _class_key(spec: TaskSpec) -> tuple:
    return (spec.function_id, spec.resources.get("CPU"))


class LeasedTasks:
    """One process's leases and the tasks pushed on them (see the module docstring).

    Tasks waiting for a lease wait in one FIFO (``_waiting``), all classes together,
    and leave it in order: pushed when a lease of the head's class is idle, or handed
    to the node, all of them, when a lease is refused. So this process's tasks reach
    a worker or the node's queue in the order they were submitted, as on the node
    path (a later task never takes the resources an earlier one waits for).

    ``submit`` and ``cancel`` run in any thread; everything else in the core loop.
    ``_lock`` guards ``_waiting`` and the leases' ``running``.
    """

    def __init__(self, core: Any) -> None:
        self._core = core
        self._lock = threading.Lock()
        self._classes: dict[tuple, _Class] = {}
        self._waiting: collections.deque[TaskSpec] = collections.deque()
        self._links: dict[str, _Link] = {}  # worker's address -> link
        self._in_flight: dict[bytes, _Lease] = {}  # task id -> the lease it runs on
        # Pushed tasks whose cancel was asked for, until their end is here (see
        # `cancel`): task id -> the cancel (under ``_lock``).
        self._cancels: dict[bytes, w.CancelLeasedTask] = {}
        # Of those, the ones not written on their link yet (`_send_cancel`).
        self._cancels_unsent: set[bytes] = set()
        self._leases: dict[bytes, _Lease] = {}
        # Leases a thread released reading their task's end (``_accept_done``), for
        # ``_finish_done``: task id -> lease.
        self._thread_done: dict[bytes, _Lease] = {}
        self._pump_pending = False
        self._thread_pushed_at = 0.0  # (``_push_from_thread``)
        self._thread_pushes = 0
        self._linger_wake = trio.Event()
        self._dispatcher = transport.Dispatcher(f"{core.role}-{core.pid}-leased")
        self._dispatcher.register(w.LeasedTaskDone, self._h_done, oneway=True)
        self._counts: collections.Counter[str] = collections.Counter()
        self.last_refusal = ""  # why the node last refused a lease (diagnostics)
        # A driver's tasks, and a task worker's (nested tasks: see "A recursive
        # cancel and leased children" above). Not an actor's: its calls' cancel is
        # its own, and it keeps the node path.
        self.supported = (core.role in ("driver", "worker")
                          and str(core.node_address or "").startswith("unix:"))
        # Tasks of this process cancelled with recursive=True: what they submit from
        # then on goes through the node (``cancel_children``), the newest
        # CANCELLED_PARENTS_KEPT (under ``_lock``).
        self._cancelled_parents: dict[bytes, None] = {}
        #: Whether tasks are pushed on leases now (``ACTORCORE_DIRECT_TASKS``).
        self.enabled = DIRECT_TASKS and self.supported

    # ------------------------------------------------------------------ any thread

    @staticmethod
    def eligible(spec: TaskSpec) -> bool:
        """Whether the fast path runs ``spec`` exactly (see the module docstring)."""
        resources = spec.resources
        return (
            not spec.deps
            and spec.num_returns >= 1
            and spec.runtime_env is None
            and not spec.max_calls
            and spec.strategy is None
            and len(resources) == 1
            and resources.get("CPU", 0.0) > 0
        )

    def submit(self, spec: TaskSpec) -> bool:
        """Take ``spec`` for a lease (any thread); ``False``: the caller sends it to
        the node, after every task still waiting here (they go first)."""
        if not self.enabled:
            return False
        with self._lock:
            if not self.eligible(spec) or spec.parent_task_id in self._cancelled_parents \
                    or not self._take(spec):
                if self._waiting:
                    self._to_node_locked()
                self._give_back_idle_locked(spec.resources)
                return False
            pending = self._pump_pending
            if not pending:
                if self._push_from_thread(spec):
                    return True
                self._pump_pending = True
        references = self._core.references
        if references.paused_reads:  # a burst: the loop reads the links (their ends free the leases)
            references.reclaim_paused_reads()
        if not pending:
            self._soon(self._pump)
        return True

    # A task submitted while its class holds an idle lease is written to the leased
    # worker by the submitting thread itself (`transport.Connection.send_from_thread`)
    # instead of waking the core loop to write it: one GIL hand-off and one scheduler
    # pass less on the way of every sync task. Only when nothing else waits here (the
    # order of submission holds), no `Put` waits on the node link (one the arguments
    # may refer to leaves first, through the loop, as `_pump` sees to; the frees a
    # sync loop leaves queued there do not count), the link to the worker is idle,
    # and this is no burst (within ``THREAD_SEND_GAP`` of the last such push: the loop
    # pushes a run of tasks). The lease is marked running before the write, under
    # ``_lock``, as the loop's `_pump` marks it: a lease taken here is never the one
    # `_return` gives back (it decides under the same lock), and a link lost after
    # the write finds the task in ``running`` and hands it back to the node.

    def _push_from_thread(self, spec: TaskSpec) -> bool:
        """Push ``spec`` (the only task waiting) from this thread; ``False``: the
        loop's `_pump` pushes it (lock held)."""
        now = time.monotonic()
        link = self._core.link
        if (len(self._waiting) != 1 or now - self._thread_pushed_at < THREAD_SEND_GAP
                or self._core.loop.in_loop()
                or link.has_queued() and link.has_queued_of(w.Put)):
            return False
        lease = self._classes[_class_key(spec)].idle_lease()
        if lease is None:
            return False
        conn = lease.link.conn
        self._assign_locked(lease, spec)
        try:
            sent = conn.send_from_thread(w.LeasedTask(lease.lease_id, spec))
        except Exception:  # refused for what it is: the loop's push says so
            sent = False
        if not sent:
            self._release_locked(lease, spec.task_id)
            return False
        self._waiting.popleft()
        self._thread_pushed_at = now
        lease.pushed += 1
        self._thread_pushes += 1  # under the lock (the loop counts its own pushes)
        return True

    # What a push does to the bookkeeping, from the submitting thread or the loop,
    # always under ``_lock``: the lease runs the task and the task is in flight on
    # it (``_assign_locked``), until its end comes back, its push is refused, or
    # its link is lost (``_release_locked``, which also hands back the cancel the
    # task had, for the caller to send on: see `_send_cancel`).

    def _assign_locked(self, lease: _Lease, spec: TaskSpec) -> None:
        lease.running = spec
        self._in_flight[spec.task_id] = lease

    def _release_locked(self, lease: _Lease, task_id: bytes) -> w.CancelLeasedTask | None:
        lease.running = None
        self._in_flight.pop(task_id, None)
        self._cancels_unsent.discard(task_id)
        return self._cancels.pop(task_id, None)

    def _ended_locked(self, lease: _Lease, task_id: bytes) -> w.CancelTask | None:
        """``_release_locked`` for a task whose end came back: the cancel for the
        node of a recursive cancel of it not sent yet (see `_send_cancel`)."""
        unsent = task_id in self._cancels_unsent
        cancel = self._release_locked(lease, task_id)
        if cancel is None or not unsent or not cancel.recursive:
            return None
        return w.CancelTask(task_id, cancel.force, True)

    def _take(self, spec: TaskSpec) -> bool:
        """Queue ``spec`` for a lease, or refuse it (lock held)."""
        key = _class_key(spec)
        klass = self._classes.get(key)
        if klass is None:
            klass = self._classes[key] = _Class(key, spec.function_id, dict(spec.resources))
        if len(self._waiting) >= QUEUE_PER_LEASE * max(1, len(self._leases)):
            self._counts["tasks_via_node"] += 1  # a burst: the node batches it
            klass.refused_at = time.monotonic()
            return False
        if not klass.leases and time.monotonic() - klass.refused_at < REFUSAL_BACKOFF:
            self._counts["tasks_via_node"] += 1
            return False
        self._waiting.append(spec)
        return True

    def _to_node_locked(self) -> None:
        """Every waiting task to the node, in order (lock held)."""
        specs = list(self._waiting)
        self._waiting.clear()
        self._counts["tasks_via_node"] += len(specs)
        self._core.enqueue(w.Submit(specs))
        for spec in specs:
            self._give_back_idle_locked(spec.resources)

    # A task of ours that goes to the node's queue may wait there for what our idle
    # leases hold (the node counts it taken). Were they kept, a task submitted after
    # it could be pushed on one and run first: a later task would take the
    # resources an earlier one waits for. So they go back at once, and none is
    # pushed on again (``returned``, under the lock, before the caller's `Submit`).

    def _give_back_idle_locked(self, resources: dict[str, float]) -> None:
        """The idle leases holding any of ``resources`` go back (lock held)."""
        going = []
        for klass in self._classes.values():
            if not klass.leases or not any(name in resources for name in klass.resources):
                continue
            for lease in [x for x in klass.leases if x.running is None and not x.returned]:
                klass.leases.remove(lease)
                lease.returned = True
                going.append(lease)
        if going:
            self._soon(self._send_returns, going)

    def _send_returns(self, leases: list[_Lease]) -> None:
        for lease in leases:
            self._send_return(lease)

    def _send_return(self, lease: _Lease) -> None:
        if self._leases.pop(lease.lease_id, None) is None:
            return  # given back already (its linger, its link's end)
        lease.link.leases.discard(lease.lease_id)
        self._counts["leases_returned"] += 1
        self._send_node(w.ReturnLease(lease.lease_id, lease.pushed))

    def cancel(self, task_id: bytes, force: bool, recursive: bool) -> bool:
        """``cancel(ref)`` of a task of ours; ``False``: not here (it went through the
        node, or ended), and the caller tells the node. Any thread.

        A task still waiting here fails at once; one pushed to a worker is
        cancelled there, through its node (`CancelLeasedTask`)."""
        with self._lock:
            for spec in self._waiting:
                if spec.task_id == task_id:
                    # Never left this process: it fails here, and never runs (see
                    # `_cancelled_here`).
                    self._waiting.remove(spec)
                    self._counts["tasks_cancelled_here"] += 1
                    self._soon(self._cancelled_here, spec)
                    return True
            if task_id not in self._in_flight:
                return False
            self._cancels[task_id] = w.CancelLeasedTask(task_id, force, recursive)
            self._cancels_unsent.add(task_id)
        try:
            self._core.trio_token.run_sync_soon(self._send_cancel, task_id)
        except trio.RunFinishedError:
            return False
        return True

    def cancel_children(self, parent: bytes) -> None:
        """The task ``parent`` of this process was cancelled with recursive=True
        (core loop, before the task can see its cancel): its children still waiting
        here fail here; those it submits from now on go through the node."""
        with self._lock:
            self._cancelled_parents.pop(parent, None)
            self._cancelled_parents[parent] = None
            while len(self._cancelled_parents) > CANCELLED_PARENTS_KEPT:
                del self._cancelled_parents[next(iter(self._cancelled_parents))]
            going = [spec for spec in self._waiting if spec.parent_task_id == parent]
            for spec in going:
                self._waiting.remove(spec)
            self._counts["tasks_cancelled_here"] += len(going)
        for spec in going:
            self._cancelled_here(spec)

    def parent_ended(self, parent: bytes) -> None:
        """The task ``parent`` of this process ended (its executor's thread, before
        its `TaskDone` is queued): its children still waiting here for a lease go
        to the node now, ahead of that `TaskDone` (with every task waiting here,
        in order)."""
        if not self._waiting:
            return
        with self._lock:
            if any(spec.parent_task_id == parent for spec in self._waiting):
                self._to_node_locked()

    def _soon(self, fn: Any, *args: Any) -> None:
        self._core.loop.soon(fn, *args)

    # ------------------------------------------------------------------- core loop

    # A task cancelled while it waits here for a lease has reached no node and no
    # worker: its results fail here with `TaskCancelledError`, as Ray's owner fails a
    # task cancelled in its submitter's queue. Sending it to the node with its cancel
    # behind it instead (as this did) let it run: it overtook the tasks still
    # waiting here ahead of it, and the node could start it before the cancel,
    # which left in a later frame, arrived. The node hears of the failed results as
    # it hears of a direct actor call's, from a Put queued before the caller can read
    # them (`NodeLink.enqueue_results`), so a ref passed on later resolves there.

    def _cancelled_here(self, spec: TaskSpec) -> None:
        """Fail the results of ``spec``, cancelled before it left this process."""
        payload = _serialization.dumps(
            TaskCancelledError(spec.task_id, f"task {spec.name} was cancelled"))
        results = [(oid, True, payload) for oid in spec.return_ids()]
        core = self._core
        entries = core.references.entries
        told = [r for r in results if (e := entries.get(r[0])) is not None and not e.dropped]
        if told:
            core.link.enqueue_results(told)
        core.on_objects_ready(results)
        if self._waiting:
            self._pump()

    # The cancel of a pushed task must reach it wherever it goes next. On its link it
    # reaches the worker behind the task, and the node behind the task's
    # `LeasedStart` (``worker._leased``). But the task can leave the link with the
    # cancel not sent, or sent and never read: the push is refused for what the
    # task is (it goes through the node instead), or the link breaks (the task goes
    # back to the node as lost, which retries it). So the cancel is kept here
    # (``_cancels``) until the task's end comes back on its link, and goes with the
    # task wherever it goes: a task refused before it left fails here; one handed
    # back as lost is cancelled at the node, by a `CancelTask` behind its
    # `LeasedTasksLost` on the same ordered link (the node finds it running there,
    # retried, or among the lost ones it has still to settle). Its end can also come
    # back before the core loop wrote the cancel on the link (`cancel` runs in the
    # caller's thread): a cancel of a task that ended does nothing, but a recursive
    # one still reaches the children the task left running, as on the node path,
    # where the node cancels a tree whose root has ended. So the end sends a
    # recursive cancel not written yet to the node instead (`_ended_locked`),
    # decided under ``_lock`` as `_send_cancel` decides to write it: exactly one
    # of the two sends it.

    def _send_cancel(self, task_id: bytes) -> None:
        with self._lock:
            message = self._cancels.get(task_id)
            lease = self._in_flight.get(task_id)
            if message is None or lease is None:
                return  # ended, refused or lost meanwhile: handled there
            self._cancels_unsent.discard(task_id)
        try:
            lease.link.conn.send_nowait(message)
        except Exception as exc:  # the link is gone: its end sends the cancel on
            logger.info("cancel of leased task %s not sent: %r", task_id.hex(), exc)
        self._counts["cancels_pushed"] += 1

    def _pump(self) -> None:
        """Push waiting tasks, from the head, while their class has an idle lease;
        ask for a lease for the head's class when it has none."""
        pushes = []
        request = None
        with self._lock:
            self._pump_pending = False
            waiting = self._waiting
            while waiting:
                klass = self._classes[_class_key(waiting[0])]
                lease = klass.idle_lease()
                if lease is None:
                    if not klass.requesting:
                        klass.requesting = True
                        request = klass
                    break
                spec = waiting.popleft()
                self._assign_locked(lease, spec)
                pushes.append((lease, spec))
        link = self._core.link
        if pushes and link.has_queued() and link.has_queued_of(w.Put):
            # A `Put` of an object the task's arguments may hold a ref to leaves
            # first: the worker asks the node for it (the node waits until it has
            # it). Frees stay queued: they wake the node lazily, off this path.
            link.flush()
        for lease, spec in pushes:
            self._push(lease, spec)
        if request is not None:
            self._core.loop.start_soon(self._request_lease, request)

    def _push(self, lease: _Lease, spec: TaskSpec) -> None:
        lease.pushed += 1
        try:
            lease.link.conn.send_nowait(w.LeasedTask(lease.lease_id, spec))
        except (trio.WouldBlock, *_LINK_DOWN) as exc:
            # Backed up or dying: the link's end hands its in-flight tasks back; a
            # backed-up link to a worker running one task at a time means it is gone.
            logger.info("push to leased worker failed (%r): through the node", exc)
            self._lose_link(lease.link)
        except Exception as exc:  # refused for what it is (too large, unpicklable)
            lease.pushed -= 1
            with self._lock:
                # Decided under the lock: a cancel from now on finds it gone and
                # goes to the node, behind the `Submit`.
                cancelled = self._release_locked(lease, spec.task_id) is not None
                if not cancelled:
                    self._counts["tasks_via_node"] += 1
                    self._refused(spec, exc)
            if cancelled:
                self._counts["tasks_cancelled_here"] += 1
                self._cancelled_here(spec)
            self._idle(lease)
            return
        self._counts["tasks_pushed"] += 1

    def _refused(self, spec: TaskSpec, exc: BaseException) -> None:
        """The link refused ``spec`` for what it is: the node path refuses it the
        same way and fails its results with the error (``_undeliverable``)."""
        self._core.enqueue(w.Submit([spec]))

    async def _request_lease(self, klass: _Class) -> None:
        core = self._core
        reply: Any = None
        lease_id = os.urandom(12)
        asked = False
        try:
            core.link.flush_now()
            if core.link.has_queued():
                # The link is backed up: the function's `Export` may still be queued
                # here, and the request would overtake it. The first tasks of a
                # class go through the node until it is not.
                raise trio.WouldBlock("the node link is backed up")
            asked = True
            reply = await core.link.conn.request(
                w.RequestLease(klass.function_id, dict(klass.resources), lease_id),
                timeout=LEASE_REQUEST_TIMEOUT)
            if reply.lease_id is not None:
                link = await self._link_to(reply.address)
            else:
                logger.debug("no lease for %s: %s", klass.function_id.hex()[:12], reply.reason)
                self.last_refusal = reply.reason
                link = None
        except Exception as exc:
            logger.info("lease for %s failed: %r", klass.function_id.hex()[:12], exc)
            if asked and (reply is None or reply.lease_id is not None):
                # Granted, or perhaps granted with the answer lost (a timeout, a
                # broken link): given back, behind the request on the same link,
                # or the node would hold its resources while this process lives.
                self._send_node(w.ReturnLease(lease_id, 0))
            reply, link = None, None
        if link is None:
            self._counts["leases_refused"] += 1
            # Leases of other classes idle here hold resources the node lacks:
            # they go back now rather than after their linger.
            for other in list(self._leases.values()):
                if other.klass is not klass and other.running is None:
                    self._return(other)
            with self._lock:
                klass.requesting = False
                klass.refused_at = time.monotonic()
                if self._waiting:
                    self._to_node_locked()
            return
        lease = _Lease(reply.lease_id, reply.worker_id, link, klass, idle_since=time.monotonic())
        self._counts["leases_granted"] += 1
        self._leases[lease.lease_id] = lease
        link.leases.add(lease.lease_id)
        with self._lock:
            klass.requesting = False
            klass.leases.append(lease)
        self._linger_wake.set()
        self._pump()
        if lease.running is None:
            # Nothing of its class waited for it: they went to the node meanwhile (a
            # burst, a cancel). Kept idle for its linger, it would hold a CPU those
            # queued tasks wait for (the node queues nothing behind an idle lease).
            self._return(lease)

    async def _link_to(self, address: str) -> _Link:
        link = self._links.get(address)
        if link is not None and not link.dead:
            return link
        core = self._core
        client = transport.Client(address, core.token, name=f"{core.role}-{core.pid}-leased",
                                  handler=self._dispatcher, connect_timeout=5)
        link = _Link(address)
        link.conn = await core.loop.start(self._run_link, client, link)
        if CALLER_READS:
            link.reply = ReplyReads(
                link.conn, core.references, functools.partial(self._accept_done, link),
                self._finish_done, self._busy)
        self._links[address] = link
        return link

    async def _run_link(self, client: Any, link: _Link, *,
                        task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            await client.run(task_status=task_status)
        except Exception as exc:
            if client.connection is None:
                raise  # never connected: the lease request fails (``nursery.start``)
            logger.info("link to leased worker at %s ended: %r", link.address, exc)
        finally:
            if client.connection is not None:
                self._lose_link(link)

    def _lose_link(self, link: _Link) -> None:
        """The link to a leased worker broke: its leases end, and the tasks pushed on
        them and not answered go back to the node (`LeasedTasksLost`)."""
        if link.dead:
            return
        link.dead = True
        if self._links.get(link.address) is link:
            del self._links[link.address]
        for lease_id in list(link.leases):
            lease = self._leases.pop(lease_id, None)
            if lease is None:
                continue
            lost = []
            cancels = []
            with self._lock:
                if lease in lease.klass.leases:
                    lease.klass.leases.remove(lease)
                if lease.running is not None:
                    task_id = lease.running.task_id
                    lost.append(lease.running)
                    cancel = self._release_locked(lease, task_id)
                    if cancel is not None:
                        cancels.append(w.CancelTask(task_id, cancel.force, cancel.recursive))
            lease.returned = True
            if lost:
                self._counts["tasks_lost"] += len(lost)
                self._send_node(w.LeasedTasksLost(lease.lease_id, lost))
                for message in cancels:  # behind it (see `_send_cancel`)
                    self._send_node(message)
            else:
                self._send_node(w.ReturnLease(lease.lease_id, lease.pushed))
        link.leases.clear()
        self._pump()
        if link.conn is not None:
            self._core.loop.start_soon(link.conn.aclose)

    def _h_done(self, conn: Any, m: w.LeasedTaskDone) -> None:
        late = None
        with self._lock:
            lease = self._in_flight.get(m.task_id)
            if lease is not None:
                late = self._ended_locked(lease, m.task_id)
        if late is not None:
            self._send_node(late)
        if m.results:
            self._core.on_objects_ready(m.results)
        if lease is None:
            return
        self._idle(lease)

    # -------------------------------------- a waiting thread reads a task's end

    def reply_reads_for(self, task_id: bytes) -> ReplyReads | None:
        """The link the end of pushed task ``task_id`` comes on, for a thread to read
        it itself (``_reply_reads``); ``None``: not pushed (any thread)."""
        lease = self._in_flight.get(task_id)
        return lease.link.reply if lease is not None else None

    def _accept_done(self, link: _Link, message: Any) -> bool:
        """Whether a thread that read ``message`` off ``link`` handles it itself: a
        task's end, the task still running on a lease of that link (else the loop's
        reader handles it). The lease is released here, under ``_lock``, where
        ``_lose_link`` decides which tasks were lost: either it finds the task ended,
        or this finds it lost and gives the frame back."""
        if type(message) is not w.LeasedTaskDone:
            return False
        task_id = message.task_id
        with self._lock:
            lease = self._in_flight.get(task_id)
            if lease is None or lease.link is not link:
                return False
            late = self._ended_locked(lease, task_id)
            self._thread_done[task_id] = lease
        if late is not None:
            self._send_node(late)  # (thread-safe)
        return True

    def _finish_done(self, message: Any, own: Any) -> None:
        """The rest of ``_h_done`` for an end ``_accept_done`` took, in the thread
        that read it (``own``: its wake-up, the one callback it may find)."""
        lease = self._thread_done.pop(message.task_id, None)
        results = message.results
        core = self._core
        if results and not core.references.ready_from_thread(results, own):
            self._soon(core.on_objects_ready, results)
        if lease is not None:
            lease.idle_since = time.monotonic()
            if self._waiting:
                self._soon(self._pump)

    def _busy(self) -> bool:
        """Whether other ends are due, or tasks wait for a lease (the loop must read
        the links: ``_reply_reads``)."""
        return bool(self._in_flight or self._waiting)

    def _idle(self, lease: _Lease) -> None:
        lease.idle_since = time.monotonic()
        if self._waiting:
            self._pump()

    def _send_node(self, message: Any) -> None:
        self._core.enqueue(message)

    async def run_linger(self) -> None:
        """Give back the leases idle for ``LEASE_LINGER`` seconds (core loop task)."""
        while True:
            if not self._leases:
                await self._linger_wake.wait()
                self._linger_wake = trio.Event()
            await trio.sleep(LEASE_LINGER / 2)
            now = time.monotonic()
            for lease in list(self._leases.values()):
                if lease.running is None and now - lease.idle_since >= LEASE_LINGER:
                    self._return(lease)

    def _return(self, lease: _Lease) -> None:
        with self._lock:  # as a push from a thread decides (`_push_from_thread`)
            if lease.running is not None or any(
                    _class_key(spec) == lease.klass.key for spec in self._waiting):
                return
            if lease in lease.klass.leases:
                lease.klass.leases.remove(lease)
            lease.returned = True
        self._send_return(lease)

    def statistics(self) -> LeaseStatistics:
        c = self._counts
        return LeaseStatistics(
            leases_held=len(self._leases),
            leases_granted=c["leases_granted"],
            leases_refused=c["leases_refused"],
            leases_returned=c["leases_returned"],
            tasks_pushed=c["tasks_pushed"] + self._thread_pushes,
            tasks_pushed_from_threads=self._thread_pushes,
            tasks_via_node=c["tasks_via_node"],
            tasks_lost=c["tasks_lost"],
            tasks_cancelled_here=c["tasks_cancelled_here"],
            cancels_pushed=c["cancels_pushed"],
        )


_LINK_DOWN = (transport.ConnectionLost, trio.ClosedResourceError, trio.BrokenResourceError)
