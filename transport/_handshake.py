"""Mutual HMAC-SHA256 challenge-response, done before any frame is read.

Frames carry pickles, and unpickling is code execution, so nothing of a peer is
decoded until it has proven it knows the cluster token. The exchange (plain bytes,
never pickled)::

    client -> server   HELLO_C = MAGIC | nonce_c (32) | max_frame u64 | name_len u16 | name
    server -> client   HELLO_S (same layout) | HMAC(token, "server" | HELLO_C | HELLO_S)
    client -> server   HMAC(token, "client" | HELLO_C | HELLO_S)
    server -> client   1 byte verdict: 0x01 accepted, 0x02 refused by a fault rule
                       (a partition under test); else the server closes

Both MACs cover both fresh nonces, both names and both frame limits, so a recorded
exchange cannot be replayed and the names and limits cannot be altered in flight.
The caller bounds the whole exchange with a timeout.

On a TLS link (``_tls``) the same exchange runs inside the TLS stream. A TLS
listener answers a plaintext client with ``MAGIC_NEEDS_TLS`` where its hello would
be; the client reports that as `TlsMismatch`.
"""

from __future__ import annotations

import hmac
import logging
import os
import socket
import struct
from collections.abc import Callable

from ._errors import (
    AuthenticationFailed,
    ConnectError,
    ConnectionLost,
    ProtocolError,
    TlsError,
    TlsMismatch,
)
from ._sockio import recv_exactly, send_all
from ._tls import MAGIC_NEEDS_TLS, TlsSocket

__all__ = ["client_handshake", "server_handshake", "token_bytes"]

logger = logging.getLogger("transport")

MAGIC = b"ACTRPC\x00\x01"
_FIXED = struct.Struct("<8s32sQH")
MAX_NAME = 1024
_ACCEPT = b"\x01"
_REJECT = b"\x00"
_REFUSED = b"\x02"


def token_bytes(token: bytes | str) -> bytes:
    """Normalise a cluster token; an empty token is refused (it would authenticate anyone)."""
    if isinstance(token, str):
        token = token.encode("utf-8")
    if not isinstance(token, bytes | bytearray):
        raise TypeError(f"token must be bytes or str, got {type(token).__name__}")
    if not token:
        raise ValueError("token must not be empty")
    return bytes(token)


def _hello(name: str, max_frame_size: int) -> bytes:
    raw = name.encode("utf-8")
    if len(raw) > MAX_NAME:
        raise ValueError(f"endpoint name is {len(raw)} bytes long; the limit is {MAX_NAME}")
    return _FIXED.pack(MAGIC, os.urandom(32), max_frame_size, len(raw)) + raw


async def _read_hello(sock: socket.socket | TlsSocket, who: str) -> tuple[bytes, str, int]:
    magic = await recv_exactly(sock, len(MAGIC))
    if magic != MAGIC:
        if magic == MAGIC_NEEDS_TLS:
            raise TlsMismatch(
                f"{who} is a TLS listener but this end is plaintext: configure the same "
                f"TLS certificate, key and CA on every node and driver of the cluster"
            )
        raise ProtocolError(f"{who} is not an actorcore transport peer (bad magic {magic!r})")
    fixed = magic + await recv_exactly(sock, _FIXED.size - len(MAGIC))
    magic, _nonce, max_frame, name_len = _FIXED.unpack(fixed)
    if name_len > MAX_NAME:
        raise ProtocolError(f"{who} sent a {name_len}-byte endpoint name (limit {MAX_NAME})")
    raw = await recv_exactly(sock, name_len)
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{who} sent an endpoint name that is not UTF-8") from None
    return fixed + raw, name, max_frame


def _mac(token: bytes, label: bytes, hello_c: bytes, hello_s: bytes) -> bytes:
    return hmac.digest(token, label + hello_c + hello_s, "sha256")


async def client_handshake(
    sock: socket.socket | TlsSocket, token: bytes, name: str, max_frame_size: int, address: str
) -> tuple[str, int]:
    """Authenticate both ways as the dialing side; return (peer name, peer max frame size)."""
    hello_c = _hello(name, max_frame_size)
    try:
        await send_all(sock, hello_c)
        hello_s, peer_name, peer_max = await _read_hello(sock, f"server at {address!r}")
        mac_s = await recv_exactly(sock, 32)
        # Answer even when the server's proof is wrong, so that its log says why.
        await send_all(sock, _mac(token, b"client", hello_c, hello_s))
        if not hmac.compare_digest(mac_s, _mac(token, b"server", hello_c, hello_s)):
            raise AuthenticationFailed(
                f"server {peer_name!r} at {address!r} failed to prove the cluster token"
            )
        try:
            verdict = await recv_exactly(sock, 1)
        except (EOFError, OSError):
            verdict = _REJECT
        if verdict == _REFUSED:
            raise ConnectError(
                f"server {peer_name!r} at {address!r} refused the connection by a fault rule"
            )
        if verdict != _ACCEPT:
            raise AuthenticationFailed(
                f"server {peer_name!r} at {address!r} rejected our token (wrong cluster token?)"
            )
    except (EOFError, OSError) as exc:
        raise ConnectionLost(f"server at {address!r} closed during the handshake: {exc}") from exc
    return peer_name, peer_max


async def server_handshake(
    sock: socket.socket | TlsSocket,
    token: bytes,
    name: str,
    max_frame_size: int,
    peer: str,
    refuse: Callable[[str], str | None] | None = None,
) -> tuple[str, int]:
    """Authenticate both ways as the accepting side; return (peer name, peer max frame size).

    ``refuse(peer_name)`` may return a reason to turn an authenticated peer away
    (fault injection); it then gets the "refused" verdict and `ConnectError` is raised.
    Raises `AuthenticationFailed` (after telling the client) or `ProtocolError`.
    """
    try:
        hello_c, peer_name, peer_max = await _read_hello(sock, f"client {peer}")
        hello_s = _hello(name, max_frame_size)
        await send_all(sock, hello_s + _mac(token, b"server", hello_c, hello_s))
        mac_c = await recv_exactly(sock, 32)
        if not hmac.compare_digest(mac_c, _mac(token, b"client", hello_c, hello_s)):
            try:
                await send_all(sock, _REJECT)  # bounded by the caller's timeout
            except (OSError, TlsError) as exc:
                logger.debug("could not tell %s it was rejected: %s", peer, exc)
            raise AuthenticationFailed(
                f"client {peer_name!r} ({peer}) failed to prove the cluster token"
            )
        reason = refuse(peer_name) if refuse is not None else None
        if reason is not None:
            await send_all(sock, _REFUSED)
            raise ConnectError(f"refused {peer_name!r} ({peer}): {reason}")
        await send_all(sock, _ACCEPT)
    except (EOFError, OSError) as exc:
        raise ConnectionLost(f"client {peer} closed during the handshake: {exc}") from exc
    return peer_name, peer_max
