"""``python -m actorcore.worker``: a worker process (started by its node's pool).

The worker connects to its node over the node's Unix socket, registers, and then
runs what the node sends. The core loop (Trio) runs in a thread of its own: it keeps
the link, the core worker (so tasks can submit nested tasks and ``get``), and the
function cache. User code runs in ``Executor``s (see ``_executor``), and the first of
them is the process's main thread (``MainThread``): tasks run there, as in Ray, so
that signal handlers can be installed and libraries that insist on
``threading.main_thread()`` work. Only while that task is blocked in ``get`` does
the next one start in a Pykka executor thread. While the worker is idle, the main
thread reads its next task off the node's link or a submitter's itself, runs it and
writes its end, without the loop (``_main_inbox``, ``WorkerProcess._finish_here``).
The worker exits when its link to the node dies: a worker never outlives its node.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import pickle
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, NoReturn

import attrs
import trio

import transport

from ..core_worker import _worker_state
from ..core_worker._core_worker import CoreWorker
from ..core_worker._node_link import THREAD_SEND_GAP
from ..core_worker._store_link import STORE, encode_value
from ..core_worker._worker_state import task_context
from ..exceptions import ObjectLostError
from ..protocol import _wire as w
from ..protocol._ids import id_prefix, short
from ..protocol._messages import TaskSpec, max_frame_size
from ..session._config import env_value
from ._cancel import TaskStartGate
from ._executor import RESULT_OVERHEAD, Executor, Spill
from ._leased import LeasedTaskServer
from ._main_inbox import MainInbox

__all__ = ["TaskWorkerStatistics", "load_function", "main", "process_statistics", "run_main"]

logger = logging.getLogger("actorcore.worker")

#: Seconds an exiting worker waits for its results to leave for their owners.
EXIT_FLUSH_TIMEOUT = 5.0


@attrs.frozen
class TaskWorkerStatistics:
    """How a task worker's tasks came and went (``process_statistics``)."""

    #: Tasks its main thread read off a link itself (``_main_inbox``).
    tasks_read_by_thread: int
    #: Tasks whose end its main thread wrote itself (``WorkerProcess._finish_here``).
    tasks_ended_by_thread: int
    #: Tasks whose results stayed here, their owner being this process
    #: (``WorkerProcess._finished``, "Owner here").
    results_kept_here: int


#: This process's task worker, once it runs (``process_statistics``).
_worker: WorkerProcess | None = None


def process_statistics() -> TaskWorkerStatistics | None:
    """This task worker's figures (``None`` outside one): for tests and benchmarks."""
    worker = _worker
    if worker is None:
        return None
    main = worker.main_thread
    return TaskWorkerStatistics(
        tasks_read_by_thread=main.inbox.taken if main is not None else 0,
        tasks_ended_by_thread=worker.tasks_ended_here,
        results_kept_here=worker.results_kept_here)


class WorkerProcess:
    #: Seconds to connect to the node and finish the handshake (the node passes
    #: ``--connect-timeout``: its own start deadline for this process).
    connect_timeout: float = 10.0

    def __init__(
        self, worker_id: bytes, node_id: bytes, index: int, store_address: str | None = None
    ) -> None:
        self.store_address = store_address
        self.worker_id = worker_id
        self.node_id = node_id
        self.index = index
        self.core: CoreWorker | None = None
        self.functions: dict[bytes, Any] = {}
        self._executors: list[Executor] = []
        self._pending: collections.deque = collections.deque()
        self._owner_addr: dict[bytes, str] = {}
        self._owner_conns: dict[str, Any] = {}
        #: This process's own direct address (``LeasedTaskServer.listen``): a task
        #: whose owner it names was submitted here (see "Owner here" above
        #: `_finished`).
        self.direct_address: str | None = None
        self._token = b""
        self._running: dict[bytes, bool] = {}  # task id -> blocked in get
        self._free: collections.deque = collections.deque()
        self._nursery: trio.Nursery | None = None
        self.main_thread: MainThread | None = None  # set by run_main
        self._main_ref: _MainRef | None = None  # the executor on it, when free
        self._main_executor: _MainRef | None = None
        self._thread_pushed_at = 0.0  # (``_push_from_thread``)
        #: The handler of the node's link: one registry of what the node sends.
        self.dispatcher = transport.Dispatcher(f"worker_{index}")
        self.routes(self.dispatcher)
        #: Submitters' direct links to this worker (tasks on a lease, ``_leased``).
        self.leased = LeasedTaskServer(self)
        #: Tasks cancelled between their hand-over to an executor and their start.
        self._start_gate = TaskStartGate()
        # What is queued and running here (``_pending``, ``_running``, ``_main_ref``,
        # ``_free``) is changed by the loop and by the main thread, which reads,
        # starts and ends tasks itself while the worker is idle (``_main_inbox``).
        self._lock = threading.RLock()
        self._node_conn: Any = None
        self.tasks_ended_here = 0  # (``process_statistics``)
        self.results_kept_here = 0  # (``process_statistics``)
        #: Read sides lent to the main thread (``ACTORCORE_THREAD_READS``).
        self.thread_reads: bool = env_value("ACTORCORE_THREAD_READS")

    def routes(self, d: transport.Dispatcher) -> None:
        """Register what the node sends this process (``protocol._wire``)."""
        d.register(w.Execute, self._h_execute, oneway=True)
        d.register(w.ObjectsReady, self._h_ready, oneway=True)
        d.register(w.InterruptTask, self._h_interrupt, oneway=True)
        d.register(w.ReleaseObjects, self._h_release, oneway=True)
        d.register(w.ExitWorker, self._h_exit, oneway=True)
        # A fault rule command the node forwards (``testing.faults``).
        d.register(w.FaultRules, lambda conn, m: transport.faults.apply(m.command), oneway=True)

    def _h_execute(self, conn: Any, m: w.Execute) -> None:
        self._note_owner(m)
        self._execute(m.spec, m.dep_data, m.gpu_ids)

    def _note_owner(self, m: w.Execute) -> None:
        """The owner listens for results pushed directly; not a generator's: its
        end must not overtake its items, which go through the node."""
        if m.owner_address is not None and m.spec.num_returns >= 0:
            self._owner_addr[m.spec.task_id] = m.owner_address

    async def _h_exit(self, conn: Any, m: w.ExitWorker) -> None:
        """Exit now, once the results pushed to their owners have left. The node says
        ``ExitWorker`` right after the ``TaskDone`` of a worker's last task (it
        retires at ``max_calls``): that task's results may still be queued on the
        link to their owner, who would wait for them forever."""
        conns = [c for c in self._owner_conns.values() if c is not None and not c.closed]
        if conns:
            with trio.move_on_after(EXIT_FLUSH_TIMEOUT):
                async with trio.open_nursery() as nursery:
                    for c in conns:
                        nursery.start_soon(c.aclose, EXIT_FLUSH_TIMEOUT)
        os._exit(0)

    def _h_ready(self, conn: Any, m: w.ObjectsReady) -> None:
        if self.core is not None:
            self.core.on_objects_ready(m.objects)

    def _h_interrupt(self, conn: Any, m: w.InterruptTask) -> None:
        task_id = m.task_id
        if m.recursive and self.core is not None and self.core.leased is not None:
            # Before the task can see its cancel: what it submits from now on goes
            # through the node, which cancels it (``_leased_tasks``).
            self.core.leased.cancel_children(task_id)
        with self._lock:
            for i, item in enumerate(self._pending):
                if item[0].task_id == task_id:  # queued here, not started: drop it
                    del self._pending[i]
                    self._report_cancelled(item[0])
                    return
            if task_id in self._running:  # handed to an executor, not reported yet
                executors = list(self._executors)
                self._start_gate.cancel(
                    task_id, lambda: any([executor.interrupt(task_id) for executor in executors]))
        if self.core is not None:
            self.core.cancel_task_waits(task_id)

    def _h_release(self, conn: Any, m: w.ReleaseObjects) -> None:
        if self.core is not None and self.core.store is not None:
            self.core.store.release_soon(m.object_ids)

    def _new_executor(self) -> Any:
        """Start one more executor actor (a task runs in one while others are blocked)."""
        core = self.core
        assert core is not None
        free = self._free

        encode, decode = value_codec(core)
        spill = return_spill(core)
        holder: list[Executor] = []

        token = core.trio_token

        def report(spec: TaskSpec, results: list, retry: bool, _dt: float) -> None:
            core.task_finished(spec.task_id)
            free.append(ref)  # free again before the node hears we are done
            pushed_on = self._push_from_thread(spec.task_id, results, retry)
            # One wake-up of the loop per task: it sends the results and starts the next.
            token.run_sync_soon(self._finished, spec.task_id, results, retry, pushed_on)

        ref = Executor.start(report, self.node_id.hex(), holder.append, encode, decode, spill,
                             stream_emitter(core), self._start_gate)
        self._executors.append(holder[0])
        return ref

    def _new_main_executor(self, main: MainThread) -> None:
        """The executor whose thread is the process's main thread (preferred)."""
        core = self.core
        assert core is not None
        encode, decode = value_codec(core)
        token = core.trio_token
        ref = _MainRef(main)

        def report(spec: TaskSpec, results: list, retry: bool, _dt: float) -> None:
            core.task_finished(spec.task_id)
            if self.thread_reads:
                done, pushed_on = self._finish_here(ref, spec.task_id, results, retry)
                if done:
                    return
            else:
                pushed_on = self._push_from_thread(spec.task_id, results, retry)
            with self._lock:
                self._main_ref = ref
            token.run_sync_soon(self._finished, spec.task_id, results, retry, pushed_on)

        self._main_executor = ref
        ref.executor = Executor(report, self.node_id.hex(), self._executors.append,
                                encode, decode, return_spill(core),
                                stream_emitter(core), self._start_gate)  # ``main`` runs it
        main.submit(ref.executor.on_start)
        self._main_ref = ref
        if self.thread_reads:
            inbox = main.inbox
            inbox.idle = self._idle
            inbox.run_taken = self._run_taken
            inbox.accept = self._accept

    def _take_executor(self) -> Any:
        ref = self._main_ref
        if ref is not None:
            self._main_ref = None
            return ref
        while self._free:
            ref = self._free.pop()
            if ref.is_alive():
                return ref
        return self._new_executor()

    # The node may queue a task or two here behind the running one (pipelining).
    # They start in order, one at a time; when every running task is blocked in
    # ``get`` the next one starts in another executor (the node counts the same way).

    def _execute(self, spec: TaskSpec, dep_data: list, gpu_ids: tuple = ()) -> None:
        item = self._task_item(spec, dep_data, gpu_ids)
        with self._lock:
            self._pending.append(item)
            self._pump()

    def _task_item(self, spec: TaskSpec, dep_data: list, gpu_ids: tuple) -> tuple:
        """What an executor runs for ``spec``: the task, its function (or the loader
        that fetches it) and its arguments' data."""
        fn = self.functions.get(spec.function_id)
        if fn is None:
            fn = _FunctionLoader(self, spec.function_id)
        return (spec, fn, dep_data, gpu_ids)

    def execute_leased(self, spec: TaskSpec) -> None:
        """Run a task pushed on a lease (no ref arguments: nothing to fetch)."""
        self._execute(spec, [])

    def _pump(self) -> None:
        """Start what may start now (the worker's lock held)."""
        running = self._running
        while self._pending and not any(not blocked for blocked in running.values()):
            item = self._pending.popleft()
            running[item[0].task_id] = False
            self._take_executor().tell(item)

    # A task's results reach its owner first: the executor's thread writes them itself
    # when the owner's link is idle (``transport.Connection.send_from_thread``), before
    # it wakes the loop, which then tells the node "done, pushed" (after the push has
    # left, as below) and starts the next task. Waking the loop first would put a GIL
    # hand-off and a scheduler pass on the way of every result. Not within
    # ``THREAD_SEND_GAP`` of the last such push: a run of quick tasks goes through the
    # loop. Any doubt (a retry, results too large for one frame, no link yet, a busy
    # link) leaves the push to the loop, as before.

    def _push_from_thread(self, task_id: bytes, results: list, retry: bool) -> Any:
        """Push a finished task's results to their owner from the executor's thread;
        the connection they went on, or ``None``: the loop pushes them."""
        core = self.core
        now = time.monotonic()
        if retry or core is None or now - self._thread_pushed_at < THREAD_SEND_GAP:
            return None
        conn = self.leased.links.get(task_id)
        if conn is not None:
            message: Any = w.LeasedTaskDone(task_id, results)
        else:
            address = self._owner_addr.get(task_id)
            conn = self._owner_conns.get(address) if address is not None else None
            if conn is None or conn.closed or address == self.direct_address:
                return None  # (the owner is here: the loop hands them over)
            message = w.ObjectsReady(results)
        if results_size(results) > core.frame_limit():
            return None
        try:
            sent = conn.send_from_thread(message)
        except Exception:  # refused for what it is: the loop's push says so
            return None
        if not sent:
            return None
        self._thread_pushed_at = now
        return conn

    # Owner here. A nested task's results go to its owner, the process that
    # submitted it, which the node names by its direct address. A worker whose
    # tasks are all blocked in ``get`` takes one more task, so in a task tree a
    # child often runs beside its blocked parent (about a third of the leaves of the
    # nested tree of 73). Its results then never leave the process: the loop makes
    # them ready in the reference table (``on_objects_ready``, the handler a pushed
    # `ObjectsReady` reaches) instead of writing them on a link to itself and
    # reading them back (an encode, a send, a wake-up of the loop on the read, a
    # decode), and the node is told "done, pushed". Nothing can come
    # between: the owner holds them before the `TaskDone` is queued, and if the
    # process dies the owner dies with it. The executor's thread and the main
    # thread leave such an end to the loop (``on_objects_ready`` is the loop's).

    def _finished(self, task_id: bytes, results: list, retry: bool,
                  pushed_on: Any = None) -> None:
        """A task ended (core loop): results to the owner directly when it listens
        (a driver on this node: one hop less than through the node), "done" to the
        node (which records them and delivers them if we did not). ``pushed_on``: the
        executor's thread pushed them already, on that link (``_push_from_thread``)."""
        core = self.core
        assert core is not None
        pushed = False
        conn = None
        link = self.leased.take_link(task_id)
        if pushed_on is not None:
            self._owner_addr.pop(task_id, None)
            pushed, conn, link = True, pushed_on, None
        elif link is not None:
            # A leased task: its end goes back on the link it came on, with the
            # results when they are not too large for the node either (see below).
            inline = not retry and results_size(results) <= core.frame_limit()
            try:
                link.send_nowait(w.LeasedTaskDone(task_id, results if inline else []))
                pushed = inline
                conn = link if inline else None
            except Exception as exc:  # the submitter hands it back; the node delivers
                logger.debug("reporting leased task %s failed: %r", task_id.hex(), exc)
        address = (None if link is not None or pushed_on is not None
                   else self._owner_addr.pop(task_id, None))
        if address is not None and not retry and results_size(results) > core.frame_limit():
            # Too large for the node (no store to spill them to): it records them
            # as errors, so the owner must get those too, not the values.
            address = None
        if address is not None and not retry and address == self.direct_address:
            self.results_kept_here += 1  # (counted first: the owner may look now)
            core.on_objects_ready(results)  # (see "Owner here" above)
            pushed = True
        elif address is not None and not retry:
            conn = self._owner_conns.get(address)
            if conn is not None and not conn.closed:
                try:
                    conn.send_nowait(w.ObjectsReady(results))
                    pushed = True
                except Exception as exc:  # the node delivers them instead
                    logger.debug("pushing results to their owner at %s failed: %r", address, exc)
            elif address not in self._owner_conns and self._nursery is not None:
                self._owner_conns[address] = None
                self._nursery.start_soon(self._dial_owner, address)
        if pushed and conn is not None and conn.unsent and self._nursery is not None:
            # The push is queued, not written: "done, pushed" must not reach the
            # node first (see `_done_once_pushed`).
            self._nursery.start_soon(self._done_once_pushed, conn, task_id, results)
        else:
            self._report_done(task_id, results, retry, pushed)
        with self._lock:
            self._running.pop(task_id, None)
            self._start_gate.forget(task_id)
            self._pump()

    def _report_done(self, task_id: bytes, results: list, retry: bool, pushed: bool) -> None:
        core = self.core
        assert core is not None
        core.append_unsent(w.TaskDone(task_id, results, retry, pushed))
        core.flush_now()

    # Results pushed to their owner take one hop, but the node must learn that they
    # went: told "done, pushed", it records them without delivering them. The push
    # and the "done" leave on two connections, each written by its own task, so the
    # "done" could be written first; a worker killed between the two writes (a
    # SIGKILL, a crash) would leave the owner waiting for ever for a result that the
    # node holds and believes delivered. So when the push could not be written at
    # once, the "done" waits until it has been (`transport.Connection.drain`: the
    # owner's kernel holds it, whatever happens to this process next), and says
    # "not pushed" if the link closed first: the node then delivers the results.

    async def _done_once_pushed(self, conn: Any, task_id: bytes, results: list) -> None:
        try:
            await conn.drain()
            pushed = True
        except transport.ConnectionLost:
            pushed = False
        self._report_done(task_id, results, False, pushed)

    async def _dial_owner(self, address: str) -> None:
        try:
            self._owner_conns[address] = await transport.connect(
                address, self._token, name=f"worker_{self.index}",
                connect_timeout=self.connect_timeout,  # the start budget (``_direct_calls``)
            )
        except Exception as exc:  # results keep going through the node
            logger.info("cannot reach owner at %s: %s", address, exc)

    def _blocked(self, task_id: bytes, blocked: bool) -> None:
        with self._lock:
            if task_id in self._running:
                self._running[task_id] = blocked
                self._pump()

    def _report_cancelled(self, spec: TaskSpec) -> None:
        from ..exceptions import TaskCancelledError
        from ..protocol._serialization import dumps

        assert self.core is not None
        payload = dumps(TaskCancelledError(spec.task_id, f"task {spec.name} was cancelled"))
        results = [(oid, True, payload) for oid in spec.return_ids()]
        if spec.task_id in self.leased.links:  # its submitter waits for its end too
            self._finished(spec.task_id, results, False)
            return
        self.core.enqueue(w.TaskDone(spec.task_id, results, False))

    async def run(self, address: str, token: bytes) -> None:
        global _worker
        _worker = self
        self._token = token
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            client = transport.Client(
                address, token, name=f"worker_{self.index}", handler=self.dispatcher,
                connect_timeout=self.connect_timeout, max_frame_size=max_frame_size(),
            )
            conn = await nursery.start(client.run)
            # The core worker and executor exist before we register: the node may
            # send work the moment it has our hello.
            core = self.new_core("worker", conn, address)
            self._node_conn = conn
            core.on_blocked = self._on_blocked
            await core.serve(nursery, self.store_address, token)
            if self.main_thread is not None:
                self._new_main_executor(self.main_thread)
            else:
                self._free.append(self._new_executor())
            direct = await self.leased.listen(nursery, address, token)
            self.direct_address = direct
            await self.hello("worker", conn, direct)
            self.offer_reads(conn)

    def _on_blocked(self, task_id: bytes, blocked: bool) -> None:
        """A task starts (``True``) or stops waiting in ``get``/``wait`` (its thread)."""
        main = self.main_thread
        if blocked and main is not None:
            # What it waits for comes on the links: the loop reads them from now on.
            main.inbox.reclaim()
        assert self.core is not None
        try:
            self.core.trio_token.run_sync_soon(self._blocked, task_id, blocked)
        except trio.RunFinishedError:
            pass

    # ----------------------------------------------- tasks read by the main thread

    def offer_reads(self, conn: Any) -> None:
        """Lend ``conn``'s read side to the main thread, which reads tasks off it
        itself while the worker is idle (``_main_inbox``; core loop)."""
        main = self.main_thread
        if main is not None and main.inbox.accept is not None:
            main.inbox.offer(conn)

    def _idle(self) -> bool:
        """Whether a task read by the main thread may start there now (a hint; the
        worker's lock decides, in ``_accept``)."""
        return self._main_ref is not None and not self._pending and not self._running

    def _accept(self, conn: Any, messages: list) -> bool:
        """Whether the main thread runs ``messages``, which it read off ``conn`` itself
        in one read: tasks (`Execute` from the node, `LeasedTask` from a submitter)
        that came while the worker was idle. The first starts at once and the others
        queue behind it, registered as the loop registers the tasks it reads
        (main thread; all or none)."""
        kind = w.Execute if conn is self._node_conn else w.LeasedTask
        if any(type(m) is not kind for m in messages):
            return False
        with self._lock:
            if self._main_ref is None or self._pending or self._running:
                return False
            self._main_ref = None
            for i, m in enumerate(messages):
                spec = m.spec
                if kind is w.LeasedTask:
                    self.leased.links[spec.task_id] = conn
                else:
                    self._note_owner(m)
                if i:
                    self._pending.append(self._item(m))
                else:
                    self._running[spec.task_id] = False
        if kind is w.LeasedTask:
            # Before the tasks start, as the loop's ``_h_task`` does.
            assert self.core is not None
            for m in messages:
                self.core.enqueue(w.LeasedStart(m.lease_id, m.spec), coalesce=False)
        return True

    def _item(self, message: Any) -> tuple:
        """What an executor runs for the task ``message`` (`Execute`, `LeasedTask`)."""
        if type(message) is w.Execute:
            return self._task_item(message.spec, message.dep_data, message.gpu_ids)
        return self._task_item(message.spec, [], ())

    def _run_taken(self, conn: Any, message: Any) -> None:
        """Run the task the main thread read and accepted (``_accept``), here."""
        ref = self._main_executor
        assert ref is not None and ref.executor is not None
        ref.executor.on_receive(self._item(message))

    def _finish_here(self, ref: Any, task_id: bytes, results: list,
                     retry: bool) -> tuple[bool, Any]:
        """End a task on the main thread that ran it, without the loop: results to
        the submitter or owner (when their link is idle), then `TaskDone` to the
        node, then the next task. ``(False, pushed_on)``: the loop ends it
        (``_finished``), the results already written on ``pushed_on`` if not
        ``None``. The loop's way keeps every case but the common one: a retry,
        results too large for a frame, an owner not dialled yet, a busy link."""
        core = self.core
        if retry or core is None or results_size(results) > core.frame_limit():
            return False, None
        link = self.leased.links.get(task_id)
        message: Any = None
        if link is not None:
            message = w.LeasedTaskDone(task_id, results)
        else:
            address = self._owner_addr.get(task_id)
            if address is not None:
                link = self._owner_conns.get(address)
                if link is None or link.closed or address == self.direct_address:
                    return False, None  # (the owner is here: the loop hands them over)
                message = w.ObjectsReady(results)
        if link is not None:
            try:
                sent = link.send_from_thread(message)
            except Exception:  # refused for what it is: the loop's push says so
                return False, None
            if not sent:
                return False, None
            if link.unsent:  # written in part: "done" must wait for the rest
                return False, link
        core.enqueue(w.TaskDone(task_id, results, False, link is not None), coalesce=False)
        with self._lock:
            self.leased.links.pop(task_id, None)
            self._owner_addr.pop(task_id, None)
            self._running.pop(task_id, None)
            self._start_gate.forget(task_id)
            self._main_ref = ref
            if self._pending:
                self._pump()
        self.tasks_ended_here += 1
        return True, None

    def new_core(self, role: str, conn: Any, address: str) -> CoreWorker:
        """This process's core worker (``role`` "worker" or "actor_worker"), installed
        as the one ``get``/``.remote()`` in user code go through."""
        core = CoreWorker(
            role=role,
            worker_id=self.worker_id,
            job_id=b"\0\0\0\0",
            node_id=self.node_id,
            conn=conn,
            node_address=address,
        )
        core.current_task_id = lambda: getattr(task_context, "task_id", None)
        self.core = core
        _worker_state.set_core(core)
        return core

    async def hello(self, role: str, conn: Any, direct_address: str | None = None) -> None:
        """Register with the node (it may send work at once) and learn the GCS
        address; ``direct_address``: where submitters holding a lease push tasks."""
        assert self.core is not None
        welcome = await conn.request(
            w.Hello(role, self.worker_id, os.getpid(),
                    w.HelloInfo(id_prefix=id_prefix(), direct_address=direct_address)),
            timeout=30)
        self.core.gcs_address = welcome.gcs_address


class MainThread:
    """The process's main thread, lent to user code (``run_main``): it runs the
    callables given to ``submit``, one at a time, in order, for ever; in a task
    worker, also the tasks it reads off the worker's links itself (``MainInbox``)."""

    def __init__(self) -> None:
        self.inbox = MainInbox()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self.inbox.put((fn, args))

    def serve(self) -> NoReturn:
        get = self.inbox.get
        while True:
            try:
                fn, args = get()
                fn(*args)
            except BaseException as exc:  # noqa: BLE001 - the main thread serves on
                # e.g. a cancellation that landed just after its task ended.
                logger.warning("main thread: %r escaped the code it ran", exc)


class _MainRef:
    """The main thread's executor, with the part of a Pykka actor ref the pool uses."""

    def __init__(self, main: MainThread) -> None:
        self.main = main
        self.executor: Executor | None = None

    def tell(self, message: Any) -> None:
        assert self.executor is not None
        self.main.submit(self.executor.on_receive, message)

    def is_alive(self) -> bool:
        return True


def value_codec(
    core: CoreWorker,
) -> tuple[Callable[[bytes, Any], bytes], Callable[[bytes, Any], Any]]:
    """How user code in this process encodes return values and decodes arguments:
    small values inline (pickled), large ones through the node's store."""

    def encode(oid: bytes, value: Any) -> bytes:
        return encode_value(value, oid, core.store, what="the return value")

    def decode(oid: bytes, data: Any) -> Any:
        if data == STORE:
            assert core.store is not None
            try:
                return core.store.get(oid)
            except ObjectLostError:
                # Gone from the store since the node sent it (its spill file
                # vanished): rebuilt from its lineage, or the error saying why not.
                return core.read_lost(oid)
        return pickle.loads(data)

    return encode, decode


def return_spill(core: CoreWorker) -> Spill | None:
    """How this process keeps a call's inline results within one frame to the node
    (see ``Spill``): through its store, when it has one."""
    if core.store is None:
        return None

    def put(oid: bytes, value: Any) -> bytes:
        import store

        link = core.store
        if link is None:
            raise ConnectionError("the store link of this worker is gone")
        link.put(oid, store.serialize(value))
        return STORE

    # Half the node's limit, as for batched submissions: the rest of the message
    # and the push to a driver (whose limit may be lower) keep a wide margin.
    return Spill(put, lambda: core.frame_limit() // 2)


def stream_emitter(core: CoreWorker) -> Callable[[Any, list, bool], None]:
    """How a generator task or call in this process sends its items (any thread):
    to the node, on the link its end will follow on (see ``_executor.StreamWriter``)."""

    def emit(spec: Any, results: list, push: bool) -> None:
        core.enqueue(w.StreamItems(spec.owner, results, push))

    return emit


def results_size(results: list) -> int:
    """About how many bytes ``results`` take in a message."""
    return sum(len(data) + RESULT_OVERHEAD for _oid, _is_error, data in results)


class _FunctionLoader:
    """Fetches (once) and unpickles a function in the executor thread: imports run
    user code, and the fetch is a blocking request through the core loop."""

    def __init__(self, worker: WorkerProcess, function_id: bytes) -> None:
        self.worker = worker
        self.function_id = function_id

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        worker = self.worker
        fn = worker.functions.get(self.function_id)
        if fn is None:
            assert worker.core is not None
            fn = load_function(worker.core, self.function_id)
            worker.functions[self.function_id] = fn
        return fn(*args, **kwargs)


def load_function(core: CoreWorker, function_id: bytes, record: dict | None = None) -> Any:
    """Unpickle a registered function or class (in a user thread: unpickling imports
    user modules). ``record`` is the GCS's ``{"blob", "sys_path"}``; without it, it is
    fetched from the node, a blocking request through the core loop."""
    if record is None:
        record = trio.from_thread.run(
            core.conn.request, w.GetFunction(function_id), 60,
            trio_token=core.trio_token,
        )
    for path in record.get("sys_path") or ():
        if path not in sys.path:
            sys.path.append(path)
    return pickle.loads(record["blob"])


def main(argv: list[str] | None = None) -> None:
    run_main("python -m actorcore.worker", argv)


def run_main(
    prog: str,
    argv: list[str] | None,
    worker_class: type[WorkerProcess] = WorkerProcess,
    add_arguments: Callable[[argparse.ArgumentParser], object] | None = None,
    before_start: Callable[[argparse.Namespace], object] | None = None,
) -> None:
    """The main of a worker process (``actorcore.worker``, ``actorcore.worker._actor_process``):
    parse the command line the pool gives it (plus ``add_arguments``), run a
    ``worker_class`` until its link to the node ends, then exit the process."""
    p = argparse.ArgumentParser(prog=prog)
    p.add_argument("--address", required=True)
    p.add_argument("--worker-id", required=True)
    p.add_argument("--node-id", required=True)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--store-address")
    p.add_argument("--connect-timeout", type=float, default=WorkerProcess.connect_timeout)
    if add_arguments is not None:
        add_arguments(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    token = bytes.fromhex(os.environ.pop("ACTORCORE_TOKEN"))
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s worker_{args.index} %(levelname)s %(name)s: %(message)s",
    )
    if before_start is not None:
        before_start(args)
    worker = worker_class(
        bytes.fromhex(args.worker_id), bytes.fromhex(args.node_id), args.index, args.store_address
    )
    worker.connect_timeout = args.connect_timeout
    # The core loop gets a thread; the main thread is lent to user code (tasks run
    # on it) and serves until the loop ends the process.
    main = worker.main_thread = MainThread()

    def run_loop() -> None:
        code = 0
        try:
            trio.run(worker.run, args.address, token)
        except BaseException as exc:  # the node went away, or we were told to stop
            code = 1
            if not isinstance(exc, KeyboardInterrupt):
                print(
                    f"worker_{args.index} (node {short(args.node_id)}): exiting: {exc!r}",
                    file=sys.stderr,
                )
        finally:
            # Whatever happens here (stderr is a pipe to a node that may be gone:
            # printing can raise), the process ends with its loop: the main thread
            # never returns on its own.
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    threading.Thread(target=run_loop, name="actorcore-core", daemon=True).start()
    main.serve()


if __name__ == "__main__":
    main()
