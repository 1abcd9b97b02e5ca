"""`Subscription`: a client's stream of committed updates, kept attached to shard tails.

Subscriptions attach to each relevant shard's tail; every event carries the shard's
sequence number. When the tail dies the subscription resubscribes at the new tail
from its last sequence number + 1 and drops anything it has already seen, so each
update is delivered exactly once and in shard order.

`GcsClient.subscribe` creates them, runs their keepers in the client's nursery and
routes the `Events`/`SubscriptionsLost` messages of its connections to them. A
subscription uses two components of the client, not the client itself: its
`ReplicaLinks` (to reach a tail) and its `CoordinatorLink` (the layout).
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import trio

import transport

from ._codec import decode
from ._coordinator_link import CoordinatorLink
from ._errors import GcsError, SubscriptionLost
from ._messages import Key, Notice, Redirect, Refused, Subscribe, Subscribed, Watch
from ._protocol import RPC_TIMEOUT as _RPC_TIMEOUT
from ._replica_links import ReplicaLinks

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

    def __init__(self, links: ReplicaLinks, coordinator: CoordinatorLink, timeout: float,
                 sub_id: int, table: str, key: Key | None, prefix: Key | None) -> None:
        self._links = links
        self._coordinator = coordinator
        self._timeout = timeout
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

    def deliver(self, shard: int, notice: Notice) -> None:
        """A committed update from the tail of ``shard`` (duplicates are dropped)."""
        seq = notice.seq
        last = self.last_seq.get(shard)
        if last is not None and seq <= last:
            return  # already delivered (a replay after resubscription)
        self.last_seq[shard] = seq
        self._send.send_nowait(Event(notice.table, notice.key, decode(notice.value),
                                     notice.deleted, seq, shard))

    def resubscribe_all(self) -> None:
        """The tails dropped us (we fell behind): attach again from the last seq."""
        for lost in self._lost.values():
            lost.set()

    def attached(self) -> list[Any]:
        """The open links this subscription is attached through."""
        return [conn for conn in self._conns.values() if not conn.closed]

    def stop(self) -> None:
        """Detach: cancel the keepers (the caller tells the tails)."""
        for scope in self._scopes:
            scope.cancel()

    async def keep(self, shard: int, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep this subscription attached to the tail of ``shard``."""
        with trio.CancelScope() as scope:
            self._scopes.append(scope)
            await self._keep_attached(shard, task_status)

    async def _keep_attached(self, shard: int, task_status: trio.TaskStatus[None]) -> None:
        started = False
        while True:
            layout = self._coordinator.layout.shards[shard]
            deadline = trio.current_time() + self._timeout
            error: BaseException | None = None
            if layout.tail is not None:
                conn = None
                try:
                    conn = await self._links.get(layout.tail)
                    self._conns[shard] = conn
                    last = self.last_seq.get(shard)
                    lost = self._lost[shard] = trio.Event()
                    answer = await conn.request(
                        Subscribe(self.sub_id, self.table, self.key, self.prefix,
                                  None if last is None else last + 1), timeout=_RPC_TIMEOUT)
                    if isinstance(answer, Subscribed):
                        self.last_seq.setdefault(shard, answer.acked)
                        if not started:
                            started = True
                            task_status.started()
                        await _until_lost(conn, lost)
                        self.resubscribes += 1
                        continue
                    if isinstance(answer, Refused):
                        error = answer.error
                    elif not isinstance(answer, Redirect):
                        raise transport.ProtocolError(
                            f"a GCS tail answered a subscription with {answer!r:.200}")
                except transport.TransportError:
                    self._links.forget(layout.tail, conn)
            if isinstance(error, SubscriptionLost | GcsError):
                if not started:
                    raise error
                self._send.send_nowait(error)
                return
            await self._coordinator.refresh(shard, layout.epoch, deadline)


async def _until_lost(conn: Any, lost: trio.Event) -> None:
    async with trio.open_nursery() as nursery:
        async def watch() -> None:
            try:
                while True:  # an answer (None) only means "ask again"
                    await conn.request(Watch(), timeout=None)
            except transport.TransportError:
                pass
            nursery.cancel_scope.cancel()

        async def wait_lost() -> None:
            await lost.wait()
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        nursery.start_soon(wait_lost)
