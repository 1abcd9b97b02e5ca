"""What threads beside a connection's Trio loop do on it without hopping into the
loop: send one-way messages, make requests and wait for their replies, and read
the link while it is idle (the three design comments below, and ``_read_loan``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import outcome
import trio

from . import _wire, faults
from ._connection_core import RECV_CHUNK, ConnectionCore
from ._errors import ConnectionLost, ProtocolError, RequestTimeout
from ._read_loan import RECLAIM_AFTER, ReadLoan
from ._reply import ThreadWaiter
from ._wire import ONEWAY, REQUEST

__all__ = ["ThreadSide"]

_reschedule = trio.lowlevel.reschedule
_encode_frame = _wire.encode_frame


class ThreadSide(ConnectionCore):
    """A connection's sends, requests and reads from threads other than its loop's
    (see the module docstring); `Connection` is the class to use.
    """

    # Sending from another thread. A process whose user code runs in threads beside
    # the loop (a driver's main thread, a worker's executors) would otherwise wake
    # the loop for every message, a GIL hand-off and a scheduler pass, as long as a
    # lone message's whole trip. So when the link is idle -- the writer parked,
    # nothing queued, no fault injected, a plain socket -- the calling thread writes
    # the frame itself. The lock makes that write exclusive with the loop's own
    # writes to the socket (`_push`'s direct write; the writer writes only after
    # `_push` woke it, and never while the thread path sees it parked) and with
    # `_shutdown` closing the socket (whose descriptor could otherwise be reused
    # under the write). The thread never blocks: it takes the lock only if free,
    # and a partial write leaves its remainder at the head of the queue for the
    # writer, woken through the loop's token; everything sent after it queues
    # behind. When it cannot send, it says so and the caller takes the loop's way.

    def send_from_thread(self, message: Any) -> bool:
        """Send a one-way ``message`` from a thread other than the loop's, if the link
        is idle (see the comment above); ``False``: not sent, send it from the loop.

        Raises `FrameTooLarge` if the peer would refuse the frame; pickling errors
        propagate. Never blocks.
        """
        if self._closed or not self._plain or self._token is None:
            return False
        chunks, size = _encode_frame(ONEWAY, 0, message)
        if size > self._max_send:
            self._check_size(size)
        return self._write_from_thread(chunks, size)

    def _write_from_thread(self, chunks: list[bytes | memoryview], size: int) -> bool:
        """Write an encoded frame from a thread outside the loop if the link is idle
        (the comment above `send_from_thread`); ``False``: nothing written."""
        if len(chunks) != 1 or faults._active or self._faults.holding() or not self._plain:
            return False
        if not self._write_lock.acquire(blocking=False):
            return False
        try:
            if self._closed or self._outq or self._writer_waiting is None:
                return False
            data = chunks[0]
            try:
                sent = self._sock.send(data)  # type: ignore[union-attr]
            except OSError:  # full, or a dead link the loop will find
                return False
            self._writes += 1
            self._bytes_sent += sent
            self._from_threads += 1
            if sent == len(data):
                self._frames_sent += 1
                return True
            self._outq.append(memoryview(data)[sent:])
            self._queued_bytes += size - sent
            self._queued_frames += 1
        finally:
            self._write_lock.release()
        try:
            self._token.run_sync_soon(self._wake_writer)  # type: ignore[union-attr]
        except trio.RunFinishedError:  # the loop is gone: so is the link
            pass
        return True

    # Reading from another thread: see `_read_loan` for the design (who owns the
    # socket's read side when, and how it passes between the loop and one thread).

    def lend_reads(self, wake: Callable[[], None]) -> ReadLoan | None:
        """Offer this connection's read side to one thread, to read itself while it
        is idle (see `ReadLoan`); ``wake()`` is called (from the loop's thread) when
        the side has been handed over, or the loan closed. Call in the loop.
        ``None``: not lendable (TLS, closed, not running, or lent already)."""
        if (self._closed or not self._plain or self._token is None
                or (self._loan is not None and not self._loan.closed)):
            return None
        loan = ReadLoan(self, self._sock, self._token, wake,  # type: ignore[arg-type]
                        RECV_CHUNK)
        self._loan = loan
        return loan

    @property
    def reads_lent(self) -> bool:
        """Whether a thread holds the read side now (`lend_reads`)."""
        loan = self._loan
        return loan is not None and loan.held

    def _offer_reads(self) -> None:
        """A borrower wants the read side (loop): stop the reader's wait, so that it
        hands the side over at its next frame boundary."""
        scope = self._wait_scope
        if scope is not None:
            scope.cancel()

    def _reads_returned(self, data: bytes) -> None:
        """The borrower gave the read side back with ``data`` (loop)."""
        task = self._lent_reader
        if task is not None:
            self._lent_reader = None
            _reschedule(task, outcome.Value(data))

    def _start_watch(self, loan: ReadLoan) -> None:
        """The borrower kept a message and no watch runs (loop): start one."""
        if not self._closed and loan is self._loan and self._nursery is not None:
            try:
                self._nursery.start_soon(self._watch_loan, loan)
                return
            except RuntimeError:  # the connection is closing
                pass
        loan.stop_watch()

    async def _watch_loan(self, loan: ReadLoan) -> None:
        """Take the read side back from a borrower busy too long (see `_read_loan`);
        end after a few checks that found it idle."""
        idle = 0
        try:
            while not loan.closed:
                await trio.sleep(RECLAIM_AFTER)
                state = loan.reclaim_if_busy()
                if state:
                    self._reads_returned(b"")
                    break
                idle = idle + 1 if state is None else 0
                if idle >= 5 and loan.stop_watch(only_if_idle=True):
                    return
        finally:
            loan.stop_watch()

    def _count_taken(self, nbytes: int, frames: int = 1) -> None:
        """A borrower kept ``frames`` frames of ``nbytes`` in all (its thread; the
        reader is parked)."""
        self._frames_received += frames
        self._bytes_received += nbytes
        self._taken_by_thread += frames

    async def _wait_or_lend(self, sock: Any, wait_readable: Any, view: memoryview) -> int:
        """Wait for input, or lend the read side while the borrower wants it (the
        reader's buffer is empty: no partial frame). Returns how many bytes the
        borrower gave back, now at the start of ``view`` (0: read the socket)."""
        loan = self._loan
        assert loan is not None
        if loan.closed:
            self._loan = None
            await wait_readable(sock)
            return 0
        if not loan.wanted or faults._active:
            with trio.CancelScope() as scope:
                self._wait_scope = scope
                try:
                    await wait_readable(sock)
                finally:
                    self._wait_scope = None
            if not scope.cancelled_caught:
                return 0
        if faults._active or not loan.hand_over():
            return 0
        self._lent_reader = trio.lowlevel.current_task()

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._lent_reader = None
            loan.close()
            return trio.lowlevel.Abort.SUCCEEDED

        data = await trio.lowlevel.wait_task_rescheduled(abort)
        n = len(data)
        if n:
            view[:n] = data
        return n

    # Requests from another thread. A thread that needs an answer (a driver's `put`
    # asking the store where to copy, then sealing) would otherwise hop into the
    # loop for every request (`trio.from_thread.run`: a wake-up of the loop thread,
    # a system task, a GIL hand-off, 0.3 ms on this 2-core machine under load, as
    # long as the store's own work) and hop out again with the answer. Here the
    # thread registers a waiter under a fresh request id, writes the frame itself
    # when the link is idle (`_write_from_thread`; else the loop queues it, in the
    # thread's order: the thread waits until it is queued), and blocks on the
    # waiter's lock. The reader, which owns every read of the socket, finds the
    # waiter by the reply's id, decodes the reply on the loop (its bytes live in
    # the reused buffer) and releases the lock: one wake-up of the calling thread,
    # none of a Trio task. `_shutdown` fails the waiters as it fails the loop's
    # requests. The waiter is registered before the frame leaves, and the thread
    # looks at `_closed` after registering, which `_shutdown` sets before it takes
    # the waiters: a request is either failed by `_shutdown` or sees the link
    # closed, never left waiting.

    def request_from_thread(self, message: Any, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """`request` from a thread other than the loop's, waiting in that thread (see
        the comment above); returns the reply value.

        Raises `RequestTimeout` after ``timeout`` seconds (``None``: wait until the
        reply or the connection's end), `RemoteError`, `ConnectionLost`, or
        `FrameTooLarge` (nothing sent); pickling errors of ``message`` propagate.
        `RuntimeError` from the loop's own thread (it would wait for itself).
        """
        if threading.get_ident() == self._thread_id:
            raise RuntimeError(
                f"request_from_thread() on {self!r} from the thread of its Trio run would "
                f"deadlock (the reply is read by that thread): use `await request()`"
            )
        waiter = ThreadWaiter()
        rid = self._send_request_from_thread(message, waiter)
        assert waiter.lock is not None
        if not waiter.lock.acquire(timeout=-1 if timeout is None else max(timeout, 0.0)):
            if self._thread_pending.pop(rid, None) is not None:
                raise RequestTimeout(
                    f"no reply from {self.peer_name!r} ({self.peer_address}) to request {rid} "
                    f"within {timeout}s"
                )
            waiter.lock.acquire()  # the reader took it this instant: it answers now
        assert waiter.outcome is not None
        return waiter.outcome.unwrap()

    def request_soon_from_thread(
        self, message: Any, on_reply: Callable[[outcome.Outcome[Any]], object]
    ) -> None:
        """Send a request from a thread other than the loop's without waiting for the
        answer: ``on_reply`` runs later on the loop with its outcome (the reply's
        value, or `RemoteError`, `ConnectionLost`, `ProtocolError`), exactly once.

        Returns once the frame is written or queued, in this thread's order with
        its other sends (see the comment above `request_from_thread`). Raises
        (nothing sent, ``on_reply`` never called) `ConnectionLost` if the link is
        closed, `FrameTooLarge`, pickling errors; `RuntimeError` from the loop's
        own thread (use `request`).
        """
        if threading.get_ident() == self._thread_id:
            raise RuntimeError(f"request_soon_from_thread() on {self!r} from the thread "
                               f"of its Trio run: use `await request()`")
        self._send_request_from_thread(message, ThreadWaiter(on_reply))

    def _send_request_from_thread(self, message: Any, waiter: ThreadWaiter) -> int:
        """Register ``waiter`` under a new request id and send the request (from the
        calling thread if the link is idle, else queued by the loop); the id."""
        token = self._token
        self._check_open()
        if token is None:
            raise RuntimeError(f"{self!r} is not running yet: no loop reads its replies")
        rid = next(self._rids)
        chunks, size = _encode_frame(REQUEST, rid, message)
        self._check_size(size)
        self._thread_pending[rid] = waiter
        if self._closed:  # `_shutdown` may have taken the waiters before ours went in
            self._thread_pending.pop(rid, None)
            self._check_open()
        loan = self._loan
        if loan is not None:  # its reply must not wait for a busy borrower
            loan.reclaim()
        if not self._write_from_thread(chunks, size):
            try:
                trio.from_thread.run_sync(self._enqueue_for_thread, chunks, size, trio_token=token)
            except trio.RunFinishedError:
                self._thread_pending.pop(rid, None)
                raise ConnectionLost(
                    f"connection to {self.peer_name!r} ({self.peer_address}) is closed: its "
                    f"Trio run has finished") from None
        return rid

    def _enqueue_for_thread(self, chunks: list[bytes | memoryview], size: int) -> None:
        """Queue a thread's request frame (on the loop); a link closed meanwhile has
        failed its waiter already."""
        if not self._closed:
            self._enqueue(REQUEST, chunks, size)

    def _on_thread_reply(self, kind: int, rid: int, body: memoryview, nbufs: int) -> None:
        """Hand a reply to the thread waiting for it (`request_from_thread`), if any."""
        waiter = self._thread_pending.pop(rid, None)
        if waiter is None:
            return
        try:
            result = self._reply_outcome(kind, rid, body, nbufs)
        except ProtocolError:
            self._thread_pending[rid] = waiter  # failed with the others as the link closes
            raise
        waiter.set(result)
