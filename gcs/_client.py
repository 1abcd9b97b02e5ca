"""`GcsClient`: the generic key-value API with batching, retries and subscriptions.

How a call travels
------------------
``await client.put(table, key, value)`` pickles the value (cloudpickle), picks the
shard by key hash and appends the operation (a `Put`) to that shard's write queue
(`_shard_queue.py`). One writer task per shard drains the queue: everything queued
since its last send goes out as *one* `Write` request to the shard's head, and up to
``max_inflight`` such batches are in flight at once (pipelining). Reads are batched
the same way (`Read`) and go to the tail. This module sends the batches
(`_send_batch`).

Retries are idempotent: every write carries (client id, client sequence number), and
the shard remembers the results of recent ones, so a write retried after a timeout
or a failover is answered, not applied twice. On any failure (connection lost,
timeout, "not the head any more") the batch waits for a newer layout -- pushed by
the coordinator, or fetched -- and is resent, until the operation timeout, after
which the caller gets `GcsUnavailable`. Reads carry the highest sequence number this
client has seen of that shard, and a tail that is behind it waits before answering,
so one client's reads never go backwards, even across a failover.

Subscriptions (`_subscription.py`) attach to each relevant shard's tail and resume
at the new tail after a failover; this module creates them and routes their events.

The client is assembled from components that own their state: its
`CoordinatorLink` (the layout and the link that pushes it, `_coordinator_link.py`),
its `ReplicaLinks` (one connection per replica, `_replica_links.py`), one
`ShardQueue` per shard and direction, and its subscriptions.
"""

from __future__ import annotations

import itertools
import pickle
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import attrs
import trio

import transport

from ._codec import Entry, decode, encode
from ._coordinator_link import CoordinatorLink
from ._errors import BadRequest, GcsUnavailable, ValueTooLarge, VersionMismatch
from ._messages import (
    Delete,
    Events,
    Get,
    Key,
    Layout,
    MarkCollectable,
    Put,
    Read,
    ReadDone,
    Redirect,
    Refused,
    Row,
    Scan,
    SetAdd,
    SetRemove,
    SubscriptionsLost,
    Unsubscribe,
    Write,
    WriteDone,
    WriteOp,
)
from ._protocol import RPC_TIMEOUT as _RPC_TIMEOUT
from ._protocol import check_key, check_table, shard_of
from ._replica_links import ReplicaLinks
from ._shard_queue import Op, ShardQueue
from ._subscription import Event, Subscription
from ._tables import (
    ActorTable,
    FunctionTable,
    JobTable,
    KvTable,
    NodeTable,
    ObjectTable,
    TaskTable,
)

__all__ = ["Entry", "Event", "GcsClient", "GcsClientStatistics", "Subscription", "open_client"]


@attrs.frozen(kw_only=True)
class GcsClientStatistics:
    """Figures of one `GcsClient`, from ``client.statistics()``.

    Attributes:
      writes, reads: operations submitted; batches: requests sent to shards (each
        carries everything queued for its shard); write_groups: per-shard groups of
        the batched writes (``write_many`` and the typed tables' ``*_many``).
      retries: attempts repeated after a timeout, a lost link or a stale layout.
      coordinator_reconnects: times the coordinator link was (re)established.
      shard_resets: shards found with a new history (an in-memory GCS restarted as
        a whole, its data lost).
      connections: open links to replicas; subscriptions: live subscriptions.
      layout: where each shard's head and tail are, as last pushed (``None``
        before the first).
    """

    writes: int
    reads: int
    batches: int
    write_groups: int
    retries: int
    coordinator_reconnects: int
    shard_resets: int
    connections: int
    subscriptions: int
    layout: Layout | None


class GcsClient:
    """A connection to one GCS. Create with `open_client` (it owns background tasks)."""

    def __init__(self, address: str, token: bytes | str, *, name: str = "gcs-client",
                 timeout: float = 30.0, max_inflight: int = 16,
                 request_timeout: float = _RPC_TIMEOUT) -> None:
        self.address = address
        self.token = token
        self.name = name
        self.timeout = timeout
        self.request_timeout = request_timeout
        self.max_inflight = max_inflight
        self.client_id = uuid.uuid4().hex
        self._seq = itertools.count(1)
        self._coordinator = CoordinatorLink(address, token, name=name, timeout=timeout,
                                            on_layout=self._abandon_moved)
        # The batches awaiting an answer, per (shard, write), with the replica each
        # went to: those whose replica is no longer the head (tail) are abandoned
        # and resent at once (`_abandon_moved`).
        self._in_flight: dict[tuple[int, bool], dict[trio.CancelScope, str]] = {}
        # What the replicas send back on our links to them: subscription events.
        routes = transport.Dispatcher(f"{name} replica link")
        routes.register(Events, self._on_events, oneway=True)
        routes.register(SubscriptionsLost, self._on_subscriptions_lost, oneway=True)
        self._links = ReplicaLinks(token, name=name, handler=routes)
        self._writes: dict[int, ShardQueue] = {}
        self._reads: dict[int, ShardQueue] = {}
        self._seen: dict[int, int] = {}
        self._history: dict[int, Any] = {}
        self._subs: dict[int, Subscription] = {}
        self._sub_ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self._stats = {"writes": 0, "reads": 0, "batches": 0, "write_groups": 0, "retries": 0,
                       "shard_resets": 0}
        self._reset = trio.Event()  # set (and replaced) at each shard reset
        #: The typed tables of the runtime (see `_tables.py`).
        self.nodes = NodeTable(self)
        self.actors = ActorTable(self)
        self.objects = ObjectTable(self)
        self.tasks = TaskTable(self)
        self.functions = FunctionTable(self)
        self.jobs = JobTable(self)
        self.kv = KvTable(self)

    async def wait_reset(self, seen: int = 0) -> int:
        """Wait until more than ``seen`` shard resets have been seen (a shard answered
        with a new history: an in-memory GCS restarted as a whole, its data lost);
        return how many so far. Whoever holds state the GCS must know republishes
        it then. A reset is noticed by the next request to that shard."""
        while self._stats["shard_resets"] <= seen:
            await self._reset.wait()
        return self._stats["shard_resets"]

    # ------------------------------------------------------------- connection

    async def aclose(self) -> None:
        await self._coordinator.aclose()
        await self._links.aclose()

    @property
    def layout(self) -> Layout:
        """Where each shard's head and tail are (as last pushed or fetched)."""
        return self._coordinator.layout

    def _on_events(self, conn: Any, message: Events) -> None:
        subs = self._subs
        shard = message.shard
        for notice in message.notices:
            sub = subs.get(notice.sub_id)
            if sub is not None:
                sub.deliver(shard, notice)

    def _on_subscriptions_lost(self, conn: Any, message: SubscriptionsLost) -> None:
        for sub_id in message.sub_ids:
            sub = self._subs.get(sub_id)
            if sub is not None:
                sub.resubscribe_all()

    # --------------------------------------------------------------- batching

    def _shard(self, key: Key) -> int:
        return shard_of(key, len(self.layout.shards))

    def _queue(self, queues: dict[int, ShardQueue], shard: int, *, write: bool) -> ShardQueue:
        """The shard's queue of ops, with its pump task running."""
        queue = queues.get(shard)
        if queue is None:
            queue = queues[shard] = ShardQueue(self.max_inflight)
        if not queue.running:
            queue.running = True
            assert self._nursery is not None
            self._nursery.start_soon(queue.pump, self._nursery,
                                     partial(self._send_batch, shard, write=write), self._stats)
            if write:
                self._nursery.start_soon(self._keep_standby_link, shard)
        return queue

    async def _keep_standby_link(self, shard: int) -> None:
        """Keep a link open to the replica that becomes ``shard``'s head if the head
        dies (the layout's ``standby``), for as long as the client runs.

        When the head dies, every batch in flight to it fails at once and waits for
        the layout the coordinator pushes; the resend then goes to the new head. On
        a loaded machine, dialling it then (TCP connect and the token handshake:
        two round trips between two busy processes) was the largest part of the
        stall. Kept open ahead of time, the resend finds it in `ReplicaLinks`. A
        failed dial is not an error: the resend dials again, and so does the next
        layout.
        """
        while True:
            layout = self.layout
            address = layout.shards[shard].standby
            if address is not None:
                try:
                    await self._links.get(address)
                except transport.TransportError:
                    pass
            await self._coordinator.wait_layout_changed(layout)

    async def _submit(self, queues: dict[int, ShardQueue], shard: int, op: Op, *,
                      write: bool) -> Any:
        return await self._queue(queues, shard, write=write).submit(op)

    async def _submit_many(self, shard: int, ops: list[Op]) -> None:
        """Queue many writes of one shard at once and wait for all of them (see
        `ShardQueue.submit_many`)."""
        await self._queue(self._writes, shard, write=True).submit_many(ops)

    async def _send_batch(self, shard: int, batch: list[Op], write: bool) -> list[Any]:
        message: Write | Read
        if write:
            seqs, ops = [op.seq for op in batch], [op.op for op in batch]
        deadline = trio.current_time() + self.timeout
        while True:
            layout = self.layout.shards[shard]
            address = layout.head if write else layout.tail
            last_error: object = "the shard has no live replica"
            if address is not None:
                if write:
                    message = Write(self.client_id, seqs, ops, layout.epoch)
                else:
                    message = Read(self._seen.get(shard, 0), [op.op for op in batch],
                                   self._history.get(shard))
                conn = None
                try:
                    conn = await self._links.get(address)
                    timeout = max(0.05, min(self.request_timeout, deadline - trio.current_time()))
                    in_flight = self._in_flight.setdefault((shard, write), {})
                    moved = trio.CancelScope()
                    in_flight[moved] = address
                    try:
                        if self._moved(shard, write, address):  # (while we dialled)
                            moved.cancel()
                        with moved:
                            answer = await conn.request(message, timeout=timeout)
                    finally:
                        del in_flight[moved]
                    if moved.cancelled_caught:
                        # Cut out of the chain (its process died; its link may not
                        # have closed yet): resend to the new head (tail) now.
                        # Resending is safe: a duplicate is answered, not reapplied.
                        self._stats["retries"] += 1
                        continue
                except transport.TransportError as exc:
                    last_error = exc
                    if isinstance(exc, transport.RequestTimeout):
                        # The attempt already waited; the link lives (else ConnectionLost):
                        # resend at once, the shard answers a duplicate without reapplying.
                        if trio.current_time() < deadline:
                            self._stats["retries"] += 1
                            continue
                    else:
                        self._links.forget(address, conn)
                else:
                    if isinstance(answer, WriteDone | ReadDone):
                        seen = answer.wait if isinstance(answer, WriteDone) else answer.applied
                        history = answer.history
                        known = self._history.get(shard)
                        if history != known and known is not None:
                            # The shard lost its state (an in-memory GCS restarted
                            # as a whole): our sequence numbers are of the old one.
                            self._stats["shard_resets"] += 1
                            self._seen[shard] = seen
                            reset, self._reset = self._reset, trio.Event()
                            reset.set()
                        elif seen > self._seen.get(shard, 0):
                            self._seen[shard] = seen
                        self._history[shard] = history
                        return list(answer.results)
                    if isinstance(answer, Refused):
                        return [answer.error] * len(batch)
                    if not isinstance(answer, Redirect):
                        error = BadRequest(f"GCS shard {shard} ({address}) answered "
                                           f"{type(answer).__name__} {answer!r:.200}")
                        return [error] * len(batch)
                    last_error = f"{address} is no longer the {'head' if write else 'tail'}"
                    if answer.epoch < layout.epoch and trio.current_time() < deadline:
                        # The replica has not heard of our (newer) layout yet: it will
                        # in a moment, the coordinator pushes to both at once.
                        self._stats["retries"] += 1
                        await trio.sleep(0.002)
                        continue
            if trio.current_time() >= deadline:
                raise GcsUnavailable(
                    f"GCS shard {shard} did not answer within {self.timeout}s "
                    f"(last error: {last_error})", shard=shard)
            self._stats["retries"] += 1
            await self._coordinator.refresh(shard, layout.epoch, deadline)

    def _moved(self, shard: int, write: bool, address: str) -> bool:
        """``address`` is no longer where ``shard``'s writes (reads) go."""
        layout = self.layout.shards[shard]
        return (layout.head if write else layout.tail) != address

    def _abandon_moved(self, layout: Layout) -> None:
        """A new layout: abandon the batches in flight to a replica that is no longer
        its shard's head (for writes) or tail (for reads); they are resent.

        A head leaves the chain only when it is cut out -- dead, or removed -- so
        the answer may never come: the coordinator may learn of a death before
        the kernel closes the dead process's sockets (`_lifeline.py`), and the
        batches would wait for that close (or for their timeout). Reads at an old
        tail still alive would be answered with a `Redirect`; they go at once.
        """
        for (shard, write), batches in self._in_flight.items():
            if not batches or shard >= len(layout.shards):
                continue
            now = layout.shards[shard].head if write else layout.shards[shard].tail
            for scope, address in batches.items():
                if address != now:
                    scope.cancel()

    async def _write(self, key: Key, op: WriteOp) -> Any:
        self._stats["writes"] += 1
        return await self._submit(self._writes, self._shard(key), Op(op, next(self._seq)),
                                  write=True)

    async def _read(self, shard: int, op: Get | Scan) -> Any:
        self._stats["reads"] += 1
        return await self._submit(self._reads, shard, Op(op), write=False)

    def _encode(self, table: str, key: Key, value: Any) -> bytes:
        check_table(table)
        check_key(key)
        blob = encode(value)
        limit = self.layout.max_value_bytes
        if len(blob) > limit:
            raise ValueTooLarge(
                f"value for {table}[{key!r:.80}] is {len(blob)} bytes pickled, over the "
                f"limit of {limit} bytes", size=len(blob), limit=limit, table=table, key=key)
        return blob

    # ------------------------------------------------------------- public API

    async def put(self, table: str, key: Key, value: Any, *,
                  expect_version: int | None = None) -> int:
        """Store ``value``; return its new version. With ``expect_version`` (0: absent)
        the write happens only if the key is at that version, else `VersionMismatch`."""
        blob = self._encode(table, key, value)
        return int(await self._write(key, Put(table, key, blob, expect_version)))

    async def put_if_absent(self, table: str, key: Key, value: Any) -> bool:
        """Atomically store ``value`` unless the key exists; True if stored."""
        try:
            await self.put(table, key, value, expect_version=0)
        except VersionMismatch:
            return False
        return True

    async def get_entry(self, table: str, key: Key) -> Entry | None:
        """The value and version of ``key``, or None if absent."""
        check_table(table)
        check_key(key)
        found: Row | None = await self._read(self._shard(key), Get(table, key))
        return None if found is None else Entry(decode(found.value), found.version)

    async def get(self, table: str, key: Key, default: Any = None) -> Any:
        entry = await self.get_entry(table, key)
        return default if entry is None else entry.value

    async def delete(self, table: str, key: Key, *, expect_version: int | None = None) -> bool:
        """Delete ``key``; True if it existed."""
        check_table(table)
        check_key(key)
        return bool(await self._write(key, Delete(table, key, expect_version)))

    async def set_add(self, table: str, key: Key, member: str | bytes | int) -> bool:
        """Atomically add ``member`` to the set stored at ``key``; True if it was new."""
        check_table(table)
        check_key(key)
        return bool(await self._write(key, SetAdd(table, key, member)))

    async def set_remove(self, table: str, key: Key, member: str | bytes | int) -> bool:
        """Atomically remove ``member`` (an emptied set deletes the key); True if present."""
        check_table(table)
        check_key(key)
        return bool(await self._write(key, SetRemove(table, key, member)))

    async def mark_collectable(self, table: str, key: Key) -> bool:
        """Tell the GCS the entry is no longer needed (e.g. finished lineage): it may be
        flushed from memory once more than ``lineage_cap`` such entries exist."""
        check_table(table)
        check_key(key)
        return bool(await self._write(key, MarkCollectable(table, key)))

    async def write_many(self, ops: list[tuple[Key, WriteOp]], *,
                         return_exceptions: bool = False) -> list[Any]:
        """Run many prepared writes ``[(key, op), ...]`` (``op`` a `gcs.messages` write:
        `Put`, `Delete`, `SetAdd`, `SetRemove`, `MarkCollectable`) with one waiting
        task per shard.

        Each op is applied once, exactly like its single-call form (it gets its own
        client sequence number, so a retried batch is answered, not reapplied), but
        the caller pays one await per shard instead of one task per op. Results come
        back in order; the first failed op raises its error after all are done,
        unless ``return_exceptions`` (then errors are in the list). Ops of different
        keys are not atomic together. Callers normally use `put_many` /
        `mark_collectable_many`, which validate and build the ops.
        """
        if not ops:
            return []
        n = len(self.layout.shards)
        by_shard: dict[int, list[Op]] = {}
        every: list[Op] = []
        seq = self._seq
        for key, op in ops:
            item = Op(op, next(seq))
            every.append(item)
            shard = shard_of(key, n) if n > 1 else 0
            group = by_shard.get(shard)
            if group is None:
                by_shard[shard] = [item]
            else:
                group.append(item)
        self._stats["writes"] += len(every)
        self._stats["write_groups"] += len(by_shard)
        if len(by_shard) == 1:
            [(shard, group)] = by_shard.items()
            await self._submit_many(shard, group)
        else:
            async with trio.open_nursery() as nursery:
                for shard, group in by_shard.items():
                    nursery.start_soon(self._submit_many, shard, group)
        results = [item.result for item in every]
        if not return_exceptions:
            for result in results:
                if isinstance(result, BaseException):
                    raise result
        return results

    async def put_many(self, table: str, items: list[tuple[Key, Any]], *,
                       return_exceptions: bool = False,
                       plain_pickle: bool = False) -> list[Any]:
        """Store many ``(key, value)`` pairs (see `write_many`); returns their versions.

        Every value is checked before anything is sent: a bad key or an oversized
        value raises at once and nothing of the call is written. ``plain_pickle``
        encodes with the standard pickle (about half cloudpickle's cost) for values of
        builtins and importable classes only -- something defined in ``__main__``
        would be stored by reference; what pickle refuses falls back to cloudpickle.
        """
        encode_ = self._encode_plain if plain_pickle else self._encode
        ops: list[tuple[Key, WriteOp]] = [(key, Put(table, key, encode_(table, key, value)))
                                          for key, value in items]
        return await self.write_many(ops, return_exceptions=return_exceptions)

    def _encode_plain(self, table: str, key: Key, value: Any) -> bytes:
        try:
            blob = pickle.dumps(value, protocol=5)
        except (pickle.PicklingError, AttributeError, TypeError):
            return self._encode(table, key, value)
        if len(blob) > self.layout.max_value_bytes:
            return self._encode(table, key, value)  # (raises ValueTooLarge, named)
        check_table(table)
        check_key(key)
        return blob

    async def mark_collectable_many(self, table: str, keys: list[Key], *,
                                    return_exceptions: bool = False) -> list[Any]:
        """`mark_collectable` for many keys (see `write_many`); True per key that existed."""
        check_table(table)
        for key in keys:
            check_key(key)
        return await self.write_many([(key, MarkCollectable(table, key)) for key in keys],
                                     return_exceptions=return_exceptions)

    async def update(self, table: str, key: Key, fn: Callable[[Any], Any], *,
                     default: Any = None, retries: int = 100) -> Any:
        """Atomic read-modify-write: store ``fn(current or default)``; return it."""
        for _ in range(retries):
            entry = await self.get_entry(table, key)
            new = fn(default if entry is None else entry.value)
            try:
                await self.put(table, key, new, expect_version=0 if entry is None else entry.version)
            except VersionMismatch:
                continue
            return new
        raise GcsUnavailable(f"update of {table}[{key!r:.80}] lost {retries} races in a row")

    async def scan(self, table: str, prefix: Key = "", *,
                   limit: int | None = None) -> list[tuple[Key, Any]]:
        """All ``(key, value)`` of ``table`` whose key starts with ``prefix``, sorted."""
        return [(k, v.value) for k, v in await self.scan_entries(table, prefix, limit=limit)]

    async def scan_entries(self, table: str, prefix: Key = "", *,
                           limit: int | None = None) -> list[tuple[Key, Entry]]:
        check_table(table)
        check_key(prefix)
        rows: list[tuple[Key, Entry]] = []

        async def one(shard: int) -> None:
            found: list[Row] = await self._read(shard, Scan(table, prefix, limit))
            for row in found:
                rows.append((row.key, Entry(decode(row.value), row.version)))

        async with trio.open_nursery() as nursery:
            for shard in range(len(self.layout.shards)):
                nursery.start_soon(one, shard)
        rows.sort(key=lambda row: row[0])
        return rows if limit is None else rows[:limit]

    @asynccontextmanager
    async def subscribe(self, table: str, *, key: Key | None = None,
                        prefix: Key | None = None) -> AsyncIterator[Subscription]:
        """Committed updates of one key, or of every key with ``prefix`` (default: all),
        from now on: ``async with client.subscribe(t, key=k) as sub: async for ev in sub``."""
        check_table(table)
        if key is not None:
            check_key(key)
            shards = [self._shard(key)]
        else:
            prefix = "" if prefix is None else prefix
            check_key(prefix)
            shards = list(range(len(self.layout.shards)))
        sub = Subscription(self._links, self._coordinator, self.timeout, next(self._sub_ids),
                           table, key, prefix)
        self._subs[sub.sub_id] = sub
        assert self._nursery is not None
        try:
            # The keepers live in the client's nursery (so an error in the body of this
            # block is not wrapped in an exception group) and are cancelled on exit.
            for shard in shards:
                await self._nursery.start(sub.keep, shard)
            yield sub
        finally:
            self._subs.pop(sub.sub_id, None)
            sub.stop()
            for conn in sub.attached():
                try:
                    conn.send_nowait(Unsubscribe(sub.sub_id))
                except transport.TransportError:
                    pass

    def statistics(self) -> GcsClientStatistics:
        stats = self._stats
        return GcsClientStatistics(
            writes=stats["writes"],
            reads=stats["reads"],
            batches=stats["batches"],
            write_groups=stats["write_groups"],
            retries=stats["retries"],
            coordinator_reconnects=self._coordinator.reconnects,
            shard_resets=stats["shard_resets"],
            connections=len(self._links),
            subscriptions=len(self._subs),
            layout=self._coordinator.known_layout,
        )


@asynccontextmanager
async def open_client(address: str, token: bytes | str, *, name: str = "gcs-client",
                      timeout: float = 30.0,  # noqa: ASYNC109 (bounds every operation)
                      max_inflight: int = 16,
                      request_timeout: float = _RPC_TIMEOUT) -> AsyncIterator[GcsClient]:
    """Connect to the GCS coordinator at ``address``; the block owns the client's tasks.

    ``timeout`` bounds every operation including its retries (then `GcsUnavailable`);
    ``request_timeout`` bounds one attempt (then the batch is retried, idempotently).
    """
    client = GcsClient(address, token, name=name, timeout=timeout, max_inflight=max_inflight,
                       request_timeout=request_timeout)
    failure: BaseException | None = None
    try:
        await client._coordinator.connect()
        async with trio.open_nursery() as nursery:
            client._nursery = nursery
            nursery.start_soon(client._coordinator.keep)
            try:
                yield client
            except BaseException as exc:
                # Re-raised below, outside the nursery, so the caller gets its own
                # exception rather than an exception group wrapping it.
                failure = exc
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
    finally:
        with trio.CancelScope(shield=True):
            await client.aclose()
