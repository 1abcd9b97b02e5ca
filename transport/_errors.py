"""The transport's exception hierarchy.

Every error the transport raises on purpose is a `TransportError`, so callers can
catch the whole family at once, and each names the peer or the bad value.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "BadMessage",
    "ConnectError",
    "ConnectionLost",
    "FrameTooLarge",
    "InsecureListener",
    "ProtocolError",
    "RemoteError",
    "RequestTimeout",
    "TlsError",
    "TlsMismatch",
    "TransportError",
]


class TransportError(Exception):
    """Base class of every error raised by `transport`."""


class BadMessage(TransportError):
    """An endpoint refused a message: of a class it does not handle, or with fields
    its validators reject (see `Dispatcher`). Attributes ``endpoint`` (who refused)
    and ``message_type`` (the class's name). The endpoint keeps serving."""

    def __init__(self, message: str, *, endpoint: str = "", message_type: str = "") -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.message_type = message_type

    def __reduce__(self) -> tuple:  # keeps the fields through a RemoteError
        return (_rebuild_bad_message, (str(self), self.endpoint, self.message_type))


def _rebuild_bad_message(message: str, endpoint: str, message_type: str) -> BadMessage:
    return BadMessage(message, endpoint=endpoint, message_type=message_type)


class ConnectError(TransportError):
    """Could not open a connection: nothing listens there, refused, or timed out.

    The underlying `OSError` (if any) is the ``__cause__``.
    """


class ConnectionLost(TransportError):
    """The connection closed (peer died, link broke, or it was closed locally).

    Raised by every request still pending at that moment, and by any later attempt
    to use the connection.
    """


class RequestTimeout(TransportError):
    """A request got no reply within its timeout (the request may still run remotely)."""


class AuthenticationFailed(TransportError):
    """The peer failed the token challenge (or we did, and the peer rejected us)."""


class TlsError(TransportError):
    """A TLS link could not be set up: a TLS file is missing or bad, the handshake
    failed (the peer's certificate is not signed by the cluster CA, or ours is not
    accepted by the peer), or it timed out."""


class TlsMismatch(TlsError):
    """One end of a TCP link uses TLS and the other does not (every node and driver
    of a cluster must use the same mode)."""


class InsecureListener(TransportError):
    """A plaintext listener on a non-loopback address was refused (configure TLS, or
    allow plaintext explicitly with ``insecure=True``)."""


class FrameTooLarge(TransportError):
    """A frame is larger than the receiving side's ``max_frame_size``."""


class ProtocolError(TransportError):
    """A peer sent bytes that are not a valid frame, or a reply that failed to decode."""


class RemoteError(TransportError):
    """The remote handler failed the request.

    Attributes:
      remote_type: qualified name of the remote exception type, e.g. ``"builtins.KeyError"``.
      remote_message: ``str()`` of the remote exception.
      remote_traceback: the formatted remote traceback (text), or ``""``.
      remote_exception: the remote exception object itself when it could be pickled
        and unpickled here, else ``None``.
    """

    def __init__(
        self,
        remote_type: str,
        remote_message: str,
        remote_traceback: str = "",
        remote_exception: BaseException | None = None,
        peer_name: str = "?",
    ) -> None:
        super().__init__(remote_type, remote_message, remote_traceback)
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.remote_exception = remote_exception
        self.peer_name = peer_name

    def __str__(self) -> str:
        text = f"{self.remote_type}: {self.remote_message} (raised in peer {self.peer_name!r})"
        if self.remote_traceback:
            text += "\n--- remote traceback ---\n" + self.remote_traceback.rstrip("\n")
        return text

    def __reduce__(self) -> tuple[object, ...]:
        return (
            type(self),
            (
                self.remote_type,
                self.remote_message,
                self.remote_traceback,
                None,
                self.peer_name,
            ),
        )
