"""The store's state: the index, reference counts, pins, views, LRU spilling.

`StoreCore` is the single entry point to all of it; the service (`_service.py`) is
only its transport adapter, so the whole life cycle is testable here without
sockets. It creates, seals and reads objects itself and assembles two parts that
own the rest: `ObjectIndex` (``_index``: the entries and what keeps each alive)
and `Spiller` (``_spilling``: allocation under pressure, spills, restores, objects
created on disk).
Clients are opaque hashable ids (the service uses one per connection); everything a
client holds — refs, pins, views, unsealed allocations — is dropped with
`drop_client` when its connection goes.

Who keeps an object alive:
- refs: ``add_ref``/``remove_ref`` per client (``put`` takes one for its writer). Only
  objects the store has are counted (``add_ref`` on a missing id is refused, and a
  lost object's refs go with it): a ref on an id that names nothing would keep alive
  a later object made under that id (a rebuilt one) that no holder releases.
- pins: an object in use by a running task; never spilled, never freed.
- views: a client holds zero-copy views of the object (one view id per ``get`` that
  handed out a location; released when the client's views are garbage).
- the recovered hold: objects found in the arena or spill directory when the service
  (re)starts are kept ``recovery_grace`` seconds, for clients to reattach their refs.
An object with none of these is freed. Only objects with no pins and no views can be
spilled, least recently used first, and only when an allocation does not fit.

Objects larger than what shared memory can make room for (larger than the store, or
the store is held by pinned and in-use objects) fall back to disk, as in Ray:

- ``create`` that cannot allocate even after spilling creates the object in a file
  of the spill directory instead (``_spill.create_object_file``: disk blocks
  reserved up front, so a full disk is an error here, not a SIGBUS in the writer);
  the writer maps that file and copies into it as it would into the arena, and the
  seal renames it to a spill file. From then on it is a spilled object like any
  other: freed (the file removed) when its last holder goes, found again by a
  restarted service, removed with the session.
- ``get`` of a spilled object restores it into the arena when room can be made; when
  it cannot, the reader gets a *file view*: the file's path and the payload's layout
  in it, which it maps read-only (still zero copy, backed by the page cache). A file
  view keeps the file, not shared memory; the arena copy of a restored object stays
  spillable whatever file views of it live.

The disk is used only below ``disk_threshold`` of its capacity (Ray's
``local_fs_capacity_threshold``), for spills and objects created on disk alike; past
it, or with ``disk_fallback`` off, the caller gets `ObjectStoreFullError` saying so.
"""

from __future__ import annotations

import collections
import itertools
import logging
import math
import os
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

from . import _spill
from ._arena import SEALED, Arena, BlockInfo, header_size, payload_layout
from ._entry import Client, Entry
from ._errors import (
    GetTimeoutError,
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectStoreFullError,
    StoreError,
    format_id,
)
from ._index import ObjectIndex, payload_len, spill_header_len
from ._messages import Adopt, FileView, Lent, OnDisk, SharedView
from ._serialize import SerializedValue
from ._spilling import Spiller
from ._statistics import StoreStatistics

logger = logging.getLogger("store")

__all__ = ["GetResult", "StoreCore", "StoreStatistics"]

#: The ids of blocks lent to writers start with this (``StoreCore.lend``; the ids a
#: writer may adopt one under must start with its prefix, which this is not).
LENT_PREFIX = b"\x00lent\x00"

#: What `StoreCore.get` answers: a copy of a small value, or a view held for the client.
GetResult = SerializedValue | SharedView | FileView


class StoreCore:
    """One node's object store without its transport (see the module docstring).

    ``reclaim(clients)``: asks clients to drop the views they cache when nothing else
    can be spilled (the service's). ``recall(client, lend_id)`` asks a client for a
    block lent to it (``True``: given back); ``pending(client)`` asks it which ids
    it adopted without an answer yet (both the service's; see "Lending" below).
    """

    def __init__(
        self,
        arena: Arena,
        *,
        prefix: str,
        spill_dir: str | None,
        recovered: Sequence[BlockInfo] = (),
        inline_threshold: int = 100 * 1024,
        disk_fallback: bool = True,
        disk_threshold: float = 0.95,
        reclaim: Callable[[set[Client]], Awaitable[Any]] | None = None,
        recall: Callable[[Client, bytes], Awaitable[bool]] | None = None,
        pending: Callable[[Client], Awaitable[Sequence[bytes]]] | None = None,
    ):
        self.arena = arena
        self.inline_threshold = inline_threshold
        self.index = ObjectIndex(arena, recovered=recovered, spill_dir=spill_dir, prefix=prefix)
        self.spiller = Spiller(arena, self.index, prefix=prefix, spill_dir=spill_dir,
                               disk_fallback=disk_fallback, disk_threshold=disk_threshold,
                               reclaim=reclaim, recall=self.recall_lent)
        self.prefix = prefix
        self.spill_dir = spill_dir
        self.waiters: dict[bytes, trio.Event] = {}
        self._file_reads = 0
        #: lend id -> the client the block is lent to
        self.lent: dict[bytes, Client] = {}
        #: client -> the prefix of the ids it adopts blocks under (since its first loan)
        self.lenders: dict[Client, bytes] = {}
        self._lend_ids = itertools.count()
        self._recall = recall
        self._pending = pending
        #: refs taken on ids whose adopt may be on its way (`add_ref`)
        self._deferred_refs: dict[bytes, collections.Counter[Client]] = {}

    # -- queries -------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.arena.allocator.capacity

    def visible(self, object_id: bytes) -> Entry | None:
        """The sealed or spilled entry of ``object_id`` (``None`` if unsealed or absent)."""
        return self.index.visible(object_id)

    # Objects whose seal is on its way. A writer that creates with ``seal_follows``
    # (a driver's large `put`) sends its seal without waiting for the answer and
    # hands the object's id out at once; whoever it tells may ask us before the
    # seal, which its writer had sent first, is read (it comes on another
    # connection). So a lookup that finds such an object unsealed waits for the
    # seal (`settled`), or for the writer's abort or end, and answers as if it had
    # come first. Nothing waits on an object of a writer that did not say so (a
    # transfer filling one chunk by chunk): that is not visible yet.

    def sealing(self, object_id: bytes) -> bool:
        """Whether ``object_id`` is unsealed with its seal on its way (see above)."""
        entry = self.index.entries.get(object_id)
        return entry is not None and entry.sealing and entry.state == "unsealed"

    async def settled(self, object_id: bytes) -> None:
        """Return once ``object_id`` is no longer `sealing`: sealed, or aborted (its
        writer gave up or went). A cancellation point."""
        while self.sealing(object_id):
            event = self.waiters.setdefault(object_id, trio.Event())
            try:
                await event.wait()
            finally:
                if not event.statistics().tasks_waiting and self.waiters.get(object_id) is event:
                    del self.waiters[object_id]
        await trio.lowlevel.checkpoint()

    def _wake(self, object_ids: Sequence[bytes]) -> None:
        """Wake the lookups waiting on ``object_ids`` (aborted: they look again)."""
        for object_id in object_ids:
            event = self.waiters.pop(object_id, None)
            if event is not None:
                event.set()

    def contains(self, object_id: bytes) -> bool:
        """Whether the store has ``object_id`` sealed, in memory or spilled. A
        spilled object whose file vanished is lost here and then (as a ``get``
        finds it), so that asking says what reading would: it is gone."""
        entry = self.visible(object_id)
        if entry is None:
            return False
        if entry.state == "spilled" and not entry.busy and entry.spill_path is not None \
                and not os.path.exists(entry.spill_path):
            logger.warning("object %s is lost: its spill file %s vanished",
                           format_id(object_id), entry.spill_path)
            self.index.lose(entry)
            return False
        return True

    def statistics(self, *, connections: int = 0) -> StoreStatistics:
        """What the store holds now and what it has done since it started.

        ``connections`` is the owning service's count of client connections (the
        core knows clients only by the ids they were given).
        """
        index = self.index
        entries = index.entries
        by_state = collections.Counter(e.state for e in entries.values())
        counters = self.spiller.counters
        lent = sum(entries[lend_id].block_size for lend_id in self.lent)
        return StoreStatistics(
            capacity=self.capacity,
            used=self.arena.allocator.used_bytes - lent,
            lent=lent,
            largest_free=self.arena.allocator.largest_free,
            count=by_state["sealed"] + by_state["spilled"],
            in_memory=by_state["sealed"],
            unsealed=by_state["unsealed"] - len(self.lent),
            spilled=by_state["spilled"],
            spilled_bytes=index.spilled_bytes,
            small=sum(1 for e in entries.values() if e.size < self.inline_threshold),
            pinned=sum(1 for e in entries.values() if e.pins),
            views=len(index.views),
            file_views=len(index.file_view_ids),
            refs=sum(1 for c in index.refs.values() if c),
            quarantined=len(index.quarantined),
            waiting_gets=len(self.waiters),
            spills=counters["spills"],
            restores=counters["restores"],
            spill_bytes_written=counters["spill_bytes_written"],
            restore_bytes_read=counters["restore_bytes_read"],
            spill_seconds=self.spiller.spill_seconds,
            restore_seconds=self.spiller.restore_seconds,
            disk_allocations=counters["disk_allocations"],
            disk_allocated_bytes=counters["disk_allocated_bytes"],
            file_reads=self._file_reads,
            inline_threshold=self.inline_threshold,
            connections=connections,
        )

    # -- creating ------------------------------------------------------------------


    async def create(
        self,
        client: Client,
        object_id: bytes,
        meta_len: int,
        data_len: int,
        buffer_sizes: Sequence[int],
        take_ref: bool = True,
        seal_follows: bool = False,
    ) -> int | OnDisk:
        """Allocate an unsealed block for ``object_id``; returns the payload offset.

        Spills least recently used objects when the block does not fit. When nothing
        more can be spilled, the object is created on disk instead and `OnDisk`
        (the file, the payload's offset in it) returned; `ObjectStoreFullError` if
        the disk cannot take it. ``seal_follows``: see `sealing`.
        """
        payload = self.create_nowait(client, object_id, meta_len, data_len, buffer_sizes,
                                     take_ref, seal_follows)
        if payload is not None:
            return payload
        buffer_sizes = tuple(int(s) for s in buffer_sizes)
        need = self._block_need(object_id, meta_len, data_len, buffer_sizes)
        try:
            got = await self.spiller.allocate(need, object_id)
        except ObjectStoreFullError as full:
            on_disk = await self.spiller.create_on_disk(
                client, object_id, meta_len, data_len, buffer_sizes, take_ref, need, full.detail
            )
            self.index.entries[object_id].sealing = seal_follows
            return on_disk
        if object_id in self.index.entries:  # lost a race while spilling
            self.arena.free(got[0])
            raise ObjectExistsError(object_id)
        return self._install(client, object_id, got, meta_len, data_len, buffer_sizes, take_ref,
                             seal_follows)

    def create_nowait(
        self,
        client: Client,
        object_id: bytes,
        meta_len: int,
        data_len: int,
        buffer_sizes: Sequence[int],
        take_ref: bool = True,
        seal_follows: bool = False,
    ) -> int | None:
        """`create` if the block fits without spilling, else ``None`` (nothing done)."""
        if object_id in self.index.entries:
            raise ObjectExistsError(object_id)
        buffer_sizes = tuple(int(s) for s in buffer_sizes)
        got = self.arena.allocate(self._block_need(object_id, meta_len, data_len, buffer_sizes))
        if got is None:
            return None
        return self._install(client, object_id, got, meta_len, data_len, buffer_sizes, take_ref,
                             seal_follows)

    @staticmethod
    def _block_need(
        object_id: bytes, meta_len: int, data_len: int, buffer_sizes: tuple[int, ...]
    ) -> int:
        payload_len = payload_layout(meta_len, data_len, buffer_sizes)[1]
        return header_size(len(object_id), len(buffer_sizes)) + payload_len

    def _install(
        self,
        client: Client,
        object_id: bytes,
        block: tuple[int, int],
        meta_len: int,
        data_len: int,
        buffer_sizes: tuple[int, ...],
        take_ref: bool,
        seal_follows: bool = False,
    ) -> int:
        offset, size = block
        payload = self.arena.write_block(offset, size, object_id, meta_len, data_len, buffer_sizes)
        self.index.add(Entry(
            object_id, "unsealed", meta_len + data_len + sum(buffer_sizes), meta_len, data_len,
            buffer_sizes, block_offset=offset, block_size=size, payload_offset=payload,
            creator=client, sealing=seal_follows,
        ))
        if take_ref:
            self.index.add_ref(client, object_id)
        return payload

    # Lending. A put's ``create`` is a round trip to the service before the copy
    # can start; on a busy machine that is the wait for this process to be
    # scheduled (0.9-12.6 ms measured at load 7, 10-36 ms at load 15, against a
    # 100 MB copy of 10-15 ms). So a writer that asks (the driver) is lent a block
    # ahead of its next put (as large as its last put; none before its first): the
    # put copies into it without asking, then sends `Adopt` (the block is that
    # object now, sealed, its tail freed) without waiting; as it takes the block,
    # before its copy, it asks for the next one (`Lend`), whose answer comes
    # while it copies. A lent block is an
    # unsealed entry under a lend id (`LENT_PREFIX`) whose creator is the writer,
    # so everything that drops a writer's unsealed blocks drops it too (its
    # connection's end, a restart's grace period); it counts in ``lent``, not in
    # ``used``. Two things keep the store's guarantees:
    #
    # - Memory: an allocation that does not fit recalls the lent blocks before it
    #   spills anything (`recall_lent`): the writer gives a block back unless a put
    #   is writing into it (then its `Adopt` follows, and the block is an object).
    # - Visibility: the writer hands the object's id out the moment its `Adopt` is
    #   sent, as with a seal that follows (`sealing`); but no entry of the id
    #   exists before the `Adopt` is read. So a lookup that finds nothing under an
    #   id starting with a lender's prefix (its put ids) asks that lender which
    #   adopts it sent without an answer (`Pending`), and waits for the id's
    #   (`adopted`). Whoever learned the id did so after its put returned, after
    #   the writer recorded the adopt as pending: the answer includes it.

    def lend(self, client: Client, size: int, prefix: bytes) -> Lent | None:
        """Lend ``client`` a block of ``size`` bytes for a put to come under an id
        starting with ``prefix``; ``None`` if it does not fit without spilling."""
        if not prefix:
            raise ValueError("the ids adopted into lent blocks need a prefix, not b''")
        self.lenders[client] = prefix
        lend_id = LENT_PREFIX + next(self._lend_ids).to_bytes(8, "little")
        got = self.arena.allocate(max(size, header_size(len(lend_id), 0)))
        if got is None:
            return None
        self._install(client, lend_id, got, 0, 0, (), take_ref=False)
        self.lent[lend_id] = client
        return Lent(lend_id, got[0], got[1])

    def adopt(self, client: Client, msg: Adopt) -> int | None:
        """The block lent to ``client`` as ``msg.lend_id`` becomes ``msg.object_id``,
        written, sealed; its tail beyond the object is freed. Returns the writer's
        view id (``take_ref``) as `seal` does."""
        entry = self.index.entries.get(msg.lend_id)
        if entry is None or self.lent.get(msg.lend_id) != client:
            raise ObjectNotFoundError(msg.lend_id, "no block lent to this client under that id")
        object_id = msg.object_id
        if not object_id.startswith(self.lenders[client]):
            raise ValueError(f"object {format_id(object_id)} does not start with the prefix "
                             f"{self.lenders[client]!r} its writer was lent blocks for")
        if object_id in self.index.entries:
            raise ObjectExistsError(object_id)
        sizes = tuple(int(s) for s in msg.buffer_sizes)
        need = self._block_need(object_id, msg.meta_len, msg.data_len, sizes)
        if need > entry.block_size:
            raise ValueError(f"object {format_id(object_id)} needs a block of {need} bytes; "
                             f"the one lent is {entry.block_size}")
        del self.lent[msg.lend_id]
        self.index.discard(entry)
        size = self.arena.shrink(entry.block_offset, need)
        self._install(client, object_id, (entry.block_offset, size), msg.meta_len,
                      msg.data_len, sizes, msg.take_ref)
        for holder, count in self._deferred_refs.pop(object_id, {}).items():
            self.index.add_ref(holder, object_id, count)
        return self.seal(client, object_id, with_view=msg.take_ref)

    async def recall_lent(self) -> bool:
        """Ask the writers for the blocks lent to them (an allocation does not fit);
        whether any came back. A block being written stays lent: its `Adopt`
        follows."""
        freed = False
        for lend_id, client in list(self.lent.items()):
            given = self._recall is not None and await self._recall(client, lend_id)
            if given and self.lent.get(lend_id) == client:
                del self.lent[lend_id]
                self.index.abort(client, lend_id)
                freed = True
        return freed

    def may_be_adopting(self, object_id: bytes) -> bool:
        """Whether a lookup finding nothing under ``object_id`` must ask its writer
        first (`adopted`): no entry, and the id starts with a lender's prefix."""
        if not self.lenders or object_id in self.index.entries:
            return False
        return any(object_id.startswith(prefix) for prefix in self.lenders.values())

    async def adopted(self, object_id: bytes) -> None:
        """Return once no `Adopt` of ``object_id`` is on its way: its lenders say
        they sent none, or it was applied, or its writer went. A cancellation
        point."""
        for client, prefix in list(self.lenders.items()):
            if object_id in self.index.entries:
                break
            if not object_id.startswith(prefix) or self._pending is None:
                continue
            if object_id not in await self._pending(client):
                continue
            while object_id not in self.index.entries and client in self.lenders:
                event = self.waiters.setdefault(object_id, trio.Event())
                try:
                    await event.wait()
                finally:
                    if not event.statistics().tasks_waiting and self.waiters.get(object_id) is event:
                        del self.waiters[object_id]
        await trio.lowlevel.checkpoint()

    def seal(self, client: Client, object_id: bytes, with_view: bool = False) -> int | None:
        """Make the object visible. With ``with_view`` the writer gets a view of it
        (its view id is returned), so its own reads need no round trip."""
        entry = self.index.entries.get(object_id)
        if entry is None or entry.state != "unsealed" or entry.creator != client:
            raise ObjectNotFoundError(object_id, "no unsealed object of this client to seal")
        if entry.block_offset < 0:  # created on disk: from now on a spilled object
            assert self.spill_dir is not None and entry.spill_path is not None
            final = _spill.spill_path(self.spill_dir, self.prefix, object_id)
            try:
                _spill.seal_object_file(entry.spill_path, final)
            except OSError as exc:
                self.abort(client, object_id)
                raise StoreError(
                    f"object {format_id(object_id)} could not be sealed in {final}: {exc}"
                ) from exc
            entry.spill_path = final
        else:
            self.arena.set_state(entry.block_offset, SEALED)
        self.index.sealed(entry)
        entry.creator = None
        entry.sealing = False
        view_id = self.index.add_view(entry, client) if with_view else None
        self._sealed(object_id)
        return view_id

    async def put_small(
        self, client: Client, object_id: bytes, value: SerializedValue, take_ref: bool = True
    ) -> None:
        """Store a small value that arrived inside a message.

        It goes into the arena too (a small block, written here, sealed at once), so
        that it survives a restart of the service like every other sealed object;
        but it never makes a client map or copy shared memory: ``get`` answers small
        objects with a copy inside the reply.
        """
        sizes = [memoryview(b).nbytes for b in value.buffers]
        data = memoryview(value.data)
        target = await self.create(client, object_id, len(value.metadata), data.nbytes, sizes, take_ref)
        self._fill_small(client, object_id, target, value)

    def put_small_nowait(
        self, client: Client, object_id: bytes, value: SerializedValue, take_ref: bool = True
    ) -> bool:
        """`put_small` if it fits without spilling; ``False`` (nothing done) if not."""
        sizes = [memoryview(b).nbytes for b in value.buffers]
        data_len = memoryview(value.data).nbytes
        payload = self.create_nowait(client, object_id, len(value.metadata), data_len, sizes, take_ref)
        if payload is None:
            return False
        self._fill_small(client, object_id, payload, value)
        return True

    def _fill_small(
        self, client: Client, object_id: bytes, target: int | OnDisk, value: SerializedValue
    ) -> None:
        data = memoryview(value.data)
        sizes = [memoryview(b).nbytes for b in value.buffers]
        offsets, _ = payload_layout(len(value.metadata), data.nbytes, sizes)
        pieces = [(0, value.metadata), (len(value.metadata), data)]
        pieces += list(zip(offsets, value.buffers, strict=True))
        if isinstance(target, OnDisk):  # created on disk (a small write: no thread)
            _spill.write_at(target.path,
                            [(target.payload + offset, piece) for offset, piece in pieces])
        else:
            for offset, piece in pieces:
                self.arena.mapping.write(target + offset, piece)
        self.seal(client, object_id)

    def copy_out(self, entry: Entry) -> SerializedValue:
        """A copy of a sealed object's serialised value (for small objects)."""
        return _copy_payload(self.arena.mapping.view, entry.payload_offset, entry)

    def _sealed(self, object_id: bytes) -> None:
        event = self.waiters.pop(object_id, None)
        if event is not None:
            event.set()
        self.index.free_if_unreferenced(object_id)

    # -- reading -------------------------------------------------------------------

    def get_now(self, client: Client, object_id: bytes) -> GetResult | None:
        """`get` without waiting: the answer if the object is sealed in the arena and
        nobody is moving it, else ``None`` (the caller awaits `get`)."""
        entry = self.visible(object_id)
        if entry is None or entry.state != "sealed" or entry.busy:
            return None
        return self._read(client, entry)

    def _read(self, client: Client, entry: Entry) -> GetResult:
        self.index.touch(entry)
        if entry.size < self.inline_threshold:
            return self.copy_out(entry)
        return SharedView(self.index.add_view(entry, client), entry.payload_offset, entry.meta_len,
                          entry.data_len, entry.buffer_sizes)

    async def get(self, client: Client, object_id: bytes, timeout: float | None) -> GetResult:  # noqa: ASYNC109
        """Wait (up to ``timeout``; ``None`` forever) until the object is sealed.

        Returns a copy of a small value (`SerializedValue`), or a `SharedView` of the
        arena (a `FileView` of a file when shared memory cannot take it back); a view
        is held for ``client`` until `release_views`.
        """
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        asked = False
        while True:
            entry = self.visible(object_id)
            if entry is None:
                if self.sealing(object_id):
                    # Its seal is on its way: as good as sealed, so even a get that
                    # does not wait (``timeout`` 0) waits for it; bounded by the
                    # writer's life (it seals, aborts or goes).
                    with trio.move_on_at(deadline if timeout is not None and timeout > 0
                                         else math.inf):
                        await self.settled(object_id)
                        continue
                    raise GetTimeoutError(object_id, timeout if timeout is not None else math.inf)
                if timeout is not None and timeout <= 0:
                    if not asked and self.may_be_adopting(object_id):
                        asked = True  # its adopt may be on its way: ask its writer
                        await self.adopted(object_id)
                        continue
                    raise ObjectNotFoundError(object_id)
                event = self.waiters.setdefault(object_id, trio.Event())
                try:
                    with trio.move_on_at(deadline):
                        await event.wait()
                        continue
                finally:
                    if not event.statistics().tasks_waiting and self.waiters.get(object_id) is event:
                        del self.waiters[object_id]  # the last waiter gave up
                raise GetTimeoutError(object_id, timeout if timeout is not None else math.inf)
            if entry.state == "spilled" or entry.busy == "restoring":
                try:
                    try:
                        await self.spiller.restore(entry)
                    except ObjectStoreFullError:
                        if entry.state != "spilled" or self.index.entries.get(object_id) is not entry:
                            continue  # restored by someone else, or gone, meanwhile
                        # No room in shared memory (larger than the store, or the store
                        # is held by pinned and in-use objects): the reader maps the file.
                        return self._from_disk(client, entry)
                except OSError as exc:
                    # The spill file vanished or cannot be read: the value is gone.
                    # The entry goes (so a rebuilt value can be put under the same
                    # id) and the reader is told the object is not here.
                    if entry.state == "spilled" and self.index.entries.get(object_id) is entry:
                        logger.warning("object %s is lost: its spill file %s cannot be "
                                       "read back (%s)", format_id(object_id),
                                       entry.spill_path, exc)
                        self.index.lose(entry)
                    raise ObjectNotFoundError(
                        object_id, f"its spill file could not be read back: {exc}") from None
                continue
            return self._read(client, entry)


    def _from_disk(self, client: Client, entry: Entry) -> SerializedValue | FileView:
        """A ``get`` answer read from the entry's file: a copy if small, else a
        `FileView` (the path and the payload's location in the file)."""
        assert entry.spill_path is not None
        start = spill_header_len(entry)
        self._file_reads += 1
        if entry.size < self.inline_threshold:
            payload = _spill.read_at(entry.spill_path, start, payload_len(entry))
            return _copy_payload(memoryview(payload), 0, entry)
        # The reader maps the file: one that vanished is lost here, where the entry
        # can go (OSError), not at the reader, whose mapping would fail while the
        # store goes on listing the object.
        os.stat(entry.spill_path)
        view_id = self.index.add_view(entry, client, of_file=True)
        return FileView(view_id, entry.spill_path, start, entry.meta_len, entry.data_len,
                        entry.buffer_sizes)

    def read_chunk(self, object_id: bytes, offset: int, size: int) -> bytes:
        """A copy of ``size`` bytes at ``offset`` of the object's payload."""
        entry = self.visible(object_id)
        if entry is None:
            raise ObjectNotFoundError(object_id)
        if offset < 0 or size < 0 or offset + size > self.payload_len(entry):
            raise ValueError(
                f"chunk [{offset}, {offset + size}) is outside object {format_id(object_id)} "
                f"of {self.payload_len(entry)} bytes"
            )
        if entry.state == "spilled":
            assert entry.spill_path is not None
            with open(entry.spill_path, "rb") as f:
                block = spill_header_len(entry)
                f.seek(block + offset)
                return f.read(size)
        start = entry.payload_offset + offset
        return bytes(self.arena.mapping.view[start : start + size])

    @staticmethod
    def payload_len(entry: Entry) -> int:
        """The bytes of ``entry``'s payload as laid out in its block."""
        return payload_len(entry)

    # -- who keeps objects alive (``ObjectIndex``) -------------------------------------

    def abort(self, client: Client, object_id: bytes) -> None:
        """``client`` gives up writing ``object_id``: its block (or file) is freed."""
        if self.lent.get(object_id) == client:  # a lent block given back
            del self.lent[object_id]
        self.index.abort(client, object_id)
        self._wake([object_id])

    def release_views(self, client: Client, view_ids: Sequence[int]) -> None:
        """``client`` no longer uses the views ``view_ids``."""
        self.index.release_views(client, view_ids)

    def add_ref(self, client: Client, object_id: bytes, count: int = 1) -> bool:
        """Count ``count`` refs of ``client`` on ``object_id``; whether it was counted.
        A ref on an id whose adopt may be on its way (`may_be_adopting`) is kept
        aside until the adopt is applied (`adopt` counts it) or is known not to
        come (`drop_deferred_refs`); it answers ``True``."""
        if self.may_be_adopting(object_id):
            self._deferred_refs.setdefault(object_id, collections.Counter())[client] += count
            return True
        return self.index.add_ref(client, object_id, count)

    def drop_deferred_refs(self, object_id: bytes) -> None:
        """No adopt of ``object_id`` came: the refs kept aside for it count nothing."""
        if object_id not in self.index.entries:
            self._deferred_refs.pop(object_id, None)

    def remove_ref(self, client: Client, object_id: bytes, count: int = 1) -> None:
        """Drop ``count`` refs of ``client`` on ``object_id``."""
        deferred = self._deferred_refs.get(object_id)
        if deferred and deferred[client]:
            taken = min(count, deferred[client])
            deferred[client] -= taken
            count -= taken
            if not +deferred:
                del self._deferred_refs[object_id]
        if count > 0:
            self.index.remove_ref(client, object_id, count)

    def pin(self, client: Client, object_id: bytes) -> None:
        """``object_id`` is in use by a running task of ``client``: never spilled."""
        self.index.pin(client, object_id)

    def unpin(self, client: Client, object_id: bytes) -> None:
        """The pin of ``pin`` goes."""
        self.index.unpin(client, object_id)

    def delete(self, object_id: bytes) -> bool:
        """Forget the object now, whatever its refs; whether it existed."""
        return self.index.delete(object_id)

    def drop_client(self, client: Client) -> None:
        """Everything ``client`` held goes: refs, pins, views, unsealed allocations."""
        writing = [oid for oid, entry in self.index.entries.items()
                   if entry.state == "unsealed" and entry.creator == client]
        for lend_id in [lid for lid, c in self.lent.items() if c == client]:
            del self.lent[lend_id]
        if self.lenders.pop(client, None) is not None:
            writing = list(self.waiters)  # lookups waiting for its adopts look again
        self.index.drop_client(client)
        self._wake(writing)

    def end_recovery(self) -> None:
        """The grace period is over: unclaimed recovered objects and unsealed blocks go."""
        self.index.end_recovery()

    def claim(self, client: Client, refs: dict, pins: dict, views: Sequence[bytes],
              sealed: Sequence[bytes] = (), adopts: Sequence[Adopt] = ()) -> dict:
        """A client (re)attaches what it held before the service restarted (and seals
        what it sealed or adopted unanswered: `ObjectIndex.claim`)."""
        return self.index.claim(client, refs, pins, views, sealed, adopts)


def _copy_payload(view: memoryview, payload: int, entry: Entry) -> SerializedValue:
    """A copy of the serialised value whose payload starts at ``payload`` of ``view``."""
    offsets, _ = payload_layout(entry.meta_len, entry.data_len, entry.buffer_sizes)
    data_start = payload + entry.meta_len
    return SerializedValue(
        data=bytes(view[data_start : data_start + entry.data_len]),
        buffers=[
            bytes(view[payload + o : payload + o + n])
            for o, n in zip(offsets, entry.buffer_sizes, strict=True)
        ],
        metadata=bytes(view[payload : payload + entry.meta_len]),
    )


