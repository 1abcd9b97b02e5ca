"""`ReplicaLinks`: a client's connections to the replicas, one per address.

Dialed on first use and shared by every batch and subscription of the client that
goes to that replica; a link that failed is forgotten, and the next use dials again.
What the replicas send back on them (subscription events) goes to the ``handler``
the client gives.
"""

from __future__ import annotations

from typing import Any

import trio

import transport

__all__ = ["ReplicaLinks"]


class ReplicaLinks:
    def __init__(self, token: bytes | str, *, name: str, handler: transport.Handler) -> None:
        self._token = token
        self._name = name
        self._handler = handler
        self._conns: dict[str, Any] = {}
        self._dialing: dict[str, trio.Lock] = {}

    def __len__(self) -> int:
        return len(self._conns)

    async def get(self, address: str) -> Any:
        """The open link to ``address``, dialed now if there is none."""
        conn = self._conns.get(address)
        if conn is not None and not conn.closed:
            return conn
        lock = self._dialing.setdefault(address, trio.Lock())
        async with lock:
            conn = self._conns.get(address)
            if conn is None or conn.closed:
                conn = await transport.connect(address, self._token, name=self._name,
                                               handler=self._handler, connect_timeout=2.0)
                self._conns[address] = conn
        return conn

    def forget(self, address: str, conn: Any) -> None:
        """``conn`` to ``address`` failed: the next use dials anew. (If dialing
        failed, nothing was kept: there is nothing to forget.)"""
        if conn is not None and self._conns.get(address) is conn:
            del self._conns[address]

    async def aclose(self) -> None:
        conns = list(self._conns.values())
        self._conns.clear()
        for conn in conns:
            with trio.move_on_after(1.0):
                await conn.aclose(flush_timeout=0.5)
