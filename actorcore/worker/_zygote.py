"""``python -m actorcore.worker._zygote``: the node's zygote, which forks workers.

A worker process spends most of its start in imports (Trio, cloudpickle, attrs, the
protocol's message classes, the core worker: about 0.6 s of CPU on a busy 2-core
machine). The zygote pays them once per node: it imports the worker's modules, then
forks each new task worker or actor process on the node's request. The child drops
what it inherited (the zygote's socket and signal set-up), takes the descriptors
and environment the node sent, and runs the same ``main`` that ``python -m
actorcore.worker`` (or ``actorcore.worker._actor_process``) runs. The node side is
``actorcore.node.worker_pool._zygote``; the messages are ``protocol._zygote``.

Why not ``multiprocessing.forkserver``
--------------------------------------
It is the same idea, and this module borrows its shape: a single-threaded server
started by exec, modules preloaded, requests on a Unix socket with descriptors
passed by SCM_RIGHTS, children reaped on SIGCHLD and their exit codes reported
back. Its machinery does not fit as it is: its child runs a pickled
``multiprocessing.Process`` (preparation data, the parent's ``sys.path`` and main
module are re-applied) with the server's own stdio; it is one hidden server per
process, which its client starts and restarts outside our supervision; it reports
a child's status on a socket per child, read by blocking ``os.read``; and
``multiprocessing.util`` hooks run in every child. A worker needs its own stdout
and stderr pipes, an exact environment, a process title, a new session, and one
status channel the node's Trio loop reads. So this is a small server of our own
(its loop is a hundred lines) in forkserver's shape.

Fork safety
-----------
The zygote never starts a thread and never runs a Trio loop: it serves from a
blocking ``select`` over its socket and a signal wake-up pipe, so every fork copies
a single-threaded process whose locks no other thread can hold. It checks that
before each fork (``/proc/self/task``) and refuses the fork (the node then spawns)
if anything started a thread. What it preloads was chosen by that measure:
importing ``pyarrow`` starts jemalloc's background thread (``jemalloc_bg_thd``)
and, through ``numpy``, OpenBLAS's thread pool, so neither is preloaded — a forked
worker imports them as a spawned one does (about 0.2 s of CPU). The store client
(``store``), Trio, cloudpickle and our protocol start no thread on import.
Before it serves, the zygote runs ``gc.freeze()``: its objects move to the
permanent generation, so a child's collections do not write to (and copy) every
page they share with the zygote.

What a forked worker shares with the zygote and a spawned one would not: the hash
seed of ``str`` (one per zygote, not one per worker; the node's own for the zygote
the node forks at its start, ``serve_forked``) and the addresses of its memory
layout (as Android's zygote). ``random`` re-seeds after a fork, and so do
our id prefixes (``protocol._ids``).

runtime_env
-----------
A worker's ``runtime_env`` is applied by the worker itself when its first task or
actor arrives (``worker._runtime_env``: ``chdir``, ``sys.path`` and environment
variables, never undone), the same in a forked worker as in a spawned one: the
zygote forks before any of it, so no path or directory of one environment reaches
a worker of another. What is read only when an interpreter starts (``PYTHONPATH``,
``PYTHONHASHSEED``, the ``-S``/``-s`` flags, ``LD_PRELOAD``) is the zygote's, so
the node forks only workers whose environment is exactly the one it started the
zygote with, and spawns the others.
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import pickle
import select
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from ..protocol._zygote import Forked, ForkRefused, ForkWorker, WorkerExited, ZygoteReady

__all__ = ["main", "serve_forked", "WORKER_MODULES"]

#: The worker modules a zygote forks (their ``main(argv)``), preloaded at its start.
WORKER_MODULES: tuple[str, ...] = ("actorcore.worker._process", "actorcore.worker._actor_process")
#: Imported too: what every worker imports before it registers, minus what would
#: start a thread here (see "Fork safety").
PRELOAD: tuple[str, ...] = ("store", "actorcore.worker._runtime_env")

#: The largest request the zygote reads; a larger one is refused (the node spawns).
MAX_REQUEST = 1 << 20


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m actorcore.worker._zygote")
    p.add_argument("--ctl-fd", type=int, required=True,
                   help="its end of the node's SOCK_SEQPACKET socket pair")
    p.add_argument("--node-id", required=True)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    _preload_and_serve(socket.socket(fileno=args.ctl_fd))


def serve_forked(ctl_fd: int, logs: str) -> NoReturn:
    """Become the zygote in a child the node forked at its very start (see
    ``actorcore.node.__main__``), instead of ``python -m actorcore.worker._zygote``.

    The node forks before its own imports beyond ``actorcore``'s package and before
    any thread or Trio loop exists, so this child starts with Trio, attrs and the
    protocol already imported (about half of a worker's imports) and runs beside
    the node's start instead of after it. It inherited what the node had then: its
    descriptors (closed here, but for ``ctl_fd``: the node's ready and parent pipes
    must close when the node ends) and its stdio, which become the zygote's log
    files and unbuffered, as ``PYTHONUNBUFFERED`` (set for a spawned zygote) makes
    them. Its command line would be the node's (and so would every worker's it
    forks, for ``ps`` and ``pgrep``): it is rewritten to a spawned zygote's. Never
    returns; any failure ends the process, and the node, seeing its socket close,
    starts a zygote the usual way."""
    try:
        os.setsid()  # as a spawned zygote (start_new_session)
        _set_cmdline([sys.executable, "-m", "actorcore.worker._zygote", "--forked-by-node"])
        for fd in [int(fd) for fd in os.listdir("/proc/self/fd")]:
            if fd > 2 and fd != ctl_fd:
                try:
                    os.close(fd)
                except OSError:
                    pass  # the listing's own descriptor
        for fd, name in ((1, "zygote.out"), (2, "zygote.err")):
            log = os.open(os.path.join(logs, name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(log, fd)
            os.close(log)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True,
                                      errors="backslashreplace")
        ctl = socket.socket(fileno=ctl_fd)
    except BaseException:  # noqa: BLE001 - never back into the node's code
        _die(traceback.format_exc(), 70)
    try:
        _preload_and_serve(ctl)
    except BaseException:  # noqa: BLE001 - never back into the node's code
        _die(traceback.format_exc(), 71)


def _preload_and_serve(ctl: socket.socket) -> NoReturn:
    mains: dict[str, Callable[[list[str]], Any]] = {}
    for name in (*WORKER_MODULES, *PRELOAD):
        module = __import__(name, fromlist=["main"])
        if name in WORKER_MODULES:
            mains[name] = module.main
    _set_title("ac_zygote")
    gc.collect()
    gc.freeze()
    Zygote(ctl, mains).serve(time.process_time())  # the interpreter's start included


class Zygote:
    """The server loop (see the module docstring)."""

    def __init__(self, ctl: socket.socket, mains: dict[str, Callable[[list[str]], Any]]) -> None:
        self.ctl = ctl
        self.mains = mains
        # SIGCHLD wakes the loop through this pipe (the handler itself does nothing).
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)

    def serve(self, preload_cpu: float) -> NoReturn:
        self._send(ZygoteReady(os.getpid(), _threads(), preload_cpu))
        while True:
            ready, _, _ = select.select([self.ctl.fileno(), self.wake_r], [], [])
            if self.wake_r in ready:
                os.read(self.wake_r, 4096)
                self._reap()
            if self.ctl.fileno() in ready:
                self._request()

    def _send(self, message: Any) -> None:
        try:
            self.ctl.send(pickle.dumps(message))
        except OSError:  # the node is gone: its workers end with their links
            os._exit(0)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._send(WorkerExited(pid, os.waitstatus_to_exitcode(status)))

    def _request(self) -> None:
        data, fds, flags, _addr = socket.recv_fds(self.ctl, MAX_REQUEST, 2)
        if not data and not fds:
            os._exit(0)  # the node closed its end, or died: nothing more to fork
        try:
            request = None
            try:
                request = pickle.loads(data) if not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC) else None
            except Exception as exc:  # noqa: BLE001 - refused, the zygote serves on
                print(f"zygote: an unreadable request: {exc!r}", file=sys.stderr)
            if not isinstance(request, ForkWorker):
                print(f"zygote: refused a request that is not a ForkWorker: {type(request).__name__} "
                      f"({len(data)} bytes, flags {flags:#x})", file=sys.stderr)
                return
            reason = self._refusal(request, fds)
            if reason is not None:
                self._send(ForkRefused(request.request_id, reason))
                return
            try:
                pid = os.fork()
            except OSError as exc:
                self._send(ForkRefused(request.request_id, f"fork failed: {exc}"))
                return
            if pid == 0:
                self._child(request, fds)
            self._send(Forked(request.request_id, pid))
        finally:
            for fd in fds:  # the child's now (or nobody's): never another child's
                os.close(fd)

    def _refusal(self, request: ForkWorker, fds: list[int]) -> str | None:
        if request.module not in self.mains:
            return f"no worker module {request.module!r} here (it forks {sorted(self.mains)})"
        if len(fds) != 2:
            return f"a fork request carries the stdout and stderr descriptors, not {len(fds)}"
        threads = _threads()
        if threads != 1:
            return f"the zygote has {threads} threads: a fork would copy a process in flux"
        return None

    def _child(self, request: ForkWorker, fds: list[int]) -> NoReturn:
        """In the new worker: become what ``python -m <module>`` would be, then run it."""
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self.ctl.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
            os.setsid()  # as the pool's spawn does (start_new_session)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(fds[0], 1)
            os.dup2(fds[1], 2)
            for fd in (null, *fds):
                os.close(fd)
            _close_inherited()
            os.environ.clear()
            os.environ.update(request.env)
            os.chdir(request.cwd)
            _set_title(request.title)
            worker_main = self.mains[request.module]
            module_file = getattr(sys.modules[request.module], "__file__", request.module)
            sys.argv = [str(module_file), *request.args]
        except BaseException:  # noqa: BLE001 - the child must never return to the loop
            _die(traceback.format_exc(), 70)
        code = 1
        try:
            worker_main(list(request.args))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
        except BaseException:  # noqa: BLE001 - as the interpreter would print it
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def _set_title(title: str) -> None:
    """Name this process in ``/proc/self/comm`` (what ``ps -o comm`` and ``top``
    show; 15 bytes at most). Its ``/proc/self/cmdline`` stays the zygote's."""
    try:
        with open("/proc/self/comm", "w") as f:
            f.write(title[:15])
    except OSError:
        pass


def _set_cmdline(words: list[str]) -> None:
    """Rewrite ``/proc/self/cmdline`` to ``words`` (cut to the length of the command
    line the process started with), as ``setproctitle`` does: the kernel shows the
    memory the process's original ``argv`` occupies (``arg_start`` to ``arg_end``
    in ``/proc/self/stat``), which the interpreter copied at its start and never
    reads again."""
    try:
        with open("/proc/self/stat") as f:
            data = f.read()
        fields = data[data.rindex(")") + 2:].split()
        start, end = int(fields[45]), int(fields[46])  # fields 48 and 49
    except (OSError, ValueError, IndexError):
        return
    size = end - start
    new = b"\0".join(w.encode() for w in words)[:size - 1]
    import ctypes

    ctypes.memmove(start, new.ljust(size, b"\0"), size)


def _close_inherited() -> None:
    """Close every descriptor above stderr the child still has: after the zygote's
    own were closed above there should be none, but a library's could not leak
    into user code this way either."""
    try:
        fds = [int(fd) for fd in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in fds:
        if fd > 2:
            try:
                os.close(fd)
            except OSError:
                pass  # the directory's own descriptor, closed by now


def _die(text: str, code: int) -> NoReturn:
    try:
        os.write(2, text.encode(errors="replace"))
    finally:
        os._exit(code)


if __name__ == "__main__":
    main()
