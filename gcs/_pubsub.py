"""`Publisher`: a replica's subscriptions and their ordered, bounded delivery.

A subscription is (connection, id, table, key or prefix). Updates are published when
they are *committed* (see `_replica.py`), as `Notice` records (subscription id, seq,
table, key, value, deleted) sent in `Events` messages; the shard's sequence number lets a
subscriber resume elsewhere without a gap or a duplicate. All subscriptions of one
connection share one outbox, drained by one task in commit order. An outbox over
``OUTBOX_LIMIT`` events (a subscriber that does not keep up) is emptied and its
subscriptions dropped with a `SubscriptionsLost` message; the client resubscribes
from its last sequence number (replayed from the replica's log if still there, else
it gets `SubscriptionLost`).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import attrs
import trio

import transport

from ._messages import Events, Notice, SubscriptionsLost
from ._state import Update

__all__ = ["OUTBOX_LIMIT", "Publisher", "PublisherStatistics"]

OUTBOX_LIMIT = 100_000
_EVENTS_PER_MESSAGE = 1000


@attrs.define(eq=False)
class _Subscription:
    sub_id: Any
    table: str
    key: Any
    prefix: Any
    outbox: _Outbox

    def matches(self, key: Any) -> bool:
        if self.key is not None:
            return bool(key == self.key)
        return type(key) is type(self.prefix) and key.startswith(self.prefix)


@attrs.define(eq=False)
class _Outbox:
    conn: Any
    events: deque[Notice] = attrs.Factory(deque)
    wakeup: trio.Event = attrs.Factory(trio.Event)
    subs: dict[Any, _Subscription] = attrs.Factory(dict)


def notice_of(sub_id: Any, update: Update) -> Notice:
    seq, kind, table, key, value, _, _, _ = update
    return Notice(sub_id, seq, table, key, value if kind == "P" else None, kind == "D")


@attrs.frozen(kw_only=True)
class PublisherStatistics:
    """Figures of one tail's subscriptions, from `Publisher.statistics()`.

    Attributes:
      subscriber_connections: connections with at least one subscription.
      subscriptions: subscriptions on this shard (key and prefix).
      published: events queued to subscribers.
      dropped_slow: subscriptions dropped because their connection fell more than
        ``OUTBOX_LIMIT`` events behind (the client resubscribes from the replay buffer).
    """

    subscriber_connections: int
    subscriptions: int
    published: int
    dropped_slow: int


class Publisher:
    """Subscriptions of one replica of shard ``shard``."""

    def __init__(self, shard: int) -> None:
        self.shard = shard
        self.published = 0
        self.dropped_slow = 0
        self._outboxes: dict[int, _Outbox] = {}
        self._subs_by_table: dict[str, list[_Subscription]] = {}

    def subscribe(self, nursery: trio.Nursery, conn: Any, sub_id: Any, table: str, key: Any,
                  prefix: Any, replay: list[Update], upto: int) -> None:
        """Add a subscription and queue the committed ``replay`` updates (<= ``upto``)."""
        box = self._outboxes.get(id(conn))
        if box is None or box.conn is not conn:
            box = self._outboxes[id(conn)] = _Outbox(conn)
            nursery.start_soon(self._pump, box)
        self.unsubscribe(conn, sub_id)  # a resubscription on the same link replaces it
        sub = _Subscription(sub_id, table, key, prefix, box)
        box.subs[sub_id] = sub
        self._subs_by_table.setdefault(table, []).append(sub)
        for update in replay:
            if update[0] > upto:
                break
            if update[1] in "PD" and update[2] == table and sub.matches(update[3]):
                box.events.append(notice_of(sub_id, update))
        box.wakeup.set()

    def unsubscribe(self, conn: Any, sub_id: Any) -> None:
        box = self._outboxes.get(id(conn))
        if box is not None and box.conn is conn:
            self._drop(box, sub_id)

    def publish(self, updates: list[Update]) -> None:
        """Queue events for the newly committed ``updates``, in order."""
        subs_by_table = self._subs_by_table
        if not subs_by_table:
            return
        for update in updates:
            if update[1] not in "PD":  # (seq, kind, table, key, ...): see `_state`
                continue
            subs = subs_by_table.get(update[2])
            if not subs:
                continue
            for sub in subs:
                if sub.matches(update[3]):
                    box = sub.outbox
                    box.events.append(notice_of(sub.sub_id, update))
                    box.wakeup.set()
                    self.published += 1

    def _drop(self, box: _Outbox, sub_id: Any) -> None:
        sub = box.subs.pop(sub_id, None)
        if sub is not None:
            subs = self._subs_by_table.get(sub.table, [])
            if sub in subs:
                subs.remove(sub)

    async def _pump(self, box: _Outbox) -> None:
        """Deliver one connection's events in order; drop its subs if it lags or dies."""
        try:
            while True:
                if not box.events:
                    box.wakeup = trio.Event()
                    await box.wakeup.wait()
                    continue
                if len(box.events) > OUTBOX_LIMIT:
                    lost = list(box.subs)
                    for sub_id in lost:
                        self._drop(box, sub_id)
                    box.events.clear()
                    self.dropped_slow += len(lost)
                    await box.conn.send(SubscriptionsLost(lost))
                    continue
                count = min(len(box.events), _EVENTS_PER_MESSAGE)
                batch = [box.events.popleft() for _ in range(count)]
                await box.conn.send(Events(self.shard, batch))
        except transport.TransportError:
            pass
        finally:
            for sub_id in list(box.subs):
                self._drop(box, sub_id)
            if self._outboxes.get(id(box.conn)) is box:
                del self._outboxes[id(box.conn)]

    def statistics(self) -> PublisherStatistics:
        return PublisherStatistics(
            subscriber_connections=len(self._outboxes),
            subscriptions=sum(len(subs) for subs in self._subs_by_table.values()),
            published=self.published,
            dropped_slow=self.dropped_slow,
        )
