"""One authenticated connection: framing, request/response, one-way messages.

Design
------
A `Connection` wraps a connected, already-authenticated, non-blocking stdlib socket
and runs two tasks, both inside `Connection.run` (one nursery per connection):

* the **reader** receives into a reused 256 KiB buffer and handles every complete
  frame found there before the next ``recv`` (batch decode). Replies wake their
  waiting `request` directly (`trio.lowlevel.reschedule`, no Event, no queue);
  requests and one-way messages go to the handler *inline, in arrival order*. A frame
  that carries out-of-band buffers, or is larger than the buffer, is read into its
  own exact-size bytearray straight from the socket, and the message gets zero-copy
  memoryview slices of it (the reused buffer is never handed out).
* the **writer** drains the outgoing queue. Senders pickle in their own task (so
  pickling errors surface to them) and append; everything queued when the writer
  next runs goes out in one ``send``/``sendmsg`` (small frames joined, large buffers
  as their own iovec entries). Under load many frames thus coalesce into one write.
  On an idle link (writer parked, queue empty) the first frame of a scheduler tick is
  written at once by its sender instead, which saves the hop to the writer task on
  every lone request and reply; the rest of that tick's frames queue behind it.

A connection belongs to the Trio run that created it and is not thread-safe.
Out-of-band buffers are written from the sender's memory after `send`/`request`
returns (or while it waits): do not mutate them until the peer has them.

We use raw sockets with `trio.lowlevel.wait_readable`/`wait_writable` rather than a
`trio.SocketStream`, whose every operation passes through the scheduler even when
it completes at once: here a ``recv_into`` into our own buffer or a ``send`` yields
only when the kernel says EAGAIN. (With the idle-link direct write this took the
cross-process round trip from 107 to 57 µs; see benchmarks/README.md.)
Fairness is kept by explicit checkpoints (the reader yields after each batch it did
not have to wait for; the writer parks whenever the queue is empty).

Where the tasks run (pick one per connection):

* ``async with open_connection(...) as conn`` — the block owns the tasks; leaving it
  closes the connection. The usual choice for a long-lived link inside a service.
* ``conn = await nursery.start(Client(...).run)`` — a child-protocol service: `run`
  returns when the connection is closed locally and raises `ConnectionLost` when the
  link dies, so a supervisor sees the loss as a crash.
* ``conn = await connect(...)`` — the tasks run in a Trio *system task* (they never
  raise; errors become `ConnectionLost` on the connection); close it with
  ``await conn.aclose()`` or ``async with conn``. Handy for scripts and short links.
* server side: `Server` runs each accepted connection in its own nursery.

TLS: on a TCP link with TLS (``_tls``) the socket is a `TlsSocket`, which has the
same ``recv_into`` shape over a `trio.SSLStream`; its waits and writes are its own
methods (picked once per task, so the plain path pays nothing), and senders never
write directly (every frame goes through the writer, the only task that may call the
stream's ``send_all``).

Closing: when the link dies (EOF, reset, malformed or oversized frame, write error),
every pending request is failed at once with its own `ConnectionLost` naming the
peer, the socket is closed, and later use raises `ConnectionLost`. `aclose` first lets
the writer flush what is queued (bounded by ``flush_timeout``), then does the same.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import outcome
import trio

from . import _wire, faults
from ._errors import (
    ConnectionLost,
    FrameTooLarge,
    ProtocolError,
    RemoteError,
    RequestTimeout,
)
from ._link_faults import LinkFaults
from ._read_loan import RECLAIM_AFTER, ReadLoan
from ._reply import ConnectionStatistics, Reply
from ._sockio import write_chunks
from ._tls import TlsSocket
from ._wire import HEADER, HEADER_SIZE, ONEWAY, REPLY_ERR, REPLY_OK, REQUEST

__all__ = ["DEFAULT_MAX_FRAME_SIZE", "Connection", "ConnectionStatistics", "Handler", "Reply"]

logger = logging.getLogger("transport")

DEFAULT_MAX_FRAME_SIZE = 512 * 1024 * 1024
_RECV_CHUNK = 256 * 1024
# `await send()` / `await request()` wait while more than this many bytes are queued.
_HIGH_WATER = 16 * 1024 * 1024
# `send_nowait` refuses (trio.WouldBlock) while more than this is queued.
_NOWAIT_LIMIT = 4 * _HIGH_WATER
# `await send()` lets the writer run once this much is queued.
_YIELD_FRAMES = 64
_YIELD_BYTES = 256 * 1024

Handler = Callable[["Connection", Any, "Reply | None"], Awaitable[None]]

_unpack_header = HEADER.unpack_from
_reschedule = trio.lowlevel.reschedule
_encode_frame = _wire.encode_frame


class Connection:
    """An authenticated, symmetric message connection. See the module docstring.

    Not constructed directly: use `connect`, `open_connection`, `Client` or `Server`.
    """

    def __init__(
        self,
        sock: socket.socket | TlsSocket,
        *,
        name: str,
        peer_name: str,
        peer_address: str,
        peer_max_frame_size: int,
        max_frame_size: int,
        handler: Handler | None,
    ) -> None:
        self._sock = sock
        # A plain socket: senders may write directly; waits are Trio's.
        self._plain = type(sock) is socket.socket
        self.name = name
        self.peer_name = peer_name
        self.peer_address = peer_address
        self._peer_max = peer_max_frame_size
        # the largest frame (header included) the peer accepts
        self._max_send = min(peer_max_frame_size, _wire.MAX_BODY) + HEADER_SIZE
        self._max_frame = max_frame_size
        self._handler = handler
        self._closed = False
        self._close_reason = ""
        self._closed_locally = False
        # Request ids come from one counter for the loop's requests and threads'
        # (`request_from_thread`): ``next`` of an `itertools.count` is atomic.
        self._rids = itertools.count(1)
        self._pending: dict[int, trio.lowlevel.Task] = {}
        self._thread_pending: dict[int, _ThreadWaiter] = {}
        self._outq: list[bytes | memoryview] = []
        self._queued_bytes = 0
        self._queued_frames = 0
        self._writer_waiting: trio.lowlevel.Task | None = None
        self._reader_task: trio.lowlevel.Task | None = None
        self._thread_id = threading.get_ident()
        self._orphans: list[int] = []  # ids of requests whose Reply was dropped unanswered
        self._direct_recent = False
        self._drained = trio.lowlevel.ParkingLot()
        self._cancel_scope: trio.CancelScope | None = None
        self._nursery: trio.Nursery | None = None
        self._started = False
        self._finished = trio.Event()
        self._frames_sent = 0
        self._frames_received = 0
        self._bytes_sent = 0
        self._bytes_received = 0
        self._writes = 0
        self._faults = LinkFaults(self, name, peer_name)
        # Writes to the socket from a thread outside the loop (`send_from_thread`)
        # and the loop's own direct writes and closing take this lock; see there.
        self._write_lock = threading.Lock()
        self._token: trio.lowlevel.TrioToken | None = None
        self._from_threads = 0
        # The read side lent to a thread (`lend_reads`), the reader's cancellable
        # wait while a loan exists, and the reader parked while the side is lent.
        self._loan: ReadLoan | None = None
        self._wait_scope: trio.CancelScope | None = None
        self._lent_reader: trio.lowlevel.Task | None = None
        self._taken_by_thread = 0

    # ------------------------------------------------------------------ public API

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def tls(self) -> str | None:
        """The TLS version and cipher of this link (e.g. ``"TLSv1.3 TLS_AES_256_GCM_SHA384"``),
        or ``None`` for a plaintext one."""
        sock = self._sock
        return sock.describe() if isinstance(sock, TlsSocket) else None

    @property
    def peer_max_frame_size(self) -> int:
        """The largest frame body the peer accepts (announced in the handshake): a
        message that pickles to more raises `FrameTooLarge` at the sender."""
        return min(self._peer_max, _wire.MAX_BODY)

    def __repr__(self) -> str:
        state = f"closed: {self._close_reason}" if self._closed else "open"
        return f"<Connection {self.name!r} <-> {self.peer_name!r} ({self.peer_address}, {state})>"

    async def request(self, message: Any, timeout: float | None = None) -> Any:  # noqa: ASYNC109 (the contract)
        """Send ``message`` as a request and return the reply value.

        Raises `RequestTimeout` after ``timeout`` seconds (``None``: wait until the
        reply or the connection's end), `RemoteError` if the remote handler failed,
        `ConnectionLost`, or `FrameTooLarge` (nothing sent). Pickling errors of
        ``message`` propagate unchanged.
        """
        self._check_open()
        rid = next(self._rids)
        chunks, size = _wire.encode_frame(REQUEST, rid, message)
        self._check_size(size)
        if timeout is None:
            return await self._request(rid, chunks, size)
        with trio.move_on_after(timeout):
            return await self._request(rid, chunks, size)
        raise RequestTimeout(
            f"no reply from {self.peer_name!r} ({self.peer_address}) to request {rid} "
            f"within {timeout}s"
        )

    async def _request(self, rid: int, chunks: list[bytes | memoryview], size: int) -> Any:
        if self._queued_bytes > _HIGH_WATER:
            await self._wait_drained()
        self._check_open()
        task = trio.lowlevel.current_task()
        if task is self._reader_task:
            raise RuntimeError(
                f"request() on {self!r} from inside its own handler would deadlock (the "
                f"reply is read by the task running the handler): start a task for it"
            )

        def abort(_: Any) -> trio.lowlevel.Abort:
            self._pending.pop(rid, None)
            return trio.lowlevel.Abort.SUCCEEDED

        # Queued before this task is registered as waiting: a reply cannot come
        # before it parks (the reader needs a schedule point), and a link that the
        # enqueue closes (an injected reset) must fail this request here, not
        # reschedule a task that is not parked.
        self._enqueue(REQUEST, chunks, size)
        self._check_open()
        self._pending[rid] = task
        if self._loan is not None:  # its reply must not wait for a busy borrower
            self._loan.reclaim()
        return await trio.lowlevel.wait_task_rescheduled(abort)

    async def send(self, message: Any) -> None:
        """Send a one-way message.

        A cancellation point. It yields to the scheduler only once frames have piled
        up (so a loop of sends coalesces into large writes) and, before queueing,
        waits while more than 16 MiB are queued (backpressure; if cancelled there,
        the message is not sent).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._queued_bytes > _HIGH_WATER:
            await self._wait_drained()  # cancelled here: nothing was sent
        if self._closed:
            self._check_open()
        chunks, size = _encode_frame(ONEWAY, 0, message)
        if size > self._max_send:
            self._check_size(size)
        if faults._active or self._faults.holding():
            self._enqueue(ONEWAY, chunks, size)
        else:
            self._push(chunks, size)
        if self._queued_frames >= _YIELD_FRAMES or self._queued_bytes >= _YIELD_BYTES:
            await trio.lowlevel.cancel_shielded_checkpoint()

    def send_nowait(self, message: Any) -> None:
        """Queue a one-way message without waiting (synchronous).

        Must be called from a task of the Trio run that owns the connection; the
        message goes out when the writer next runs (or at once on an idle link).
        Raises `trio.WouldBlock` while more than 64 MiB are queued (the peer is not
        reading: wait with ``await send()`` instead), `ConnectionLost` if the
        connection is closed, `FrameTooLarge` if the peer would refuse the frame;
        pickling errors propagate.
        """
        self._check_open()
        if self._queued_bytes > _NOWAIT_LIMIT:
            raise trio.WouldBlock(
                f"{self._queued_bytes} bytes already queued to {self.peer_name!r}; "
                f"use `await send()` to wait for the peer to catch up"
            )
        chunks, size = _encode_frame(ONEWAY, 0, message)
        if size > self._max_send:
            self._check_size(size)
        if faults._active or self._faults.holding():
            self._enqueue(ONEWAY, chunks, size)
        else:
            self._push(chunks, size)

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
                        _RECV_CHUNK)
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
        waiter = _ThreadWaiter()
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
        self._send_request_from_thread(message, _ThreadWaiter(on_reply))

    def _send_request_from_thread(self, message: Any, waiter: _ThreadWaiter) -> int:
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

    def _wake_writer(self) -> None:
        task = self._writer_waiting
        if task is not None and self._outq:
            self._writer_waiting = None
            _reschedule(task)

    @property
    def unsent(self) -> int:
        """Frames accepted by `send`/`send_nowait` and not yet written to the socket
        (queued, or held back by an injected delay)."""
        return self._queued_frames + self._faults.held()

    async def drain(self) -> None:
        """Wait until every frame sent so far has been written to the socket.

        Written means the kernel has it: the peer reads it even if this process is
        killed the next instant. That is what a sender needs before it tells a
        third party the message went out (a worker telling its node that it pushed
        a task's results to their owner). Frames sent while this waits are not
        waited for. Raises `ConnectionLost` if the link closed first: those frames
        never left. A cancellation point.
        """
        target = self._frames_sent + self.unsent
        while self._frames_sent < target:
            self._check_open()  # closed first: those frames never left
            await self._drained.park()

    async def aclose(self, flush_timeout: float = 5.0) -> None:
        """Flush queued frames (at most ``flush_timeout`` seconds), then close. Idempotent."""
        if self._closed:
            return
        if self._started and self._queued_frames:
            with trio.move_on_after(flush_timeout):
                while self._queued_frames and not self._closed:
                    await self._drained.park()
        self._shutdown("closed locally", locally=True)
        if self._started and trio.lowlevel.current_task() not in self._own_tasks():
            with trio.move_on_after(flush_timeout):
                await self._finished.wait()
        await trio.lowlevel.checkpoint()

    async def wait_closed(self) -> None:
        """Return once the connection is closed: lost, closed by the peer or by us.

        For watchers that act on a lost link at once (e.g. reconnect and re-claim
        state) instead of at the next failing request."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        await self._finished.wait()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(
            name=self.name,
            peer_name=self.peer_name,
            peer_address=self.peer_address,
            closed=self._closed,
            requests_in_flight=len(self._pending) + len(self._thread_pending),
            queued_bytes=self._queued_bytes,
            frames_sent=self._frames_sent,
            frames_received=self._frames_received,
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
            writes=self._writes,
            dropped_by_faults=self._faults.dropped,
            unsent=self.unsent,
            frames_from_threads=self._from_threads,
            frames_read_by_threads=self._taken_by_thread,
        )

    # ------------------------------------------------------------------ running

    async def run(self, *, task_status: trio.TaskStatus[Connection] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the reader and writer until the connection closes; never raises for a
        lost link (see `closed`). Reports ``self`` through ``task_status``."""
        if self._started:
            raise RuntimeError(f"{self!r} is already running")
        self._started = True
        self._tasks: set[trio.lowlevel.Task] = set()
        try:
            if self._closed:
                task_status.started(self)
                return
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._cancel_scope = nursery.cancel_scope
                nursery.start_soon(self._writer)
                self._token = trio.lowlevel.current_trio_token()
                task_status.started(self)
                self._reader_task = trio.lowlevel.current_task()
                self._tasks.add(self._reader_task)
                try:
                    reason = await self._reader()
                except (ProtocolError, FrameTooLarge) as exc:
                    if not self._closed:
                        logger.error(
                            "closing connection %s <-> %s (%s): %s",
                            self.name, self.peer_name, self.peer_address, exc,
                        )
                    reason = f"protocol error: {exc}"
                except (OSError, trio.ClosedResourceError) as exc:
                    reason = f"connection error: {exc!r}"
                except Exception as exc:
                    if not self._closed:
                        logger.exception("reader of %s <-> %s failed", self.name, self.peer_name)
                    reason = f"internal error: {exc!r}"
                self._shutdown(reason)
        finally:
            self._shutdown("connection task ended")
            self._finished.set()

    async def run_as_system_task(self) -> None:
        try:
            await self.run()
        except trio.Cancelled:
            raise
        except BaseException:  # a bug: log it; a system task must not raise
            logger.exception("connection %s <-> %s crashed", self.name, self.peer_name)

    def _own_tasks(self) -> set[trio.lowlevel.Task]:
        return getattr(self, "_tasks", set())

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionLost(
                f"connection to {self.peer_name!r} ({self.peer_address}) is closed: {self._close_reason}"
            )

    # -- the `ReplyChannel` a `Reply` answers through

    def queue_answer(self, kind: int, rid: int, value: Any) -> None:
        """Encode and queue the answer to request ``rid`` (for `Reply`: see `ReplyChannel`)."""
        chunks, size = _encode_frame(kind, rid, value)
        self._check_size(size)
        self._enqueue(kind, chunks, size)

    def answer_dropped(self, rid: int) -> bool:
        """A `Reply` finalised unanswered (for `Reply`: see `ReplyChannel`). A finaliser
        can run in the middle of anything (even a half-queued frame), so this only
        notes the id; the reader fails the request once the handler returns."""
        if threading.get_ident() != self._thread_id:
            return False
        self._orphans.append(rid)
        return True

    def _check_size(self, size: int) -> None:
        body = size - HEADER_SIZE
        if body > self._peer_max or body > _wire.MAX_BODY:
            raise FrameTooLarge(
                f"message frame of {body} bytes exceeds the max_frame_size "
                f"{min(self._peer_max, _wire.MAX_BODY)} of peer {self.peer_name!r}"
            )

    def _enqueue(self, kind: int, chunks: list[bytes | memoryview], size: int) -> None:
        if faults._active or self._faults.holding():
            self._faults.send(_wire.KIND_NAMES[kind], chunks, size)
            return
        self._push(chunks, size)

    # -- the `FaultedLink` its injected faults act through (``_link_faults``)

    def running(self) -> bool:
        """Whether the connection's tasks run (for `LinkFaults`)."""
        return self._nursery is not None

    def push_frame(self, chunks: list[bytes | memoryview], size: int) -> None:
        """Queue an encoded frame for the writer, no fault applied (for `LinkFaults`)."""
        self._push(chunks, size)

    def start_task(self, fn: Callable[[], Awaitable[None]]) -> bool:
        """Start ``fn`` in the connection's nursery; False once that is closing (for
        `LinkFaults`)."""
        if self._nursery is None:
            return False
        try:
            self._nursery.start_soon(fn)
        except RuntimeError:  # the connection is closing
            return False
        return True

    def reset(self, reason: str) -> None:
        """Close the link at once, as a network reset would: pending requests fail
        with ``reason``, nothing queued is sent (for `LinkFaults`, and a server
        that stops)."""
        self._shutdown(reason)

    @property
    def closed_locally(self) -> bool:
        """Whether this end closed the connection (``aclose``), not the link."""
        return self._closed_locally

    @property
    def close_reason(self) -> str:
        """Why the connection closed (empty while it is open)."""
        return self._close_reason

    async def reset_when_flushed(self) -> None:
        """Close the link once the frames sent so far have left (for `LinkFaults`:
        a duplicate's reset)."""
        while (self._queued_frames or self._faults.holding()) and not self._closed:
            await self._drained.park()
        if self._closed:
            return
        # Half-close first, so what was written reaches the peer before the end of
        # the stream (a plain close with unread input would send a reset instead).
        if self._plain:
            try:
                self._sock.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
            except OSError:
                pass
            with trio.move_on_after(1.0):
                await self._finished.wait()
        self._shutdown(f"link reset by an injected fault (duplicate {self.name!r} -> "
                       f"{self.peer_name!r}, after the frame was sent)")

    def _push(self, chunks: list[bytes | memoryview], size: int) -> None:
        with self._write_lock:  # (`send_from_thread`)
            self._push_locked(chunks, size)

    def _push_locked(self, chunks: list[bytes | memoryview], size: int) -> None:
        if (
            not self._direct_recent
            and self._plain
            and self._writer_waiting is not None
            and not self._outq
            and len(chunks) == 1
        ):
            # Idle link: write now from this task, saving the writer's scheduler hop
            # (this is what keeps a lone request/reply fast). Then `_direct_recent`
            # routes whatever else is sent in this scheduler tick through the queue,
            # so bursts still coalesce; the reader (new input) and the writer (queue
            # flushed) reset it.
            self._direct_recent = True
            data = chunks[0]
            try:
                sent = self._sock.send(data)  # type: ignore[union-attr]
            except OSError:  # BlockingIOError, or a dead link the writer will report
                sent = 0
            if sent:
                self._writes += 1
                self._bytes_sent += sent
                if sent == len(data):
                    self._frames_sent += 1
                    if self._drained:  # someone waits in `drain`
                        self._drained.unpark_all()
                    return
                chunks = [memoryview(data)[sent:]]
                size -= sent
        self._outq.extend(chunks)
        self._queued_bytes += size
        self._queued_frames += 1
        task = self._writer_waiting
        if task is not None:
            self._writer_waiting = None
            _reschedule(task)

    async def _wait_drained(self) -> None:
        while self._queued_bytes > _HIGH_WATER // 2 and not self._closed:
            await self._drained.park()
        self._check_open()

    def _shutdown(self, reason: str, *, locally: bool = False) -> None:
        """Mark closed, fail every pending request, close the socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._closed_locally = locally
        self._close_reason = reason
        if locally:
            logger.debug("connection %s -> %s closed locally", self.name, self.peer_name)
        else:
            logger.info("connection %s <-> %s (%s) lost: %s", self.name, self.peer_name, self.peer_address, reason)
        pending, self._pending = self._pending, {}
        for rid, task in pending.items():
            _reschedule(task, outcome.Error(self._lost_with(rid, reason)))
        from_threads, self._thread_pending = self._thread_pending, {}
        for rid, waiter in from_threads.items():
            waiter.set(outcome.Error(self._lost_with(rid, reason)))
        if self._cancel_scope is not None:
            self._cancel_scope.cancel()
        self._outq = []
        self._faults.clear()
        self._queued_bytes = 0
        self._queued_frames = 0
        self._drained.unpark_all()
        if self._loan is not None:
            self._loan.close()
        try:
            trio.lowlevel.notify_closing(self._sock)
        except (RuntimeError, OSError):  # outside a Trio run (interpreter shutdown)
            pass
        with self._write_lock:  # not under a thread's write (`send_from_thread`)
            self._sock.close()

    def _lost_with(self, rid: int, reason: str) -> ConnectionLost:
        return ConnectionLost(
            f"connection to {self.peer_name!r} ({self.peer_address}) lost with request "
            f"{rid} pending: {reason}"
        )

    # -- writer

    async def _writer(self) -> None:
        self._tasks.add(trio.lowlevel.current_task())
        sock = self._sock
        write = write_chunks if self._plain else TlsSocket.write_chunks
        while True:
            if not self._outq:
                if self._drained.statistics().tasks_waiting:
                    self._drained.unpark_all()
                self._writer_waiting = trio.lowlevel.current_task()

                def abort(_: Any) -> trio.lowlevel.Abort:
                    self._writer_waiting = None
                    return trio.lowlevel.Abort.SUCCEEDED

                await trio.lowlevel.wait_task_rescheduled(abort)
                continue
            chunks = self._outq
            self._outq = []
            frames = self._queued_frames
            nbytes = self._queued_bytes
            try:
                self._writes += await write(sock, chunks)  # type: ignore[arg-type]
            except (OSError, trio.ClosedResourceError) as exc:
                self._shutdown(f"write failed: {exc!r}")
                return
            # Let the frames go now, not when the next write replaces them: an
            # out-of-band buffer may be a lease on shared memory (a transfer's chunk
            # of a store object), which an idle link would otherwise hold for ever.
            del chunks
            self._direct_recent = False
            self._frames_sent += frames
            self._bytes_sent += nbytes
            self._queued_frames -= frames
            self._queued_bytes -= nbytes
            # Wake whoever waits for frames to leave (`drain`, backpressure, a
            # duplicate's reset): each checks its own condition again.
            if self._drained:
                self._drained.unpark_all()

    # -- reader

    async def _reader(self) -> str:
        """Read and dispatch frames until EOF; return why it stopped."""
        sock = self._sock
        wait_readable = trio.lowlevel.wait_readable if self._plain else TlsSocket.wait_readable
        buf = bytearray(_RECV_CHUNK)
        view = memoryview(buf)
        start = end = 0
        waited = True
        max_frame = self._max_frame
        on_reply = self._on_reply
        on_message = self._on_message
        drained = False
        handed = 0  # bytes a borrower gave back, at the start of the buffer
        while True:
            if drained:  # the last recv did not fill the buffer: wait before reading
                if self._loan is not None and start == end:
                    handed = await self._wait_or_lend(sock, wait_readable, view)
                else:
                    await wait_readable(sock)  # type: ignore[arg-type]
                waited = True
                self._direct_recent = False
            if handed:
                n, handed = handed, 0
            else:
                try:
                    n = sock.recv_into(view[end:])
                except BlockingIOError:
                    drained = True
                    continue
            if n == 0:
                if end > start:
                    raise ProtocolError(
                        f"peer {self.peer_name!r} ({self.peer_address}) closed the connection "
                        f"mid-frame ({end - start} bytes of an unfinished frame)"
                    )
                return "peer closed the connection"
            if not waited:
                await trio.lowlevel.checkpoint()  # fairness when data never runs dry
            waited = False
            drained = end + n < _RECV_CHUNK
            end += n
            self._bytes_received += n
            while end - start >= HEADER_SIZE:
                body_len, kind, nbufs, rid = _unpack_header(buf, start)
                if body_len > max_frame:
                    raise FrameTooLarge(
                        f"peer {self.peer_name!r} ({self.peer_address}) sent a frame of "
                        f"{body_len} bytes; max_frame_size is {max_frame}"
                    )
                total = HEADER_SIZE + body_len
                if nbufs == 0 and end - start >= total:
                    body = view[start + HEADER_SIZE : start + total]
                    start += total
                    if kind == REPLY_OK or kind == REPLY_ERR:
                        on_reply(kind, rid, body, 0)
                    else:
                        await on_message(kind, rid, body, 0)
                        if self._orphans:
                            self._fail_orphans()
                    continue
                if nbufs == 0 and total <= _RECV_CHUNK:
                    break  # needs more bytes; they fit in the buffer
                # Own buffer: out-of-band buffers are handed out as views of it.
                frame = bytearray(body_len)
                fview = memoryview(frame)
                have = min(end - start - HEADER_SIZE, body_len)
                fview[:have] = view[start + HEADER_SIZE : start + HEADER_SIZE + have]
                start += HEADER_SIZE + have
                await self._recv_exactly(sock, fview[have:], wait_readable)
                if kind == REPLY_OK or kind == REPLY_ERR:
                    on_reply(kind, rid, fview, nbufs)
                else:
                    await on_message(kind, rid, fview, nbufs)
                    if self._orphans:
                        self._fail_orphans()
            if start == end:
                start = end = 0
            elif start:
                leftover = end - start
                view[:leftover] = bytes(view[start:end])
                start, end = 0, leftover

    async def _recv_exactly(
        self, sock: socket.socket | TlsSocket, view: memoryview, wait_readable: Any
    ) -> None:
        while view:
            try:
                n = sock.recv_into(view)
            except BlockingIOError:
                await wait_readable(sock)
                continue
            if n == 0:
                raise ProtocolError(f"peer {self.peer_name!r} closed the connection mid-frame")
            self._bytes_received += n
            view = view[n:]

    def _fail_orphans(self) -> None:
        orphans, self._orphans = self._orphans, []
        if self._closed:
            return
        for rid in orphans:
            error = RuntimeError(f"the handler of {self.name!r} dropped request {rid} without answering it")
            chunks, size = _wire.encode_frame(REPLY_ERR, rid, _wire.encode_error(error))
            self._enqueue(REPLY_ERR, chunks, size)

    def _on_reply(self, kind: int, rid: int, body: memoryview, nbufs: int) -> None:
        """Wake the request waiting for this reply (synchronous: no coroutine per reply)."""
        self._frames_received += 1
        task = self._pending.pop(rid, None)
        if task is None:
            if self._thread_pending:
                self._on_thread_reply(kind, rid, body, nbufs)
            return  # its request timed out or was cancelled, or a duplicate
        try:
            result = self._reply_outcome(kind, rid, body, nbufs)
        except ProtocolError:
            self._pending[rid] = task  # failed with the others as the link closes
            raise
        _reschedule(task, result)

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

    def _reply_outcome(self, kind: int, rid: int, body: memoryview, nbufs: int) -> Any:
        """What reply ``rid`` brings its requester: its value, the peer's error, or an
        undecodable reply's error. A `ProtocolError` (the stream is broken)
        propagates: the link closes and fails every request still waiting."""
        try:
            value = _wire.decode_body(body, nbufs)
        except ProtocolError:
            raise
        except Exception as exc:
            return outcome.Error(self._undecodable(rid, exc))
        if kind == REPLY_OK:
            return outcome.Value(value)
        return outcome.Error(self._remote_error(value))

    def _undecodable(self, rid: int, exc: Exception) -> ProtocolError:
        return ProtocolError(
            f"could not decode the reply to request {rid} from {self.peer_name!r}: {exc!r}"
        )

    async def _on_message(self, kind: int, rid: int, body: memoryview, nbufs: int) -> None:
        """Hand a request or one-way message to the handler, inline."""
        self._frames_received += 1
        reply: Reply | None
        if kind == REQUEST:
            reply = Reply(self, rid)
        elif kind == ONEWAY:
            reply = None
        else:
            raise ProtocolError(
                f"peer {self.peer_name!r} ({self.peer_address}) sent a frame of unknown kind {kind}"
            )
        try:
            message = _wire.decode_body(body, nbufs)
        except ProtocolError:
            raise
        except Exception as exc:
            logger.warning("could not decode a message from %s on %s: %r", self.peer_name, self.name, exc)
            if reply is not None:
                reply.fail(ProtocolError(f"{self.name!r} could not decode the request: {exc!r}"))
            return
        del body
        handler = self._handler
        if handler is None:
            if reply is not None:
                reply.fail(RuntimeError(f"endpoint {self.name!r} has no handler for requests"))
            else:
                logger.warning("%s has no handler; dropped a message from %s", self.name, self.peer_name)
            return
        try:
            await handler(self, message, reply)
        except Exception as exc:
            if reply is not None and not reply.done:
                reply.fail(exc)
            else:
                logger.exception("handler of %s failed on a message from %s", self.name, self.peer_name)

    def _remote_error(self, payload: Any) -> RemoteError:
        try:
            type_name, text, tb, blob = payload
        except (TypeError, ValueError):
            return RemoteError("?", repr(payload), "", None, self.peer_name)
        remote_exc = None
        if blob is not None:
            try:
                remote_exc = _wire._loads(blob)
            except Exception:
                remote_exc = None
        return RemoteError(str(type_name), str(text), str(tb), remote_exc, self.peer_name)


class _ThreadWaiter:
    """Where a thread's request gets its reply: a lock the thread waits on, held from
    the start and released once ``outcome`` is set (`Connection.request_from_thread`);
    or a callback that takes the outcome (`Connection.request_soon_from_thread`).
    `set` runs on the loop."""

    __slots__ = ("lock", "on_reply", "outcome")

    def __init__(self, on_reply: Callable[[outcome.Outcome[Any]], object] | None = None) -> None:
        self.on_reply = on_reply
        self.lock: threading.Lock | None = None
        if on_reply is None:
            self.lock = threading.Lock()
            self.lock.acquire()
        self.outcome: outcome.Outcome[Any] | None = None

    def set(self, result: outcome.Outcome[Any]) -> None:
        self.outcome = result
        if self.on_reply is None:
            assert self.lock is not None
            self.lock.release()
            return
        try:
            self.on_reply(result)
        except Exception:  # the callback's bug: it must not take the reader down
            logger.exception("the reply callback %r failed", self.on_reply)
