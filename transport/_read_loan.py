"""Lending a connection's read side to one thread while that thread is idle.

Why. A process whose work runs in a thread beside its Trio loop (an actor's thread)
receives each message in two hops: the kernel wakes the loop, whose reader reads and
decodes the frame and hands the message to the thread through a queue, and then the
thread wakes. For a lone request on an idle link that is a whole wake-up and a
scheduler pass of the loop per message. A `ReadLoan` lets the waiting thread read the
socket itself while it has nothing else to do: the kernel wakes it directly, and the
loop is not involved at all.

Ownership. Exactly one party reads the socket at any time, and the hand-over is
explicit, under the loan's lock:

* The loop's reader owns the read side by default. When the borrower has said it
  wants it (`ReadLoan.want`, from the thread) and the reader is at a frame boundary
  with nothing buffered (no partial frame), the reader hands it over
  (``Connection._lend``): it marks the loan held, wakes the borrower through the
  ``wake`` callback given to `Connection.lend_reads`, and parks -- off the socket,
  not in ``wait_readable``, or every frame would wake the loop anyway.
* The borrower reads with `take`, which never blocks: it reads what the socket has
  and keeps it only if it is exactly one whole one-way frame without out-of-band
  buffers whose message the borrower accepts. Anything else -- two frames, a partial
  frame, a message the borrower does not handle (a cancel, say), end of stream, a
  read error, a message that does not decode -- is given back: every byte read goes
  to the loop's reader with the read side, and the reader handles them (and what
  follows) exactly as if it had read them itself. Nothing is lost or reordered: the
  bytes the thread gives back are the stream's next bytes.
* The borrower gives it back too when it stops borrowing (`release`: its actor
  stopped).
* The loop takes it back when the connection closes (`Connection._shutdown` calls
  `close`): the borrower is woken, sees `closed`, and stops. The borrower reads and
  polls a duplicate of the socket's descriptor, owned by the loan, so the loop may
  close the connection's socket at any time without a reused descriptor under a
  thread's ``poll``; the duplicate is closed by whichever side lets go last.

* Whoever is about to wait for the link's input (a request from the loop or from a
  thread, a borrower's own thread about to block in a ``get`` that the link's
  notices end) takes it back at once from a busy borrower (`reclaim`): a reply
  must not wait for the borrower's work to end, or for the watch below.
* The loop also takes it back from a borrower that has been busy for
  `RECLAIM_AFTER` seconds with a message it kept (running the call it read): while
  the thread is busy, frames wait in the kernel, and a cancel of a call queued
  behind the running one, or the peer's close, must not wait for the running call
  to end. A watch task in the loop (``Connection._watch_loan``) checks every
  `RECLAIM_AFTER` seconds while the borrower keeps taking messages, and ends after a
  few checks that found it idle (an idle actor costs no timer); the borrower starts
  it again, through the loop's token, when it keeps a message and no watch runs.
  The reclaim happens only between the borrower's reads (``busy_since`` is set under
  the lock when it keeps a message and cleared when it is idle again, `want`), so it
  never takes the socket from under a ``recv``.

A caller's borrower. A thread that waits for its own reply (a driver's ``get`` of an
actor call's result, ``core_worker._reply_reads``) reads the side only while it
waits, and keeps it between waits without reading it (`pause`: the next call's reply
is read by the same thread, with no hand-over through the loop). ``busy_since`` then
means the same as for an actor's thread running a call: set while the borrower does
not read. The loop's watch takes a side kept unread for `RECLAIM_AFTER` back, and
anyone who needs the link's frames read now (another waiter, a burst of calls) takes
it back at once with `reclaim`. Whatever the reason, ``busy_since`` set means no
``recv`` or ``poll`` of the borrower can be under way, so `close` also closes the
descriptor of a side held that way at once (nobody will poll it again).
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import trio

from . import _wire
from ._recv_buffer import KEEP, RecvBuffer
from ._wire import HEADER, HEADER_SIZE, ONEWAY

__all__ = ["NOT_TAKEN", "RECLAIM_AFTER", "ReadLoan"]

#: What `ReadLoan.take` returns when it kept nothing (see there).
NOT_TAKEN: Any = object()

#: The loop takes the read side back from a borrower busy this long (seconds) with
#: a message it kept; the period of the loop's watch (see the module docstring).
#:
#: The watch is a fallback (a cancel behind a long call, a ``wait(timeout=0)`` poller
#: beside a paused caller): whoever waits for the link's input takes the side back
#: at once (`reclaim`). Its price is paid on the fast path: while a borrower keeps
#: taking messages -- a stream of sync calls, in the caller and in the actor -- the
#: watch wakes its process's loop every period, takes the GIL from the borrowing
#: thread, and on a loaded machine may be preempted holding it. At 20 ms (50
#: wake-ups a second in each process) that loop thread cost 35-140 us of CPU per
#: sync call in each process at load 33-39, against 5-35 us at 100 ms (load 34-57),
#: and its wake-ups 0.2-0.55 per call against 0.03-0.09 (benchmarks/README.md, "Sync
#: actor calls under load"). A fallback reclaim now comes within 0.1-0.2 s instead
#: of 20-40 ms.
RECLAIM_AFTER = 0.1

_unpack_header = HEADER.unpack_from


class ReadLoan:
    """The read side of one connection, lent to one thread while it is idle; see the
    module docstring. Made by `transport.Connection.lend_reads`."""

    def __init__(self, conn: Any, sock: socket.socket, token: trio.lowlevel.TrioToken,
                 wake: Callable[[], None], buffer_size: int) -> None:
        self._conn = conn
        self._token = token
        self._wake = wake
        self._lock = threading.Lock()
        # A descriptor of its own (see the module docstring), non-blocking like the
        # connection's socket.
        self._sock: socket.socket | None = sock.dup()
        self._sock.setblocking(False)
        # Resident only where a read wrote, handed back after a large read
        # (``_recv_buffer``); unmapped when the loan closes.
        self._buf = RecvBuffer(buffer_size)
        self._view = self._buf.view
        self.wanted = False  # the borrower asked for the side; the reader hands it over
        self.held = False  # the borrower holds it; the reader is parked
        self.closed = False  # the connection closed, or the borrower let go for good
        self.taken = 0  # messages the borrower kept (statistics)
        self._n = 0  # bytes of the borrower's last read
        self.given_back = 0  # times it gave the side back with bytes (statistics)
        self.reclaimed = 0  # times the loop took it back from a busy borrower
        # When the borrower kept its last message; None while it is idle (``want``).
        self.busy_since: float | None = None
        self.watched = False  # the loop's watch task runs

    # ---------------------------------------------------------------- borrower

    def fileno(self) -> int:
        """The descriptor to poll for input while `held` (-1 once closed)."""
        sock = self._sock
        return sock.fileno() if sock is not None else -1

    def want(self) -> bool:
        """The borrower is idle: ask for the read side. ``True``: it holds it now
        (poll `fileno`, then `take`); ``False``: not yet -- the ``wake`` callback runs
        once the loop's reader has handed it over (or the loan closed)."""
        with self._lock:
            self.busy_since = None
            if self.held:
                return True
            if self.closed or self.wanted:
                return False
            self.wanted = True
        try:
            self._token.run_sync_soon(self._conn._offer_reads)
        except trio.RunFinishedError:
            pass
        return False

    def take(self, accept: Callable[[Any], bool]) -> Any:
        """Read what the socket has (never blocks; the borrower holds the side).

        Returns the message if the read got exactly one whole one-way frame, without
        out-of-band buffers, whose decoded message ``accept`` takes; the borrower
        handles it. Returns `NOT_TAKEN` if there was nothing to read (the side is
        still held), or after giving the side back with every byte read (anything
        else; see the module docstring; `held` is then false)."""
        messages = self._read(many=False)
        if messages is None:
            return NOT_TAKEN
        if accept(messages[0]):
            kept = self._kept(messages)[0]
            self._read_done()
            return kept
        self.give_back(bytes(self._view[:self._n]))
        self._read_done()
        return NOT_TAKEN

    def take_many(self, accept: Callable[[list[Any]], bool]) -> Any:
        """`take`, but the read may hold several whole one-way frames: ``accept``
        gets the list of their messages, in order, and takes all of them or none.
        Returns the list, or `NOT_TAKEN` as `take` does."""
        messages = self._read(many=True)
        if messages is None:
            return NOT_TAKEN
        if accept(messages):
            kept = self._kept(messages)
            self._read_done()
            return kept
        self.give_back(bytes(self._view[:self._n]))
        self._read_done()
        return NOT_TAKEN

    def _read(self, many: bool) -> list[Any] | None:
        """Read the socket: the messages of the whole one-way frames it had (one
        only unless ``many``), or ``None``: nothing read, or given back already."""
        sock = self._sock
        if sock is None or not self.held:
            return None
        view = self._view
        try:
            n = sock.recv_into(view)
        except BlockingIOError:
            return None
        except OSError:  # the loop's reader meets the error itself
            self.give_back(b"")
            return None
        self._n = n
        messages = []
        pos = 0
        while n - pos >= HEADER_SIZE:
            body_len, kind, nbufs, rid = _unpack_header(view, pos)
            end = pos + HEADER_SIZE + body_len
            if kind != ONEWAY or nbufs != 0 or end > n:
                break
            try:
                messages.append(_wire.decode_body(view[pos + HEADER_SIZE:end], 0, rid))
            except Exception:  # the loop's reader reports it
                break
            pos = end
            if not many:
                break
        if pos == n and messages:
            return messages
        self.give_back(bytes(view[:n]))
        self._read_done()
        return None

    def _read_done(self) -> None:
        """The bytes of the last read are decoded or copied: a large read's pages
        go back to the kernel (``_recv_buffer``)."""
        if self._n > KEEP:
            self._buf.release(self._n)

    @property
    def buffer_releases(self) -> int:
        """Times the borrower's buffer gave pages back (statistics)."""
        return self._buf.releases

    def _kept(self, messages: list[Any]) -> list[Any]:
        """The borrower kept ``messages`` (the whole read)."""
        self.taken += len(messages)
        self._conn._count_taken(self._n, len(messages))
        self.busy()
        return messages

    def busy(self) -> None:
        """The borrower is busy (it kept a message, or has other work to do): it no
        longer asks for the side (`want`), and if it holds it, the loop's watch
        takes it back if it stays busy `RECLAIM_AFTER` seconds, and whoever waits
        for this link's input meanwhile may take it back at once (`reclaim`)."""
        with self._lock:
            self.wanted = False
            if not self.held or self.closed:
                return
            self.busy_since = time.monotonic()
            watch = not self.watched
            self.watched = True
        if watch:
            try:
                self._token.run_sync_soon(self._conn._start_watch, self)
            except trio.RunFinishedError:
                pass

    def give_back(self, data: bytes = b"") -> None:
        """Hand the read side back to the loop with ``data``, the bytes read from the
        socket and not handled (the stream's next bytes). No-op unless held."""
        with self._lock:
            if not self.held:
                return
            self.held = False
            if data:
                self.given_back += 1
            if self.closed:
                self._close_sock()
                return
        try:
            self._token.run_sync_soon(self._conn._reads_returned, data)
        except trio.RunFinishedError:
            pass

    def pause(self) -> None:
        """(A caller's borrower.) Stop reading for now and keep the side if held:
        marked unread, so that the loop's watch, or `reclaim`, may take it back; a
        want not handed over yet is withdrawn. (The same step as `busy`.)"""
        self.busy()

    def reclaim(self) -> bool:
        """Take the side back now from a borrower that holds it without reading it
        (``busy_since`` set: busy, or paused), from any thread -- someone is about to
        wait for this link's input, which such a borrower would leave in the kernel
        until the watch took the side back. The loop's reader resumes. ``False``: not
        lent, closed, or held by an idle borrower, which polls it and gives back
        whatever it does not handle. (A closed side is never held with
        ``busy_since`` set: `close` takes it back.)"""
        if not self.reclaim_if_busy(0.0):
            return False
        try:
            self._token.run_sync_soon(self._conn._reads_returned, b"")
        except trio.RunFinishedError:
            pass
        return True

    def release(self) -> None:
        """The borrower lets go for good (its work ended): the side goes back to the
        loop if held, and the loan closes."""
        self.give_back(b"")
        with self._lock:
            self.closed = True
            self.wanted = False
            self._close_sock()

    # -------------------------------------------------------------------- loop

    def hand_over(self) -> bool:
        """The loop's reader lends the side (it then parks): ``False`` if the borrower
        does not want it any more, or the loan closed."""
        with self._lock:
            if self.closed or not self.wanted:
                return False
            self.wanted = False
            self.held = True
        self._wake()
        return True

    def reclaim_if_busy(self, after: float = RECLAIM_AFTER) -> bool | None:
        """(The loop's watch, or `reclaim`.) Take the side back if the borrower has
        been busy for ``after`` seconds: ``True``, the reader must resume (the
        caller makes it). ``False``: it is busy, not for long yet; ``None``: it is
        idle, or the side is not lent."""
        with self._lock:
            busy_since = self.busy_since
            if not self.held or busy_since is None:
                return None
            if time.monotonic() - busy_since < after:
                return False
            self.held = False
            self.busy_since = None
            self.reclaimed += 1
            return True

    def stop_watch(self, only_if_idle: bool = False) -> bool:
        """(The loop's watch, ending.) With ``only_if_idle``, only if the borrower
        is idle, in the same locked step (a message it keeps meanwhile starts a new
        watch); ``True``: stopped."""
        with self._lock:
            if only_if_idle and self.busy_since is not None:
                return False
            self.watched = False
            return True

    def close(self) -> None:
        """The connection closed: the borrower is woken and stops reading (it sees
        `closed`); the descriptor closes once nobody polls it."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            self.wanted = False
            held = self.held
            if held and self.busy_since is not None:
                # Held but not read (module docstring): nobody polls it any more.
                self.held = False
            if not self.held:
                self._close_sock()
        if held:
            self._wake()

    def _close_sock(self) -> None:
        """(lock held)"""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "held" if self.held else (
            "wanted" if self.wanted else "idle")
        return f"<ReadLoan of {self._conn!r}: {state}>"
