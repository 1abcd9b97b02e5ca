"""A peer process for the transport tests and benchmarks.

    python tests/transport_peer.py serve ADDRESS TOKEN NAME
        serve requests (see `handler`); prints "LISTENING <address>" when ready.
    python tests/transport_peer.py client ADDRESS TOKEN NAME
        connect, make one echo request, print "OK <value>" or "ERROR <type>: <text>".
    python tests/transport_peer.py garbage ADDRESS
        connect without the protocol, send junk, print "CLOSED" when the server hangs up.
    python tests/transport_peer.py raw ADDRESS TOKEN NAME WHAT
        authenticate correctly, then send one bad frame (WHAT: oversized, badkind,
        badpickle, badbuffers, truncated); print what came back.

With ``PEER_TLS_DIR`` set (a directory made by `transport.create_cluster_certs`),
the process's TCP links use TLS with its node.pem/node.key/ca.pem (the process
default, `transport.set_default_tls`).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import trio  # noqa: E402

import transport  # noqa: E402
from transport import _handshake, _sockio, _wire, faults  # noqa: E402


def say(line: str) -> None:
    print(line, flush=True)


class Peer:
    def __init__(self) -> None:
        self.notes = 0
        self.hanging: list[transport.Reply] = []
        self.nursery: trio.Nursery | None = None

    async def handler(self, conn: transport.Connection, msg: Any, reply: transport.Reply | None) -> None:
        if reply is None:  # one-way
            if isinstance(msg, tuple) and msg and msg[0] == "note":
                self.notes += 1
            elif isinstance(msg, tuple) and msg and msg[0] == "request_me":
                # answer a one-way with a request back to the sender (symmetry)
                assert self.nursery is not None
                self.nursery.start_soon(self._request_back, conn, msg[1])
            return
        op, *args = msg
        if op == "echo":
            value = args[0]
            reply.send(pickle.PickleBuffer(value) if isinstance(value, memoryview) else value)
        elif op == "checksum":
            data = memoryview(args[0]).cast("B")
            reply.send((data.nbytes, hashlib.sha256(data).hexdigest(), type(args[0]).__name__))
        elif op == "fail":
            raise ValueError(args[0])
        elif op == "later":  # answered from another task after a delay
            assert self.nursery is not None
            self.nursery.start_soon(self._answer_later, reply, args[0], args[1])
        elif op == "hang":
            self.hanging.append(reply)  # never answered (kept: a dropped reply fails)
        elif op == "pid":
            reply.send(os.getpid())
        elif op == "notes":
            reply.send(self.notes)
        elif op == "faults":  # remote control of this process's fault rules
            reply.send(faults.apply(args[0]))
        elif op == "faults_many":  # several commands at once (before any rule can bite)
            reply.send([faults.apply(command) for command in args[0]])
        elif op == "numpy":
            import numpy

            reply.send(numpy.arange(args[0], dtype=numpy.float64))
        elif op == "flood":  # send N one-way messages back, then answer
            n, payload = args
            for i in range(n):
                await conn.send(("flood", i, payload))
            reply.send(n)
        else:
            raise KeyError(f"unknown op {op!r}")

    async def _answer_later(self, reply: transport.Reply, delay: float, value: Any) -> None:
        await trio.sleep(delay)
        reply.send(value)

    async def _request_back(self, conn: transport.Connection, value: Any) -> None:
        result = await conn.request(("echo", value), timeout=10)
        await conn.send(("requested", result))


async def serve(address: str, token: str, name: str) -> None:
    peer = Peer()
    async with trio.open_nursery() as nursery:
        peer.nursery = nursery
        server = transport.Server(address, token, peer.handler, name=name)
        bound = await nursery.start(server.run)
        say(f"LISTENING {bound}")


async def client(address: str, token: str, name: str) -> None:
    try:
        async with transport.open_connection(address, token, name=name) as conn:
            value = await conn.request(("echo", "hello"), timeout=10)
            say(f"OK {value}")
    except transport.TransportError as exc:
        say(f"ERROR {type(exc).__name__}: {exc}")


async def garbage(address: str) -> None:
    sock = await transport._address.dial(address, 10)
    await _sockio.send_all(sock, os.urandom(4096))
    await _read_until_eof(sock)
    say("CLOSED")


async def _read_until_eof(sock: Any) -> bytes:
    data = b""
    with trio.fail_after(20):
        while True:
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
                continue
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk


async def raw(address: str, token: str, name: str, what: str) -> None:
    sock = await transport._address.dial(address, 10)
    await _handshake.client_handshake(sock, token.encode(), name, 2**31, address)
    header = _wire.HEADER
    if what == "oversized":
        frame = header.pack(2**31, _wire.REQUEST, 0, 1)
    elif what == "badkind":
        frame = header.pack(3, 9, 0, 1) + b"xyz"
    elif what == "badbuffers":
        frame = header.pack(8, _wire.REQUEST, 5, 1) + b"\x00" * 8
    elif what == "truncated":
        frame = header.pack(1000, _wire.REQUEST, 0, 1) + b"\x80\x05"
    elif what == "badpickle":
        # a decodable frame whose pickle is junk: answered with an error, link lives
        junk = b"\x80\x05not a pickle"
        frame = header.pack(len(junk), _wire.REQUEST, 0, 7) + junk
        ok = pickle.dumps(("echo", "still alive"), 5)
        frame += header.pack(len(ok), _wire.REQUEST, 0, 8) + ok
    else:
        raise SystemExit(f"unknown raw mode {what!r}")
    await _sockio.send_all(sock, frame)
    if what == "truncated":
        sock.shutdown(1)  # EOF mid-frame
    data = await _read_until_eof(sock) if what != "badpickle" else await _read_frames(sock, 2)
    say(f"REPLY {data!r}" if data else "CLOSED")


async def _read_frames(sock: Any, n: int) -> list[Any]:
    out = []
    for _ in range(n):
        head = await _sockio.recv_exactly(sock, _wire.HEADER_SIZE)
        body_len, kind, nbufs, rid = _wire.HEADER.unpack(head)
        body = await _sockio.recv_exactly(sock, body_len)
        out.append((kind, rid, _wire.decode_body(memoryview(body), nbufs)))
    return out


def main(argv: list[str]) -> None:
    mode, *args = argv
    tls_dir = os.environ.get("PEER_TLS_DIR")
    if tls_dir:
        transport.set_default_tls(
            transport.TlsConfig(f"{tls_dir}/node.pem", f"{tls_dir}/node.key", f"{tls_dir}/ca.pem")
        )
    if mode == "serve":
        trio.run(serve, *args)
    elif mode == "client":
        trio.run(client, *args)
    elif mode == "garbage":
        trio.run(garbage, *args)
    elif mode == "raw":
        trio.run(raw, *args)
    else:
        raise SystemExit(f"unknown mode {mode!r}; see the module docstring")


if __name__ == "__main__":
    main(sys.argv[1:])
