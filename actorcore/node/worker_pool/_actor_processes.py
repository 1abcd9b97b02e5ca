"""Actor processes: start, watch and kill the worker processes that host actors.

An actor process is ``python -m actorcore.worker._actor_process`` (``--shared`` for the one
hosting many lightweight actors). Per process three Trio tasks in the node's nursery:
one waits for the exit (then ``on_exit(worker, reason)``, which decides restarts and
deaths), two copy its stdout/stderr into the session's log files and to drivers
that asked for worker output, like the task workers of the pool. Indices come from
the pool's counter, so actor processes and task workers have distinct
``worker_<n>`` names.

Start-up is bounded
-------------------
Starting a Python process costs a few hundred milliseconds of CPU (the interpreter,
Trio, the store client). A thousand ``num_cpus=0`` actors created at once would
start a thousand processes together on a two-core machine: every one of them, and
the node that must answer their handshakes, then gets a thousandth of the CPU, and
most of them time out before they say hello. So, as Ray does
(``maximum_startup_concurrency``), at most ``max_starting`` processes are *starting*
at a time — launched and not yet up (``actor_up``) — and the rest wait in a FIFO
start queue with no process yet. A process leaves the starting set when it says
``actor_up`` or exits; the next queued one is launched then.

The cap is four per core, not one. A start is not CPU-bound from end to end: besides
its ~150 ms of imports it waits for the exec, for its files, and for the node's
answers to its handshake, and a cap of one per core leaves the cores idle during
those waits. Measured on a busy 2-core machine, six actors created at once came up
in 2.6-3.9 s with the cap at 2 and in 1.1-1.5 s with it at 6 (1.2-1.7 s before
there was a cap), at the same CPU per process; a thousand at once still start
eight at a time.

The start deadline (``START_TIMEOUT``) runs from the launch, not from the request:
time spent in the queue is not held against a process. The same budget is the
process's own connect-and-handshake wait (``--connect-timeout``), so a process that
is slow only because the machine is busy is not cut off by a fixed 10 s handshake
timeout while the node would still wait for it.

A process killed while it is still queued is never launched; its exit is reported
like any other (from a task, never from inside ``kill``).

Memory is checked before each launch (``_memory``): while the machine's memory use
is above ``ACTORCORE_MEMORY_USAGE_THRESHOLD`` a queued process is either refused
(``on_refused``, from a task: its actors die with `ActorOutOfMemoryError`) or left
in the queue, which is tried again every refresh period (``ACTORCORE_LOW_MEMORY_POLICY``).
"""

from __future__ import annotations

import collections
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ...protocol._ids import new_worker_id
from ...session._config import env_value
from ._memory import MemoryCheck, MemoryPolicy, refusal
from ._pool import open_worker_process, pump_worker_output
from ._zygote import exit_reason

__all__ = ["ActorProcesses", "ActorWorker", "START_TIMEOUT", "default_max_starting"]

logger = logging.getLogger("actorcore.actors")

#: Seconds a launched actor process has to connect (from its launch, not from its
#: request: see "Start-up is bounded" above) before it is killed
#: (``ACTORCORE_WORKER_START_TIMEOUT`` overrides it).
START_TIMEOUT: float = env_value("ACTORCORE_WORKER_START_TIMEOUT")

#: Actor processes starting at once per core of the machine (see "Start-up is
#: bounded" above).
STARTS_PER_CORE = 4


def default_max_starting() -> int:
    """How many actor processes may start at once: `STARTS_PER_CORE` per core of the
    machine, whatever CPUs the node offers (a ``num_cpus=0`` actor takes none of
    them); ``ACTORCORE_MAX_STARTING_WORKERS`` overrides it."""
    env = os.environ.get("ACTORCORE_MAX_STARTING_WORKERS")
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(
                f"ACTORCORE_MAX_STARTING_WORKERS={env!r}: expected a whole number >= 1"
            ) from None
        if value < 1:
            raise ValueError(f"ACTORCORE_MAX_STARTING_WORKERS={env!r}: expected a whole number >= 1")
        return value
    return STARTS_PER_CORE * (os.cpu_count() or 1)


@attrs.define(eq=False)
class ActorWorker:
    """A process hosting actors: one dedicated actor, or many (shared).

    ``start`` is "queued" (no process yet), "starting" (launched, not up), "up"
    (said ``actor_up``) or "ended" (exited, or dropped from the queue)."""

    index: int
    worker_id: bytes
    shared: bool
    process: Any = None
    pid: int | None = None
    conn: Any = None
    direct_address: str | None = None  # where callers dial it (``core_worker._direct_calls``)
    connected: trio.Event = attrs.Factory(trio.Event)
    exited: trio.Event = attrs.Factory(trio.Event)
    exit_reason: str | None = None
    actors: dict[bytes, Any] = attrs.Factory(dict)  # actor id -> ActorRecord
    waiting: list[Any] = attrs.Factory(list)  # creations sent once it is up
    start: str = "queued"


class ActorProcesses:
    """The node's actor processes (see the module docstring)."""

    def __init__(
        self, node: Any, on_exit: Callable[[ActorWorker, str], None], max_starting: int = 1,
        *, on_refused: Callable[[ActorWorker, str], None] | None = None,
        memory: MemoryCheck | None = None,
    ) -> None:
        self.node = node
        self.on_exit = on_exit
        # A process refused for want of memory (policy "fail"): its actors die with
        # the cause given; without a callback, as if it had exited.
        self.on_refused = on_refused or on_exit
        self.memory = memory if memory is not None else MemoryCheck(MemoryPolicy.from_env())
        self._memory_retry = False  # a retry of the queue is scheduled (policy "wait")
        self._memory_warned = False
        self.workers: dict[bytes, ActorWorker] = {}
        self.started_total = 0
        self.max_starting = max_starting
        self.starting = 0  # launched, not yet up
        self.queue: collections.deque[ActorWorker] = collections.deque()
        self.queued = 0  # in ``queue`` and still to be launched
        # High-water marks, shown by ``actorcore status`` (they show the cap holds).
        self.starting_peak = 0
        self.queued_peak = 0

    def spawn(self, *, shared: bool) -> ActorWorker:
        """A new actor process: launched now if fewer than ``max_starting`` are
        starting, else queued (its creations wait in ``waiting`` either way)."""
        pool = self.node.pool
        index = pool.next_index
        pool.next_index += 1
        aw = ActorWorker(index=index, worker_id=new_worker_id(), shared=shared)
        self.workers[aw.worker_id] = aw
        self.queue.append(aw)
        self.queued += 1
        self.queued_peak = max(self.queued_peak, self.queued)
        self._launch_queued()
        return aw

    def _launch_queued(self) -> None:
        if not self.node.serving:
            return  # not running yet, or stopping: ``kill_all`` drops the queue
        while self.queue and self.starting < self.max_starting:
            if self.queue[0].start != "queued":
                self.queue.popleft()
                continue  # killed while queued (``queued`` was counted down then)
            low = self.memory.over()
            if low is not None and not self._low_memory(low):
                return  # policy "wait": tried again in a refresh period
            aw = self.queue.popleft()
            if low is not None:  # policy "fail": refused, reported from a task
                aw.start = "ended"
                self.queued -= 1
                self.memory.refused += 1
                self.node.spawn(self._report_refused, aw, low)
                continue
            aw.start = "starting"
            self.queued -= 1
            self.starting += 1
            self.starting_peak = max(self.starting_peak, self.starting)
            self.started_total += 1
            self.node.spawn(self._run_worker, aw)

    def _low_memory(self, usage: Any) -> bool:
        """Memory use is above the threshold: ``True``, refuse the next start
        (policy "fail"); ``False``, leave the queue and try it again in a refresh
        period (policy "wait")."""
        policy = self.memory.policy
        if policy.policy == "fail":
            return True
        self.memory.deferred += 1
        if not self._memory_warned:
            self._memory_warned = True
            logger.warning(
                "memory use is %s, above the threshold of %s: %d actor process(es) wait "
                "to start (ACTORCORE_LOW_MEMORY_POLICY=wait)",
                usage.describe(), policy.threshold, self.queued)
        if not self._memory_retry and self.node.spawn(self._retry_after, policy.refresh):
            self._memory_retry = True
        return False

    async def _retry_after(self, delay: float) -> None:
        try:
            await trio.sleep(delay)
        finally:
            self._memory_retry = False
        if self.memory.over() is None:
            if self._memory_warned:
                logger.warning("memory use is below the threshold again: starting the "
                               "%d waiting actor process(es)", self.queued)
            self._memory_warned = False
        self._launch_queued()

    async def _report_refused(self, aw: ActorWorker, usage: Any) -> None:
        node = getattr(self.node, "node_hex", "?")
        cause = refusal(usage, self.memory.policy, node, "its process")
        logger.warning("actor worker_%d was not started: memory use is %s, above the "
                       "threshold of %s", aw.index, usage.describe(), self.memory.policy.threshold)
        aw.exit_reason = cause
        self.on_refused(aw, cause)

    def _start_over(self, aw: ActorWorker, state: str) -> None:
        """``aw`` is no longer starting (it is up, or it ended): free its slot."""
        if aw.start == "starting":
            self.starting -= 1
        aw.start = state
        self._launch_queued()

    def connected(self, aw: ActorWorker) -> None:
        """``aw`` said ``actor_up`` (called by the actor manager)."""
        aw.connected.set()
        self._start_over(aw, "up")

    async def _run_worker(self, aw: ActorWorker) -> None:
        try:
            proc = await open_worker_process(
                self.node.pool, "actorcore.worker._actor_process", aw.worker_id, aw.index,
                (["--shared"] if aw.shared else []) + ["--connect-timeout", str(START_TIMEOUT)],
            )
        except OSError as exc:
            self._start_over(aw, "ended")
            self.on_exit(aw, f"its worker process could not be started ({exc})")
            return
        aw.process = proc
        aw.pid = proc.pid
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, aw, proc.stdout, "out")
                nursery.start_soon(self._pump, aw, proc.stderr, "err")
                nursery.start_soon(self._start_deadline, aw)
                code = await proc.wait()
                nursery.cancel_scope.cancel()
        finally:
            if proc.returncode is None:
                proc.kill()
            self._start_over(aw, "ended")
        reason = exit_reason(proc, code)
        self.on_exit(aw, f"its worker process (pid {aw.pid}) died ({reason}; "
                         f"its output is in {self._log_stem(aw)}.out/.err)")

    def _log_stem(self, aw: ActorWorker) -> str:
        return str(self.node.pool.session_dir / "logs" / f"worker-{aw.index}-{aw.pid}")

    async def _start_deadline(self, aw: ActorWorker) -> None:
        with trio.move_on_after(START_TIMEOUT):
            await aw.connected.wait()
            return
        logger.warning("actor worker_%d (pid %s) did not connect within %s s of its launch; "
                       "killing it", aw.index, aw.pid, START_TIMEOUT)
        aw.exit_reason = (f"its worker process (pid {aw.pid}) did not connect within "
                          f"{START_TIMEOUT} s of its launch (its output is in "
                          f"{self._log_stem(aw)}.out/.err)")
        self.kill(aw)

    async def _pump(self, aw: ActorWorker, stream: Any, which: str) -> None:
        await pump_worker_output(self.node.pool, aw.index, aw.pid, stream, which)

    def kill(self, aw: ActorWorker) -> None:
        """SIGKILL its process; one still in the start queue is dropped from it
        instead (never launched) and its exit is reported from a task."""
        if aw.start == "queued":
            aw.start = "ended"
            self.queued -= 1
            self.node.spawn(self._report_unstarted, aw)
            return
        proc = aw.process
        if proc is not None and proc.returncode is None:
            try:
                proc.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def _report_unstarted(self, aw: ActorWorker) -> None:
        self.on_exit(aw, "its worker process was stopped before it was started")

    async def kill_all(self) -> None:
        for aw in self.queue:
            aw.start = "ended"
        self.queue.clear()
        self.queued = 0
        for aw in list(self.workers.values()):
            self.kill(aw)
        with trio.move_on_after(2):
            for aw in list(self.workers.values()):
                if aw.process is not None:
                    await aw.process.wait()
