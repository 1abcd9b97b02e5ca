"""The queue of a worker process's main thread, which also reads the worker's links
itself while the worker is idle (``transport.ReadLoan``).

Why. A task worker's tasks run on its main thread, beside the Trio loop that keeps
its links. A task otherwise costs two hand-overs between the two threads: the kernel
wakes the loop, which reads and decodes the task (`Execute` from the node,
`LeasedTask` from a submitter holding a lease) and wakes the main thread through this
queue; the main thread runs it and wakes the loop, which writes the task's end.
Each wake-up waits for a core and then the GIL, and with the Trio scheduler's pass
around it costs more CPU than a small task's own work (see benchmarks/README.md,
"Where a task of a burst spends its CPU"). With the read sides lent, the kernel wakes
the main thread, which reads the task, runs it and writes its end (``_process.
WorkerProcess._finish_here``): the loop does not run at all for a lone task.

How. The main thread waits in ``poll`` on an eventfd (work put here by the loop, a
read side handed over or closed) and on the socket of every link whose read side it
holds. The loop lends it the node link once registered, and each submitter's link
when a task first comes on it (``offer``). The thread asks for the read sides
(``ReadLoan.want``) only while the worker is idle (``idle()``: nothing queued or
running, the main thread's executor free), since a task it read must start at once:
one at a time, in order, and a task queued behind a running one must be able to start
in another executor when the running one blocks in ``get``, which the worker's
queue does (and the loop starts it there). When a socket has input, ``ReadLoan.take_many`` keeps it only if it is whole
one-way frames, all of them tasks that ``accept`` takes: the worker registers them
under its lock (the first starts at once, the others queue behind it as if the loop
had read them), and says no if the worker stopped being idle meanwhile. Anything
else -- a partial frame, a cancel, a notice, a reply, the end of the stream -- goes
back to the loop's reader with every byte read, and the loop handles it as before.

While the thread runs something (a task it read, or work put here) it holds the
sides it has but reads none: it marks them busy (``ReadLoan.busy``), so the loop
takes them back if it stays busy ``transport.RECLAIM_AFTER`` seconds (a cancel, a
free, the node's end are then read in time), and at once when a reply or notice is
awaited (a request on the link, a ``get`` of the task: ``reclaim``). A side the loop
took back is asked for again at the thread's next idle wait.
"""

from __future__ import annotations

import collections
import functools
from collections.abc import Callable
from typing import Any

import transport

__all__ = ["MainInbox"]


class MainInbox:
    """The main thread's queue of ``(fn, args)`` (see the module docstring).

    ``accept(conn, messages)`` (set by the worker, main thread): whether the thread
    takes ``messages``, read off ``conn`` by itself in one read (all or none); the
    first is then run as ``run_taken(conn, message)``, the worker queued the others. ``idle()``: whether the worker is idle (the
    thread may ask for the read sides). Without them it is a plain queue.
    """

    def __init__(self) -> None:
        self._queue: collections.deque = collections.deque()
        self._poll = transport.ThreadPoll()
        #: (conn, loan) of every read side lent to this thread, in the order offered.
        self._loans: list[tuple[Any, transport.ReadLoan]] = []
        self.accept: Callable[[Any, Any], bool] | None = None
        self.run_taken: Callable[[Any, Any], None] | None = None
        self.idle: Callable[[], bool] = lambda: False
        self.taken = 0  # messages the thread read itself (statistics)

    # ---------------------------------------------------------------- any thread

    def put(self, item: tuple[Callable[..., Any], tuple]) -> None:
        self._queue.append(item)
        self._poll.wake()

    def reclaim(self) -> None:
        """Someone is about to wait for input on the links (the thread blocks in a
        ``get``): the loop takes back every side this thread holds while busy."""
        for _conn, loan in list(self._loans):
            loan.reclaim()

    # ------------------------------------------------------------------ core loop

    def offer(self, conn: Any) -> None:
        """Lend ``conn``'s read side to this thread (it asks for it while idle),
        unless lent already."""
        if self.accept is None or any(c is conn and not loan.closed for c, loan in self._loans):
            return
        loan = conn.lend_reads(self._poll.wake)
        if loan is not None:
            self._loans.append((conn, loan))

    # ------------------------------------------------------------ main thread

    def get(self) -> tuple[Callable[..., Any], tuple]:
        """The next thing to run: work put here, or a message read off a link."""
        queue = self._queue
        while True:
            if queue:
                self._busy()
                return queue.popleft()
            polled: dict[int, tuple[Any, transport.ReadLoan]] = {}
            idle = self.idle()
            closed = False
            for conn, loan in self._loans:
                if loan.closed:
                    closed = True
                elif idle:
                    if loan.want():
                        polled[loan.fileno()] = (conn, loan)
                else:
                    # Busy elsewhere (a task in another executor): whatever comes is
                    # the loop's to queue.
                    loan.busy()
                    loan.give_back(b"")
            if closed:
                self._drop_closed()
                continue
            self._poll.watch(polled)
            for fd in self._poll.sleep(functools.partial(self._has_work, idle, polled)):
                entry = polled.get(fd)
                if entry is None or queue or self.accept is None:
                    continue
                conn, loan = entry
                messages = loan.take_many(functools.partial(self.accept, conn))
                if messages is not transport.NOT_TAKEN:
                    self._busy()
                    self.taken += len(messages)
                    assert self.run_taken is not None
                    return self.run_taken, (conn, messages[0])

    def _has_work(self, idle: bool, polled: dict[int, Any]) -> bool:
        """Whether the thread must not sleep: work queued, a loan closed, or a side
        handed over (while idle) since the thread chose what to poll."""
        return bool(self._queue) or any(
            loan.closed or (idle and loan.held and loan.fileno() not in polled)
            for _conn, loan in self._loans)

    def _busy(self) -> None:
        """This thread has work: it asks for no side while it runs it, and the sides
        it holds are taken back if it runs long or a reply is awaited."""
        for _conn, loan in self._loans:
            loan.busy()

    def _drop_closed(self) -> None:
        kept = []
        for conn, loan in self._loans:
            if loan.closed:
                loan.release()
            else:
                kept.append((conn, loan))
        self._loans = kept
