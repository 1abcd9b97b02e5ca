"""The ``worker_pool`` component: starts, watches and reaps worker processes.

Workers are separate processes (``python -m actorcore.worker``): user code never
runs in a system process. The pool pre-starts one worker per CPU, starts more when
the local scheduler has runnable tasks and no idle worker (e.g. tasks blocked in
``get`` gave their CPU back, or tasks need no CPU), and replaces dead ones.

Per worker, three Trio tasks: one waits for the process to exit (then tells the
scheduler, which retries or fails its task), two read its stdout and stderr line by
line into the session's log files and forward the lines to drivers that asked for
them (``log_to_driver``), prefixed with where they ran: ``(pid=123, node=ab12cd34)``.

The process table lives in the node (``PoolState``), not in this component: if the
pool crashes, its replacement re-adopts the running workers (it starts new watcher
tasks for them) instead of losing or killing them. Workers are killed only when the
node shuts down (``PoolState.kill_all``).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from ._ids import new_worker_id, short
from ._launcher import site_flags
from ._scheduler import SchedulerState, WorkerInfo

__all__ = ["PoolState", "WorkerPool", "open_worker_process", "pump_worker_output"]

logger = logging.getLogger("actorcore.worker_pool")

#: Seconds an extra worker (beyond the pre-started ones) may stay idle
#: (``ACTORCORE_IDLE_WORKER_TIMEOUT`` overrides it).
IDLE_TIMEOUT = float(os.environ.get("ACTORCORE_IDLE_WORKER_TIMEOUT", "10"))
REAP_CHECK = 1.0


@attrs.define(eq=False)
class PoolState:
    node_id: bytes
    address: str
    store_address: str | None
    token: bytes
    session_dir: Path
    min_workers: int
    max_workers: int
    forward_log: Callable[[str, str, list[str]], None]
    workers: dict[bytes, WorkerInfo] = attrs.Factory(dict)
    next_index: int = 0
    starting: int = 0
    wakeup: trio.Event = attrs.Factory(trio.Event)
    started_total: int = 0
    died_total: int = 0
    # Actor processes (issue 6) listed beside the task workers in the tree.
    extra_snapshots: Callable[[], list[dict]] | None = None

    def alive(self) -> list[WorkerInfo]:
        return [w for w in self.workers.values() if w.state != "dead"]

    def kill(self, worker: WorkerInfo, sig: int = signal.SIGKILL) -> None:
        proc = worker.process
        if proc is not None and proc.returncode is None:
            try:
                proc.send_signal(sig)
            except ProcessLookupError:
                pass

    async def kill_all(self, grace: float = 1.0) -> None:
        """Stop every worker: SIGTERM, then SIGKILL after ``grace`` seconds."""
        procs = [w.process for w in self.workers.values() if w.process is not None]
        for p in procs:
            if p.returncode is None:
                try:
                    p.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        with trio.move_on_after(grace):
            for p in procs:
                await p.wait()
        for p in procs:
            if p.returncode is None:
                try:
                    p.kill()
                except ProcessLookupError:
                    pass
                await p.wait()


class WorkerPool:
    """The component; see the module docstring."""

    def __init__(self, pool: PoolState, sched: SchedulerState) -> None:
        self.pool = pool
        self.sched = sched
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        pool = self.pool
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for worker in pool.alive():  # re-adopt after a restart of this component
                if worker.process is not None:
                    nursery.start_soon(self._watch, worker)
            pool.starting = sum(1 for w in pool.alive() if w.state == "starting")
            while len(pool.alive()) < pool.min_workers:
                await self._spawn()
            task_status.started()
            while True:
                with trio.move_on_after(REAP_CHECK):
                    await pool.wakeup.wait()
                pool.wakeup = trio.Event()
                await self._grow()
                self._reap()

    def _reap(self) -> None:
        """Let workers beyond the pre-started ones go once idle for ``IDLE_TIMEOUT``
        (a burst of nested tasks can start many; each costs tens of MB)."""
        pool = self.pool
        extra = len(pool.alive()) - pool.min_workers
        if extra <= 0:
            return
        now = time.monotonic()
        for worker in sorted(pool.alive(), key=lambda w: w.idle_since):
            if extra <= 0:
                break
            if worker.state != "idle" or worker.tasks or now - worker.idle_since < IDLE_TIMEOUT:
                continue
            conn = worker.conn
            self.sched.worker_died(worker, "idle: let go")  # no task: nothing to retry
            extra -= 1
            try:
                conn.send_nowait(("exit",))
            except Exception:
                pool.kill(worker)

    def request_worker(self) -> None:
        """The scheduler has work and no idle worker (sync; any time)."""
        self.pool.wakeup.set()

    async def _grow(self) -> None:
        pool = self.pool
        blocked = sum(1 for w in pool.alive() if w.blocked)
        limit = pool.max_workers + blocked
        demand = self.sched.demand(max(0, limit - len(pool.alive())) + pool.starting)
        while demand > pool.starting and len(pool.alive()) < limit:
            await self._spawn()

    async def _spawn(self) -> None:
        pool = self.pool
        assert self._nursery is not None
        index = pool.next_index
        pool.next_index += 1
        worker = WorkerInfo(index=index, worker_id=new_worker_id())
        proc = await open_worker_process(pool, "actorcore.worker", worker.worker_id, index)
        worker.process = proc
        worker.pid = proc.pid
        pool.workers[worker.worker_id] = worker
        pool.starting += 1
        pool.started_total += 1
        self._nursery.start_soon(self._watch, worker)

    async def _watch(self, worker: WorkerInfo) -> None:
        proc = worker.process
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, worker, proc.stdout, "out")
            nursery.start_soon(self._pump, worker, proc.stderr, "err")
            code = await proc.wait()
        if worker.state == "starting":
            self.pool.starting -= 1
        self.pool.died_total += 1
        reason = f"exit code {code}" if code >= 0 else f"killed by signal {-code}"
        logger.info("worker_%d (pid %s) exited: %s", worker.index, worker.pid, reason)
        self.sched.worker_died(worker, reason)
        self.pool.workers.pop(worker.worker_id, None)
        self.pool.wakeup.set()  # replace it if needed

    async def _pump(self, worker: WorkerInfo, stream: Any, which: str) -> None:
        await pump_worker_output(self.pool, worker.index, worker.pid, stream, which)

    def worker_registered(self, worker: WorkerInfo) -> None:
        self.pool.starting -= 1

    def snapshot(self) -> dict:
        node = self.pool.node_id.hex()
        return {
            "kind": "worker_pool",
            "children": [w.snapshot(node) for w in sorted(self.pool.workers.values(), key=lambda w: w.index)]
            + (self.pool.extra_snapshots() if self.pool.extra_snapshots is not None else []),
        }


async def open_worker_process(
    pool: PoolState, module: str, worker_id: bytes, index: int, extra_args: Sequence[str] = ()
) -> trio.Process:
    """Start ``python -m <module>`` as a worker process of this node (task workers and
    actor processes alike): the node's address, token (in the environment, not argv),
    ids and store address on its command line, in a session of its own."""
    env = dict(os.environ)
    env["ACTORCORE_TOKEN"] = pool.token.hex()
    env["PYTHONUNBUFFERED"] = "1"
    argv = [
        sys.executable,
        *site_flags(),
        "-m",
        module,
        "--address",
        pool.address,
        "--worker-id",
        worker_id.hex(),
        "--node-id",
        pool.node_id.hex(),
        "--index",
        str(index),
    ]
    if pool.store_address:
        argv += ["--store-address", pool.store_address]
    argv += extra_args
    return await trio.lowlevel.open_process(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )


async def pump_worker_output(
    pool: PoolState, index: int, pid: int | None, stream: Any, which: str
) -> None:
    """Copy a worker process's stdout or stderr (``which``: "out"/"err") into the
    session's log file and, line by line, to the drivers that asked for output."""
    path = pool.session_dir / "logs" / f"worker-{index}-{pid}.{which}"
    prefix = f"(pid={pid}, node={short(pool.node_id)})"
    buf = b""
    with open(path, "ab") as log:  # noqa: ASYNC230 - a local log file, opened once
        while True:
            chunk = await stream.receive_some(65536)
            if not chunk:
                break
            log.write(chunk)
            log.flush()
            buf += chunk
            if b"\n" in buf:
                *lines, buf = buf.split(b"\n")
                pool.forward_log(prefix, which, [ln.decode(errors="replace") for ln in lines])
        if buf:
            pool.forward_log(prefix, which, [buf.decode(errors="replace")])
