"""`Lifeline`: a replica process's death, seen before the kernel closes its sockets.

Why
---
The coordinator learnt of a replica's death when the kernel closed the dead
process's sockets (its `Watch` request failed). The kernel does that late in the
exit: ``do_exit`` tears down the whole address space (``exit_mm``) before it closes
the files (``exit_files``), and it does that work in the dying process, at the
dying process's priority. A replica of some 50-120 MB at ``nice 19`` on two busy
cores took 12-60 ms from the SIGKILL to the close of its sockets (p50 15-40 ms),
half the failover's budget and more before the chain could even be repaired.

The same exit handles the process's *robust futexes* first, before the address
space goes (``exit_mm`` -> ``exit_robust_list``): a robust mutex its thread held is
marked "owner died" and one waiter is woken. So each replica process holds one, in
a page of shared memory made by its parent (the node's `ReplicaService`, which
passes the ``memfd`` down); a thread of the parent waits to lock it, and gets it
with ``EOWNERDEAD`` the moment the replica's main thread is gone. Measured (a
Python process of 120 MB, nice 19, load 14): the lock came 0.1 ms (p50; worst
28 ms) after the SIGKILL, the socket's EOF 86 ms (worst 164 ms).

Once it fires, the process will never run a line of its code again, so declaring
it dead is as safe as on its sockets' close: whatever it sent before is already in
its peers' buffers (a local socket delivers on send), and whatever it would have
acknowledged it never will.

Protocol
--------
* Parent: `Lifeline.open` makes the page (a ``memfd``) with a process-shared robust
  mutex; the child is spawned with ``pass_fds=(lifeline.fd,)`` and the arguments
  `child_args`, and the parent drops its fd (`spawned`).
* Child: `hold` (from ``--lifeline <fd>``) maps the page and locks the mutex from
  its main thread, before it says ``SPARE`` or ``READY``; it never unlocks it.
* Parent, once the child said so: `watch` calls back when the mutex's owner died.
  Only ``EOWNERDEAD`` counts: if the lock is free (a child that could not hold it),
  it waits forever, and the sockets' close (or the reap) tells the death as before.

Delivery
--------
Under load (16-21) the coordinator did not hear of a SIGKILLed head from its
lifeline 5 times in 15 (the integration test of ``test_gcs_lifeline.py``, its sockets
kept open). The kernel had told every time: the waiting thread got ``EOWNERDEAD``
in all 15, 0-90 ms *before* the node reaped the child. The death was lost after
that, in the node's loop. The thread hands it over with ``run_sync_soon``; a busy
loop then finds the hand-over and the reaped child's pidfd in one pass, and Trio
runs a pass's tasks in either order (it reverses half the batches). When the
reap's task ran first, the replica's service cancelled its nursery -- and with it
the task that waited for the lifeline's event, before the event was set. So the
death now goes to a plain callback (`watch`) that no cancel scope can reach; the
service `disarm`s it only where it stops the process itself.

Linux with glibc only (robust pshared mutexes through ``ctypes``); elsewhere
`Lifeline.open` returns None and nothing changes.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import outcome
import trio

__all__ = ["Lifeline", "hold"]

logger = logging.getLogger("gcs")

#: The page that holds the mutex (a ``pthread_mutex_t`` is 40-48 bytes).
_SIZE = mmap.PAGESIZE


def _libc() -> Any:
    if not sys.platform.startswith("linux") or not hasattr(os, "memfd_create"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    needed = ("pthread_mutexattr_init", "pthread_mutexattr_setrobust", "pthread_mutexattr_setpshared",
              "pthread_mutex_init", "pthread_mutex_lock", "pthread_mutex_unlock")
    if not all(hasattr(libc, name) for name in needed):
        return None
    for name in needed:
        getattr(libc, name).restype = ctypes.c_int
    return libc


_LIBC = _libc()

class Lifeline:
    """The parent's side of one replica process's lifeline (module docstring)."""

    def __init__(self, fd: int, page: mmap.mmap) -> None:
        #: The memfd to pass to the child (closed by `spawned`).
        self.fd: int | None = fd
        self._page = page
        self._watched = False
        #: Cleared by `disarm` or once the death was told.
        self._armed = True
        #: Set by the waiting thread once the death is in the loop's queue (its
        #: callback runs at the loop's next pass): a test holds the loop until then.
        self.handed_over = threading.Event()

    @classmethod
    def open(cls) -> Lifeline | None:
        """A fresh lifeline, or None where robust shared mutexes are not available."""
        if _LIBC is None:
            return None
        fd = os.memfd_create("gcs-lifeline", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, _SIZE)
            page = mmap.mmap(fd, _SIZE)
            attr = ctypes.create_string_buffer(64)  # pthread_mutexattr_t: 4 bytes
            mutex = ctypes.c_char.from_buffer(page)
            failed = (_LIBC.pthread_mutexattr_init(attr)
                      or _LIBC.pthread_mutexattr_setpshared(attr, 1)  # PTHREAD_PROCESS_SHARED
                      or _LIBC.pthread_mutexattr_setrobust(attr, 1)  # PTHREAD_MUTEX_ROBUST
                      or _LIBC.pthread_mutex_init(ctypes.byref(mutex), attr))
            del mutex  # (an export of the page; the waiting thread takes its own)
            if failed:
                raise OSError(failed, "pthread_mutex_init of a robust shared mutex failed")
        except OSError as exc:
            os.close(fd)
            logger.info("GCS replica lifelines are off: %s", exc)
            return None
        return cls(fd, page)

    def child_args(self) -> list[str]:
        """The replica command's arguments that hand the child its end."""
        assert self.fd is not None, "the child is spawned already"
        return ["--lifeline", str(self.fd)]

    def spawned(self) -> None:
        """The child has its copy of the fd (or was never started): drop ours."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def watch(self, on_gone: Callable[[], object]) -> None:
        """Call ``on_gone`` in this Trio run once the process that holds the mutex
        has died, unless `disarm` came first. Call once, and only after the child
        said it holds the mutex (``SPARE`` or ``READY``).

        The death is delivered as a plain callback (``run_sync_soon``), never by
        waking a task: the node's loop sees the waiting thread's wake-up and the
        reaped child's pidfd in one pass when it was busy at the death, runs that
        pass's tasks in either order, and the reap cancelled a task that waited
        for the lifeline before the wake-up reached it -- the death the kernel had
        told was lost (module docstring, "Delivery").

        The thread is Trio's own (`trio.lowlevel.start_thread_soon`), not one of
        `trio.to_thread`'s: it blocks for the whole life of the replica, and would
        hold one of the 40 tokens the node's other threads share; it ends with the
        process, whether or not the callback is still wanted."""
        assert not self._watched, "a lifeline is watched once"
        self._watched = True
        token = trio.lowlevel.current_trio_token()

        def tell() -> None:
            # Runs in Trio's entry queue, where an exception is an internal error
            # of the whole run: a failing callback (a coordinator stopped
            # meanwhile) is logged; the reap tells the death again.
            if self._armed:
                self._armed = False
                try:
                    on_gone()
                except Exception:
                    logger.exception("GCS replica lifeline: telling the death failed")

        def deliver(result: outcome.Outcome[bool]) -> None:
            try:
                died = result.unwrap()
            except Exception:  # noqa: BLE001 (a thread has nowhere to raise)
                logger.exception("GCS replica lifeline: the waiting thread failed")
                return
            if died:
                try:
                    token.run_sync_soon(tell)
                except trio.RunFinishedError:
                    return
                self.handed_over.set()

        trio.lowlevel.start_thread_soon(_wait_owner_death(self._page), deliver,
                                        name="gcs replica lifeline")

    def disarm(self) -> None:
        """The death need not be told any more (its process was stopped on purpose,
        or its reap told it): a callback of `watch` not yet run never will."""
        self._armed = False

    async def wait_gone(self) -> None:
        """Return once the process that holds the mutex has died (`watch`, with
        the same conditions); cancellable."""
        gone = trio.Event()
        self.watch(gone.set)
        await gone.wait()


def _wait_owner_death(page: mmap.mmap) -> Any:
    """The waiting thread's body: True once the mutex's owner died, False if it was
    not held at all. It keeps ``page`` mapped while it waits."""

    def wait() -> bool:
        mutex = ctypes.c_char.from_buffer(page)
        try:
            code = _LIBC.pthread_mutex_lock(ctypes.byref(mutex))
            if code in (0, errno.EOWNERDEAD):
                # Unlocked at once: a robust mutex sits on this thread's robust list
                # while it holds it, and the thread (from a pool) lives on.
                _LIBC.pthread_mutex_unlock(ctypes.byref(mutex))
            return code == errno.EOWNERDEAD
        finally:
            del mutex

    return wait


def hold(fd: int) -> bool:
    """The child's side: lock the mutex in the page ``fd`` for the life of the
    process (from the main thread). False if it could not (the parent then learns
    of the death from the sockets, as without a lifeline).

    Mapped with ``mmap(2)`` itself, never unmapped: a Python `mmap.mmap` would be
    unmapped when the interpreter finalizes, before the exit that is to release
    the mutex, and the kernel finds no mutex at the address then.
    """
    try:
        if _LIBC is None:
            return False
        mmap_ = _LIBC.mmap
        mmap_.restype = ctypes.c_void_p
        mmap_.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
        address = mmap_(None, _SIZE, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
        if address in (None, ctypes.c_void_p(-1).value):
            return False
    finally:
        os.close(fd)
    return bool(_LIBC.pthread_mutex_lock(ctypes.c_void_p(address)) == 0)
