"""How a task worker ends its tasks: results to their owner, "done" to the node.

A task's end has two parts: its results reach its owner (the process that
submitted it, when that one listens for pushed results: a driver or a worker
naming its direct address), and the node hears that the task is done (with the
results, which it records, and delivers itself when they were not pushed). The
loop of the worker ends a task in every case (``_finished``); the thread that ran
it ends it itself in the common one (``_finish_here``: an idle link, results
that fit in a frame, an owner in another process), which spares a wake-up of the
loop and a GIL hand-off per task. `TaskEnds` is a part of ``WorkerProcess``
(``_process``), kept apart by its job.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from typing import Any

import trio

import transport

from ..core_worker._core_worker import CoreWorker
from ..core_worker._node_link import THREAD_SEND_GAP
from ..protocol import _wire as w
from ..protocol._messages import TaskSpec
from ._cancel import TaskStartGate
from ._executor import RESULT_OVERHEAD
from ._leased import LeasedTaskServer

__all__ = ["TaskEnds", "results_size"]

logger = logging.getLogger("actorcore.worker")


def results_size(results: list) -> int:
    """About how many bytes ``results`` take in a message."""
    return sum(len(data) + RESULT_OVERHEAD for _oid, _is_error, data in results)


class TaskEnds:
    """The task-ending half of ``_process.WorkerProcess`` (its state is set up
    there)."""

    core: CoreWorker | None
    leased: LeasedTaskServer
    direct_address: str | None
    index: int
    results_kept_here: int
    tasks_ended_here: int
    tasks_ended_by_executors: int
    _owner_addr: dict[bytes, str]
    _owner_conns: dict[str, Any]
    _thread_pushed_at: float
    _nursery: trio.Nursery | None
    _token: bytes
    _lock: threading.RLock
    _running: dict[bytes, bool]
    _pending: collections.deque
    _start_gate: TaskStartGate
    _main_ref: Any
    connect_timeout: float
    _interrupted: set[bytes]

    def _pump(self) -> None:
        """Start what may start now (``WorkerProcess._pump``)."""
        raise NotImplementedError

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
        if retry or core is None or now - self._thread_pushed_at < THREAD_SEND_GAP \
                or task_id in self._interrupted:  # (through the node: `_h_interrupt`)
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
        # Cancelled: its results go through the node (see `_h_interrupt`).
        via_node = task_id in self._interrupted
        if pushed_on is not None:
            self._owner_addr.pop(task_id, None)
            pushed, conn, link = True, pushed_on, None
        elif link is not None:
            # A leased task: its end goes back on the link it came on, with the
            # results when they are not too large for the node either (see below).
            inline = (not retry and not via_node
                      and results_size(results) <= core.frame_limit())
            try:
                link.send_nowait(w.LeasedTaskDone(task_id, results if inline else []))
                pushed = inline
                conn = link if inline else None
            except Exception as exc:  # the submitter hands it back; the node delivers
                logger.debug("reporting leased task %s failed: %r", task_id.hex(), exc)
        address = (None if link is not None or pushed_on is not None
                   else self._owner_addr.pop(task_id, None))
        if via_node:
            address = None
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
        with self._lock:  # (in one step with the record: "In step with the node")
            if pushed and conn is not None and conn.unsent and self._nursery is not None:
                # The push is queued, not written: "done, pushed" must not reach the
                # node first (see `_done_once_pushed`).
                self._nursery.start_soon(self._done_once_pushed, conn, task_id, results)
            else:
                self._report_done(task_id, results, retry, pushed)
            self._running.pop(task_id, None)
            self._interrupted.discard(task_id)
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

    def _report_cancelled(self, spec: TaskSpec) -> None:
        from ..exceptions import TaskCancelledError
        from ..protocol._serialization import dumps

        assert self.core is not None
        payload = dumps(TaskCancelledError(spec.task_id, f"task {spec.name} was cancelled"))
        results = [(oid, True, payload) for oid in spec.return_ids()]
        if spec.task_id in self.leased.links:  # its submitter waits for its end too
            self._finished(spec.task_id, results, False)
            return
        self._interrupted.discard(spec.task_id)
        self._owner_addr.pop(spec.task_id, None)
        self.core.enqueue(w.TaskDone(spec.task_id, results, False))

    def _finish_here(self, ref: Any, task_id: bytes, results: list,
                     retry: bool) -> tuple[bool, Any]:
        """End a task on the thread that ran it, without the loop: results to the
        submitter or owner (when their link is idle), then `TaskDone` to the node,
        then the next task. ``ref``: the main thread's executor, free again (an
        executor thread's is put back in ``_free`` by its caller). ``(False,
        pushed_on)``: the loop ends it (``_finished``), the results already written
        on ``pushed_on`` if not ``None``. The loop's way keeps every case but the
        common one: a retry, results too large for a frame, an owner not dialled
        yet, a busy link, an owner in this process."""
        core = self.core
        if retry or core is None or results_size(results) > core.frame_limit() \
                or task_id in self._interrupted:  # (through the node: `_h_interrupt`)
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
        with self._lock:  # (in one step with the record: "In step with the node")
            core.enqueue(w.TaskDone(task_id, results, False, link is not None), coalesce=False)
            self.leased.links.pop(task_id, None)
            self._owner_addr.pop(task_id, None)
            self._running.pop(task_id, None)
            self._start_gate.forget(task_id)
            if ref is not None:
                self._main_ref = ref
            if self._pending:
                self._pump()
        if ref is None:
            self.tasks_ended_by_executors += 1
        else:
            self.tasks_ended_here += 1
        return True, None
