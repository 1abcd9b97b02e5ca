"""Cancelling actor method calls inside the actor's process (``cancel(ref)``).

Ray's rules for actor calls, which we follow:

- a call still waiting in the actor's mailbox (not started) is dropped: it never
  runs and its refs get ``TaskCancelledError`` at once, without waiting for the calls
  ahead of it;
- a running call of an async actor is cancelled (its coroutine sees the event
  loop's cancellation: ``asyncio.CancelledError``, or ``trio.Cancelled``) and its refs
  get ``TaskCancelledError`` — unless the method catches that and returns anyway;
- a running call of a threaded actor is not interrupted (a thread cannot be stopped
  safely in the middle of an actor's state change): its result stands;
- a finished call: nothing happens.

``CallGate`` is the per-actor record that makes "queued" and "running" decidable from
the Trio loop that receives the cancel while the actor's own thread (Pykka mailbox)
or event loop starts calls: every call is registered when it enters the mailbox and
claimed when it starts, under one lock, so a cancel either drops a call before it
starts or finds it running, never both.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import attrs

from ..protocol._actors import CallSpec, cancelled_results

__all__ = ["CallGate", "CallGateStatistics", "TaskInterrupt", "TaskStartGate",
           "run_interruptible"]


@attrs.frozen(kw_only=True)
class CallGateStatistics:
    """Figures of one actor's calls, from ``CallGate.statistics()``.

    Attributes:
      queued: calls in the mailbox, not started.
      running_interruptible: calls of an async actor running now (a cancel
        interrupts them).
      dropped_total: queued calls cancelled before they started;
        interrupted_total: running calls a cancel interrupted.
    """

    queued: int
    running_interruptible: int
    dropped_total: int
    interrupted_total: int


class CallGate:
    """The calls of one actor that are queued, dropped or running (any thread).

    ``done(spec, results)`` answers a dropped call (the host context's ``done``).
    """

    def __init__(self, done: Callable[[CallSpec, list], None]) -> None:
        self._done = done
        self._lock = threading.Lock()
        self._queued: dict[bytes, CallSpec] = {}
        self._dropped: set[bytes] = set()
        self._running: dict[bytes, Callable[[], Any]] = {}
        self.dropped_total = 0
        self.interrupted_total = 0

    def queued(self, spec: CallSpec) -> None:
        """``spec`` entered the mailbox."""
        with self._lock:
            self._queued[spec.task_id] = spec

    def start(self, spec: CallSpec, interrupt: Callable[[], Any] | None = None) -> bool:
        """Claim ``spec`` to run it now; ``False``: it was cancelled, skip it.

        ``interrupt`` (async actors) cancels it while it runs; call ``finished``
        when it is over.
        """
        tid = spec.task_id
        with self._lock:
            if tid in self._dropped:
                self._dropped.discard(tid)
                return False
            self._queued.pop(tid, None)
            if interrupt is not None:
                self._running[tid] = interrupt
        return True

    def finished(self, spec: CallSpec) -> None:
        with self._lock:
            self._running.pop(spec.task_id, None)

    def cancel(self, task_id: bytes) -> str:
        """Cancel ``task_id``: ``"dropped"``, ``"interrupted"`` or ``"none"`` (running
        in a thread, finished, or unknown here)."""
        with self._lock:
            spec = self._queued.pop(task_id, None)
            if spec is not None:
                self._dropped.add(task_id)
                self.dropped_total += 1
                interrupt = None
            else:
                interrupt = self._running.get(task_id)
                if interrupt is not None:
                    self.interrupted_total += 1
        if spec is not None:
            self._done(spec, cancelled_results(spec, "before it started"))
            return "dropped"
        if interrupt is not None:
            interrupt()
            return "interrupted"
        return "none"

    def statistics(self) -> CallGateStatistics:
        with self._lock:
            return CallGateStatistics(
                queued=len(self._queued), running_interruptible=len(self._running),
                dropped_total=self.dropped_total, interrupted_total=self.interrupted_total)


# A task worker hands a task to an executor's thread (a Pykka ``tell``) and goes on;
# the thread claims it (``Executor.current``) when it gets to it, which under load
# can be milliseconds later. A cancel arriving in between (``InterruptTask``) found
# the task neither queued in the worker nor current in any executor, and was lost:
# the task ran, and a short one returned its value although its cancel had come
# before it started. So the executor claims a task through this gate, and the
# cancel either interrupts it (claimed: it runs) or marks it here (not yet): the
# thread then skips it and reports it cancelled. One lock decides, so never both.


class TaskStartGate:
    """Tasks cancelled after the worker handed them to an executor and before its
    thread started them (see the comment above). Any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancelled: set[bytes] = set()
        self.skipped_total = 0

    def start(self, task_id: bytes, claim: Callable[[], None]) -> bool:
        """Claim ``task_id`` (``claim()``, under the gate's lock) to run it now;
        ``False``: it was cancelled first, skip it."""
        with self._lock:
            if task_id in self._cancelled:
                self._cancelled.discard(task_id)
                self.skipped_total += 1
                return False
            claim()
        return True

    def cancel(self, task_id: bytes, interrupt: Callable[[], bool]) -> None:
        """Cancel ``task_id``, handed to an executor and not reported yet:
        ``interrupt()`` it if its thread runs it, else mark it for the thread."""
        with self._lock:
            if not interrupt():
                self._cancelled.add(task_id)

    def forget(self, task_id: bytes) -> None:
        """``task_id`` was reported: a mark left for it (it ended before the cancel
        came, or the cancel reached it running) goes."""
        with self._lock:
            self._cancelled.discard(task_id)


class TaskInterrupt:
    """Cancels one running call of an asyncio actor by ``task.cancel()``.

    Cheaper than a cancel scope per call (anyio's costs about 8 µs on asyncio, which
    every call would pay): this costs nothing until used. ``cancel`` runs on the
    actor's loop, like the call, so it finds the call not begun, suspended at an
    ``await``, or finished — never in between.
    """

    __slots__ = ("task", "requested")

    def __init__(self) -> None:
        self.task: asyncio.Task | None = None
        self.requested = False

    def cancel(self) -> None:
        self.requested = True
        if self.task is not None:
            self.task.cancel()


async def run_interruptible(interrupt: TaskInterrupt, coro: Coroutine) -> bool:
    """Await ``coro`` in this asyncio task; ``True`` if ``interrupt`` cancelled it
    (the cancellation is then absorbed: the actor's task group goes on)."""
    if interrupt.requested:  # cancelled before it began
        coro.close()
        return True
    task = interrupt.task = asyncio.current_task()
    try:
        await coro
    except asyncio.CancelledError:
        if not interrupt.requested or task is None:
            raise  # the actor is stopping
        task.uncancel()
        return True
    return False
