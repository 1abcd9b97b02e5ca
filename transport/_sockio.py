"""Non-blocking stdlib socket I/O on Trio: exact reads, full writes, gathered writes.

The transport waits on raw sockets with `trio.lowlevel.wait_readable` /
`wait_writable` and only when the kernel says EAGAIN, so an operation that can
complete at once costs one system call and no pass through the scheduler.
"""

from __future__ import annotations

import socket

import trio

from ._tls import TlsSocket

__all__ = ["recv_exactly", "send_all", "write_chunks"]

_SMALL = 16 * 1024  # chunks below this are joined into one buffer before writing
_IOV_MAX = 512


async def recv_exactly(sock: socket.socket | TlsSocket, n: int) -> bytes:
    """Read exactly ``n`` bytes from a non-blocking socket; `EOFError` if it closes first."""
    if isinstance(sock, TlsSocket):
        return await sock.recv_exactly(n)
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        try:
            k = sock.recv_into(view[got:])
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            continue
        if k == 0:
            raise EOFError(f"connection closed after {got} of {n} bytes")
        got += k
    return bytes(buf)


async def send_all(sock: socket.socket | TlsSocket, data: bytes) -> None:
    """Write all of ``data`` to a non-blocking socket."""
    if isinstance(sock, TlsSocket):
        await sock.send_all(data)
        return
    view = memoryview(data)
    while view:
        try:
            k = sock.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        view = view[k:]


async def write_chunks(sock: socket.socket, chunks: list[bytes | memoryview]) -> int:
    """Write every chunk, in order; return the number of system calls that wrote.

    Runs of small chunks are joined into one buffer; large ones (out-of-band buffers)
    go as their own entries of a ``sendmsg`` (scatter/gather, no copy).
    """
    if len(chunks) == 1:
        iov: list[bytes | memoryview] = chunks
    else:
        iov = []
        small: list[bytes | memoryview] = []
        for c in chunks:
            if len(c) < _SMALL:
                small.append(c)
            else:
                if small:
                    iov.append(b"".join(small) if len(small) > 1 else small[0])
                    small = []
                iov.append(c)
        if small:
            iov.append(b"".join(small) if len(small) > 1 else small[0])
    writes = 0
    i = 0
    n_iov = len(iov)
    while i < n_iov:
        try:
            if i + 1 == n_iov:
                sent = sock.send(iov[i])
            else:
                sent = sock.sendmsg(iov[i : i + _IOV_MAX])
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        writes += 1
        while sent:
            first = iov[i]
            length = len(first)
            if sent >= length:
                sent -= length
                i += 1
            else:
                iov[i] = memoryview(first)[sent:]
                sent = 0
    return writes
