"""TLS 1.3 with mutual certificates for TCP links, through `trio.SSLStream`.

Why
---
The token handshake (``_handshake``) proves that both ends know the cluster token,
but after it frames cross the network in clear and without a per-frame MAC: anyone
on the path can read the pickled values and write frames of their own into an
authenticated connection, and unpickling a frame is running code. On one machine
(loopback, Unix sockets in an owner-only directory) that is acceptable; between
machines it is not. So every TCP link can run inside TLS 1.3: both ends present a
certificate signed by the cluster's CA (mutual TLS), and the token handshake then
runs *inside* the TLS stream, so a peer needs both a certificate the cluster CA signed
and the token. Unix sockets always stay plain.

Identity is "signed by the cluster CA": host names are not checked, because the CA
is the cluster's own (``actorcore tls init`` makes one per cluster) and nodes join
from addresses nobody knows in advance. The CA file is the only trust root (no
system CAs are loaded).

Telling the two modes apart
---------------------------
A TLS client speaks first with a ClientHello (its first byte is 0x16, a TLS
handshake record); a plaintext client speaks first with our ``MAGIC`` (``b"A..."``).
The listener peeks at the first byte and, when the modes differ, answers with an
8-byte plaintext marker and closes (the listener keeps serving):

* ``MAGIC_NEEDS_TLS`` to a plaintext client: its token handshake reads it where the
  server's hello should be and raises `TlsMismatch`;
* ``MAGIC_NO_TLS`` to a TLS client: its TLS handshake fails on it, and the client,
  which records the first bytes it received, recognises the marker and raises
  `TlsMismatch` instead of an opaque SSL error.

The markers say nothing but "the other mode": no secret, no pickle.

Driving the stream
------------------
`Connection` drives a non-blocking socket with synchronous ``recv_into`` calls that
raise `BlockingIOError` when nothing is there, and waits for input separately (see
``_connection.py``: that is what keeps a round trip on a Unix socket at tens of µs).
`TlsSocket` has the same shape over an `SSLStream`: ``wait_readable`` awaits one
``receive_some`` (decrypted bytes) into a buffer, ``recv_into`` hands them out and
raises `BlockingIOError` once they are used up. Writes go through ``write_chunks``
(the writer task only: a TLS connection has no direct write from the sender, since
`SSLStream.send_all` is not synchronous), in slices of at most 256 KiB so that a
large out-of-band buffer is not encrypted into memory all at once. `SSLStream` allows
one ``receive_some`` and one ``send_all`` at the same time, which is exactly our
reader and writer.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import os
import socket
import ssl
import threading
from typing import Any

import attrs
import trio

from ._errors import ConnectionLost, TlsError, TlsMismatch

__all__ = [
    "DEFAULT",
    "MAGIC_NEEDS_TLS",
    "MAGIC_NO_TLS",
    "TlsConfig",
    "TlsSocket",
    "default_tls",
    "insecure_allowed",
    "is_loopback_host",
    "resolve_tls",
    "set_default_tls",
]

logger = logging.getLogger("transport")

#: Sent in clear by a TLS listener to a plaintext peer, and the reverse.
MAGIC_NEEDS_TLS = b"ACTRPC\x00T"
MAGIC_NO_TLS = b"ACTRPC\x00P"
#: The first byte of a TLS record carrying a handshake message (a ClientHello).
TLS_HANDSHAKE_BYTE = 0x16

_WRITE_SLICE = 256 * 1024
_SMALL = 16 * 1024
_RECV = 256 * 1024


def _path(value: Any) -> str:
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise TypeError(f"TlsConfig paths must be non-empty str or path-like, got {value!r}")
    return os.path.abspath(os.fspath(value))


@attrs.frozen
class TlsConfig:
    """Where a process's TLS material lives (PEM files; paths made absolute).

    ``cert``: this end's certificate (chain), signed by the cluster CA.
    ``key``: its private key (keep it owner-only, mode 0600).
    ``ca``: the cluster CA's certificate: the only trust root; a peer must present a
    certificate it signed.

    The same config serves both sides of a link (mutual TLS). Files are read when a
    link first needs them and again whenever one of them changes on disk; `check`
    reads them now and raises `TlsError` naming the file that is missing or bad.
    """

    cert: str = attrs.field(converter=_path)
    key: str = attrs.field(converter=_path)
    ca: str = attrs.field(converter=_path)

    def check(self) -> None:
        """Load the files now; raise `TlsError` naming the one that fails."""
        _context(self, server_side=True)
        _context(self, server_side=False)

    def as_dict(self) -> dict[str, str]:
        return {"cert": self.cert, "key": self.key, "ca": self.ca}


# ---------------------------------------------------------------- process default
#
# The TLS mode is a property of a cluster, so of each process in it (node, GCS
# replica, driver): every TCP link a process opens or accepts must use it. Rather
# than thread the config through every call site that dials or listens (and risk one
# left in clear), a process sets it once at start-up and `Server`, `Client`,
# `connect` and `open_connection` use it unless given ``tls=`` explicitly (tests and
# tools that need a particular mode pass it). ``tls=None`` means plaintext.


class _Default(enum.Enum):
    TOKEN = 0


#: ``tls=DEFAULT``: use the process default (`set_default_tls`).
DEFAULT = _Default.TOKEN

_default_tls: TlsConfig | None = None
_insecure = False


def set_default_tls(tls: TlsConfig | None, *, insecure: bool = False) -> None:
    """Set this process's TLS mode for TCP links (``None``: plaintext).

    ``insecure=True`` allows a plaintext listener on a non-loopback address (refused
    otherwise, see `Server`).
    """
    global _default_tls, _insecure
    if tls is not None and not isinstance(tls, TlsConfig):
        raise TypeError(f"tls must be a TlsConfig or None, got {tls!r}")
    _default_tls = tls
    _insecure = bool(insecure)


def default_tls() -> TlsConfig | None:
    """This process's TLS mode for TCP links (``None``: plaintext)."""
    return _default_tls


def insecure_allowed() -> bool:
    """Whether this process may listen in plaintext on a non-loopback address."""
    return _insecure


def resolve_tls(tls: TlsConfig | None | _Default) -> TlsConfig | None:
    """``tls`` as given, or the process default for `DEFAULT`."""
    if tls is DEFAULT:
        return _default_tls
    if tls is not None and not isinstance(tls, TlsConfig):
        raise TypeError(f"tls must be a TlsConfig, None or transport.DEFAULT, got {tls!r}")
    return tls


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (an IP address or a name) only reaches this machine.

    A name counts as loopback when every address it resolves to is; one that does
    not resolve does not.
    """
    host = host.strip("[]")
    if host in ("", "localhost"):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return bool(infos) and all(
        ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]).is_loopback for info in infos
    )


# ---------------------------------------------------------------- SSL contexts

_contexts: dict[tuple[Any, ...], ssl.SSLContext] = {}
_contexts_lock = threading.Lock()


def _stamp(path: str, what: str) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise TlsError(f"TLS {what} file {path!r} cannot be read: {exc.strerror}") from exc
    return st.st_mtime_ns, st.st_size


def _context(config: TlsConfig, *, server_side: bool) -> ssl.SSLContext:
    """The (cached) SSL context of ``config`` for one side; rebuilt when a file changes."""
    key = (
        config,
        server_side,
        _stamp(config.cert, "certificate"),
        _stamp(config.key, "private key"),
        _stamp(config.ca, "CA certificate"),
    )
    with _contexts_lock:
        ctx = _contexts.get(key)
        if ctx is not None:
            return ctx
    ctx = _build_context(config, server_side=server_side)
    with _contexts_lock:
        for old in [k for k in _contexts if k[:2] == key[:2]]:
            del _contexts[old]
        _contexts[key] = ctx
    return ctx


def _build_context(config: TlsConfig, *, server_side: bool) -> ssl.SSLContext:
    try:
        mode = os.stat(config.key).st_mode & 0o777
    except OSError:
        mode = 0
    if mode & 0o077:
        logger.warning(
            "TLS private key %s is readable by other users (mode %o): chmod 600 it",
            config.key, mode,
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # identity is "signed by the cluster CA" (module docstring)
    ctx.verify_mode = ssl.CERT_REQUIRED
    if server_side:
        ctx.num_tickets = 0  # nothing to resume: links are long-lived
    try:
        ctx.load_verify_locations(cafile=config.ca)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load the TLS CA certificate {config.ca!r}: {exc}") from exc
    try:
        ctx.load_cert_chain(config.cert, config.key)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(
            f"cannot load the TLS certificate {config.cert!r} with its key {config.key!r} "
            f"(not PEM, or the key does not match the certificate?): {exc}"
        ) from exc
    return ctx


# ---------------------------------------------------------------- the stream


class _SocketStream(trio.abc.Stream):
    """The TCP stream under an `SSLStream`: a non-blocking stdlib socket driven like
    the rest of the transport (try the call, wait only on EAGAIN), rather than
    `trio.SocketStream`, whose every call passes through the scheduler (`SSLStream`
    already checkpoints once per operation). It also remembers the first bytes it
    received, so that a failed TLS handshake can tell a plaintext listener's marker
    from other trouble."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.first = b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        sock = self.sock
        view = memoryview(data)
        while view:
            try:
                k = sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"send failed: {exc}") from exc
            view = view[k:]

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.wait_writable(self.sock)

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        sock = self.sock
        while True:
            try:
                data = sock.recv(max_bytes or _RECV)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except OSError as exc:
                raise trio.BrokenResourceError(f"receive failed: {exc}") from exc
            if len(self.first) < len(MAGIC_NO_TLS):
                self.first += data[: len(MAGIC_NO_TLS) - len(self.first)]
            return data

    def close(self) -> None:
        try:
            trio.lowlevel.notify_closing(self.sock)
        except (RuntimeError, OSError):  # outside a Trio run, or already closed
            pass
        self.sock.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


def _ssl_reason(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__ or exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return cause.verify_message or str(cause)
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    return str(cause) or type(cause).__name__


class TlsSocket:
    """An `SSLStream` shaped like the non-blocking socket `Connection` drives
    (see the module docstring)."""

    def __init__(
        self,
        stream: trio.SSLStream[Any],
        raw: _SocketStream,
        peer: str,
        client_cert: str | None = None,
    ) -> None:
        self.stream = stream
        self._raw = raw
        self.peer = peer
        self._client_cert = client_cert  # ours, on the dialing side
        self._received = False
        self._buf: memoryview | None = None
        self._eof = False
        self.family = raw.sock.family

    # -- as Connection's reader sees it

    def recv_into(self, view: memoryview) -> int:
        buf = self._buf
        if buf is not None:
            n = min(len(view), len(buf))
            view[:n] = buf[:n]
            self._buf = buf[n:] if n < len(buf) else None
            return n
        if self._eof:
            return 0
        raise BlockingIOError

    async def wait_readable(self) -> None:
        """Wait until `recv_into` has decrypted bytes (or the end) to give."""
        if self._buf is not None or self._eof:
            return
        try:
            data = await self.stream.receive_some(_RECV)
        except trio.BrokenResourceError as exc:
            raise ConnectionResetError(f"TLS link to {self.peer} broke: {_ssl_reason(exc)}") from exc
        if data:
            self._buf = memoryview(data)
        else:
            self._eof = True

    async def write_chunks(self, chunks: list[bytes | memoryview]) -> int:
        """Write every chunk in order (small ones joined, large ones in slices);
        return the number of writes."""
        writes = 0
        small: list[bytes | memoryview] = []
        try:
            for c in chunks:
                if len(c) < _SMALL:
                    small.append(c)
                    continue
                if small:
                    await self.stream.send_all(b"".join(small))
                    writes += 1
                    small = []
                view = memoryview(c).cast("B")
                for start in range(0, len(view), _WRITE_SLICE):
                    await self.stream.send_all(view[start : start + _WRITE_SLICE])
                    writes += 1
            if small:
                await self.stream.send_all(b"".join(small) if len(small) > 1 else small[0])
                writes += 1
        except trio.BrokenResourceError as exc:
            raise ConnectionResetError(f"TLS link to {self.peer} broke: {_ssl_reason(exc)}") from exc
        return writes

    def close(self) -> None:
        """Close the TCP socket at once (no TLS close_notify: frames are
        length-prefixed, so a truncated stream is seen as a lost link anyway)."""
        self._raw.close()

    def fileno(self) -> int:
        return self._raw.sock.fileno()

    # -- as the token handshake sees it

    async def recv_exactly(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            if self._buf is None and not self._eof:
                try:
                    await self.wait_readable()
                except ConnectionResetError as exc:
                    raise TlsError(self._refusal(exc)) from exc.__cause__
            if self._eof:
                if not self._received and self._client_cert is not None:
                    # The server closed right after the TLS handshake, before its
                    # hello: in TLS 1.3 the server checks our certificate after our
                    # side of the handshake is done, and trio sends no alert when
                    # that check fails, so this is what a refused certificate looks like.
                    raise TlsError(
                        f"{self.peer} closed the TLS link before the token handshake: it "
                        f"most likely did not accept our certificate {self._client_cert!r} "
                        f"(is it signed by the cluster CA that server trusts?)"
                    )
                raise EOFError(f"connection closed after {len(out)} of {n} bytes")
            buf = self._buf
            assert buf is not None
            self._received = True
            take = min(n - len(out), len(buf))
            out += buf[:take]
            self._buf = buf[take:] if take < len(buf) else None
        return bytes(out)

    async def send_all(self, data: bytes) -> None:
        try:
            await self.stream.send_all(data)
        except trio.BrokenResourceError as exc:
            raise TlsError(self._refusal(exc)) from exc

    def _refusal(self, exc: BaseException) -> str:
        cause = exc.__cause__ or exc
        reason = _ssl_reason(cause)
        if "alert" in reason.lower():
            return (
                f"{self.peer} refused our TLS certificate ({reason}): is it signed by "
                f"the cluster CA the peer trusts?"
            )
        return f"TLS link to {self.peer} broke during the token handshake: {reason}"

    def describe(self) -> str:
        """``"TLSv1.3 TLS_AES_256_GCM_SHA384"``, for logs and statistics."""
        cipher = self.stream.cipher()
        return f"{self.stream.version()} {cipher[0] if cipher else '?'}"


async def client_tls(sock: socket.socket, tls: TlsConfig, address: str) -> TlsSocket:
    """Run the TLS handshake as the dialing side over ``sock`` (a connected TCP socket).

    The caller bounds it with its connect timeout (and closes ``sock`` if it fails).
    Raises `TlsMismatch` when the server is a plaintext listener, `TlsError` when the
    handshake fails (e.g. the server's certificate is not signed by our CA).
    """
    ctx = _context(tls, server_side=False)
    raw = _SocketStream(sock)
    stream = trio.SSLStream(raw, ctx, server_side=False, https_compatible=True)
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        if raw.first == MAGIC_NO_TLS:
            raise TlsMismatch(
                f"the server at {address!r} is a plaintext listener but this end uses TLS "
                f"(cert {tls.cert!r}): every node and driver of a cluster must use the same "
                f"mode"
            ) from None
        if raw.first.startswith(MAGIC_NEEDS_TLS[:6]):
            raise TlsMismatch(
                f"the server at {address!r} answered in plaintext to our TLS handshake"
            ) from None
        reason = _ssl_reason(exc)
        if isinstance(exc.__cause__, ssl.SSLCertVerificationError):
            raise TlsError(
                f"TLS handshake with {address!r} failed: the server's certificate is not "
                f"accepted by our CA {tls.ca!r}: {reason}"
            ) from exc.__cause__
        if not raw.first:
            raise ConnectionLost(
                f"server at {address!r} closed during the TLS handshake ({reason})"
            ) from exc
        raise TlsError(f"TLS handshake with {address!r} failed: {reason}") from exc.__cause__
    return TlsSocket(stream, raw, f"server at {address!r}", client_cert=tls.cert)


async def server_tls(sock: socket.socket, tls: TlsConfig, peer: str) -> TlsSocket:
    """Run the TLS handshake as the accepting side (the first byte was a ClientHello).

    Raises `TlsError` naming the peer and the reason (no certificate, not signed by
    the cluster CA, ...). The caller bounds it with its handshake timeout (and closes
    ``sock`` if it fails).
    """
    ctx = _context(tls, server_side=True)
    raw = _SocketStream(sock)
    stream = trio.SSLStream(raw, ctx, server_side=True, https_compatible=True)
    try:
        await stream.do_handshake()
    except trio.BrokenResourceError as exc:
        raise TlsError(f"TLS handshake with {peer} failed: {_ssl_reason(exc)}") from exc.__cause__
    return TlsSocket(stream, raw, f"client {peer}")


async def refuse_mismatch(tsock: trio.socket.SocketType, marker: bytes) -> None:
    """Tell a peer of the other mode so in clear, read what it sent, and close.

    Reading its first bytes first makes the close a FIN rather than a reset (a
    reset may destroy the marker before the peer reads it).
    """
    try:
        await tsock.send(marker)
        with trio.move_on_after(0.5):
            await tsock.recv(65536)
        tsock.shutdown(socket.SHUT_WR)
        with trio.move_on_after(0.5):
            while await tsock.recv(65536):
                pass
    except OSError as exc:
        logger.debug("telling a peer of the other TLS mode failed: %s", exc)
    finally:
        tsock.close()
