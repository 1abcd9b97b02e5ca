"""The ``worker_pool`` component: starts, watches and reaps worker processes.

Workers are separate processes (``python -m actorcore.worker``): user code never
runs in a system process. The pool pre-starts one worker per CPU (``min_workers``)
and keeps that many alive: a worker that dies is replaced whether or not work is
waiting, so a node that lost one does not run its next CPU tasks one after the other.
It starts more, up to its limit, when the local scheduler has a task whose resources
are free and no idle worker (tasks blocked in ``get`` gave their CPU back, tasks need
a fraction of a CPU or none). A worker that dies before it registers (a broken
environment, a crash at import) is replaced after a growing delay, not in a tight
loop of process starts.

A worker is forked from the node's zygote when it runs (``_zygote``: its imports
are paid once per node) and spawned as ``python -m actorcore.worker`` otherwise; the
rest of this module cannot tell the two apart.

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

import functools
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

from ...protocol import _wire as w
from ...protocol._ids import new_worker_id, short
from ...session._config import env_value
from ...session._launcher import site_flags
from ..local_scheduler._scheduler import SchedulerState, WorkerInfo
from ._zygote import Zygote, exit_reason

__all__ = ["PoolState", "WorkerPool", "open_worker_process", "pump_worker_output", "worker_env"]

logger = logging.getLogger("actorcore.worker_pool")

#: Seconds an extra worker (beyond the pre-started ones) may stay idle
#: (``ACTORCORE_IDLE_WORKER_TIMEOUT`` overrides it).
IDLE_TIMEOUT: float = env_value("ACTORCORE_IDLE_WORKER_TIMEOUT")
REAP_CHECK = 1.0
#: Seconds the watcher of a dead worker waits for the node to read its link to the
#: end before it reports the death anyway (a process the task forked may hold the
#: socket open).
LINK_END_WAIT = 5.0
#: Delay before starting a worker after the second start-up failure in a row; it
#: doubles with each further one, up to ``START_BACKOFF_MAX`` seconds.
START_BACKOFF = 0.1
START_BACKOFF_MAX = 5.0


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
    # Workers that died before registering, in a row (the last one's index), and
    # the earliest time the next worker may start (``START_BACKOFF``).
    failed_starts: int = 0
    failed_index: int = -1
    next_spawn_at: float = 0.0
    # Starts a task in the node's nursery (``NodeRuntime.spawn``): the zygote's
    # loop runs there, beyond the reach of a crash of this component.
    spawn: Callable[..., bool] | None = None
    zygote: Zygote = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.zygote = Zygote(self.node_id.hex(), self.session_dir,
                             enabled=env_value("ACTORCORE_WORKER_ZYGOTE"))

    def start_zygote(self) -> None:
        """Keep the zygote running from now on (idempotent; nothing if it is off)."""
        if self.zygote.enabled and not self.zygote.looping and self.spawn is not None:
            self.spawn(self.zygote.run, functools.partial(worker_env, self))

    def alive(self) -> list[WorkerInfo]:
        return [w for w in self.workers.values() if w.state != "dead"]

    def limit(self) -> int:
        """How many workers may be alive: ``max_workers``, plus one per worker whose
        tasks are blocked in ``get`` (it gave its CPU back; nested tasks need room)."""
        return self.max_workers + sum(1 for w in self.workers.values() if w.blocked and w.state != "dead")

    def can_grow(self) -> bool:
        """Whether one more worker may be started (the scheduler asks before it
        queues a task behind a busy worker)."""
        return len(self.alive()) < self.limit()

    def may_spawn(self) -> bool:
        return time.monotonic() >= self.next_spawn_at

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
        await self.zygote.stop()


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
                elif worker.state == "starting":
                    # Its start was cancelled with the component before a process
                    # existed (a fork that came later was killed by the zygote's
                    # requester): forget it, the refill starts another.
                    pool.workers.pop(worker.worker_id, None)
            pool.starting = sum(1 for w in pool.alive() if w.state == "starting")
            pool.start_zygote()
            while len(pool.alive()) < pool.min_workers:
                await self._spawn()
            task_status.started()
            while True:
                timeout = REAP_CHECK
                if pool.next_spawn_at:
                    timeout = min(timeout, max(0.0, pool.next_spawn_at - time.monotonic()))
                with trio.move_on_after(timeout):
                    await pool.wakeup.wait()
                pool.wakeup = trio.Event()
                self._check_backoff()
                await self._refill()
                await self._grow()
                self._reap()

    def _check_backoff(self) -> None:
        """Forget past start-up failures once a worker started after them registered."""
        pool = self.pool
        if pool.failed_starts and any(
            w.index > pool.failed_index and w.state not in ("starting", "dead")
            for w in pool.workers.values()
        ):
            pool.failed_starts = 0
            pool.next_spawn_at = 0.0

    async def _refill(self) -> None:
        """Replace dead workers up to ``min_workers``, work or no work waiting."""
        pool = self.pool
        while len(pool.alive()) < pool.min_workers and pool.may_spawn():
            await self._spawn()

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
                conn.send_nowait(w.ExitWorker())
            except Exception:
                pool.kill(worker)

    async def _grow(self) -> None:
        pool = self.pool
        limit = pool.limit()
        demand = self.sched.demand(max(0, limit - len(pool.alive())) + pool.starting)
        while demand > pool.starting and len(pool.alive()) < limit and pool.may_spawn():
            await self._spawn()

    async def _spawn(self) -> None:
        """Start one worker. Its process is made in a task of its own: a fork may
        wait for a starting zygote (``_zygote``), and neither this loop nor the
        tree's start (the pre-started workers) waits with it."""
        pool = self.pool
        assert self._nursery is not None
        index = pool.next_index
        pool.next_index += 1
        worker = WorkerInfo(index=index, worker_id=new_worker_id())
        pool.workers[worker.worker_id] = worker
        pool.starting += 1
        pool.started_total += 1
        self._nursery.start_soon(self._start, worker)

    async def _start(self, worker: WorkerInfo) -> None:
        try:
            proc = await open_worker_process(self.pool, "actorcore.worker", worker.worker_id,
                                             worker.index)
        except BaseException:
            # Cancelled with the component, or the spawn failed (which crashes the
            # component): no process will register under this entry.
            self.pool.workers.pop(worker.worker_id, None)
            self.pool.starting -= 1
            raise
        worker.process = proc
        worker.pid = proc.pid
        await self._watch(worker)

    async def _watch(self, worker: WorkerInfo) -> None:
        proc = worker.process
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, worker, proc.stdout, "out")
            nursery.start_soon(self._pump, worker, proc.stderr, "err")
            code = await proc.wait()
        if worker.conn is not None:
            # What the worker sent before it died is handled before its death: a
            # `LeasedStart` read after it would track a task on a dead worker, a
            # `TaskDone` would be dropped as unknown (its task retried). The
            # process is gone, so its link ends at once; the node's disconnect
            # handler reports the death then, and this one finds it done.
            with trio.move_on_after(LINK_END_WAIT):
                await worker.link_closed.wait()
        reason = exit_reason(proc, code)
        if worker.state == "starting":
            self.pool.starting -= 1
            self._start_failed(worker, reason)
        self.pool.died_total += 1
        logger.info("worker_%d (pid %s) exited: %s", worker.index, worker.pid, reason)
        self.sched.worker_died(worker, reason)
        self.pool.workers.pop(worker.worker_id, None)
        self.pool.wakeup.set()  # replace it if needed

    def _start_failed(self, worker: WorkerInfo, reason: str) -> None:
        """``worker`` died before it registered. The first such death is replaced at
        once (it may have been killed from outside); from the second in a row on, the
        next start waits ``START_BACKOFF`` seconds, doubling each time."""
        pool = self.pool
        pool.failed_starts += 1
        pool.failed_index = max(pool.failed_index, worker.index)
        if pool.failed_starts >= 2:
            delay = min(START_BACKOFF_MAX, START_BACKOFF * 2 ** (pool.failed_starts - 2))
            pool.next_spawn_at = time.monotonic() + delay
            logger.warning(
                "worker_%d (pid %s) died before it registered (%s), %d in a row: the "
                "next worker starts in %.1f s; see its log files in %s",
                worker.index, worker.pid, reason, pool.failed_starts, delay,
                pool.session_dir / "logs",
            )

    async def _pump(self, worker: WorkerInfo, stream: Any, which: str) -> None:
        await pump_worker_output(self.pool, worker.index, worker.pid, stream, which)

    def snapshot(self) -> dict:
        node = self.pool.node_id.hex()
        return {
            "kind": "worker_pool",
            "children": [w.snapshot(node) for w in sorted(self.pool.workers.values(), key=lambda w: w.index)]
            + (self.pool.extra_snapshots() if self.pool.extra_snapshots is not None else [])
            + ([self.pool.zygote.snapshot(node)] if self.pool.zygote.enabled else []),
        }


def worker_env(pool: PoolState) -> dict[str, str]:
    """The environment of this node's worker processes (and of its zygote)."""
    env = dict(os.environ)
    env["ACTORCORE_TOKEN"] = pool.token.hex()
    env["PYTHONUNBUFFERED"] = "1"
    env["ACTORCORE_SESSION_DIR"] = str(pool.session_dir)  # runtime_env packages go there
    return env


async def open_worker_process(
    pool: PoolState, module: str, worker_id: bytes, index: int, extra_args: Sequence[str] = ()
) -> Any:
    """Start a worker process of this node running ``python -m <module>`` (task
    workers and actor processes alike): the node's address, token (in the
    environment, not argv), ids and store address on its command line, in a session
    of its own. Forked from the zygote when it runs (a `ForkedProcess`), else
    spawned (a `trio.Process`)."""
    env = worker_env(pool)
    args = [
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
        args += ["--store-address", pool.store_address]
    args += extra_args
    if pool.zygote.enabled:
        target = {"actorcore.worker": "actorcore.worker._process"}.get(module, module)
        forked = await pool.zygote.fork(target, args, env, f"ac_worker_{index}")
        if forked is not None:
            return forked
    argv = [
        sys.executable,
        *site_flags(),
        "-P",  # the working directory is on PYTHONPATH, after our packages (launcher)
        "-m",
        module,
        *args,
    ]
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
