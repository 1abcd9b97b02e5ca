"""The caller's thread reads its own reply off a direct link.

Why. A direct actor call's answer (`DirectResult`), or a leased task's end
(`LeasedTaskDone`), otherwise reaches a blocked ``get`` in two hops: the kernel wakes
the core loop, whose reader reads and decodes the frame and makes the entry ready
(``Route._answered``, ``LeasedTasks._h_done``), which releases the waiting thread's
lock; then that thread wakes. On this 2-core machine each wake-up waits for a core and
then for the GIL, and the loop's pass costs as much CPU as the reply itself. Here the
waiting thread borrows the link's read side (``transport.ReadLoan``, as an actor's
thread does for its calls: ``worker._threaded_host._LinkInbox``) and the kernel wakes it
directly; the loop does not run for a lone call.

Who reads, when
---------------
A `ReplyReads` is made for each direct link (a route's to an actor, a leased
worker's) when the link comes up, in the loop (``Connection.lend_reads``). A thread
in a one-ref ``get`` (``ObjectWaits._wait_one``) whose result comes on that link
waits in `ReplyReads.wait`: it registers its own wake-up on the entry, as any
``get`` does, becomes the link's *reader* (one thread at a time; a second waits on
its wake-up like any other waiter), asks for the read side (``want``: handed over at
the loop reader's next frame boundary, at once if this thread kept it from its last
wait) and ``poll``s an eventfd (its wake-up: the entry made ready by the loop, the
side handed over or closed) and, while it holds the side, the socket. A frame that
is exactly one answer the link's ``accept`` takes is handled in the thread; anything
else goes back to the loop's reader with every byte read (``ReadLoan.take``). When
the wait ends the thread keeps the side without reading it (``ReadLoan.pause``),
unless other calls are in flight on the link (``others``: their answers must not
wait), so that the next call's answer is read by the same thread with no hand-over.
A side kept unread is taken back (``ReadLoan.reclaim``, `ReplyReads.reclaim`) as soon as
anyone else may need the link's frames: another waiter registers on any entry
(``ReferenceTable.register``), or a call joins one in flight (a burst); and by the
loop's watch after ``transport.RECLAIM_AFTER`` in any case (a ref polled with
``wait(timeout=0)``, say, registers nothing).

The reference table's invariants
--------------------------------
Entries are made ready under the table's lock, and their callbacks run where they
were meant to run: in the core loop (a Trio ``Event.set``, a flush, a dependency's
submit). So the thread makes entries ready itself only when every one of the
answer's entries is known here, not a dropped ref's, and carries no callback but the
thread's own wake-up: checked and set in one hold of the lock
(``ReferenceTable.ready_from_thread``), so no callback can be added in between.
Otherwise the making-ready goes to the loop (``on_objects_ready``, as the loop's own
reader would have done), and the thread waits for its wake-up like any waiter.

The rest of the loop's handling is done in the same order it does it:

* the call leaves the route's (or lease's) in-flight table in ``accept``, under the
  route's (lease table's) lock, in the same step that decides the frame is taken; a
  link lost meanwhile (``Route._link_lost``, ``LeasedTasks._lose_link``, under the
  same lock) either finds the call answered, or the thread finds it gone and gives
  the frame back: a call is never both resent and taken as answered here;
* a direct call's inline results are sorted *before* its entries are ready
  (``Route._report``, ``ReferenceTable.direct_results``): those of refs passed on
  already are queued for the node, the others marked to be queued when a ref to
  them is passed on, and never if it dies here;
* argument objects held for the call are released, and a deferred drop of the
  actor is queued, after the entries are ready.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import transport

from ..session._config import env_value

__all__ = ["CALLER_READS", "ReplyReads"]

#: A thread in ``get`` reads a direct call's answer (a leased task's end) itself.
CALLER_READS: bool = env_value("ACTORCORE_CALLER_READS")

_local = threading.local()


def _poller() -> transport.ThreadPoll:
    """The calling thread's poll (its wake-up for `ReplyReads.wait`, made once)."""
    p = getattr(_local, "poll", None)
    if p is None:
        p = _local.poll = transport.ThreadPoll()
    return p


class ReplyReads:
    """A direct link whose answers a waiting thread may read itself (see the module
    docstring). Made in the core loop once the link runs.

    ``accept(message)``: whether the thread keeps ``message`` (the link's in-flight
    bookkeeping done, atomically with the link's loss); ``finish(message, own)``:
    the rest of its handling, in the thread (``own``: the thread's wake-up, the one
    callback it may find on its entries). ``others()``: whether other calls are in
    flight on the link (their answers must not wait for a thread that is not reading).
    """

    def __init__(self, conn: Any, references: Any, accept: Callable[[Any], bool],
                 finish: Callable[[Any, Callable[[], None]], None],
                 others: Callable[[], bool]) -> None:
        self._references = references
        self.accept = accept
        self.finish = finish
        self.others = others
        self._lock = threading.Lock()
        self._reader: transport.ThreadPoll | None = None  # the thread reading now, if any
        self.loan: transport.ReadLoan | None = conn.lend_reads(self._wake)

    def _wake(self) -> None:
        """(loop) The side was handed over, or the loan closed: wake the reader."""
        reader = self._reader
        if reader is not None:
            reader.notify()

    def wait(self, entry: Any, timeout: float | None) -> bool:
        """Block the calling thread until ``entry`` is ready or ``timeout``, reading
        the link's answers meanwhile; whether it is ready."""
        references = self._references
        w = _poller()
        fire = w.notify
        if not references.register_own(entry, fire):
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        loan = self.loan
        with self._lock:
            mine = self._reader is None and loan is not None
            if mine:
                self._reader = w
        if mine:
            references.paused_reads.discard(self)  # read again from now on
        try:
            take = self.accept
            while not entry.ready:
                fd = -1
                if mine and loan is not None and not loan.closed and loan.want():
                    fd = loan.fileno()
                w.watch_one(fd)
                if deadline is None:
                    ready = w.poll()
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    ready = w.poll(max(1, int(left * 1000 + 0.999)))
                for polled in ready:
                    if polled == fd and loan is not None:
                        message = loan.take(take)
                        if message is not transport.NOT_TAKEN:
                            self.finish(message, fire)
            return entry.ready
        finally:
            # (The socket stays in this thread's poll set: the next wait of the same
            # thread on the same link, the sync call's, watches it again at no cost;
            # any wait sets what it polls before it polls.)
            references.unregister([entry], fire)
            if mine:
                # Paused (or given back) before another thread may become the
                # reader: a pause after that would mark its reads unread.
                if loan is not None:
                    if loan.closed:
                        loan.release()
                    elif self.others():
                        loan.pause()
                        loan.reclaim()  # other answers due: the loop reads them
                    else:
                        loan.pause()
                        references.paused_reads.add(self)
                        if self.others():  # a call joined meanwhile
                            self.reclaim()
                with self._lock:
                    self._reader = None

    def reclaim(self) -> None:
        """The link's frames must be read now (any thread): take a side kept
        unread back (no-op while a thread reads it, or if not lent)."""
        self._references.paused_reads.discard(self)
        loan = self.loan
        if loan is not None:
            loan.reclaim()
