"""The accepting side: `Server`, a child-protocol service."""

from __future__ import annotations

import errno
import inspect
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

import attrs
import trio

from . import faults
from ._address import Address, detach_accepted, listen, parse_address
from ._client import _check_frame_size
from ._connection import DEFAULT_MAX_FRAME_SIZE, Connection, Handler
from ._errors import (
    AuthenticationFailed,
    ConnectError,
    ConnectionLost,
    InsecureListener,
    ProtocolError,
    TlsError,
    TlsMismatch,
)
from ._handshake import server_handshake, token_bytes
from ._tls import (
    DEFAULT,
    MAGIC_NEEDS_TLS,
    MAGIC_NO_TLS,
    TLS_HANDSHAKE_BYTE,
    TlsConfig,
    TlsSocket,
    _Default,
    insecure_allowed,
    is_loopback_host,
    refuse_mismatch,
    resolve_tls,
    server_tls,
)

__all__ = ["Server", "ServerStatistics"]

logger = logging.getLogger("transport")

#: Seconds a server tries again to listen on a fixed TCP port that is in use.
BIND_RETRY = 5.0

ConnectionCallback = Callable[[Connection], Any]


@attrs.frozen
class ServerStatistics:
    name: str
    address: str
    listening: bool
    connections: int
    accepted: int
    authentication_failures: int
    handshake_failures: int
    tls: bool = False
    tls_failures: int = 0


def _describe_peer(sock: socket.socket | trio.socket.SocketType, raw_address: Any) -> str:
    if sock.family == socket.AF_UNIX:
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _gid = struct.unpack("3i", creds)
            return f"unix peer pid={pid} uid={uid}"
        except (OSError, AttributeError):
            return "unix peer"
    if isinstance(raw_address, tuple) and len(raw_address) >= 2:
        return str(Address("tcp", host=raw_address[0], port=raw_address[1]))
    return repr(raw_address)


def _close(tsock: trio.socket.SocketType, sock: socket.socket | TlsSocket | None) -> None:
    (tsock if sock is None else sock).close()


class Server:
    """Accepts authenticated connections and serves each with ``handler``.

    A child-protocol service: ``address = await nursery.start(server.run)`` binds,
    listens and returns the bound address (``"tcp:127.0.0.1:40123"`` for a requested
    port 0). Cancelling `run` closes the listener, every connection (unless they run
    in a ``connection_nursery`` of their own, see `run`), and removes the Unix socket
    file. Run again (a supervisor restart), it binds the same address, including the
    port first chosen for a port-0 address when that is still free.

    TLS: on a TCP address the server runs every connection inside TLS 1.3 with mutual
    certificates when it has a `TlsConfig` (``tls=``, else the process default, see
    `set_default_tls`); the token handshake then runs inside TLS. A peer of the other
    mode gets a plaintext marker saying so and is disconnected (`TlsMismatch` on its
    side); the server keeps serving. A plaintext server refuses to listen on a
    non-loopback address (`InsecureListener`) unless ``insecure=True`` (or the process
    default allows it): frames carry pickles, and the network would carry them in
    clear. Unix sockets are always plaintext (their directory keeps others out) and
    the socket file is made owner-only (0600).

    ``on_connect(conn)`` / ``on_disconnect(conn)`` may be plain or async callables.
    ``on_connect`` runs before the connection's tasks start, so no message of the peer
    is handled before it returns; it may queue messages (``send_nowait``) but must not
    wait for a reply (start a task for that). If it raises, that connection is closed.
    """

    def __init__(
        self,
        address: str,
        token: bytes | str,
        handler: Handler | None,
        *,
        name: str = "server",
        max_frame_size: int = DEFAULT_MAX_FRAME_SIZE,
        on_connect: ConnectionCallback | None = None,
        on_disconnect: ConnectionCallback | None = None,
        handshake_timeout: float = 10.0,
        tls: TlsConfig | None | _Default = DEFAULT,
        insecure: bool | None = None,
    ) -> None:
        parse_address(address)  # validate early, naming the bad address
        resolve_tls(tls)  # validate the type early
        self._tls_arg = tls
        self._insecure_arg = insecure
        self._tls: TlsConfig | None = None
        self._requested = address
        self._token = token_bytes(token)
        self._handler = handler
        self.name = name
        self._max_frame_size = _check_frame_size(max_frame_size)
        self._on_connect = on_connect
        self._on_disconnect = on_disconnect
        self._handshake_timeout = handshake_timeout
        self._bound: str | None = None
        self._listening = False
        self._connections: set[Connection] = set()
        self._accepted = 0
        self._auth_failures = 0
        self._handshake_failures = 0
        self._tls_failures = 0

    @property
    def address(self) -> str:
        """The bound address once listening (else the requested one)."""
        return self._bound or self._requested

    @property
    def connections(self) -> tuple[Connection, ...]:
        """The open, authenticated connections."""
        return tuple(self._connections)

    def statistics(self) -> ServerStatistics:
        return ServerStatistics(
            name=self.name,
            address=self.address,
            listening=self._listening,
            connections=len(self._connections),
            accepted=self._accepted,
            authentication_failures=self._auth_failures,
            handshake_failures=self._handshake_failures,
            tls=self._tls is not None,
            tls_failures=self._tls_failures,
        )

    def snapshot(self) -> dict[str, Any]:
        return {
            "kind": "rpc_server",
            "address": self.address,
            "connections": len(self._connections),
            "tls": self._tls is not None,
        }

    async def _bind(self) -> tuple[trio.socket.SocketType, str]:
        if self._bound is not None and self._bound != self._requested:
            try:
                return await listen(self._bound)
            except OSError:
                pass  # the port we had is taken now: pick a fresh one
        return await self._listen_fixed(self._requested)

    async def _listen_fixed(self, address: str) -> tuple[trio.socket.SocketType, str]:
        """Listen on ``address``; a fixed TCP port in use is tried again for up to
        ``BIND_RETRY`` seconds before the error is raised. A server restarted at the
        address its clients know (the GCS coordinator) finds its port held for a
        moment at times: by a dial that the kernel gave that free port as its own
        source port while the server was down, or a peer's socket closing."""
        addr = parse_address(address)
        deadline = trio.current_time() + BIND_RETRY
        delay = 0.02
        while True:
            try:
                return await listen(address)
            except OSError as exc:
                if (exc.errno != errno.EADDRINUSE or addr.kind != "tcp" or not addr.port
                        or trio.current_time() + delay > deadline):
                    raise
            logger.info("%s: %s is in use; trying again in %.2f s", self.name, address, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _check_security(self, addr: Address, *, warn: bool) -> None:
        """Refuse a plaintext listener on a non-loopback TCP address (unless insecure)."""
        if addr.kind != "tcp" or self._tls is not None:
            return
        insecure = insecure_allowed() if self._insecure_arg is None else self._insecure_arg
        if is_loopback_host(addr.host):
            return
        if insecure:
            if not warn:
                return
            logger.warning(
                "%s: listening on %s WITHOUT TLS (insecure): frames, which carry pickled "
                "values, cross the network in clear", self.name, addr,
            )
            return
        raise InsecureListener(
            f"{self.name}: refusing to listen on {addr} without TLS: it is not a loopback "
            f"address, and frames carry pickled values (whoever can read or write them on "
            f"the network can read the data or run code here). Give a TlsConfig (cert, key "
            f"and the cluster CA) to enable TLS, or pass insecure=True to allow plaintext "
            f"on a trusted network"
        )

    async def run(
        self,
        *,
        connection_nursery: trio.Nursery | None = None,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen and serve until cancelled.

        ``connection_nursery``: where accepted connections run. By default they run
        inside this call, so cancelling it closes them all. Given a longer-lived
        nursery, they outlive the listener: a listener that crashes and is run again
        drops no established connection (their peers never notice), and they close
        when that nursery is cancelled.
        """
        requested = parse_address(self._requested)
        self._tls = resolve_tls(self._tls_arg) if requested.kind == "tcp" else None
        if self._tls is not None:
            self._tls.check()  # a bad file fails here, naming it, not at the first peer
        else:
            self._check_security(requested, warn=False)
        lsock, bound = await self._bind()
        self._bound = bound
        addr = parse_address(bound)
        try:
            self._check_security(addr, warn=True)  # the bound address (a name resolved)
            if addr.kind == "unix":
                os.chmod(addr.path, 0o600)
        except BaseException:
            lsock.close()
            raise
        inode = os.stat(addr.path).st_ino if addr.kind == "unix" else None
        self._listening = True
        logger.debug("%s listening on %s%s", self.name, bound, " (TLS)" if self._tls else "")
        try:
            async with trio.open_nursery() as nursery:
                task_status.started(bound)
                while True:
                    try:
                        tsock, raw_address = await lsock.accept()
                    except OSError as exc:  # e.g. out of file descriptors: back off, go on
                        logger.error("%s: accept failed on %s: %s", self.name, bound, exc)
                        await trio.sleep(0.1)
                        continue
                    self._accepted += 1
                    (connection_nursery or nursery).start_soon(self._serve, tsock, raw_address)
        finally:
            self._listening = False
            lsock.close()
            if inode is not None:
                try:
                    if os.stat(addr.path).st_ino == inode:
                        os.unlink(addr.path)
                except FileNotFoundError:
                    pass

    def _refused(self, peer_name: str) -> str | None:
        rule = faults.refused(self.name, peer_name)
        return None if rule is None else f"fault rule {rule}"

    async def _secure(self, tsock: trio.socket.SocketType, peer: str) -> socket.socket | TlsSocket:
        """The accepted socket ready for the token handshake: a plain stdlib socket, or
        TLS set up. A TCP peer's first byte tells its mode (see ``_tls``); a peer of the
        other mode is told so and refused with `TlsMismatch`."""
        if tsock.family == socket.AF_UNIX:
            return detach_accepted(tsock)
        try:
            first = await tsock.recv(1, socket.MSG_PEEK)
        except OSError as exc:
            tsock.close()
            raise ConnectionLost(f"client {peer} vanished before the handshake: {exc}") from exc
        if not first:
            tsock.close()
            raise ConnectionLost(f"client {peer} closed before the handshake")
        speaks_tls = first[0] == TLS_HANDSHAKE_BYTE
        if self._tls is None:
            if speaks_tls:
                await refuse_mismatch(tsock, MAGIC_NO_TLS)
                raise TlsMismatch(
                    f"client {peer} speaks TLS but this listener is plaintext; told it so"
                )
            return detach_accepted(tsock)
        if not speaks_tls:
            await refuse_mismatch(tsock, MAGIC_NEEDS_TLS)
            raise TlsMismatch(
                f"client {peer} is plaintext but this listener requires TLS; told it so"
            )
        sock = detach_accepted(tsock)
        try:
            tls = await server_tls(sock, self._tls, peer)
        except BaseException:
            sock.close()
            raise
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s: TLS with %s: %s", self.name, peer, tls.describe())
        return tls

    async def _serve(self, tsock: trio.socket.SocketType, raw_address: Any) -> None:
        peer = _describe_peer(tsock, raw_address)
        sock: socket.socket | TlsSocket | None = None
        try:
            with trio.fail_after(self._handshake_timeout):
                sock = await self._secure(tsock, peer)
                peer_name, peer_max = await server_handshake(
                    sock, self._token, self.name, self._max_frame_size, peer, self._refused
                )
        except trio.TooSlowError:
            self._handshake_failures += 1
            logger.warning(
                "%s: %shandshake with %s timed out after %ss; disconnected",
                self.name, "TLS/" if self._tls else "", peer, self._handshake_timeout,
            )
            _close(tsock, sock)
            return
        except TlsError as exc:
            self._tls_failures += 1
            logger.warning("%s: %s; disconnected", self.name, exc)
            _close(tsock, sock)
            return
        except AuthenticationFailed as exc:
            self._auth_failures += 1
            logger.warning("%s: authentication failed, disconnected: %s", self.name, exc)
            _close(tsock, sock)
            return
        except ConnectError as exc:  # a fault rule turned it away
            logger.info("%s: %s", self.name, exc)
            _close(tsock, sock)
            return
        except (ProtocolError, ConnectionLost) as exc:
            self._handshake_failures += 1
            logger.warning("%s: bad handshake from %s, disconnected: %s", self.name, peer, exc)
            _close(tsock, sock)
            return
        except BaseException:
            _close(tsock, sock)
            raise
        conn = Connection(
            sock,
            name=self.name,
            peer_name=peer_name,
            peer_address=peer,
            peer_max_frame_size=peer_max,
            max_frame_size=self._max_frame_size,
            handler=self._handler,
        )
        self._connections.add(conn)
        try:
            if self._on_connect is not None:
                try:
                    result = self._on_connect(conn)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    logger.exception("%s: on_connect failed for %r; closing it", self.name, peer_name)
                    await conn.aclose(flush_timeout=0)
            await conn.run()
        finally:
            self._connections.discard(conn)
            conn.reset("server stopped")
            if self._on_disconnect is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(5):
                    try:
                        result = self._on_disconnect(conn)
                        if inspect.isawaitable(result):
                            await result
                    except Exception:
                        logger.exception("%s: on_disconnect failed for %r", self.name, peer_name)
