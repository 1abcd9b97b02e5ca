"""`Subscription`: a client's stream of committed updates, kept attached to shard tails.

Subscriptions attach to each relevant shard's tail; every event carries the shard's
sequence number. When the tail dies the subscription resubscribes at the new tail
from its last sequence number + 1 and drops anything it has already seen, so each
update is delivered exactly once and in shard order.

`GcsClient.subscribe` creates them, runs their keepers in the client's nursery and
routes the ``ev``/``sublost`` messages of its connections to them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import attrs
import trio

import transport

from ._codec import decode
from ._errors import GcsError, SubscriptionLost
from ._protocol import RPC_TIMEOUT as _RPC_TIMEOUT
from ._protocol import Key

if TYPE_CHECKING:
    from ._client import GcsClient

__all__ = ["Event", "Subscription"]


@attrs.frozen
class Event:
    """One committed update seen by a subscription (``value`` is None when deleted)."""

    table: str
    key: Key
    value: Any
    deleted: bool
    seq: int
    shard: int


class Subscription:
    """An async iterator of `Event` (exactly once, in order per shard)."""

    def __init__(self, client: GcsClient, sub_id: int, table: str, key: Key | None,
                 prefix: Key | None) -> None:
        self.client = client
        self.sub_id = sub_id
        self.table = table
        self.key = key
        self.prefix = prefix
        self.last_seq: dict[int, int] = {}
        self.resubscribes = 0
        self._send, self._receive = trio.open_memory_channel[Event | BaseException](math.inf)
        self._lost: dict[int, trio.Event] = {}
        self._scopes: list[trio.CancelScope] = []
        self._conns: dict[int, Any] = {}

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        item = await self._receive.receive()
        if isinstance(item, BaseException):
            raise item
        return item

    async def next(self, timeout: float) -> Event:  # noqa: ASYNC109 (public API, like the transport contract)
        """The next event, or `TimeoutError` after ``timeout`` seconds."""
        with trio.move_on_after(timeout):
            return await self.__anext__()
        raise TimeoutError(f"no event on subscription to {self.table!r} within {timeout}s")

    def _deliver(self, shard: int, event: tuple[Any, ...]) -> None:
        seq, table, key, value, deleted = event
        last = self.last_seq.get(shard)
        if last is not None and seq <= last:
            return  # already delivered (a replay after resubscription)
        self.last_seq[shard] = seq
        self._send.send_nowait(Event(table, key, decode(value), deleted, seq, shard))

    def _resubscribe_all(self) -> None:
        for lost in self._lost.values():
            lost.set()

    def _attached(self) -> list[tuple[Any, int]]:
        return [(conn, self.sub_id) for conn in self._conns.values() if not conn.closed]

    async def _keep(self, shard: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep this subscription attached to the tail of ``shard``."""
        with trio.CancelScope() as scope:
            self._scopes.append(scope)
            await self._keep_attached(shard, task_status)

    async def _keep_attached(self, shard: int, task_status: trio.TaskStatus[None]) -> None:
        client = self.client
        started = False
        while True:
            layout = client.layout.shards[shard]
            deadline = trio.current_time() + client.timeout
            error: BaseException | None = None
            if layout.tail is not None:
                conn = None
                try:
                    conn = await client._conn(layout.tail)
                    self._conns[shard] = conn
                    last = self.last_seq.get(shard)
                    lost = self._lost[shard] = trio.Event()
                    answer = await conn.request(
                        ("sub", self.sub_id, self.table, self.key, self.prefix,
                         None if last is None else last + 1), timeout=_RPC_TIMEOUT)
                    if answer[0] == "ok":
                        self.last_seq.setdefault(shard, answer[1])
                        if not started:
                            started = True
                            task_status.started()
                        await _until_lost(conn, lost)
                        self.resubscribes += 1
                        continue
                    if answer[0] == "err":
                        error = answer[1]
                except transport.TransportError:
                    if conn is not None:
                        client._forget(layout.tail, conn)
            if isinstance(error, SubscriptionLost | GcsError):
                if not started:
                    raise error
                self._send.send_nowait(error)
                return
            await client._refresh(shard, layout.epoch, deadline)


async def _until_lost(conn: Any, lost: trio.Event) -> None:
    async with trio.open_nursery() as nursery:
        async def watch() -> None:
            try:
                while True:  # an answer (None) only means "ask again"
                    await conn.request(("watch",), timeout=None)
            except transport.TransportError:
                pass
            nursery.cancel_scope.cancel()

        async def wait_lost() -> None:
            await lost.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        nursery.start_soon(wait_lost)
