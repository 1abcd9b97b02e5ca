"""Addresses (``"unix:/abs/path.sock"``, ``"tcp:HOST:PORT"``), dialing and listening.

The connection code works on plain non-blocking stdlib sockets and waits on them with
`trio.lowlevel.wait_readable` / `wait_writable` (see `_connection.py` for why), so this
module hands out stdlib sockets: Trio does the dialing (happy eyeballs for TCP,
cancellation) and the socket is then detached from its Trio wrapper.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct

import attrs
import trio

from ._errors import ConnectError

__all__ = ["Address", "dial", "listen", "parse_address"]


@attrs.frozen
class Address:
    """A parsed address. ``kind`` is ``"unix"`` (``path``) or ``"tcp"`` (``host``, ``port``)."""

    kind: str
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def parse_address(address: str) -> Address:
    """Parse ``"unix:/abs/path"`` or ``"tcp:HOST:PORT"`` (``"tcp::PORT"`` means loopback).

    Raises `ValueError` naming the bad address.
    """
    if not isinstance(address, str):
        raise TypeError(f"address must be a str like 'tcp:127.0.0.1:0', got {address!r}")
    scheme, sep, rest = address.partition(":")
    if not sep:
        raise ValueError(f"bad address {address!r}: expected 'unix:/path' or 'tcp:HOST:PORT'")
    if scheme == "unix":
        if not rest.startswith("/"):
            raise ValueError(f"bad address {address!r}: a unix socket path must be absolute")
        return Address("unix", path=rest)
    if scheme == "tcp":
        host, sep, port_text = rest.rpartition(":")
        if not sep:
            raise ValueError(f"bad address {address!r}: expected 'tcp:HOST:PORT'")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"bad address {address!r}: port {port_text!r} is not a number") from None
        if not 0 <= port <= 65535:
            raise ValueError(f"bad address {address!r}: port {port} out of range")
        return Address("tcp", host=host or "127.0.0.1", port=port)
    raise ValueError(f"bad address {address!r}: unknown scheme {scheme!r} (use 'unix' or 'tcp')")


def _detach(trio_sock: trio.socket.SocketType) -> socket.socket:
    family, type_, proto = trio_sock.family, trio_sock.type, trio_sock.proto
    sock = socket.socket(family, type_, proto, fileno=trio_sock.detach())
    sock.setblocking(False)
    return sock


async def dial(address: str, connect_timeout: float) -> socket.socket:
    """Connect to ``address``; return a non-blocking stdlib socket.

    Raises `ConnectError` (with the `OSError` as cause) when nothing listens there,
    and on timeout.
    """
    addr = parse_address(address)
    try:
        with trio.fail_after(connect_timeout):
            if addr.kind == "unix":
                stream = await trio.open_unix_socket(addr.path)
            else:
                stream = await trio.open_tcp_stream(addr.host, addr.port)
    except trio.TooSlowError:
        raise ConnectError(f"timed out after {connect_timeout}s connecting to {address!r}") from None
    except OSError as exc:
        raise ConnectError(f"cannot connect to {address!r}: {exc}") from exc
    sock = _detach(stream.socket)
    if addr.kind == "tcp":
        refuse_self_connection(sock, address)
        tune_tcp(sock)
    return sock


def refuse_self_connection(sock: socket.socket, address: str) -> None:
    """Close ``sock`` and raise `ConnectError` if it is connected to itself.

    A dial to a local port nobody listens on, in the kernel's ephemeral range (every
    port a listener bound as port 0 had), can be given that same port as its own
    source port: TCP's simultaneous open then connects the socket to itself. Such a
    socket would hold the port -- a restarting server (the GCS coordinator, at the
    address its clients know) could not bind it again until the dial's handshake
    timed out, while the clients retrying that dial could do it again.

    It is closed with an abortive close (``SO_LINGER`` 0: a reset): a plain close
    of a socket connected to itself is an active close on both ends at once, and
    leaves it in ``TIME_WAIT`` for 60 s -- bound to the port without
    ``SO_REUSEADDR`` (a dial's source port), so even a server that sets it could
    not bind the port for that minute.
    """
    try:
        mine, peer = sock.getsockname(), sock.getpeername()
    except OSError:
        return  # not connected after all: the handshake says so
    if mine[:2] == peer[:2]:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        raise ConnectError(f"cannot connect to {address!r}: nothing listens there "
                           f"(the dial was connected to itself)")


def _remove_stale_unix_socket(path: str) -> None:
    """Remove ``path`` if it is a socket file nobody listens on; refuse to clobber others."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path!r} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        os.unlink(path)
        return
    except FileNotFoundError:
        return
    finally:
        probe.close()
    raise OSError(errno.EADDRINUSE, f"another server already listens on unix:{path}")


async def listen(address: str, backlog: int = 1024) -> tuple[trio.socket.SocketType, str]:
    """Bind and listen on ``address``; return the Trio listening socket and the bound address."""
    addr = parse_address(address)
    if addr.kind == "unix":
        _remove_stale_unix_socket(addr.path)
        lsock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            await lsock.bind(addr.path)
            lsock.listen(backlog)
        except BaseException:
            lsock.close()
            raise
        return lsock, str(addr)
    infos = await trio.socket.getaddrinfo(
        addr.host, addr.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    if not infos:
        raise OSError(f"cannot resolve {addr.host!r}")
    family, type_, proto, _, sockaddr = infos[0]
    lsock = trio.socket.socket(family, type_, proto)
    try:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        await lsock.bind(sockaddr)
        lsock.listen(backlog)
        host, port = lsock.getsockname()[:2]
    except BaseException:
        lsock.close()
        raise
    return lsock, str(Address("tcp", host=host, port=port))


def tune_tcp(sock: socket.socket | trio.socket.SocketType) -> None:
    """No Nagle delay; keepalive probes so that a vanished host (no RST, e.g. a
    partition or a powered-off node) ends the connection in ~25 s, not hours."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def detach_accepted(trio_sock: trio.socket.SocketType) -> socket.socket:
    """Turn an accepted Trio socket into a non-blocking stdlib socket (tuned if TCP)."""
    sock = _detach(trio_sock)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        tune_tcp(sock)
    return sock
