"""A task worker's executor threads (``worker._executor``), without a cluster: a
real executor thread runs real task specs."""

from __future__ import annotations

import queue
import threading

from actorcore import exceptions as exc
from actorcore.core_worker._object_ref import ObjectRef
from actorcore.protocol import _serialization
from actorcore.protocol._ids import new_task_id
from actorcore.protocol._messages import TaskSpec
from actorcore.worker._cancel import TaskStartGate
from actorcore.worker._executor import Executor


def _spec(name: str) -> TaskSpec:
    blob, _deps, _held = _serialization.dumps_args(name, (), {}, ObjectRef)
    return TaskSpec(task_id=new_task_id(), job_id=b"\0\0\0\1", function_id=b"f" * 16,
                    name=name, args=blob, deps=[], num_returns=1, resources={"CPU": 1.0},
                    max_retries=0, retry_exceptions=False, parent_task_id=None,
                    owner=b"o" * 16)


def test_a_task_cancelled_before_its_thread_starts_it_never_runs():
    # The worker hands a task to an executor and goes on; the executor's thread
    # claims it later (here: once the task ahead of it ends). A cancel in between
    # finds it in no executor (``interrupt`` says no): without the gate it was lost
    # and the task ran.
    gate = TaskStartGate()
    reports: queue.Queue = queue.Queue()
    executors: list[Executor] = []
    started, release = threading.Event(), threading.Event()
    ran = []

    def block():
        started.set()
        release.wait(30)
        return "first"

    def touch():
        ran.append("second")
        return "second"

    ref = Executor.start(lambda spec, results, retry, _dt: reports.put((spec, results)),
                         "node", executors.append, gate=gate)
    try:
        first, second = _spec("block"), _spec("touch")
        ref.tell((first, block, []))
        assert started.wait(30)
        ref.tell((second, touch, []))
        (executor,) = executors
        assert not executor.interrupt(second.task_id)  # no thread runs it yet
        gate.cancel(second.task_id, lambda: executor.interrupt(second.task_id))
        release.set()
        done = dict(reports.get(timeout=30) for _ in range(2))
    finally:
        release.set()
        ref.stop()
    assert done[first][0][1] is False  # the first ran to its end
    assert ran == []
    (oid, is_error, payload), = done[second]
    assert is_error and oid == second.return_ids()[0]
    error = _serialization.loads(payload)
    assert isinstance(error, exc.TaskCancelledError) and "touch was cancelled" in str(error)
    assert gate.skipped_total == 1


def test_a_cancel_mark_for_a_task_that_ended_is_forgotten():
    gate = TaskStartGate()
    task_id = new_task_id()
    gate.cancel(task_id, lambda: False)  # it ended before the cancel came
    gate.forget(task_id)  # its end was reported
    assert gate.start(task_id, lambda: None)  # (an id is never reused; the mark went)
