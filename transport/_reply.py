"""`Reply` (the answer slot of one incoming request), `ConnectionStatistics`, and
`ThreadWaiter` (where a reply to a thread's request goes).

A `Reply` needs three things of the connection it answers on, and only those (the
`ReplyChannel` protocol, which `Connection` implements): whether it is closed, a
way to queue an answer frame, and a way to report a reply dropped unanswered. So
this module does not import the connection's.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

import attrs
import outcome

from . import _wire
from ._wire import REPLY_ERR, REPLY_OK

__all__ = ["ConnectionStatistics", "Reply", "ReplyChannel", "ThreadWaiter"]

logger = logging.getLogger("transport")


class ReplyChannel(Protocol):
    """What a `Reply` uses of its connection (`Connection` implements it)."""

    @property
    def peer_name(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    def queue_answer(self, kind: int, rid: int, value: Any) -> None:
        """Encode and queue an answer frame (``REPLY_OK`` or ``REPLY_ERR``); raises
        (nothing queued) if ``value`` does not pickle or the peer would refuse it."""

    def answer_dropped(self, rid: int) -> bool:
        """A `Reply` is being finalised unanswered: note ``rid`` so that its caller
        is failed once the running handler returns. False if this is not the
        connection's thread (then nothing is noted)."""


@attrs.frozen
class ConnectionStatistics:
    name: str
    peer_name: str
    peer_address: str
    closed: bool
    requests_in_flight: int
    queued_bytes: int
    frames_sent: int
    frames_received: int
    bytes_sent: int
    bytes_received: int
    writes: int
    dropped_by_faults: int
    #: frames accepted and not yet written to the socket (queued, or held back by an
    #: injected delay): `Connection.unsent`
    unsent: int
    #: frames written by a thread outside the loop (`Connection.send_from_thread`)
    frames_from_threads: int = 0
    #: frames read and kept by a thread the read side was lent to (`Connection.lend_reads`)
    frames_read_by_threads: int = 0
    #: times pages of its receive buffers went back to the kernel after a burst
    #: (``_recv_buffer.RecvBuffer.release``)
    buffer_releases: int = 0


class Reply:
    """The answer slot of one incoming request: call `send` or `fail` exactly once.

    May be called later, from any Trio task of the same run (so a slow request need
    not block the connection). Answering a connection that has since closed is a
    silent no-op: the caller has already been failed with `ConnectionLost`. A reply
    dropped unanswered (no reference left) fails the request with a `RemoteError`.
    """

    __slots__ = ("_conn", "_done", "_rid")

    def __init__(self, conn: ReplyChannel, rid: int) -> None:
        self._conn = conn
        self._rid = rid
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def _claim(self, what: str) -> None:
        if self._done:
            raise RuntimeError(
                f"request {self._rid} from {self._conn.peer_name!r} was already answered "
                f"(second call: {what})"
            )
        self._done = True

    def send(self, value: Any) -> None:
        """Answer the request with ``value``.

        If ``value`` cannot be pickled (or is too large for the peer) the caller gets
        a `RemoteError` describing that, and the error is raised here as well.
        """
        self._claim("send")
        conn = self._conn
        if conn.closed:
            return
        try:
            conn.queue_answer(REPLY_OK, self._rid, value)
        except Exception as exc:
            self._send_error(exc)
            raise

    def fail(self, exc: BaseException) -> None:
        """Fail the request: the caller gets a `RemoteError` with type, message, traceback."""
        if not isinstance(exc, BaseException):
            raise TypeError(f"Reply.fail() needs an exception, got {exc!r}")
        self._claim("fail")
        if not self._conn.closed:
            self._send_error(exc)

    def _send_error(self, exc: BaseException) -> None:
        self._conn.queue_answer(REPLY_ERR, self._rid, _wire.encode_error(exc))

    def __del__(self) -> None:
        # Dropped unanswered (the handler returned and kept no reference): the request
        # must fail now rather than leave its caller waiting until a timeout. A
        # finaliser can run in the middle of anything (even a half-queued frame), so
        # it only notes the id; the reader sends the error once the handler returns
        # (for a reply freed later by the cycle collector: after the next message).
        if not self._done and self._conn.answer_dropped(self._rid):
            self._done = True

    def __repr__(self) -> str:
        state = "answered" if self._done else "pending"
        return f"<Reply to request {self._rid} from {self._conn.peer_name!r} ({state})>"


class ThreadWaiter:
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
