"""`ReplicaSpares` and `SpareKeeper`: replica processes started ahead of need.

Why
---
A replica process spends about 0.37 s of CPU importing (Trio, the transport, the
message classes) before it can serve. A replacement started when a replica dies
paid that inside the failover: on a 2-core machine its imports competed for the CPUs
with the surviving replicas and with the coordinator while they repaired the chain,
and the replacement joined 1.2-2 s after the kill on a loaded machine. A *spare* is
a replica process started ahead of time (``python -c _BOOT``, which runs
``gcs._replica_main --spare``): it imports everything, prints ``SPARE`` and blocks
on its stdin until it gets its `LaunchParams` -- which it reads there anyway. The
replica slot that restarts takes a spare (`ReplicaSpares.take`) and hands it its
parameters; from then on it is that slot's process, watched and stopped exactly as
one the slot spawned itself. With no spare ready the slot spawns, as before.

When its imports run
--------------------
The keeper starts the next spare as soon as one is taken, i.e. during the failover
that took it -- the very window the spare was to keep clear. So a spare imports
under ``SCHED_IDLE`` (it runs only when a CPU has nothing else to do, or gets a
sliver of one): the surviving replicas and the coordinator keep the CPUs. Once
imported it switches back to ``SCHED_OTHER`` before it says ``SPARE``, so a replica
never serves at idle priority. Switching back needs the right to raise one's
priority (root, or an ``RLIMIT_NICE`` that allows the process's nice value): the
boot checks that first and imports at normal priority where it is missing.

A spare starts with the node's environment of that moment; one whose environment
is no longer the node's (a test changed a variable the replica reads) is stopped
instead of taken. A spare that died while waiting is passed over.

Supervision: the keeper is the ``gcs/replica_spares`` leaf (kind ``gcs_spares``);
its spares are its processes until taken, and are stopped when it stops. A keeper
that crashes loses nothing but its spares: the slots spawn meanwhile.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from ._config import SPARE_READY
from ._lifeline import Lifeline

__all__ = ["ReplicaSpares", "SpareKeeper", "open_replica_process", "replica_environment"]

logger = logging.getLogger("gcs")

# The replica processes must import this very `gcs` package, wherever it lives.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: How long a spare may take to import and say ``SPARE``.
SPARE_START_TIMEOUT = 60.0

#: The spare's first lines, before anything of ours is imported: go to SCHED_IDLE
#: for the imports if the process may come back from it (module docstring).
_BOOT = """\
import os, resource, sys
idle = False
if hasattr(os, "SCHED_IDLE"):
    nice = os.getpriority(os.PRIO_PROCESS, 0)
    if os.geteuid() == 0 or resource.getrlimit(resource.RLIMIT_NICE)[0] >= 20 - nice:
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            idle = True
        except OSError:
            pass
sys.argv = ["gcs._replica_main", "--spare", *(["--idle"] if idle else []), *sys.argv[1:]]
import runpy
runpy.run_module("gcs._replica_main", run_name="__main__", alter_sys=True)
"""


def replica_environment() -> dict[str, str]:
    """The environment a replica process starts with: the node's, and our package
    first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
    return env


def replica_command(*, spare: bool, lifeline: Lifeline | None = None) -> list[str]:
    """The command line of a replica process (a spare's boots through `_BOOT`),
    holding ``lifeline`` if given (pass its fd: ``pass_fds``).

    ``-P``: not the working directory first on sys.path, where a folder named like
    one of our packages would be imported instead of it.
    """
    args = lifeline.child_args() if lifeline is not None else []
    if spare:
        return [sys.executable, "-P", "-c", _BOOT, *args]
    return [sys.executable, "-P", "-m", "gcs._replica_main", *args]


async def open_replica_process(*, spare: bool, env: dict[str, str]) -> tuple[trio.Process, Lifeline | None]:
    """Start a replica process (a spare with ``spare``) with a lifeline where the
    platform has them (`_lifeline.py`): stdin and stdout piped, its own session."""
    lifeline = Lifeline.open()
    try:
        process = await trio.lowlevel.open_process(
            replica_command(spare=spare, lifeline=lifeline), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=env, start_new_session=True,
            pass_fds=() if lifeline is None or lifeline.fd is None else (lifeline.fd,))
    finally:
        if lifeline is not None:
            lifeline.spawned()
    return process, lifeline


@attrs.frozen(kw_only=True)
class SpareStatistics:
    """Figures of a GCS's spare replica processes (`ReplicaSpares.statistics`).

    wanted: spares kept ready; ready: spares imported and waiting now; started:
    spares started; taken: spares that became a replica; discarded: spares stopped
    unused (environment changed) or found dead; failed_starts: spares that died or
    said something else than ``SPARE`` while starting.
    """

    wanted: int
    ready: int
    started: int
    taken: int
    discarded: int
    failed_starts: int


@attrs.define(eq=False)
class _Spare:
    process: trio.Process
    env: dict[str, str]
    lifeline: Lifeline | None = None


@attrs.define(eq=False)
class ReplicaSpares:
    """The spare replica processes of one GCS (the plan's ``spares``): the keeper
    fills it, the restarting replica slots take from it."""

    wanted: int
    _ready: deque[_Spare] = attrs.Factory(deque)
    _stale: list[trio.Process] = attrs.Factory(list)
    _changed: trio.Event = attrs.Factory(trio.Event)
    _started: int = 0
    _taken: int = 0
    _discarded: int = 0
    _failed_starts: int = 0

    def take(self) -> tuple[trio.Process, Lifeline | None] | None:
        """A spare process, imported and waiting for its `LaunchParams` on stdin
        (the caller owns it from now on), and its lifeline (held by now); or None
        if none is ready."""
        env = replica_environment()
        while self._ready:
            spare = self._ready.popleft()
            self._wake()
            if spare.process.returncode is None and spare.env == env:
                self._taken += 1
                return spare.process, spare.lifeline
            self._discarded += 1
            self._stale.append(spare.process)  # the keeper stops it
        return None

    # ------------------------------------------------------- the keeper's side

    def short(self) -> bool:
        """Fewer spares are ready than wanted."""
        return len(self._ready) < self.wanted

    async def wait_changed(self) -> None:
        """Return at the next take, discard or new spare."""
        await self._changed.wait()

    async def wait_ready(self) -> None:
        """Return once a spare is ready (tests and benchmarks: a failover then takes
        one); never, if none is wanted."""
        while not self._ready:
            await self._changed.wait()

    def add(self, process: trio.Process, env: dict[str, str],
            lifeline: Lifeline | None = None) -> None:
        """A spare that said ``SPARE``, started with ``env``, holding ``lifeline``."""
        self._ready.append(_Spare(process=process, env=env, lifeline=lifeline))
        self._wake()

    def count_start(self, *, failed: bool = False) -> None:
        if failed:
            self._failed_starts += 1
        else:
            self._started += 1

    def drain(self, *, stale_only: bool = False) -> list[trio.Process]:
        """The spares passed over by `take` and, unless ``stale_only``, every ready
        one, no longer offered: the keeper stops them."""
        processes, self._stale = self._stale, []
        if not stale_only:
            processes += [spare.process for spare in self._ready]
            self._ready.clear()
        return processes

    def statistics(self) -> SpareStatistics:
        return SpareStatistics(wanted=self.wanted, ready=len(self._ready),
                               started=self._started, taken=self._taken,
                               discarded=self._discarded,
                               failed_starts=self._failed_starts)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


class SpareKeeper:
    """Child-protocol service that keeps ``spares.wanted`` spares ready (module
    docstring). ``stop`` stops a process (the replica slots' own stop)."""

    def __init__(self, spares: ReplicaSpares,
                 stop: Callable[[trio.Process], Awaitable[None]]) -> None:
        self.spares = spares
        self._stop = stop
        self._starting: trio.Process | None = None

    def snapshot(self) -> dict[str, Any]:
        stats = self.spares.statistics()
        return {"kind": "gcs_spares", "ready": stats.ready, "taken": stats.taken,
                "pid": None if self._starting is None else self._starting.pid}

    async def run(self, *, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        spares = self.spares
        task_status.started()
        delay = 0.5
        try:
            while True:
                for process in spares.drain(stale_only=True):
                    await self._stop(process)
                if not spares.short():
                    await spares.wait_changed()
                    continue
                started = await self._start_one()
                if started is None:
                    # A broken environment must not start processes in a loop; the
                    # slots spawn meanwhile, as they would without spares.
                    await trio.sleep(delay)
                    delay = min(delay * 2, 30.0)
                    continue
                delay = 0.5
                spares.add(*started)
        finally:
            with trio.CancelScope(shield=True):
                for process in spares.drain():
                    await self._stop(process)

    async def _start_one(self) -> tuple[trio.Process, dict[str, str], Lifeline | None] | None:
        """Start a spare and wait until it said ``SPARE``; None if it did not."""
        spares = self.spares
        env = replica_environment()
        process, lifeline = await open_replica_process(spare=True, env=env)
        spares.count_start()
        self._starting = process
        handed_over = False
        try:
            assert process.stdout is not None
            line = b""
            with trio.move_on_after(SPARE_START_TIMEOUT):
                # It writes nothing after this line until it has its parameters, so
                # reading up to the newline leaves the slot that takes it a clean pipe.
                while not line.endswith(b"\n"):
                    chunk = await process.stdout.receive_some(1)
                    if not chunk:
                        break
                    line += chunk
            if line.strip() != SPARE_READY.encode():
                spares.count_start(failed=True)
                logger.warning("GCS spare replica process (pid %d) did not start: it said "
                               "%r (exit code %s)", process.pid, line[:200], process.returncode)
                return None
            handed_over = True
            return process, env, lifeline
        finally:
            self._starting = None
            if not handed_over:
                with trio.CancelScope(shield=True):
                    await self._stop(process)
