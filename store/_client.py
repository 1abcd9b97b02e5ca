"""The Trio client of the store service, `StoreClient` (`BlockingStoreClient`, in
``_blocking``, serves threads without Trio; the leases and payloads it hands out
are in ``_payload``).

A client talks to the service over one authenticated connection and maps the arena
file itself: ``put`` asks the service for a block (``create``), copies the serialised
value straight into shared memory, and ``seal``\\s it; ``get`` gets the object's
location and rebuilds the value over read-only views of the arena (no copy).

Lifetime of zero-copy views. A value returned by ``get`` may outlive the caller's
ref; its memory must not be reused while it lives. Each location the service hands
out comes with a *view id* held for this connection. The client wraps the object's
buffers in `pyarrow.foreign_buffer`\\s whose ``base`` is one `_Lease` per object;
numpy and Arrow keep the buffer (and so the lease) alive as long as any array uses
it. When the last one goes, ``_Lease.__del__`` (in whatever thread the garbage
collector runs) queues the view ids and schedules a flush on the Trio loop with
``TrioToken.run_sync_soon`` (thread-safe); the flush sends one ``release`` message.
While a lease lives, ``get`` of the same object needs no round trip at all.

Objects on disk. When shared memory cannot take an object (see ``store._core``),
``create`` answers with a file instead of an arena offset: the writer maps that file
and copies into it the same way. A ``get`` may likewise answer with a *file view*
(a path and the layout in it): the reader maps the file read-only and leases it as
above; the mapping lives as long as the lease.

pyarrow is imported at the first zero-copy read or large copy, not with the package:
importing it (and numpy with it) costs 100-200 ms of CPU, and most processes that
import ``store`` (a driver reclaiming dead sessions at ``init()``, a node before
its first large object, a worker that only passes small values) never need it.
"""

from __future__ import annotations

import collections
import functools
import logging
import pickle
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any

import attrs
import outcome
import trio

import transport

from . import _messages as m
from ._arena import Mapping, payload_layout, run_at_low_priority
from ._errors import BadRequest, StoreClosedError, StoreError
from ._lending import LendingClient
from ._payload import Payload, _Lease, _location, _owned, _small_payload
from ._serialize import SerializedValue, deserialize, serialize
from ._statistics import StoreStatistics

__all__ = ["ObjectWriter", "StoreClient", "StoreClientStatistics"]

logger = logging.getLogger("store.client")

#: Above this many payload bytes the async client copies in a worker thread, so the
#: Trio loop keeps running during a big put (the copy itself releases the GIL).
COPY_IN_THREAD = 8 * 1024 * 1024
#: Extra seconds the client waits beyond a get's own timeout before giving up on a
#: silent service.
REPLY_MARGIN = 10.0
#: Small values below this many bytes travel inside the pickle stream of the request.
IN_BAND = 16 * 1024
#: At most this many leases are kept cached after their views die.
MAX_CACHED_LEASES = 4096


@attrs.frozen(kw_only=True)
class StoreClientStatistics:
    """What one `StoreClient` holds, from ``client.statistics()``.

    Attributes:
      refs: refs it holds (an object counted once per ref taken).
      leases: objects it has zero-copy values of alive.
      cached_small: small values kept in the client after a put or get.
      cached_leases: leases kept after their values died, for a repeated get.
      pending_releases: view releases not yet sent to the service.
      mapped_ahead: bytes of the arena `StoreClient.map_ahead` mapped into this
        process (they count in its RSS: shared pages, not new memory).
      map_ahead_seconds: the CPU time that took, in its background thread.
      closed: the client, or its connection, is closed.
    """

    refs: int
    leases: int
    cached_small: int
    cached_leases: int
    pending_releases: int
    mapped_ahead: int
    map_ahead_seconds: float
    closed: bool


class ObjectWriter:
    """An unsealed object being written chunk by chunk (see `StoreClient.create`)."""

    def __init__(self, client: StoreClient, object_id: bytes, mapping: Mapping, payload: int,
                 length: int, location: m.Location, take_ref: bool):
        self._client = client
        self.object_id = object_id
        self._mapping = mapping
        self._payload = payload
        self.payload_len = length
        self._location = location
        self._take_ref = take_ref
        self.done = False

    def write(self, offset: int, data: Any) -> None:
        """Copy ``data`` to ``offset`` of the payload (any thread; bounds-checked)."""
        n = memoryview(data).nbytes
        if self.done or offset < 0 or offset + n > self.payload_len:
            raise ValueError(
                f"chunk [{offset}, {offset + n}) does not fit object {self.object_id.hex()} "
                f"of {self.payload_len} bytes" + (" (already sealed or aborted)" if self.done else "")
            )
        self._mapping.write(self._payload + offset, data)

    async def seal(self, timeout: float | None = 60.0) -> None:  # noqa: ASYNC109
        client = self._client
        view_id = await client._call(m.Seal(self.object_id, self._take_ref), timeout)
        self.done = True
        if self._take_ref:
            client.refs[self.object_id] += 1
            client._lease(self.object_id, view_id, self._location, self._mapping)

    def abort(self) -> None:
        if not self.done:
            self.done = True
            self._client._abort(self.object_id)

    async def __aenter__(self) -> ObjectWriter:
        return self

    async def __aexit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is not None:
            self.abort()
        elif not self.done:
            await self.seal()


class StoreClient(LendingClient):
    """A connection to the node's store service (see the module docstring).

    ``client = await StoreClient.connect(address, token)``; close with ``aclose()``
    (or ``async with``). Must be used from the Trio run it was connected in; other
    threads use `BlockingStoreClient`.
    """

    def __init__(self, conn: transport.Connection, hello: m.StoreHello):
        self._conn = conn
        self.arena_path: str = hello.arena_path
        self.inline_threshold: int = hello.inline_threshold
        self._mapping = Mapping(self.arena_path, hello.arena_size)
        self._warm: int = hello.warm
        self._mapped_ahead = 0
        self._map_ahead_seconds = 0.0
        self._leases: weakref.WeakValueDictionary[bytes, _Lease] = weakref.WeakValueDictionary()
        self._released: collections.deque[int] = collections.deque()
        self._flush_scheduled = False
        self._lock = threading.Lock()
        self._token = trio.lowlevel.current_trio_token()
        self.refs: collections.Counter[bytes] = collections.Counter()
        self.pins: collections.Counter[bytes] = collections.Counter()
        self._dial_args: tuple[str, bytes | str, str] = ("", b"", "")
        # Small values this client holds a ref to, kept here after put/get (objects are
        # immutable): a repeated get needs no round trip, like Ray's in-process store.
        self._small: dict[bytes, SerializedValue] = {}
        # Leases of objects this client holds a ref to stay cached (LRU) after their
        # views die, so that a repeated get — and a get after our own put — needs no
        # round trip. They hold memory the store might want to spill: when it runs out
        # of spill candidates it sends us ``drop_cache`` and we let them go.
        self._cache: collections.OrderedDict[bytes, _Lease] = collections.OrderedDict()
        # Seals a thread sent without waiting (`BlockingStoreClient.put`) and not
        # answered yet: a reconnect claims them (the service may have died before
        # reading them). Set from that thread, cleared on the loop.
        self._unanswered_seals: dict[bytes, None] = {}
        # Lending (``store._core``, "Lending"): the ids this client's puts may adopt
        # a lent block under (``None``: it asks for none), the block lent to it and
        # not taken yet, whether one is asked for, the lend ids recalled before
        # their answer came, and the adopts sent and not answered (object id ->
        # the message: a reconnect claims them; the service asks for their ids).
        # ``_lock`` guards the block: a putting thread takes it, the loop installs
        # and recalls it.
        self._lend_prefix: bytes | None = None
        self._lend_size = 0
        self._lent: m.Lent | None = None
        self._lend_asked = False
        self._recalled: set[bytes] = set()
        self._taken: set[bytes] = set()  # lend ids a put is writing into
        self._unanswered_adopts: dict[bytes, m.Adopt] = {}
        self.closed = False

    @classmethod
    async def connect(
        cls, address: str, token: bytes | str, *, name: str = "store-client", timeout: float = 10.0  # noqa: ASYNC109
    ) -> StoreClient:
        box: list[StoreClient] = []
        conn, hello = await _dial(address, token, name, timeout, box)
        client = cls(conn, hello)
        client._dial_args = (address, token, name)
        box.append(client)
        return client

    async def reconnect(self, *, timeout: float = 10.0) -> None:  # noqa: ASYNC109
        """Connect again to the same service (after a restart) and reattach what this
        client holds: its refs, its pins and the views under its live zero-copy values.
        Raises `StoreError` if the service now serves a different arena."""
        address, token, name = self._dial_args
        box = [self]
        conn, hello = await _dial(address, token, name, timeout, box)
        try:
            if hello.arena_path != self.arena_path:
                raise StoreError(
                    f"the store at {address} now uses {hello.arena_path}, not {self.arena_path}"
                )
            leases = dict(self._leases.items())
            with self._lock:
                self._released.clear()  # ids of the old service mean nothing now
            new_views = await conn.request(
                m.Claim(dict(self.refs), dict(self.pins), list(leases),
                        list(self._unanswered_seals), list(self._unanswered_adopts.values())),
                timeout=timeout
            )
            self._unanswered_seals.clear()
            self._unanswered_adopts.clear()
            with self._lock:  # the old service's loans went with it
                self._lent = None
                self._lend_asked = False
        except BaseException:
            await conn.aclose()
            raise
        for object_id, lease in leases.items():
            lease.view_ids = [new_views[object_id]] if object_id in new_views else []
        old, self._conn = self._conn, conn
        await old.aclose()

    async def wait_lost(self) -> None:
        """Return once this client's current connection to the service is lost (the
        service restarted or stopped), or the client was closed (see `closed`). A
        `reconnect` meanwhile replaces the connection: the wait goes on over the new
        one, so a watcher that reconnects on return never reconnects twice."""
        while not self.closed:
            conn = self._conn
            await conn.wait_closed()
            if self._conn is conn:
                return

    async def aclose(self) -> None:
        self.closed = True
        await self._conn.aclose()

    async def __aenter__(self) -> StoreClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def map_ahead(self) -> int:
        """Map the bottom of the arena, as much as the service keeps faulted in ahead
        of use (its ``warm`` margin), into this process now, in a background thread
        of low priority; returns the bytes it mapped (0 if the service keeps no
        margin). Cancellable: the thread is abandoned, and stops with the process.

        What it buys: a put copies into pages this process has not mapped yet at
        the cost of their page-table entries first, 6 ms of CPU per 100 MB here
        (the `Mapping` notes), so a driver's first 100 MB put took 1.6x its steady
        one. The allocator carves a fresh arena from the bottom, so the first
        objects land in the pages mapped here. The price, paid once per process
        that calls it (the driver does, see ``actorcore``'s store link): that CPU
        in the background (``statistics().map_ahead_seconds``), and up to ``warm``
        bytes more RSS, counted for shared pages that exist anyway, not new memory.
        It starts once the service's warmer has faulted the margin in (`WaitWarm`),
        so that it only maps pages and never zeroes them.
        """
        if self._warm <= 0:
            return 0
        # After the service's warmer: pages it has not zeroed yet would be zeroed
        # here, at this thread's higher priority, while the node starts its workers.
        await self._call(m.WaitWarm(), None)
        # From the file's start (its header page is in use: the service wrote it),
        # so that the mapping can record whole chunks as mapped.
        length = min(self._warm, self._mapping.size)
        mapped: list[tuple[int, float]] = []

        def map_in() -> None:
            started = time.thread_time()
            nbytes = self._mapping.map_ahead(0, length)
            mapped.append((nbytes, time.thread_time() - started))

        # Nice, not SCHED_IDLE (the service's warmer is): measured on this 2-core
        # machine at load 2-5, a SCHED_IDLE thread took 1.3 s to map 256 MiB, while
        # the driver's main thread computed, and the first put came before it.
        await trio.to_thread.run_sync(
            functools.partial(run_at_low_priority, map_in, idle=False), abandon_on_cancel=True)
        nbytes, seconds = mapped[0]
        self._map_ahead_seconds += seconds
        self._mapped_ahead += nbytes
        return nbytes

    # -- writing -------------------------------------------------------------------

    async def put(
        self,
        object_id: bytes,
        value: Any,
        *,
        metadata: bytes = b"",
        take_ref: bool = True,
        timeout: float | None = 60.0,  # noqa: ASYNC109
    ) -> int:
        """Store ``value`` (or a `SerializedValue`) under ``object_id``; returns its size.

        With ``take_ref`` (default) this client holds one ref to the object (drop it
        with `remove_ref`); an object that nobody refs is freed at once.
        """
        serialized = self._serialize(value, metadata)
        if serialized.total_size < self.inline_threshold:
            if serialized.total_size < IN_BAND:  # a copy is cheaper than an out-of-band frame
                data: Any = bytes(serialized.data)
                buffers: list[Any] = [bytes(b) for b in serialized.buffers]
            else:
                data = serialized.data
                buffers = [pickle.PickleBuffer(b) for b in serialized.buffers]
            await self._call(
                m.PutInline(object_id, serialized.metadata, data, buffers, take_ref), timeout
            )
            if take_ref:
                self._small[object_id] = _owned(serialized)
        else:
            mapping, payload = await self._create(object_id, serialized, take_ref, timeout)
            try:
                if serialized.total_size > COPY_IN_THREAD:
                    await trio.to_thread.run_sync(self._write, mapping, payload, serialized)
                else:
                    self._write(mapping, payload, serialized)
            except BaseException:
                self._abort(object_id)
                raise
            view_id = await self._call(m.Seal(object_id, take_ref), timeout)
            if take_ref:
                self.refs[object_id] += 1
                self._lease(object_id, view_id, _location(payload, serialized), mapping)
            return serialized.total_size
        if take_ref:
            self.refs[object_id] += 1
        return serialized.total_size

    @staticmethod
    def _serialize(value: Any, metadata: bytes) -> SerializedValue:
        if isinstance(value, SerializedValue):
            if metadata:
                return SerializedValue(value.data, value.buffers, metadata)
            return value
        return serialize(value, metadata=metadata)

    async def _create(
        self, object_id: bytes, serialized: SerializedValue, take_ref: bool, timeout: float | None  # noqa: ASYNC109
    ) -> tuple[Mapping, int]:
        message = m.Create(
            object_id, len(serialized.metadata), memoryview(serialized.data).nbytes,
            tuple(serialized.buffer_sizes), take_ref,
        )
        return self._target(object_id, await self._call(message, timeout))

    def _target(self, object_id: bytes, reply: int | m.OnDisk) -> tuple[Mapping, int]:
        """`_where`, aborting the object if it cannot be mapped (on the loop)."""
        try:
            return self._where(reply)
        except StoreError:
            self._abort(object_id)
            raise

    def _where(self, reply: int | m.OnDisk) -> tuple[Mapping, int]:
        """Where to write a created object: ``(mapping, payload offset)`` in the arena,
        or in the file the service created it in (`OnDisk`); `StoreError` if that
        file cannot be mapped (any thread)."""
        if not isinstance(reply, m.OnDisk):
            return self._mapping, reply
        try:
            return Mapping(reply.path), reply.payload
        except OSError as exc:
            raise StoreError(
                f"cannot map {reply.path}, where the store created the object: {exc}") from exc

    def _write(self, mapping: Mapping, payload: int, serialized: SerializedValue) -> None:
        """Copy the serialised value into the unsealed block (any thread)."""
        meta_len = len(serialized.metadata)
        data = memoryview(serialized.data)
        mapping.write(payload, serialized.metadata)
        mapping.write(payload + meta_len, data)
        offsets, _ = payload_layout(meta_len, data.nbytes, serialized.buffer_sizes)
        for offset, buffer in zip(offsets, serialized.buffers, strict=True):
            mapping.write(payload + offset, buffer)

    def _abort(self, object_id: bytes) -> None:
        try:
            self._conn.send_nowait(m.Abort(object_id))
        except transport.TransportError:
            pass  # the service drops our unsealed blocks with the connection

    # -- reading -------------------------------------------------------------------

    async def get(self, object_id: bytes, *, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        """The value, waiting up to ``timeout`` seconds (``None``: no limit) for it to be
        sealed. Arrays come back as read-only zero-copy views of shared memory."""
        return deserialize(await self.get_serialized(object_id, timeout=timeout))

    async def get_serialized(
        self, object_id: bytes, *, timeout: float | None = None  # noqa: ASYNC109
    ) -> SerializedValue:
        """Like `get` but without deserialising (buffers are zero-copy views)."""
        lease = self._leases.get(object_id)
        if lease is not None:
            return lease.serialized()
        small = self._small.get(object_id)
        if small is not None:
            return small
        reply = await self._call(
            m.Get(object_id, timeout), None if timeout is None else timeout + REPLY_MARGIN
        )
        if isinstance(reply, m.SharedView):
            return self._lease(object_id, reply.view_id, reply.location).serialized()
        if isinstance(reply, m.InlineValue):
            value = reply.value()
            if self.refs.get(object_id, 0) > 0:
                self._small[object_id] = _owned(value)
            return value
        if isinstance(reply, m.FileView):  # on disk: map the file (read-only, still zero copy)
            try:
                mapping = Mapping(reply.path, readonly=True)
            except OSError as exc:
                self._release_soon([reply.view_id])
                raise StoreError(
                    f"cannot map {reply.path}, where object {object_id.hex()} is: {exc}") from exc
            return self._lease(object_id, reply.view_id, reply.location, mapping).serialized()
        raise StoreError(f"the store answered a get of {object_id.hex()} with {reply!r:.200}")

    def _lease(
        self, object_id: bytes, view_id: int, location: m.Location, mapping: Mapping | None = None
    ) -> _Lease:
        """The lease of ``object_id`` (at ``location`` of ``mapping``, the arena's if
        ``None``), holding ``view_id`` too."""
        mapping = mapping or self._mapping
        lease = self._leases.get(object_id)
        if lease is not None and lease.location == location and lease.mapping.path == mapping.path:
            lease.view_ids.append(view_id)  # a concurrent get made one: keep one lease
        else:
            lease = _Lease(self, object_id, view_id, location, mapping)
            self._leases[object_id] = lease
        if self.refs.get(object_id, 0) > 0:
            self._cache[object_id] = lease
            self._cache.move_to_end(object_id)
            if len(self._cache) > MAX_CACHED_LEASES:
                self._cache.popitem(last=False)
        return lease

    def _on_drop_cache(self, conn: transport.Connection, message: m.DropCache,
                       reply: transport.Reply) -> None:
        dropped = len(self._cache)
        self._cache.clear()  # leases without live views die now and queue releases
        self._flush_releases()  # sent before the reply: the service sees them first
        reply.send(dropped)

    async def contains(self, object_id: bytes) -> bool:
        return await self._call(m.Contains(object_id), 30.0)

    def holds(self, object_id: bytes) -> bool:
        """Whether this client can read ``object_id`` without asking the store (a
        live view of it, or its small value cached): then the store has it too."""
        return object_id in self._leases or object_id in self._small

    async def missing(self, object_ids: list[bytes]) -> list[bytes]:
        """Those of ``object_ids`` the store does not have (one round trip)."""
        return list(await self._call(m.Missing(list(object_ids)), 30.0))

    async def read_chunk(self, object_id: bytes, offset: int, size: int) -> bytes:
        """``size`` bytes at ``offset`` of a sealed object's payload (for transfers)."""
        return await self._call(m.ReadChunk(object_id, offset, size), 60.0)

    async def payload(self, object_id: bytes) -> Payload:
        """A sealed object's whole payload, read-only and without a copy, with its
        layout (the sending end of a node-to-node transfer: slices of
        ``Payload.view`` go out as chunks straight from shared memory).

        The view keeps the object's memory leased while it (or a slice of it) lives,
        like a value from `get`; a small object (copied out by the store) comes as
        bytes. Never waits for a seal: `ObjectNotFoundError` if it is not here."""
        lease = self._leases.get(object_id)
        if lease is None:
            reply = await self._call(m.Get(object_id, 0), REPLY_MARGIN)
            if isinstance(reply, m.SharedView):
                lease = self._lease(object_id, reply.view_id, reply.location)
            elif isinstance(reply, m.FileView):
                try:
                    mapping = Mapping(reply.path, readonly=True)
                except OSError as exc:
                    self._release_soon([reply.view_id])
                    raise StoreError(f"cannot map {reply.path}, where object "
                                     f"{object_id.hex()} is: {exc}") from exc
                lease = self._lease(object_id, reply.view_id, reply.location, mapping)
            elif isinstance(reply, m.InlineValue):
                return _small_payload(reply.value())
            else:
                raise StoreError(
                    f"the store answered a get of {object_id.hex()} with {reply!r:.200}")
        loc = lease.location
        length = payload_layout(loc.meta_len, loc.data_len, loc.buffer_sizes)[1]
        import pyarrow as pa  # at first use: the module docstring

        buffer = pa.foreign_buffer(lease.mapping.address + loc.payload, length, base=lease)
        return Payload(meta_len=loc.meta_len, data_len=loc.data_len,
                       buffer_sizes=tuple(loc.buffer_sizes), view=memoryview(buffer))

    async def object_info(self, object_id: bytes) -> m.ObjectInfo:
        """Size, state and payload layout of an object (for transfers): ``state``,
        ``size``, ``payload_len``, ``meta_len``, ``data_len``, ``buffer_sizes``."""
        info: m.ObjectInfo = await self._call(m.Info(object_id), 30.0)
        return info

    async def create(
        self,
        object_id: bytes,
        *,
        meta_len: int,
        data_len: int,
        buffer_sizes: Sequence[int],
        take_ref: bool = True,
        timeout: float | None = 60.0,  # noqa: ASYNC109
    ) -> ObjectWriter:
        """Allocate an object of a known layout, to be filled chunk by chunk (the
        receiving end of a node-to-node transfer: the layout is the sender's
        `object_info`, the chunks from its `read_chunk`). Nothing is visible until
        `ObjectWriter.seal`; an aborted or abandoned writer leaves nothing."""
        sizes = tuple(int(n) for n in buffer_sizes)
        reply = await self._call(m.Create(object_id, meta_len, data_len, sizes, take_ref), timeout)
        mapping, payload = self._target(object_id, reply)
        length = payload_layout(meta_len, data_len, sizes)[1]
        return ObjectWriter(
            self, object_id, mapping, payload, length,
            m.Location(payload, meta_len, data_len, sizes), take_ref,
        )

    # -- lifetime ------------------------------------------------------------------

    async def add_ref(self, object_id: bytes, count: int = 1) -> None:
        self.refs[object_id] += count
        await self._send(m.AddRef(object_id, count))

    async def remove_ref(self, object_id: bytes, count: int = 1) -> None:
        count = min(count, self.refs[object_id])
        if count <= 0:
            return
        self.refs[object_id] -= count
        if self.refs[object_id] <= 0:
            del self.refs[object_id]
            self._small.pop(object_id, None)
            self._cache.pop(object_id, None)
        await self._send(m.RemoveRef(object_id, count))

    async def pin(self, object_id: bytes) -> None:
        """Keep the object in memory (never spilled or freed) until `unpin`."""
        await self._call(m.Pin(object_id), 30.0)
        self.pins[object_id] += 1

    async def unpin(self, object_id: bytes) -> None:
        if self.pins[object_id] > 0:
            self.pins[object_id] -= 1
            if self.pins[object_id] <= 0:
                del self.pins[object_id]
        await self._send(m.Unpin(object_id))

    async def delete(self, object_id: bytes) -> bool:
        """Forget the object whatever its refs; returns whether it existed. Memory under
        live views is reused only after they are gone."""
        self._small.pop(object_id, None)
        self._cache.pop(object_id, None)
        self._leases.pop(object_id, None)  # live values keep their lease, unnamed
        self.refs.pop(object_id, None)
        return await self._call(m.Delete(object_id), 30.0)

    async def store_statistics(self) -> StoreStatistics:
        """The service's `statistics()` (used, capacity, count, spilled, …)."""
        stats: StoreStatistics = await self._call(m.Statistics(), 30.0)
        return stats

    def statistics(self) -> StoreClientStatistics:
        """What this client holds (its side only; the service's is `store_statistics`)."""
        return StoreClientStatistics(
            refs=sum(self.refs.values()),
            leases=len(self._leases),
            cached_small=len(self._small),
            cached_leases=len(self._cache),
            pending_releases=len(self._released),
            mapped_ahead=self._mapped_ahead,
            map_ahead_seconds=self._map_ahead_seconds,
            closed=self.closed or self._conn.closed,
        )

    # -- plumbing ------------------------------------------------------------------

    def _release_soon(self, view_ids: Sequence[int]) -> None:
        """Called from ``_Lease.__del__`` in any thread."""
        with self._lock:
            self._released.extend(view_ids)
            if self._flush_scheduled or self.closed:
                return
            self._flush_scheduled = True
        try:
            self._token.run_sync_soon(self._flush_releases)
        except trio.RunFinishedError:
            pass

    def _flush_releases(self) -> None:
        with self._lock:
            self._flush_scheduled = False
            view_ids = list(self._released)
            self._released.clear()
        if view_ids and not self._conn.closed:
            try:
                self._conn.send_nowait(m.Release(view_ids))
            except transport.TransportError:
                pass

    async def _send(self, message: Any) -> None:
        try:
            await self._conn.send(message)
        except transport.ConnectionLost as exc:
            raise StoreClosedError(f"connection to the object store lost: {exc}") from exc

    async def _call(self, message: Any, timeout: float | None) -> Any:  # noqa: ASYNC109
        message = self._with_releases(message)
        try:
            return await self._conn.request(message, timeout=timeout)
        except transport.RemoteError as exc:
            raise _local_error(exc) from None
        except transport.ConnectionLost as exc:
            raise StoreClosedError(f"connection to the object store lost: {exc}") from exc

    def _call_from_thread(self, message: Any, timeout: float | None) -> Any:  # noqa: ASYNC109
        """`_call` from a thread outside the loop, which waits for the answer itself
        (`transport.Connection.request_from_thread`): no hop into the loop and out."""
        message = self._with_releases(message)
        try:
            return self._conn.request_from_thread(message, timeout=timeout)
        except transport.RemoteError as exc:
            raise _local_error(exc) from None
        except transport.ConnectionLost as exc:
            raise StoreClosedError(f"connection to the object store lost: {exc}") from exc

    def _with_releases(self, message: Any) -> Any:
        """``message``, carrying the pending view releases if any (one frame, one
        write); `StoreClosedError` if the client is closed (any thread)."""
        if self.closed:
            raise StoreClosedError("the store client is closed")
        if self._released:
            with self._lock:
                view_ids = list(self._released)
                self._released.clear()
            if view_ids:
                return m.WithReleases(view_ids, message)
        return message

    def _on_sealed(self, object_id: bytes, take_ref: bool, location: m.Location,
                   mapping: Mapping, sealed: outcome.Outcome[Any]) -> None:
        """The answer to a thread's seal sent without waiting (on the loop): the
        writer's view of the object (a later get by it needs no round trip)."""
        try:
            view_id = sealed.unwrap()
        except transport.ConnectionLost:
            return  # the service may not have read it: the reconnect's claim seals it
        except Exception as exc:
            # Refused (a seal into a file that failed; a bug): the object goes,
            # and the lookups that waited for it are told it is not here.
            self._unanswered_seals.pop(object_id, None)
            logger.error("the store refused to seal object %s: %s", object_id.hex(), exc)
            self._abort(object_id)
            return
        self._unanswered_seals.pop(object_id, None)
        if take_ref and view_id is not None:
            self._lease(object_id, view_id, location, mapping)


async def _dial(
    address: str, token: bytes | str, name: str, timeout: float, box: list[StoreClient]  # noqa: ASYNC109
) -> tuple[transport.Connection, m.StoreHello]:
    # What the service may ask of a client (only to drop its cached leases).
    routes = transport.Dispatcher(f"store client {name}", refuse=_refuse)
    routes.register(m.DropCache, lambda conn, message, reply: box[0]._on_drop_cache(
        conn, message, reply))
    routes.register(m.Recall, lambda conn, message, reply: box[0]._on_recall(
        conn, message, reply))
    routes.register(m.Pending, lambda conn, message, reply: reply.send(
        list(box[0]._unanswered_adopts)))
    conn = await transport.connect(address, token, name=name, connect_timeout=timeout, handler=routes)
    try:
        hello = await conn.request(m.Hello(), timeout=timeout)
    except BaseException:
        await conn.aclose()
        raise
    if not isinstance(hello, m.StoreHello):
        await conn.aclose()
        raise StoreError(f"{address} is not an object store (it answered {hello!r:.200})")
    return conn, hello


def _refuse(conn: transport.Connection, reply: transport.Reply,
            error: transport.BadMessage) -> None:
    reply.fail(BadRequest(str(error)))


def _local_error(error: transport.RemoteError) -> Exception:
    """The store's own error behind a `RemoteError` (what the caller catches), or the
    `RemoteError` itself."""
    remote = error.remote_exception
    if isinstance(remote, StoreError | ValueError | TypeError):
        return remote
    return error
