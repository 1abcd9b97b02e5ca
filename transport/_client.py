"""The dialing side: `connect`, `open_connection` and the `Client` service."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from . import faults
from ._address import dial, parse_address
from ._connection import DEFAULT_MAX_FRAME_SIZE, Connection, Handler
from ._errors import AuthenticationFailed, ConnectError, ConnectionLost, TlsError
from ._handshake import client_handshake, token_bytes
from ._tls import DEFAULT, TlsConfig, TlsSocket, _Default, client_tls, resolve_tls

__all__ = ["Client", "connect", "open_connection"]

logger = logging.getLogger("transport")


def _check_frame_size(max_frame_size: int) -> int:
    if not isinstance(max_frame_size, int) or not 1024 <= max_frame_size < 2**32:
        raise ValueError(f"max_frame_size must be an int in [1024, 2**32), got {max_frame_size!r}")
    return max_frame_size


async def _dial(
    address: str,
    token: bytes | str,
    *,
    name: str,
    handler: Handler | None,
    max_frame_size: int,
    connect_timeout: float,
    tls: TlsConfig | None | _Default,
) -> Connection:
    key = token_bytes(token)
    _check_frame_size(max_frame_size)
    config = resolve_tls(tls) if parse_address(address).kind == "tcp" else None
    raw = await dial(address, connect_timeout)
    sock: socket.socket | TlsSocket = raw
    try:
        try:
            with trio.fail_after(connect_timeout):
                if config is not None:
                    sock = await client_tls(raw, config, address)
                peer_name, peer_max = await client_handshake(sock, key, name, max_frame_size, address)
        except trio.TooSlowError:
            what = "TLS and token handshake" if config is not None else "handshake"
            raise ConnectError(
                f"{what} with {address!r} timed out after {connect_timeout}s"
            ) from None
        except (AuthenticationFailed, TlsError) as exc:
            logger.warning("%s: %s", name, exc)
            raise
        rule = faults.refused(name, peer_name)
        if rule is not None:
            raise ConnectError(f"connection {name!r} -> {peer_name!r} refused by fault rule {rule}")
    except BaseException:
        sock.close()
        raise
    return Connection(
        sock,
        name=name,
        peer_name=peer_name,
        peer_address=address,
        peer_max_frame_size=peer_max,
        max_frame_size=max_frame_size,
        handler=handler,
    )


async def connect(
    address: str,
    token: bytes | str,
    *,
    name: str = "client",
    handler: Handler | None = None,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    connect_timeout: float = 10.0,
    tls: TlsConfig | None | _Default = DEFAULT,
) -> Connection:
    """Connect and authenticate; the connection's tasks run in a Trio system task.

    Close it with ``await conn.aclose()`` (or use it as ``async with``). Raises
    `ConnectError` (nothing listens, refused, timeout), `AuthenticationFailed`,
    `ConnectionLost` (closed during the handshake), `ProtocolError` (not our protocol),
    `TlsMismatch` (the server's TLS mode differs from ours), `TlsError`.

    ``tls``: for a TCP address, run the link inside TLS with this config (``None``:
    plaintext; default: the process's, see `set_default_tls`). Unix sockets are
    always plaintext.
    """
    conn = await _dial(
        address,
        token,
        name=name,
        handler=handler,
        max_frame_size=max_frame_size,
        connect_timeout=connect_timeout,
        tls=tls,
    )
    trio.lowlevel.spawn_system_task(conn.run_as_system_task, name=f"transport:{name}->{conn.peer_name}")
    return conn


@asynccontextmanager
async def open_connection(
    address: str,
    token: bytes | str,
    *,
    name: str = "client",
    handler: Handler | None = None,
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
    connect_timeout: float = 10.0,
    tls: TlsConfig | None | _Default = DEFAULT,
) -> AsyncIterator[Connection]:
    """``async with open_connection(...) as conn``: the block owns the connection's tasks.

    Arguments and errors as for `connect`."""
    conn = await _dial(
        address,
        token,
        name=name,
        handler=handler,
        max_frame_size=max_frame_size,
        connect_timeout=connect_timeout,
        tls=tls,
    )
    # `conn.run` never raises (a lost link only closes the connection), so whatever
    # leaves the nursery came from the caller's block: unwrap it, so that callers can
    # `except RemoteError` around the block instead of an ExceptionGroup.
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(conn.run)
            try:
                yield conn
            finally:
                with trio.CancelScope(shield=True):
                    await conn.aclose(flush_timeout=1.0)
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            exc = group.exceptions[0]
            raise exc from exc.__cause__
        raise


class Client:
    """A child-protocol service holding one client connection.

    ``conn = await nursery.start(Client(address, token, name=...).run)`` connects and
    returns the `Connection`; `run` then keeps its tasks until the connection closes.
    It returns normally after ``conn.aclose()`` and raises `ConnectionLost` when the
    link dies, so a supervisor restarts whoever depends on it.
    """

    def __init__(
        self,
        address: str,
        token: bytes | str,
        *,
        name: str = "client",
        handler: Handler | None = None,
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        connect_timeout: float = 10.0,
        tls: TlsConfig | None | _Default = DEFAULT,
    ) -> None:
        self.address = address
        self._tls = tls
        self.name = name
        self._token = token_bytes(token)
        self._handler = handler
        self._max_frame_size = _check_frame_size(max_frame_size)
        self._connect_timeout = connect_timeout
        self.connection: Connection | None = None

    async def run(self, *, task_status: trio.TaskStatus[Connection] = trio.TASK_STATUS_IGNORED) -> None:
        conn = await _dial(
            self.address,
            self._token,
            name=self.name,
            handler=self._handler,
            max_frame_size=self._max_frame_size,
            connect_timeout=self._connect_timeout,
            tls=self._tls,
        )
        self.connection = conn
        await conn.run(task_status=task_status)
        if not conn.closed_locally:
            raise ConnectionLost(
                f"connection {self.name!r} -> {conn.peer_name!r} ({self.address}) lost: "
                f"{conn.close_reason}"
            )

    def snapshot(self) -> dict[str, Any]:
        conn = self.connection
        return {
            "kind": "connection",
            "address": self.address,
            "peer": conn.peer_name if conn is not None else None,
        }
