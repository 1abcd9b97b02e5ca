"""Actor processes: start, watch and kill the worker processes that host actors.

An actor process is ``python -m actorcore._actor_worker`` (``--shared`` for the one
hosting many lightweight actors). Per process three Trio tasks in the node's nursery:
one waits for the exit (then ``on_exit(worker, reason)``, which decides restarts and
deaths), two copy its stdout/stderr into the session's log files and to drivers
that asked for worker output, like the task workers of the pool. A process that does
not connect within ``START_TIMEOUT`` seconds is killed. Indices come from the pool's
counter, so actor processes and task workers have distinct ``worker_<n>`` names.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from typing import Any

import attrs
import trio

from ._ids import new_worker_id
from ._worker_pool import open_worker_process, pump_worker_output

__all__ = ["ActorProcesses", "ActorWorker", "START_TIMEOUT"]

logger = logging.getLogger("actorcore.actors")

#: Seconds a new actor process has to connect before it is killed.
START_TIMEOUT = 60.0


@attrs.define(eq=False)
class ActorWorker:
    """A process hosting actors: one dedicated actor, or many (shared)."""

    index: int
    worker_id: bytes
    shared: bool
    process: Any = None
    pid: int | None = None
    conn: Any = None
    direct_address: str | None = None  # where callers dial it (``_actor_direct``)
    connected: trio.Event = attrs.Factory(trio.Event)
    exited: trio.Event = attrs.Factory(trio.Event)
    exit_reason: str | None = None
    actors: dict[bytes, Any] = attrs.Factory(dict)  # actor id -> ActorRecord
    waiting: list[Any] = attrs.Factory(list)  # creations sent once it is up



class ActorProcesses:
    """The node's actor processes (see the module docstring)."""

    def __init__(self, node: Any, on_exit: Callable[[ActorWorker, str], None]) -> None:
        self.node = node
        self.on_exit = on_exit
        self.workers: dict[bytes, ActorWorker] = {}
        self.started_total = 0

    def spawn(self, *, shared: bool) -> ActorWorker:
        pool = self.node.pool
        index = pool.next_index
        pool.next_index += 1
        aw = ActorWorker(index=index, worker_id=new_worker_id(), shared=shared)
        self.workers[aw.worker_id] = aw
        self.started_total += 1
        self.node._nursery.start_soon(self._run_worker, aw)
        return aw

    async def _run_worker(self, aw: ActorWorker) -> None:
        try:
            proc = await open_worker_process(
                self.node.pool, "actorcore._actor_worker", aw.worker_id, aw.index,
                ["--shared"] if aw.shared else [],
            )
        except OSError as exc:
            self.on_exit(aw, f"could not be started ({exc})")
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
        reason = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
        self.on_exit(aw, f"its worker process (pid {aw.pid}) died ({reason})")

    async def _start_deadline(self, aw: ActorWorker) -> None:
        with trio.move_on_after(START_TIMEOUT):
            await aw.connected.wait()
            return
        logger.warning("actor worker_%d did not connect in %s s; killing it", aw.index,
                       START_TIMEOUT)
        aw.exit_reason = f"its worker process did not start within {START_TIMEOUT} s"
        self.kill(aw)

    async def _pump(self, aw: ActorWorker, stream: Any, which: str) -> None:
        await pump_worker_output(self.node.pool, aw.index, aw.pid, stream, which)

    def kill(self, aw: ActorWorker) -> None:
        proc = aw.process
        if proc is not None and proc.returncode is None:
            try:
                proc.send_signal(signal.SIGKILL)
            except ProcessLookupError:
                pass

    async def kill_all(self) -> None:
        for aw in list(self.workers.values()):
            self.kill(aw)
        with trio.move_on_after(2):
            for aw in list(self.workers.values()):
                if aw.process is not None:
                    await aw.process.wait()

