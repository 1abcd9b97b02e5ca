"""transport: authenticated message connections over Unix sockets and TCP.

Length-prefixed frames carrying pickle protocol 5 streams (out-of-band
`pickle.PickleBuffer` data sent without copies), request/response with many requests
in flight, one-way messages, mutual HMAC authentication with the cluster token before
any frame is decoded, and fault injection (`transport.faults`).

    server = transport.Server("unix:/tmp/x.sock", token, handler, name="gcs")
    address = await nursery.start(server.run)
    async with transport.open_connection(address, token, name="driver") as conn:
        value = await conn.request({"op": "get", "key": b"k"}, timeout=5)

``handler(conn, message, reply)`` runs inline in arrival order; ``reply`` is ``None``
for a one-way message, else a `Reply` to answer now or later with ``send``/``fail``
(a handler must not await a request on its own connection: start a task for that).

Where a client connection's tasks run:
  ``async with open_connection(...) as conn``   the block owns them (usual choice);
  ``conn = await nursery.start(Client(...).run)``  a child-protocol service: raises
                                                 `ConnectionLost` when the link dies;
  ``conn = await connect(...)``                  a Trio system task; ``await conn.aclose()``.

TLS: on TCP, ``tls=transport.TlsConfig(cert, key, ca)`` (or a process default set
once with `set_default_tls`) runs every link inside TLS 1.3 with mutual certificates
signed by the cluster CA, the token handshake inside it; see `_tls.py`.

Typed messages: a `Dispatcher` is a connection handler that routes each message
by its (attrs) class to the endpoint's handler for it, and refuses unknown or
malformed ones with a typed error (`BadMessage`) while the endpoint serves on.
`register_codes` gives message classes copyreg extension codes, so a pickle names
each by a number the receiver resolves without an import (see `_codes`);
`register_flat` sends one-way messages of a class as the flat tuple of their fields
(see `_flat`).

See `_connection.py` for the concurrency design, `faults` for fault injection.
"""

from . import faults
from ._address import Address, parse_address
from ._certs import create_cluster_certs
from ._client import Client, connect, open_connection
from ._codes import CODE_BASE, CODE_SPAN, classes_of, register_codes, registered_code, wire_code
from ._connection import (
    DEFAULT_MAX_FRAME_SIZE,
    Connection,
    ConnectionStatistics,
    Handler,
    Reply,
)
from ._dispatch import Dispatcher, DispatcherStatistics, check, compact
from ._errors import (
    AuthenticationFailed,
    BadMessage,
    ConnectError,
    ConnectionLost,
    FrameTooLarge,
    InsecureListener,
    ProtocolError,
    RemoteError,
    RequestTimeout,
    TlsError,
    TlsMismatch,
    TransportError,
)
from ._flat import register_flat
from ._message import message
from ._read_loan import NOT_TAKEN, ReadLoan
from ._server import Server, ServerStatistics
from ._thread_poll import ThreadPoll
from ._tls import (
    DEFAULT,
    TlsConfig,
    default_tls,
    insecure_allowed,
    is_loopback_host,
    set_default_tls,
)

__all__ = [
    "CODE_BASE",
    "CODE_SPAN",
    "DEFAULT",
    "DEFAULT_MAX_FRAME_SIZE",
    "NOT_TAKEN",
    "Address",
    "AuthenticationFailed",
    "BadMessage",
    "Client",
    "ConnectError",
    "Connection",
    "ConnectionLost",
    "ConnectionStatistics",
    "Dispatcher",
    "DispatcherStatistics",
    "FrameTooLarge",
    "Handler",
    "InsecureListener",
    "ProtocolError",
    "ReadLoan",
    "RemoteError",
    "Reply",
    "RequestTimeout",
    "Server",
    "ThreadPoll",
    "ServerStatistics",
    "TlsConfig",
    "TlsError",
    "TlsMismatch",
    "TransportError",
    "check",
    "classes_of",
    "compact",
    "connect",
    "create_cluster_certs",
    "default_tls",
    "faults",
    "insecure_allowed",
    "is_loopback_host",
    "message",
    "open_connection",
    "parse_address",
    "register_codes",
    "register_flat",
    "registered_code",
    "set_default_tls",
    "wire_code",
]
