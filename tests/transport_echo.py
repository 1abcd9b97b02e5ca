"""An echo server's handler for the transport tests within one process
(``test_transport_local``, ``test_transport_services``; the ``echo_server`` fixture
of ``conftest`` runs it)."""

from __future__ import annotations

import threading
from typing import Any

import trio

import transport

TOKEN = b"local-token"


class Echo:
    """A server handler: ("echo", x), ("fail", text), ("hang",), ("block",), ("close",)."""

    def __init__(self) -> None:
        self.oneways: list[Any] = []
        self.hanging: list[transport.Reply] = []
        self.release = trio.Event()
        self.got_oneway = trio.Event()

    async def __call__(self, conn: transport.Connection, msg: Any, reply: transport.Reply | None) -> None:
        if reply is None:
            self.oneways.append(msg)
            self.got_oneway.set()
            if msg == "raise":
                raise RuntimeError("one-way handler failed")
            if msg == "block":
                await self.release.wait()
            return
        op, *args = msg
        if op == "echo":
            reply.send(args[0])
        elif op == "fail":
            raise KeyError(args[0])
        elif op == "hang":
            self.hanging.append(reply)  # answered never, but kept
        elif op == "close":
            await conn.aclose()
        elif op == "unpicklable":
            reply.send(threading.Lock())
        elif op == "ignore":
            pass  # returns without answering and keeps no reference to the reply
        elif op == "twice":
            reply.send(1)
            reply.send(2)
