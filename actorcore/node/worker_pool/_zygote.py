"""The node's zygote: one process per node that forks its workers.

The zygote (``actorcore.worker._zygote``, whose docstring says why it is built as it
is) has imported the worker's modules once; a worker forked from it starts without
paying them. The pool asks it first (`Zygote.fork`) and spawns ``python -m
actorcore.worker...`` as before when it gets no process back: the zygote is
down, restarting after a failed start, refused the request, or did not answer
within ``FORK_TIMEOUT``.

A request that finds the zygote starting waits for it (up to ``START_PATIENCE``)
instead of spawning. The zygote's imports are a worker's imports and it began
them before the request came, so it is ready before a worker spawned now would
be; a spawned worker would also take a CPU from the zygote and the node while
they start (on a 2-core machine, the node's first two workers spawned beside the
zygote made the first result of a new cluster 0.3-0.5 s later). A zygote that
dies while starting ends the wait at once (the request spawns); one that failed
before is not waited for while it backs off (its state is then "down").

What a forked worker keeps of a spawned one
-------------------------------------------
- Its stdout and stderr are pipes the node made and reads (log files, log
  streaming to drivers): their write ends travel to the zygote with the request
  (SCM_RIGHTS), and the child makes them its descriptors 1 and 2.
- Its environment is the one the pool gives a spawned worker (token, session,
  unbuffered output), set in the child before its ``main`` runs. The zygote
  started with that same environment (the interpreter reads some of it only at
  start), so a request whose environment differs is spawned instead.
- Its exit code. The worker is the zygote's child, not the node's: the zygote
  reaps it and reports ``(pid, returncode)``; the node sees the death itself on a
  pidfd (``os.pidfd_open``), as promptly as a child's, then takes the code the
  zygote sent. If the zygote died in between, the worker was an orphan that init
  reaped: its exit code is lost and the error says so ("exit status unknown").
- Its death with the node: a worker ends when its link to the node does (forked or
  spawned), and the zygote ends when its socket to the node does. Both are
  descendants of the node process while the zygote lives, which is how
  ``testing.Cluster.remove_node`` finds them.

Supervision
-----------
The zygote's state lives in `PoolState` (like the workers') and its loop (`run`)
in the node's nursery, not in the ``worker_pool`` component: a crash of the pool
neither kills the zygote nor loses the exit codes it reports. The loop restarts a
zygote that dies (``restarts`` in the tree, where it is ``worker_pool/zygote``),
at once after it had served, after a growing delay (the pool's ``START_BACKOFF``)
when it died before it was ready — a broken environment must not start processes
in a loop. A zygote that never gets ready costs nothing but those starts: workers
are spawned meanwhile. Its failures are never escalated to the node supervisor:
it is an accelerator, and its absence is not a fault of the node.
"""

from __future__ import annotations

import array
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
import trio

from ...protocol._zygote import Forked, ForkRefused, ForkWorker, WorkerExited, ZygoteReady

__all__ = ["FORK_TIMEOUT", "ForkedProcess", "Zygote", "exit_reason"]

logger = logging.getLogger("actorcore.zygote")

#: Seconds the pool waits for the zygote's answer to a fork request (a fork takes
#: milliseconds) before it spawns the worker instead and kills the zygote, which
#: restarts (a worker it forks later is killed).
FORK_TIMEOUT = 5.0
#: Seconds the node waits, once a forked worker is seen dead on its pidfd, for the
#: zygote's report of its exit code (it reaps on SIGCHLD: normally at once).
STATUS_TIMEOUT = 10.0
#: Seconds a zygote has to import the worker's modules and say it is ready.
READY_TIMEOUT = 60.0
#: Seconds a fork request waits for a starting zygote before it spawns the worker
#: instead (a spawned worker's own start takes about as long on a loaded machine).
START_PATIENCE = 10.0
START_BACKOFF = 0.1
START_BACKOFF_MAX = 5.0


def exit_reason(proc: Any, code: int) -> str:
    """How a worker process ended, for logs and errors: "exit code 3", "killed by
    signal 9", or why it is not known."""
    if getattr(proc, "status_unknown", False):
        return ("exit status unknown: the zygote that forked it (and would have reaped "
                "it) died before it")
    return f"exit code {code}" if code >= 0 else f"killed by signal {-code}"


@attrs.define(eq=False)
class ForkedProcess:
    """A worker forked by the zygote: the part of `trio.Process` the pool and the
    actor processes use (``pid``, ``returncode``, ``stdout``, ``stderr``, ``wait``,
    ``send_signal``, ``kill``)."""

    pid: int
    pidfd: int | None
    stdout: Any = None
    stderr: Any = None
    returncode: int | None = None
    status_unknown: bool = False
    abandoned: bool = False  # killed unwatched (its request gave up): nobody waits
    # Set when the exit code arrived, or when none will (the zygote is gone).
    settled: trio.Event = attrs.Factory(trio.Event)
    _wait_lock: trio.Lock = attrs.Factory(trio.Lock)

    def settle(self, returncode: int | None) -> None:
        """The zygote reported ``returncode``; ``None``: no report will come."""
        if returncode is not None and self.returncode is None:
            self.returncode = returncode
        self.settled.set()

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        """Signal it through its pidfd (never a recycled pid); `ProcessLookupError`
        once it has exited, as `trio.Process.send_signal`."""
        if self.returncode is not None or self.pidfd is None:
            raise ProcessLookupError(f"worker process {self.pid} has exited")
        signal.pidfd_send_signal(self.pidfd, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    async def wait(self) -> int:
        """Its exit code, once it has exited (see the module docstring)."""
        async with self._wait_lock:
            if self.returncode is None and not self.status_unknown:
                if self.pidfd is not None:
                    await trio.lowlevel.wait_readable(self.pidfd)
                # Dead (or already reaped when the pidfd was to be opened): the
                # code comes from the zygote.
                with trio.move_on_after(STATUS_TIMEOUT):
                    await self.settled.wait()
                if self.returncode is None:
                    self.status_unknown = True
                    self.returncode = 255
            self._close_pidfd()
        assert self.returncode is not None
        return self.returncode

    def _close_pidfd(self) -> None:
        if self.pidfd is not None:
            fd, self.pidfd = self.pidfd, None
            trio.lowlevel.notify_closing(fd)
            os.close(fd)


@attrs.define(eq=False)
class _Request:
    done: trio.Event = attrs.Factory(trio.Event)
    process: ForkedProcess | None = None
    refused: str | None = None


@attrs.define(eq=False)
class Zygote:
    """The node's zygote (see the module docstring): owned by `PoolState`."""

    node_hex: str
    session_dir: Path
    enabled: bool = True
    #: "off" (not enabled), "down", "starting", "running".
    state: str = "down"
    process: Any = None
    pid: int | None = None
    sock: Any = None
    env: dict[str, str] | None = None  # the environment it started with
    restarts: int = 0
    failed_starts: int = 0
    next_start_at: float = 0.0
    #: Workers forked, spawned instead (the zygote was not running or refused),
    #: and how many of those were refusals or timeouts.
    forked: int = 0
    spawned: int = 0
    refused: int = 0
    preload_cpu: float | None = None
    threads: int | None = None
    last_error: str | None = None
    children: dict[int, ForkedProcess] = attrs.Factory(dict)
    pending: dict[int, _Request] = attrs.Factory(dict)
    next_request: int = 0
    send_lock: trio.Lock = attrs.Factory(trio.Lock)
    looping: bool = False
    stopping: bool = False
    served: bool = False  # the current (or last) zygote got ready
    #: Fork requests that waited for a starting zygote, and how many of those got
    #: it running (the others spawned).
    waited: int = 0
    waited_ready: int = 0
    # Set (and replaced) at each change of ``state``: what a waiting request wakes on.
    _state_changed: trio.Event = attrs.Factory(trio.Event)
    # The zygote the node forked at its start (``node.__main__``), until its loop
    # takes it over: its process and the node's end of its socket.
    _adopted: tuple[Any, socket.socket] | None = None
    #: Whether the first zygote was forked from the node's start (not spawned).
    forked_at_start: bool = False

    def __attrs_post_init__(self) -> None:
        if not self.enabled:
            self.state = "off"

    def adopt(self, pid: int, sock: socket.socket) -> None:
        """Serve the zygote ``pid`` the node forked at its start (a child of the
        node, ``sock`` its control socket) as this loop's first zygote, instead of
        spawning one. Before ``run``; it counts as starting from now on."""
        if not self.enabled:
            raise ValueError(f"adopting zygote pid {pid}: the zygote is off "
                             "(ACTORCORE_WORKER_ZYGOTE=0)")
        self._adopted = (_ChildProcess(pid), sock)
        self.process, self.pid = self._adopted[0], pid
        self.forked_at_start = True
        self._set_state("starting")

    def _set_state(self, state: str) -> None:
        self.state = state
        self._state_changed.set()
        self._state_changed = trio.Event()

    async def _wait_while_starting(self, patience: float) -> None:
        """Return once the zygote is no longer starting (running, or down) or after
        ``patience`` seconds."""
        with trio.move_on_after(patience):
            while self.state == "starting":
                await self._state_changed.wait()

    # ------------------------------------------------------------ lifecycle

    async def run(self, make_env: Callable[[], dict[str, str]]) -> None:
        """Keep a zygote running until the node stops (in the node's nursery), each
        one started with the workers' environment of the moment (``make_env``)."""
        if self.looping or not self.enabled:
            return
        self.looping = True
        try:
            while not self.stopping:
                delay = self.next_start_at - time.monotonic()
                if delay > 0:
                    await trio.sleep(delay)
                self.served = False
                # "starting" from here, not from the process's creation: a request
                # made meanwhile waits for this zygote rather than spawning.
                self._set_state("starting")
                try:
                    await self._run_once(make_env())
                except Exception as exc:  # noqa: BLE001 - it restarts, the node serves on
                    self.last_error = f"failed: {exc!r}"
                    logger.warning("the zygote failed: %r", exc)
                if self.state != "down":  # it failed before its process started
                    self._set_state("down")
                if self.stopping:
                    return
                self.restarts += 1
                if self.served:
                    self.failed_starts = 0
                    self.next_start_at = 0.0
                else:
                    self.failed_starts += 1
                    delay = min(START_BACKOFF_MAX, START_BACKOFF * 2 ** (self.failed_starts - 1))
                    self.next_start_at = time.monotonic() + delay
                    logger.warning("the zygote died before it was ready (%s), %d in a row: the "
                                   "next one starts in %.1f s; workers are spawned meanwhile",
                                   self.last_error, self.failed_starts, delay)
        finally:
            self.looping = False

    async def _run_once(self, env: dict[str, str]) -> None:
        """Start one zygote (or take the one the node forked at its start) and serve
        its messages until it ends (``served``: it got ready)."""
        if self._adopted is not None:
            proc, parent = self._adopted
            self._adopted = None
            await self._serve(proc, parent, env)
            return
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        logs = self.session_dir / "logs"
        argv = [sys.executable, *_site_flags(), "-P", "-m", "actorcore.worker._zygote",
                "--ctl-fd", str(child.fileno()), "--node-id", self.node_hex]
        try:
            # Local log files, opened once per zygote.
            with open(logs / "zygote.out", "ab") as out, open(logs / "zygote.err", "ab") as err:  # noqa: ASYNC230
                proc = await trio.lowlevel.open_process(
                    argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                    start_new_session=True, pass_fds=(child.fileno(),))
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        await self._serve(proc, parent, env)

    async def _serve(self, proc: Any, parent: socket.socket, env: dict[str, str]) -> None:
        self.process, self.pid, self.env = proc, proc.pid, env
        sock = self.sock = trio.socket.from_stdlib_socket(parent)
        try:
            with trio.move_on_after(READY_TIMEOUT) as scope:
                first = await sock.recv(65536)
            if scope.cancelled_caught:
                self.last_error = f"not ready within {READY_TIMEOUT} s"
                return
            message = pickle.loads(first) if first else None
            if not isinstance(message, ZygoteReady):
                self.last_error = f"exited before it was ready ({await self._exit_text()})"
                return
            self.served = True
            self.threads, self.preload_cpu = message.threads, message.preload_cpu
            self._set_state("running")
            self.last_error = None
            logger.info("zygote (pid %d) ready: its imports took %.2f s of CPU",
                        proc.pid, message.preload_cpu)
            while True:
                data = await sock.recv(65536)
                if not data:
                    break
                self._handle(pickle.loads(data))
            self.last_error = f"died ({await self._exit_text()})"
            logger.warning("the zygote (pid %d) %s; it restarts", proc.pid, self.last_error)
        finally:
            with trio.CancelScope(shield=True):
                await self._ended(proc, sock)

    async def _exit_text(self) -> str:
        proc = self.process
        with trio.move_on_after(5):
            code = await proc.wait()
            return exit_reason(proc, code)
        return "its socket closed"

    async def _ended(self, proc: Any, sock: Any) -> None:
        """This zygote is gone or going: nothing it forked will be reported now."""
        self._set_state("down")
        self.sock = None
        sock.close()
        for request in self.pending.values():
            request.refused = "the zygote ended"
            request.done.set()
        for child in self.children.values():
            child.settle(None)  # orphans: their pidfds still say when they end
        self.children.clear()
        if proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            with trio.move_on_after(5):
                await proc.wait()

    def _handle(self, message: Any) -> None:
        if isinstance(message, WorkerExited):
            child = self.children.pop(message.pid, None)
            if child is not None:
                child.settle(message.returncode)
                if child.abandoned:
                    child._close_pidfd()
        elif isinstance(message, Forked):
            process = ForkedProcess(message.pid, _pidfd(message.pid))
            request = self.pending.get(message.request_id)
            self.children[message.pid] = process
            if request is None:  # its requester gave up: nobody will watch it
                logger.warning("the zygote forked worker pid %d after its request timed out: "
                               "killing it", message.pid)
                process.abandoned = True
                try:
                    process.kill()
                except ProcessLookupError:
                    pass
                return
            request.process = process
            request.done.set()
        elif isinstance(message, ForkRefused):
            request = self.pending.get(message.request_id)
            if request is not None:
                request.refused = message.reason
                request.done.set()
        else:
            logger.warning("the zygote sent %r: ignored", type(message).__name__)

    # ------------------------------------------------------------ forks

    async def fork(
        self, module: str, args: Sequence[str], env: dict[str, str], title: str
    ) -> ForkedProcess | None:
        """A worker forked from the zygote running ``module``'s main with ``args`` and
        ``env``, or ``None``: spawn it instead (the zygote is not running, refused,
        or did not answer in time). A zygote that is starting is waited for (see
        the module docstring)."""
        if self.state == "starting":
            self.waited += 1
            await self._wait_while_starting(START_PATIENCE)
            if self.state == "running":
                self.waited_ready += 1
        if self.state != "running" or self.sock is None:
            self.spawned += 1
            return None
        if env != self.env:
            # The interpreter reads some variables only when it starts: a zygote
            # with another environment cannot make this worker. Start a new one.
            logger.info("the node's environment changed since the zygote started: it restarts")
            self.spawned += 1
            self.refused += 1
            self._kill_process()
            return None
        rid = self.next_request
        self.next_request += 1
        request = self.pending[rid] = _Request()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        process = None
        try:
            data = pickle.dumps(ForkWorker(rid, module, tuple(args), env, os.getcwd(), title))
            try:
                async with self.send_lock:
                    sock = self.sock
                    if sock is None:
                        raise OSError("the zygote ended")
                    await sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                                 array.array("i", [out_w, err_w]))])
            finally:
                os.close(out_w)
                os.close(err_w)
            with trio.move_on_after(FORK_TIMEOUT):
                await request.done.wait()
            process = request.process
            if process is None:
                self.refused += 1
                self.spawned += 1
                logger.warning("the zygote did not fork %s (%s): spawning it", title,
                               request.refused or f"no answer within {FORK_TIMEOUT} s")
                if not request.done.is_set():
                    # Stuck (stopped, or starved for seconds): the next starts must
                    # not wait for it too. It is killed, and restarts.
                    self.last_error = f"did not answer a fork request within {FORK_TIMEOUT} s"
                    self._kill_process()
                return None
            process.stdout = trio.lowlevel.FdStream(out_r)
            process.stderr = trio.lowlevel.FdStream(err_r)
            self.forked += 1
            return process
        except OSError as exc:
            self.refused += 1
            self.spawned += 1
            logger.warning("asking the zygote to fork %s failed (%s): spawning it", title, exc)
            return None
        finally:
            self.pending.pop(rid, None)
            if process is None or process.stdout is None:
                os.close(out_r)
                os.close(err_r)
                if request.process is not None:  # cancelled after the fork: not ours now
                    request.process.abandoned = True
                    try:
                        request.process.kill()
                    except ProcessLookupError:
                        pass

    def _kill_process(self) -> None:
        proc = self.process
        if proc is not None and proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass

    async def stop(self) -> None:
        """The node stops: the zygote with it (its workers are the pool's to kill)."""
        self.stopping = True
        if self._adopted is not None:  # never served: closing its socket ends it
            self._adopted[1].close()
            self._adopted = None
        self._kill_process()
        if self.process is not None:
            with trio.move_on_after(2):
                await self.process.wait()

    def snapshot(self, node_id: str) -> dict:
        return {
            "name": "zygote",
            "kind": "zygote",
            "state": {"running": "running", "starting": "starting", "off": "stopped"}.get(
                self.state, "restarting"),
            "restarts": self.restarts,
            "pid": self.pid if self.state in ("running", "starting") else None,
            "node_id": node_id,
            "children": [],
            **self.statistics(),
        }

    def statistics(self) -> dict:
        return {
            "zygote_state": self.state,
            "forked": self.forked,
            "spawned": self.spawned,
            "refused": self.refused,
            "waited": self.waited,
            "waited_ready": self.waited_ready,
            "forked_at_start": self.forked_at_start,
            "preload_cpu": self.preload_cpu,
            "threads_at_fork": self.threads,
            "last_error": self.last_error,
        }


class _ChildProcess:
    """The zygote the node forked (not a `trio.Process`): what ``Zygote`` uses of
    one (``pid``, ``returncode``, ``wait``, ``kill``), on a pidfd."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._pidfd = _pidfd(pid)

    def kill(self) -> None:
        if self.returncode is not None:
            raise ProcessLookupError(f"zygote process {self.pid} has exited")
        if self._pidfd is not None:
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        else:
            os.kill(self.pid, signal.SIGKILL)

    async def wait(self) -> int:
        if self.returncode is None:
            while True:
                if self._pidfd is not None:
                    await trio.lowlevel.wait_readable(self._pidfd)  # readable: exited
                pid, status = os.waitpid(self.pid, os.WNOHANG)  # noqa: ASYNC222 - never blocks
                if pid:
                    break
                if self._pidfd is None:  # no pidfd here: poll
                    await trio.sleep(0.05)
            self.returncode = os.waitstatus_to_exitcode(status)
            if self._pidfd is not None:
                fd, self._pidfd = self._pidfd, None
                trio.lowlevel.notify_closing(fd)
                os.close(fd)
        return self.returncode


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except OSError:  # already exited and reaped (the zygote reports it), or no pidfds
        return None


def _site_flags() -> list[str]:
    from ...session._launcher import site_flags

    return site_flags()
