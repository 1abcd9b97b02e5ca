"""One authenticated connection: framing, request/response, one-way messages.

Design
------
A `Connection` wraps a connected, already-authenticated, non-blocking stdlib socket
and runs two tasks, both inside `Connection.run` (one nursery per connection):

* the **reader** receives into a reused 256 KiB buffer (``_recv_buffer``: resident
  only where written) and handles every complete
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

The class is built in layers, a module each: `ConnectionCore` (``_connection_core``)
holds the state and the internals every side shares (the outgoing queue and the
idle-link direct write, closing, reply decoding); `ThreadSide` (``_thread_side``)
adds what threads beside the loop do on the link; `Connection` here is the public
API on the loop and the two tasks.

Closing: when the link dies (EOF, reset, malformed or oversized frame, write error),
every pending request is failed at once with its own `ConnectionLost` naming the
peer, the socket is closed, and later use raises `ConnectionLost`. `aclose` first lets
the writer flush what is queued (bounded by ``flush_timeout``), then does the same.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from . import _wire, faults
from ._connection_core import HIGH_WATER, RECV_CHUNK
from ._errors import FrameTooLarge, ProtocolError, RequestTimeout
from ._recv_buffer import KEEP, RecvBuffer
from ._reply import ConnectionStatistics, Reply
from ._sockio import write_chunks
from ._thread_side import ThreadSide
from ._tls import TlsSocket
from ._wire import HEADER, HEADER_SIZE, ONEWAY, REPLY_ERR, REPLY_OK, REQUEST

__all__ = ["DEFAULT_MAX_FRAME_SIZE", "Connection", "ConnectionStatistics", "Handler", "Reply"]

logger = logging.getLogger("transport")

DEFAULT_MAX_FRAME_SIZE = 512 * 1024 * 1024
# `send_nowait` refuses (trio.WouldBlock) while more than this is queued.
_NOWAIT_LIMIT = 4 * HIGH_WATER
# `await send()` lets the writer run once this much is queued.
_YIELD_FRAMES = 64
_YIELD_BYTES = 256 * 1024

Handler = Callable[["Connection", Any, "Reply | None"], Awaitable[None]]

_unpack_header = HEADER.unpack_from
_reschedule = trio.lowlevel.reschedule
_encode_frame = _wire.encode_frame


class Connection(ThreadSide):
    """An authenticated, symmetric message connection. See the module docstring.

    Not constructed directly: use `connect`, `open_connection`, `Client` or `Server`.
    """

    # ------------------------------------------------------------------ public API

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
        if self._queued_bytes > HIGH_WATER:
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
        if self._queued_bytes > HIGH_WATER:
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
            buffer_releases=(0 if self._recv_buffer is None else self._recv_buffer.releases)
            + (0 if self._loan is None else self._loan.buffer_releases),
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
            if self._recv_buffer is not None:
                self._recv_buffer.close()
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
        # Pages of the buffer become resident only when a recv writes them, and go
        # back once the reader is about to wait after a burst (``_recv_buffer``).
        rbuf = RecvBuffer(RECV_CHUNK)
        self._recv_buffer = rbuf
        buf = view = rbuf.view
        start = end = 0
        high = 0  # the furthest byte written since the last release
        waited = True
        max_frame = self._max_frame
        on_reply = self._on_reply
        on_message = self._on_message
        drained = False
        handed = 0  # bytes a borrower gave back, at the start of the buffer
        while True:
            if drained:  # the last recv did not fill the buffer: wait before reading
                if high > KEEP:
                    rbuf.release(high, end)
                    high = end
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
            drained = end + n < RECV_CHUNK
            end += n
            if end > high:
                high = end
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
                if nbufs == 0 and total <= RECV_CHUNK:
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
            message = _wire.decode_body(body, nbufs, rid if reply is None else 0)
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
