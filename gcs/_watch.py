"""`HeldReplies`: keep never-answered "watch" requests alive (and small reply helpers).

Liveness trick used throughout the GCS: a peer sends a request that is never
answered; when the link dies, the transport fails it at once, which is the fastest
possible death notice (no polling). The transport fails a request whose `Reply` is
dropped unanswered (garbage collected), so the receiving side must hold it: here,
per connection, at most ``per_conn`` of them (an older one is answered with ``None``,
which its asker treats as "re-check", never as data).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import trio

import transport

__all__ = ["HeldReplies", "aclose_quietly", "answer", "answer_nowait"]


class HeldReplies:
    def __init__(self, per_conn: int = 8) -> None:
        self.per_conn = per_conn
        self._by_conn: dict[int, tuple[Any, deque[Any]]] = {}

    def hold(self, conn: Any, reply: Any) -> None:
        if reply is None:
            return
        entry = self._by_conn.get(id(conn))
        if entry is None or entry[0] is not conn:
            self._prune()
            entry = self._by_conn[id(conn)] = (conn, deque())
        held = entry[1]
        held.append(reply)
        while len(held) > self.per_conn:
            try:
                held.popleft().send(None)
            except (transport.TransportError, RuntimeError):
                pass

    def _prune(self) -> None:
        for key, (conn, _) in list(self._by_conn.items()):
            if conn.closed:
                del self._by_conn[key]

    def __len__(self) -> int:
        return sum(len(held) for _, held in self._by_conn.values())


# Replies and closes that tolerate a peer that is already gone (replicas, chain links).


async def answer(reply: Any, value: Any) -> None:
    if reply is None:
        return
    answer_nowait(reply, value)


def answer_nowait(reply: Any, value: Any) -> None:
    try:
        reply.send(value)
    except transport.TransportError:
        pass  # the asker is gone; it will retry elsewhere


async def aclose_quietly(conn: Any, timeout: float = 1.0) -> None:  # noqa: ASYNC109
    with trio.move_on_after(timeout):
        try:
            await conn.aclose()
        except transport.TransportError:
            pass
