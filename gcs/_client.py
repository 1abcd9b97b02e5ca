"""`GcsClient`: the generic key-value API with batching, retries and subscriptions.

How a call travels
------------------
``await client.put(table, key, value)`` pickles the value (cloudpickle), picks the
shard by key hash and appends the operation to that shard's write queue
(`_shard_queue.py`). One writer task per shard drains the queue: everything queued
since its last send goes out as *one* request to the shard's head, and up to
``max_inflight`` such batches are in flight at once (pipelining). Reads are batched
the same way and go to the tail. This module sends the batches (`_send_batch`).

Retries are idempotent: every write carries (client id, client sequence number), and
the shard remembers the results of recent ones, so a write retried after a timeout
or a failover is answered, not applied twice. On any failure (connection lost,
timeout, "not the head any more") the batch waits for a newer layout -- pushed by
the coordinator, or fetched -- and is resent, until the operation timeout, after
which the caller gets `GcsUnavailable` (the layout and the coordinator link are in
`_client_layout.py`). Reads carry the highest sequence number this client has seen
of that shard, and a tail that is behind it waits before answering, so one client's
reads never go backwards, even across a failover.

Subscriptions (`_subscription.py`) attach to each relevant shard's tail and resume
at the new tail after a failover; this module creates them and routes their events.
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

from ._client_layout import LayoutTracking
from ._codec import decode, encode
from ._errors import GcsUnavailable, ValueTooLarge, VersionMismatch
from ._protocol import RPC_TIMEOUT as _RPC_TIMEOUT
from ._protocol import Key, Layout, check_key, check_table, shard_of
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
from ._watch import HeldReplies

__all__ = ["Entry", "Event", "GcsClient", "GcsClientStatistics", "Subscription", "open_client"]


@attrs.frozen
class Entry:
    """A stored value with its version (the sequence number that last wrote it)."""

    value: Any
    version: int


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


class GcsClient(LayoutTracking):
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
        self._layout: Layout | None = None
        self._layout_changed = trio.Event()
        self._coordinator: Any = None
        self._conns: dict[str, Any] = {}
        self._dialing: dict[str, trio.Lock] = {}
        self._writes: dict[int, ShardQueue] = {}
        self._reads: dict[int, ShardQueue] = {}
        self._seen: dict[int, int] = {}
        self._history: dict[int, Any] = {}
        self._subs: dict[int, Subscription] = {}
        self._sub_ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self._held = HeldReplies()
        self._stats = {"writes": 0, "reads": 0, "batches": 0, "write_groups": 0, "retries": 0,
                       "coordinator_reconnects": 0, "shard_resets": 0}
        #: The typed tables of the runtime (see `_tables.py`).
        self.nodes = NodeTable(self)
        self.actors = ActorTable(self)
        self.objects = ObjectTable(self)
        self.tasks = TaskTable(self)
        self.functions = FunctionTable(self)
        self.jobs = JobTable(self)
        self.kv = KvTable(self)

    # ------------------------------------------------------------- connection

    async def aclose(self) -> None:
        for conn in [self._coordinator, *self._conns.values()]:
            if conn is not None:
                with trio.move_on_after(1.0):
                    await conn.aclose(flush_timeout=0.5)
        self._conns.clear()

    async def _conn(self, address: str) -> Any:
        conn = self._conns.get(address)
        if conn is not None and not conn.closed:
            return conn
        lock = self._dialing.setdefault(address, trio.Lock())
        async with lock:
            conn = self._conns.get(address)
            if conn is None or conn.closed:
                conn = await transport.connect(address, self.token, name=self.name,
                                               handler=self._on_message, connect_timeout=2.0)
                self._conns[address] = conn
        return conn

    def _forget(self, address: str, conn: Any) -> None:
        if self._conns.get(address) is conn:
            del self._conns[address]

    async def _on_message(self, conn: Any, message: Any, reply: Any) -> None:
        tag = message[0]
        if tag == "layout":
            self._set_layout(message[1])
        elif tag == "ev":
            _, shard, batch = message
            for sub_id, event in batch:
                sub = self._subs.get(sub_id)
                if sub is not None:
                    sub._deliver(shard, event)
        elif tag == "sublost":
            for sub_id in message[1]:
                sub = self._subs.get(sub_id)
                if sub is not None:
                    sub._resubscribe_all()
        elif tag == "watch":
            self._held.hold(conn, reply)  # the coordinator's probe of us: never answered

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
        return queue

    async def _submit(self, queues: dict[int, ShardQueue], shard: int, op: Op, *,
                      write: bool) -> Any:
        return await self._queue(queues, shard, write=write).submit(op)

    async def _submit_many(self, shard: int, ops: list[Op]) -> None:
        """Queue many writes of one shard at once and wait for all of them (see
        `ShardQueue.submit_many`)."""
        await self._queue(self._writes, shard, write=True).submit_many(ops)

    async def _send_batch(self, shard: int, batch: list[Op], write: bool) -> list[Any]:
        if write:
            message: tuple[Any, ...] = ("w", self.client_id, [(op.seq, op.op) for op in batch])
        deadline = trio.current_time() + self.timeout
        while True:
            layout = self.layout.shards[shard]
            address = layout.head if write else layout.tail
            last_error: object = "the shard has no live replica"
            if address is not None:
                if not write:
                    message = ("r", self._seen.get(shard, 0), [op.op for op in batch],
                               self._history.get(shard))
                conn = None
                try:
                    conn = await self._conn(address)
                    timeout = max(0.05, min(self.request_timeout, deadline - trio.current_time()))
                    answer = await conn.request(message, timeout=timeout)
                except transport.TransportError as exc:
                    last_error = exc
                    if isinstance(exc, transport.RequestTimeout):
                        # The attempt already waited; the link lives (else ConnectionLost):
                        # resend at once, the shard answers a duplicate without reapplying.
                        if trio.current_time() < deadline:
                            self._stats["retries"] += 1
                            continue
                    elif conn is not None:
                        self._forget(address, conn)
                    else:
                        self._conns.pop(address, None)
                else:
                    if answer[0] == "ok":
                        seen = answer[2] if write else answer[1]
                        history = answer[3] if len(answer) > 3 else None
                        known = self._history.get(shard)
                        if history != known and known is not None:
                            # The shard lost its state (an in-memory GCS restarted
                            # as a whole): our sequence numbers are of the old one.
                            self._stats["shard_resets"] += 1
                            self._seen[shard] = seen
                        elif seen > self._seen.get(shard, 0):
                            self._seen[shard] = seen
                        self._history[shard] = history
                        return list(answer[1] if write else answer[2])
                    if answer[0] == "err":
                        return [answer[1]] * len(batch)
                    last_error = f"{address} is no longer the {'head' if write else 'tail'}"
                    if answer[1] < layout.epoch and trio.current_time() < deadline:
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
            await self._refresh(shard, layout.epoch, deadline)

    async def _write(self, key: Key, op: tuple[Any, ...]) -> Any:
        self._stats["writes"] += 1
        return await self._submit(self._writes, self._shard(key), Op(op, next(self._seq)),
                                  write=True)

    async def _read(self, shard: int, op: tuple[Any, ...]) -> Any:
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
        return int(await self._write(key, ("put", table, key, blob, expect_version)))

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
        found = await self._read(self._shard(key), ("get", table, key))
        return None if found is None else Entry(decode(found[0]), found[1])

    async def get(self, table: str, key: Key, default: Any = None) -> Any:
        entry = await self.get_entry(table, key)
        return default if entry is None else entry.value

    async def delete(self, table: str, key: Key, *, expect_version: int | None = None) -> bool:
        """Delete ``key``; True if it existed."""
        check_table(table)
        check_key(key)
        return bool(await self._write(key, ("del", table, key, None, expect_version)))

    async def set_add(self, table: str, key: Key, member: str | bytes | int) -> bool:
        """Atomically add ``member`` to the set stored at ``key``; True if it was new."""
        check_table(table)
        check_key(key)
        return bool(await self._write(key, ("sadd", table, key, member, None)))

    async def set_remove(self, table: str, key: Key, member: str | bytes | int) -> bool:
        """Atomically remove ``member`` (an emptied set deletes the key); True if present."""
        check_table(table)
        check_key(key)
        return bool(await self._write(key, ("srem", table, key, member, None)))

    async def mark_collectable(self, table: str, key: Key) -> bool:
        """Tell the GCS the entry is no longer needed (e.g. finished lineage): it may be
        flushed from memory once more than ``lineage_cap`` such entries exist."""
        check_table(table)
        check_key(key)
        return bool(await self._write(key, ("mark", table, key, None, None)))

    async def write_many(self, ops: list[tuple[Key, tuple[Any, ...]]], *,
                         return_exceptions: bool = False) -> list[Any]:
        """Run many prepared writes ``[(key, op), ...]`` with one waiting task per shard.

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
        ops = [(key, ("put", table, key, encode_(table, key, value), None))
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
        return await self.write_many([(key, ("mark", table, key, None, None)) for key in keys],
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
            for key, value, version in await self._read(shard, ("scan", table, prefix, limit)):
                rows.append((key, Entry(decode(value), version)))

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
        sub = Subscription(self, next(self._sub_ids), table, key, prefix)
        self._subs[sub.sub_id] = sub
        assert self._nursery is not None
        try:
            # The keepers live in the client's nursery (so an error in the body of this
            # block is not wrapped in an exception group) and are cancelled on exit.
            for shard in shards:
                await self._nursery.start(sub._keep, shard)
            yield sub
        finally:
            self._subs.pop(sub.sub_id, None)
            for scope in sub._scopes:
                scope.cancel()
            for conn, sub_id in sub._attached():
                try:
                    conn.send_nowait(("unsub", sub_id))
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
            coordinator_reconnects=stats["coordinator_reconnects"],
            shard_resets=stats["shard_resets"],
            connections=len(self._conns),
            subscriptions=len(self._subs),
            layout=self._layout,
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
        await client._connect()
        async with trio.open_nursery() as nursery:
            client._nursery = nursery
            nursery.start_soon(client._keep_coordinator)
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
