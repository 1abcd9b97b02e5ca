"""The state of one connection and the internals every side of it shares.

`Connection` (``_connection``) is built in two layers below its public API:
`ConnectionCore` here holds the link's state (socket, queues, pending requests,
counters) and what the loop's tasks and other threads alike do to it -- check it
open, queue a frame (or write it at once on an idle link), decode a reply, close it
-- and what a `Reply` (``_reply.ReplyChannel``) and injected faults
(``_link_faults.FaultedLink``) act through; `ThreadSide` (``_thread_side``) adds the
sends, requests and reads of threads beside the loop. The concurrency design is in
``_connection``'s docstring.
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
from ._errors import ConnectionLost, FrameTooLarge, ProtocolError, RemoteError
from ._link_faults import LinkFaults
from ._read_loan import ReadLoan
from ._recv_buffer import RecvBuffer
from ._reply import ThreadWaiter
from ._tls import TlsSocket
from ._wire import HEADER_SIZE, REPLY_OK

__all__ = ["HIGH_WATER", "RECV_CHUNK", "ConnectionCore"]

logger = logging.getLogger("transport")

RECV_CHUNK = 256 * 1024
# `await send()` / `await request()` wait while more than this many bytes are queued.
HIGH_WATER = 16 * 1024 * 1024

_reschedule = trio.lowlevel.reschedule
_encode_frame = _wire.encode_frame


class ConnectionCore:
    """The state of one connection and its shared internals (see the module
    docstring); `Connection` is the class to use.
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
        handler: Callable[..., Awaitable[None]] | None,
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
        # a `Handler` (``_connection``): requests and one-way messages go to it
        self._handler = handler
        self._closed = False
        self._close_reason = ""
        self._closed_locally = False
        # Request ids come from one counter for the loop's requests and threads'
        # (`request_from_thread`): ``next`` of an `itertools.count` is atomic.
        self._rids = itertools.count(1)
        self._pending: dict[int, trio.lowlevel.Task] = {}
        self._thread_pending: dict[int, ThreadWaiter] = {}
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
        # The reader's receive buffer (``_recv_buffer``), while it runs.
        self._recv_buffer: RecvBuffer | None = None

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

    def _wake_writer(self) -> None:
        task = self._writer_waiting
        if task is not None and self._outq:
            self._writer_waiting = None
            _reschedule(task)

    async def _wait_drained(self) -> None:
        while self._queued_bytes > HIGH_WATER // 2 and not self._closed:
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
