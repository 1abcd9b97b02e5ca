"""`Reply` (the answer slot of one incoming request) and `ConnectionStatistics`."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import attrs

from . import _wire
from ._wire import REPLY_ERR, REPLY_OK

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["ConnectionStatistics", "Reply"]


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


class Reply:
    """The answer slot of one incoming request: call `send` or `fail` exactly once.

    May be called later, from any Trio task of the same run (so a slow request need
    not block the connection). Answering a connection that has since closed is a
    silent no-op: the caller has already been failed with `ConnectionLost`. A reply
    dropped unanswered (no reference left) fails the request with a `RemoteError`.
    """

    __slots__ = ("_conn", "_done", "_rid")

    def __init__(self, conn: Connection, rid: int) -> None:
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
        if conn._closed:
            return
        try:
            chunks, size = _wire.encode_frame(REPLY_OK, self._rid, value)
            conn._check_size(size)
        except Exception as exc:
            self._send_error(exc)
            raise
        conn._enqueue(REPLY_OK, chunks, size)

    def fail(self, exc: BaseException) -> None:
        """Fail the request: the caller gets a `RemoteError` with type, message, traceback."""
        if not isinstance(exc, BaseException):
            raise TypeError(f"Reply.fail() needs an exception, got {exc!r}")
        self._claim("fail")
        if not self._conn._closed:
            self._send_error(exc)

    def _send_error(self, exc: BaseException) -> None:
        conn = self._conn
        chunks, size = _wire.encode_frame(REPLY_ERR, self._rid, _wire.encode_error(exc))
        conn._enqueue(REPLY_ERR, chunks, size)

    def __del__(self) -> None:
        # Dropped unanswered (the handler returned and kept no reference): the request
        # must fail now rather than leave its caller waiting until a timeout. A
        # finaliser can run in the middle of anything (even a half-queued frame), so
        # it only notes the id; the reader sends the error once the handler returns
        # (for a reply freed later by the cycle collector: after the next message).
        if not self._done and threading.get_ident() == self._conn._thread_id:
            self._done = True
            self._conn._orphans.append(self._rid)

    def __repr__(self) -> str:
        state = "answered" if self._done else "pending"
        return f"<Reply to request {self._rid} from {self._conn.peer_name!r} ({state})>"
