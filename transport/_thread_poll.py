"""`ThreadPoll`: a thread's wait for input on the sockets it borrowed
(`ReadLoan.fileno`) and for a wake-up from other threads.

A borrower of read sides (an actor's thread, a task worker's main thread, a caller's
thread blocked in ``get``) sleeps in ``poll`` on an eventfd beside the sockets it
holds: the loop (or another thread) writes the eventfd to wake it -- work queued
for it, a side handed over or closed, an entry made ready.

Two ways to wake it. `notify` always writes the eventfd. `wake` writes it only
while the thread sleeps in `sleep` and has not been woken since: a queue that many
threads put into wakes its reader once per sleep, not once per item (each write is
a system call). `sleep` marks the thread asleep *before* it checks whether it has
work after all (``ready``), so a `wake` between that check and the ``poll`` still
writes, and no wake-up is lost.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Callable, Iterable

__all__ = ["ThreadPoll"]

_POLLIN = select.POLLIN


class ThreadPoll:
    """One thread's ``poll`` on an eventfd and the sockets it `watch`es (see the
    module docstring). `notify` and `wake` run in any thread; the rest in the
    polling thread."""

    def __init__(self) -> None:
        self._efd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(self._efd, _POLLIN)
        self._fds: set[int] = set()  # the sockets registered beside the eventfd
        self._one = -1  # the one socket of ``_fds``; -1: none; -2: several
        self._lock = threading.Lock()
        self._sleeping = False
        self._woken = False

    # ---------------------------------------------------------------- any thread

    def notify(self) -> None:
        """Write the eventfd: the thread's next (or current) poll returns."""
        try:
            os.eventfd_write(self._efd, 1)
        except OSError:  # closed: its thread is gone
            pass

    def wake(self) -> None:
        """Wake the thread if it sleeps in `sleep` and nobody woke it since."""
        with self._lock:
            if not self._sleeping or self._woken:
                return
            self._woken = True
        os.eventfd_write(self._efd, 1)

    # ------------------------------------------------------------ polling thread

    def watch_one(self, fd: int) -> None:
        """`watch` of one socket (negative: none), without building a set when it is
        the one watched already (a borrower's wait, once per message)."""
        if fd != self._one:
            self.watch((fd,))

    def watch(self, fds: Iterable[int]) -> None:
        """Poll these sockets (negative numbers ignored) beside the eventfd, no
        others."""
        wanted = {fd for fd in fds if fd >= 0}
        self._one = next(iter(wanted)) if len(wanted) == 1 else -1 if not wanted else -2
        if wanted == self._fds:
            return
        for fd in self._fds - wanted:
            try:
                self._poll.unregister(fd)
            except KeyError:
                pass
        for fd in wanted - self._fds:
            self._poll.register(fd, _POLLIN)
        self._fds = wanted

    def poll(self, timeout_ms: int | None = None) -> list[int]:
        """Wait for input (``timeout_ms``: at most that long); the watched sockets
        that have some. A write of the eventfd is read here and not listed."""
        ready = []
        for fd, _mask in self._poll.poll(timeout_ms):
            if fd == self._efd:
                try:
                    os.eventfd_read(self._efd)
                except BlockingIOError:
                    pass
            else:
                ready.append(fd)
        return ready

    def sleep(self, ready: Callable[[], bool]) -> list[int]:
        """`poll` until input or a `wake`, unless ``ready()`` (checked once the
        thread counts as asleep) says it has work already: then ``[]`` at once."""
        with self._lock:
            self._sleeping = True
            self._woken = False
        try:
            if ready():
                return []
            return self.poll()
        finally:
            with self._lock:
                self._sleeping = False

    def __del__(self) -> None:
        try:
            os.close(self._efd)
        except (OSError, AttributeError):
            pass
