"""The store's state: the index, reference counts, pins, views, LRU spilling.

`StoreCore` is the single writer of all of it; the service (`_service.py`) is only
its transport adapter, so the whole life cycle is testable here without sockets.
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
import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import attrs
import trio

from . import _spill
from ._allocator import align
from ._arena import (
    SEALED,
    UNSEALED,
    Arena,
    BlockInfo,
    header_size,
    pack_block_header,
    payload_layout,
)
from ._diagnose import full_error
from ._entry import Client, Entry
from ._errors import (
    GetTimeoutError,
    ObjectExistsError,
    ObjectNotFoundError,
    ObjectStoreFullError,
    StoreError,
    format_id,
)
from ._messages import FileView, OnDisk, SharedView
from ._serialize import SerializedValue

logger = logging.getLogger("store")

__all__ = ["GetResult", "StoreCore", "StoreStatistics"]

#: What `StoreCore.get` answers: a copy of a small value, or a view held for the client.
GetResult = SerializedValue | SharedView | FileView


@attrs.frozen(kw_only=True)
class StoreStatistics:
    """Figures of one node's object store, from `ObjectStoreService.statistics()`
    (in process) or `StoreClient.store_statistics()` (from a client).

    A service that is not running reports its ``capacity`` and zeros.

    Attributes:
      capacity: the shared-memory budget in bytes (the arena's size).
      used: bytes of the arena allocated, sealed or not; largest_free: the largest
        block that could be allocated now without spilling.
      count: objects sealed (``in_memory``) or ``spilled`` to disk; unsealed:
        objects being written; spilled_bytes: payload bytes of the spilled ones.
      small: objects below ``inline_threshold`` bytes (those normally travel inside
        messages); pinned: objects held by running tasks (never spilled).
      views: zero-copy views handed out and not yet released (``file_views`` of them
        map a file on disk); refs: objects with at least one client ref.
      quarantined: unsealed blocks found at start, freed after the recovery grace.
      waiting_gets: objects a ``get`` is waiting for.
      spills, restores: objects written to / read back from disk, with their bytes
        (``spill_bytes_written``, ``restore_bytes_read``) and seconds spent.
      disk_allocations, disk_allocated_bytes: objects created on disk because
        shared memory could not take them; file_reads: gets answered with a file view.
      inline_threshold: values smaller than this many bytes are not put here.
      connections: client connections of the service.
      prefaulted, prefault_seconds: bytes of the arena kept faulted in ahead of the
        allocations (warm pages for the next puts) and the seconds spent on it.
    """

    capacity: int
    used: int = 0
    largest_free: int = 0
    count: int = 0
    in_memory: int = 0
    unsealed: int = 0
    spilled: int = 0
    spilled_bytes: int = 0
    small: int = 0
    pinned: int = 0
    views: int = 0
    file_views: int = 0
    refs: int = 0
    quarantined: int = 0
    waiting_gets: int = 0
    spills: int = 0
    restores: int = 0
    spill_bytes_written: int = 0
    restore_bytes_read: int = 0
    spill_seconds: float = 0.0
    restore_seconds: float = 0.0
    disk_allocations: int = 0
    disk_allocated_bytes: int = 0
    file_reads: int = 0
    inline_threshold: int = 0
    connections: int = 0
    prefaulted: int = 0
    prefault_seconds: float = 0.0


class StoreCore:
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
    ):
        self.arena = arena
        self.inline_threshold = inline_threshold
        self.prefix = prefix
        self.spill_dir = spill_dir
        self.disk_fallback = disk_fallback
        self.disk_threshold = disk_threshold
        self.entries: dict[bytes, Entry] = {}
        self.refs: dict[bytes, collections.Counter] = {}
        self.lru: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        self.views: dict[int, tuple[Entry, Client]] = {}
        self.file_view_ids: set[int] = set()  # the views in ``views`` that map a file
        self.waiters: dict[bytes, trio.Event] = {}
        self.quarantined: list[int] = []  # unsealed blocks found at start
        self.spilled_bytes = 0
        self.counters: collections.Counter[str] = collections.Counter()
        # View ids never repeat across restarts of the service (a stale release from
        # before a restart must not release someone else's view).
        self._next_view = time.time_ns()
        self.spill_seconds = 0.0
        self.restore_seconds = 0.0
        #: ``async reclaim(clients)``: ask clients to drop cached views (set by the service).
        self.reclaim: Any = None
        self._alloc_lock = trio.Lock()
        for block in recovered:
            if block.state == SEALED:
                entry = self._arena_entry(block)
                entry.recovered = True
                self.entries[block.object_id] = entry
                self.lru[block.object_id] = None
            else:  # a writer died before sealing: nothing visible; reuse after grace
                self.quarantined.append(block.offset)
        if spill_dir is not None:
            os.makedirs(spill_dir, exist_ok=True)
            for path, block in _spill.scan_spills(spill_dir, prefix):
                if block.object_id in self.entries:
                    os.unlink(path)
                    continue
                entry = Entry(
                    block.object_id, "spilled", _payload_size(block), block.meta_len,
                    block.data_len, block.buffer_sizes, spill_path=path, recovered=True,
                )
                self.entries[block.object_id] = entry
                self.spilled_bytes += entry.size

    @staticmethod
    def _arena_entry(block: BlockInfo) -> Entry:
        return Entry(
            block.object_id, "sealed", _payload_size(block), block.meta_len, block.data_len,
            block.buffer_sizes, block_offset=block.offset, block_size=block.size,
            payload_offset=block.payload_offset,
        )

    # -- queries -------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        return self.arena.allocator.capacity

    def visible(self, object_id: bytes) -> Entry | None:
        entry = self.entries.get(object_id)
        if entry is None or entry.state == "unsealed":
            return None
        return entry

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
            self._lose(entry)
            return False
        return True

    def statistics(self, *, connections: int = 0) -> StoreStatistics:
        """What the store holds now and what it has done since it started.

        ``connections`` is the owning service's count of client connections (the
        core knows clients only by the ids they were given).
        """
        by_state = collections.Counter(e.state for e in self.entries.values())
        counters = self.counters
        return StoreStatistics(
            capacity=self.capacity,
            used=self.arena.allocator.used_bytes,
            largest_free=self.arena.allocator.largest_free,
            count=by_state["sealed"] + by_state["spilled"],
            in_memory=by_state["sealed"],
            unsealed=by_state["unsealed"],
            spilled=by_state["spilled"],
            spilled_bytes=self.spilled_bytes,
            small=sum(1 for e in self.entries.values() if e.size < self.inline_threshold),
            pinned=sum(1 for e in self.entries.values() if e.pins),
            views=len(self.views),
            file_views=len(self.file_view_ids),
            refs=sum(1 for c in self.refs.values() if c),
            quarantined=len(self.quarantined),
            waiting_gets=len(self.waiters),
            spills=counters["spills"],
            restores=counters["restores"],
            spill_bytes_written=counters["spill_bytes_written"],
            restore_bytes_read=counters["restore_bytes_read"],
            spill_seconds=self.spill_seconds,
            restore_seconds=self.restore_seconds,
            disk_allocations=counters["disk_allocations"],
            disk_allocated_bytes=counters["disk_allocated_bytes"],
            file_reads=counters["file_reads"],
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
    ) -> int | OnDisk:
        """Allocate an unsealed block for ``object_id``; returns the payload offset.

        Spills least recently used objects when the block does not fit. When nothing
        more can be spilled, the object is created on disk instead and `OnDisk`
        (the file, the payload's offset in it) returned; `ObjectStoreFullError` if
        the disk cannot take it.
        """
        payload = self.create_nowait(client, object_id, meta_len, data_len, buffer_sizes, take_ref)
        if payload is not None:
            return payload
        buffer_sizes = tuple(int(s) for s in buffer_sizes)
        need = self._block_need(object_id, meta_len, data_len, buffer_sizes)
        try:
            got = await self._allocate(need, object_id)
        except ObjectStoreFullError as full:
            return await self._create_on_disk(
                client, object_id, meta_len, data_len, buffer_sizes, take_ref, need, full.detail
            )
        if object_id in self.entries:  # lost a race while spilling
            self.arena.free(got[0])
            raise ObjectExistsError(object_id)
        return self._install(client, object_id, got, meta_len, data_len, buffer_sizes, take_ref)

    def create_nowait(
        self,
        client: Client,
        object_id: bytes,
        meta_len: int,
        data_len: int,
        buffer_sizes: Sequence[int],
        take_ref: bool = True,
    ) -> int | None:
        """`create` if the block fits without spilling, else ``None`` (nothing done)."""
        if object_id in self.entries:
            raise ObjectExistsError(object_id)
        buffer_sizes = tuple(int(s) for s in buffer_sizes)
        got = self.arena.allocate(self._block_need(object_id, meta_len, data_len, buffer_sizes))
        if got is None:
            return None
        return self._install(client, object_id, got, meta_len, data_len, buffer_sizes, take_ref)

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
    ) -> int:
        offset, size = block
        payload = self.arena.write_block(offset, size, object_id, meta_len, data_len, buffer_sizes)
        self.entries[object_id] = Entry(
            object_id, "unsealed", meta_len + data_len + sum(buffer_sizes), meta_len, data_len,
            buffer_sizes, block_offset=offset, block_size=size, payload_offset=payload,
            creator=client,
        )
        if take_ref:
            self.add_ref(client, object_id)
        return payload

    async def _create_on_disk(
        self,
        client: Client,
        object_id: bytes,
        meta_len: int,
        data_len: int,
        buffer_sizes: tuple[int, ...],
        take_ref: bool,
        need: int,
        spill_detail: str = "",
    ) -> OnDisk:
        """Create the object in a file of the spill directory (the module docstring);
        `ObjectStoreFullError` naming the store and the disk if it cannot be
        (``spill_detail``: why spilling did not make room, if the disk was why)."""
        length = header_size(len(object_id), len(buffer_sizes)) + payload_layout(
            meta_len, data_len, buffer_sizes
        )[1]
        refusal = self._disk_refusal(length, fallback=True)
        if refusal is not None:
            if spill_detail and refusal not in spill_detail:
                refusal = f"{spill_detail}; {refusal}"
            elif spill_detail:
                refusal = spill_detail
            raise self._full_error(need, object_id, refusal)
        if object_id in self.entries:
            raise ObjectExistsError(object_id)
        assert self.spill_dir is not None
        path = _spill.spill_path(self.spill_dir, self.prefix, object_id) + ".tmp"
        header = pack_block_header(
            UNSEALED, align(length), object_id, meta_len, data_len, buffer_sizes
        )
        entry = Entry(
            object_id, "unsealed", meta_len + data_len + sum(buffer_sizes), meta_len, data_len,
            buffer_sizes, payload_offset=len(header), spill_path=path, creator=client,
        )
        self.entries[object_id] = entry  # taken: a second create of the id fails now
        try:
            await trio.to_thread.run_sync(_spill.create_object_file, path, header, length)
        except OSError as exc:
            if self.entries.get(object_id) is entry:
                del self.entries[object_id]
            raise self._full_error(
                need, object_id, f"the disk fallback could not create {length} bytes at {path}: {exc}"
            ) from exc
        if self.entries.get(object_id) is not entry:  # its writer went meanwhile
            _unlink(path)
            raise ObjectNotFoundError(object_id, "aborted while it was created on disk")
        self.counters["disk_allocations"] += 1
        self.counters["disk_allocated_bytes"] += length
        if take_ref:
            self.add_ref(client, object_id)
        return OnDisk(path, len(header))

    def seal(self, client: Client, object_id: bytes, with_view: bool = False) -> int | None:
        """Make the object visible. With ``with_view`` the writer gets a view of it
        (its view id is returned), so its own reads need no round trip."""
        entry = self.entries.get(object_id)
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
            entry.state = "spilled"
            self.spilled_bytes += entry.size
        else:
            self.arena.set_state(entry.block_offset, SEALED)
            entry.state = "sealed"
            self.lru[object_id] = None
        entry.creator = None
        view_id = self._add_view(entry, client) if with_view else None
        self._sealed(object_id)
        return view_id

    def _add_view(self, entry: Entry, client: Client, *, of_file: bool = False) -> int:
        """A view of the entry's arena block; or of its file on disk with ``of_file``,
        or when it is not in the arena (the writer of an object created on disk)."""
        view_id = self._next_view
        self._next_view += 1
        self.views[view_id] = (entry, client)
        if of_file or entry.block_offset < 0:
            self.file_view_ids.add(view_id)
            entry.file_views += 1
        else:
            entry.views += 1
        return view_id

    def abort(self, client: Client, object_id: bytes) -> None:
        entry = self.entries.get(object_id)
        if entry is not None and entry.state == "unsealed" and entry.creator == client:
            del self.entries[object_id]
            if entry.block_offset >= 0:
                self.arena.free(entry.block_offset)
            elif entry.spill_path is not None:
                _unlink(entry.spill_path)

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
        if not self.refs.get(object_id):
            self._maybe_free(self.entries[object_id])

    # -- reading -------------------------------------------------------------------

    def get_now(self, client: Client, object_id: bytes) -> GetResult | None:
        """`get` without waiting: the answer if the object is sealed in the arena and
        nobody is moving it, else ``None`` (the caller awaits `get`)."""
        entry = self.visible(object_id)
        if entry is None or entry.state != "sealed" or entry.busy:
            return None
        return self._read(client, entry)

    def _read(self, client: Client, entry: Entry) -> GetResult:
        self.lru.move_to_end(entry.object_id)
        if entry.size < self.inline_threshold:
            return self.copy_out(entry)
        return SharedView(self._add_view(entry, client), entry.payload_offset, entry.meta_len,
                          entry.data_len, entry.buffer_sizes)

    async def get(self, client: Client, object_id: bytes, timeout: float | None) -> GetResult:  # noqa: ASYNC109
        """Wait (up to ``timeout``; ``None`` forever) until the object is sealed.

        Returns a copy of a small value (`SerializedValue`), or a `SharedView` of the
        arena (a `FileView` of a file when shared memory cannot take it back); a view
        is held for ``client`` until `release_views`.
        """
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        while True:
            entry = self.visible(object_id)
            if entry is None:
                if timeout is not None and timeout <= 0:
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
                        await self._restore(entry)
                    except ObjectStoreFullError:
                        if entry.state != "spilled" or self.entries.get(object_id) is not entry:
                            continue  # restored by someone else, or gone, meanwhile
                        # No room in shared memory (larger than the store, or the store
                        # is held by pinned and in-use objects): the reader maps the file.
                        return self._from_disk(client, entry)
                except OSError as exc:
                    # The spill file vanished or cannot be read: the value is gone.
                    # The entry goes (so a rebuilt value can be put under the same
                    # id) and the reader is told the object is not here.
                    if entry.state == "spilled" and self.entries.get(object_id) is entry:
                        logger.warning("object %s is lost: its spill file %s cannot be "
                                       "read back (%s)", format_id(object_id),
                                       entry.spill_path, exc)
                        self._lose(entry)
                    raise ObjectNotFoundError(
                        object_id, f"its spill file could not be read back: {exc}") from None
                continue
            return self._read(client, entry)

    def _from_disk(self, client: Client, entry: Entry) -> SerializedValue | FileView:
        """A ``get`` answer read from the entry's file: a copy if small, else a
        `FileView` (the path and the payload's location in the file)."""
        assert entry.spill_path is not None
        start = self._spill_header_len(entry)
        self.counters["file_reads"] += 1
        if entry.size < self.inline_threshold:
            payload = _spill.read_at(entry.spill_path, start, self.payload_len(entry))
            return _copy_payload(memoryview(payload), 0, entry)
        # The reader maps the file: one that vanished is lost here, where the entry
        # can go (OSError), not at the reader, whose mapping would fail while the
        # store goes on listing the object.
        os.stat(entry.spill_path)
        view_id = self._add_view(entry, client, of_file=True)
        return FileView(view_id, entry.spill_path, start, entry.meta_len, entry.data_len,
                        entry.buffer_sizes)

    def release_views(self, client: Client, view_ids: Sequence[int]) -> None:
        for view_id in view_ids:
            held = self.views.get(view_id)
            if held is None or held[1] != client:
                continue
            del self.views[view_id]
            entry = held[0]
            if view_id in self.file_view_ids:
                self.file_view_ids.discard(view_id)
                entry.file_views -= 1
            else:
                entry.views -= 1
            self._maybe_free(entry)

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
                block = self._spill_header_len(entry)
                f.seek(block + offset)
                return f.read(size)
        start = entry.payload_offset + offset
        return bytes(self.arena.mapping.view[start : start + size])

    @staticmethod
    def payload_len(entry: Entry) -> int:
        return payload_layout(entry.meta_len, entry.data_len, entry.buffer_sizes)[1]

    @staticmethod
    def _spill_header_len(entry: Entry) -> int:
        return header_size(len(entry.object_id), len(entry.buffer_sizes))

    # -- reference counting --------------------------------------------------------

    def add_ref(self, client: Client, object_id: bytes, count: int = 1) -> bool:
        """Count ``count`` refs of ``client`` on ``object_id``; whether it was counted.

        Only an object the store has (sealed, being written, or spilled) is counted.
        A ref on a missing id keeps nothing alive, and counting it would leak: it
        would outlive what it named (its holder, told the object is lost, drops
        its bookkeeping) and keep alive a later object made under the same id (a
        lost result rebuilt from its lineage), which no holder would release.
        """
        if object_id not in self.entries:
            return False
        self.refs.setdefault(object_id, collections.Counter())[client] += count
        return True

    def remove_ref(self, client: Client, object_id: bytes, count: int = 1) -> None:
        holders = self.refs.get(object_id)
        if not holders or holders[client] <= 0:
            return
        holders[client] -= count
        if holders[client] <= 0:
            del holders[client]
        if not holders:
            del self.refs[object_id]
            entry = self.entries.get(object_id)
            if entry is not None:
                self._maybe_free(entry)

    def pin(self, client: Client, object_id: bytes) -> None:
        entry = self.visible(object_id)
        if entry is None:
            raise ObjectNotFoundError(object_id, "cannot pin it")
        entry.pins[client] += 1

    def unpin(self, client: Client, object_id: bytes) -> None:
        entry = self.entries.get(object_id)
        if entry is None or entry.pins[client] <= 0:
            return
        entry.pins[client] -= 1
        if entry.pins[client] <= 0:
            del entry.pins[client]
        self._maybe_free(entry)

    def delete(self, object_id: bytes) -> bool:
        """Forget the object now, whatever its refs; memory under live views or pins
        is freed when they go. Returns whether it existed."""
        entry = self.visible(object_id)
        self.refs.pop(object_id, None)
        if entry is None:
            return False
        # Gone from the index at once (its id may be reused); its memory stays until
        # the live views of it are released.
        del self.entries[object_id]
        self.lru.pop(object_id, None)
        entry.deleted = True
        entry.recovered = False
        entry.pins.clear()
        self._maybe_free(entry)
        return True

    def drop_client(self, client: Client) -> None:
        """Everything ``client`` held goes: refs, pins, views, unsealed allocations."""
        for object_id in [oid for oid, holders in self.refs.items() if client in holders]:
            holders = self.refs[object_id]
            holders[client] = 1
            self.remove_ref(client, object_id)
        for view_id in [v for v, (_, c) in self.views.items() if c == client]:
            self.release_views(client, [view_id])
        for entry in list(self.entries.values()):
            if entry.state == "unsealed" and entry.creator == client:
                self.abort(client, entry.object_id)
            elif client in entry.pins:
                del entry.pins[client]
                self._maybe_free(entry)

    def end_recovery(self) -> None:
        """The grace period is over: unclaimed recovered objects and unsealed blocks go."""
        for block_offset in self.quarantined:
            self.arena.free(block_offset)
        self.quarantined.clear()
        for entry in list(self.entries.values()):
            if entry.recovered:
                entry.recovered = False
                self._maybe_free(entry)

    def claim(self, client: Client, refs: dict, pins: dict, views: Sequence[bytes]) -> dict:
        """A client (re)attaches what it held before the service restarted."""
        for object_id, count in refs.items():
            self.add_ref(client, object_id, count)
            entry = self.entries.get(object_id)
            if entry is not None:
                entry.recovered = False
        for object_id, count in pins.items():
            entry = self.visible(object_id)
            if entry is not None:
                entry.pins[client] += count
        new_views = {}
        for object_id in views:
            entry = self.visible(object_id)
            if entry is not None and entry.state == "sealed":
                new_views[object_id] = self._add_view(entry, client)
        return new_views

    # -- freeing, spilling, restoring ------------------------------------------------

    def _maybe_free(self, entry: Entry) -> None:
        if entry.state == "unsealed" or entry.busy or entry.views or entry.file_views or entry.pins:
            return
        if entry.recovered or (not entry.deleted and self.refs.get(entry.object_id)):
            return
        if self.entries.get(entry.object_id) is entry:
            del self.entries[entry.object_id]
            self.lru.pop(entry.object_id, None)
        if entry.state == "sealed":
            self.arena.free(entry.block_offset)
        elif entry.state == "spilled":
            self.spilled_bytes -= entry.size
        if entry.spill_path is not None:
            _unlink(entry.spill_path)
        entry.state = "freed"

    def _lose(self, entry: Entry) -> None:
        """``entry`` (spilled) lost its file: forget it, and the refs on it,
        whatever holds it. Its holders' later releases of the id find nothing, or
        a rebuilt object, whose count they only lower back to what they added."""
        del self.entries[entry.object_id]
        self.refs.pop(entry.object_id, None)  # they held what is gone (``add_ref``)
        self.lru.pop(entry.object_id, None)
        self.spilled_bytes -= entry.size
        if entry.spill_path is not None:
            _unlink(entry.spill_path)
        entry.state = "freed"
        self.counters["lost"] += 1

    def _spillable(self, entry: Entry) -> bool:
        return (
            self.spill_dir is not None
            and entry.state == "sealed"
            and not entry.busy
            and not entry.views
            and not entry.pins
        )

    async def _allocate(self, need: int, object_id: bytes) -> tuple[int, int]:
        got = self.arena.allocate(need)
        if got is not None:
            return got
        if need > self.capacity:  # spilling everything would not make room
            raise self._full_error(need, object_id)
        async with self._alloc_lock:
            asked = False
            while True:
                got = self.arena.allocate(need)
                if got is not None:
                    return got
                victim = next(
                    (self.entries[oid] for oid in self.lru if self._spillable(self.entries[oid])),
                    None,
                )
                if victim is None:
                    viewers = {c for e, c in self.views.values() if e.state == "sealed" and not e.pins}
                    if asked or not viewers or self.reclaim is None:
                        raise self._full_error(need, object_id)
                    # Clients cache views of objects they hold refs to; ask them to
                    # let go of the ones nobody uses, then look again (once).
                    asked = True
                    await self.reclaim(viewers)
                    continue
                if victim.spill_path is None:  # the spill writes a file
                    refusal = self._disk_refusal(victim.block_size, fallback=False)
                    if refusal is not None:
                        raise self._full_error(need, object_id, f"nothing can be spilled: {refusal}")
                try:
                    await self._spill(victim)
                except OSError as exc:
                    raise self._full_error(
                        need, object_id, f"spilling {format_id(victim.object_id)} failed: {exc}"
                    ) from exc

    async def _spill(self, entry: Entry) -> None:
        """Evict ``entry`` to disk. Objects are immutable: one that was restored still
        has its spill file, and is evicted again without writing anything."""
        assert self.spill_dir is not None
        written = 0
        path = entry.spill_path
        if path is None:
            path = _spill.spill_path(self.spill_dir, self.prefix, entry.object_id)
            start = entry.block_offset
            end = entry.payload_offset + self.payload_len(entry)
            block = self.arena.mapping.view[start:end]
            entry.busy = "spilling"
            started = trio.current_time()
            try:
                written = await trio.to_thread.run_sync(_spill.write_spill, path, block)
                self.spill_seconds += trio.current_time() - started
            finally:
                entry.busy = None
                block.release()
            if entry.state != "sealed" or entry.views or entry.pins:  # used meanwhile
                entry.spill_path = path  # keep the copy for the next eviction
                self._maybe_free(entry)
                if entry.object_id in self.lru:
                    self.lru.move_to_end(entry.object_id)
                return
        self.counters["spills"] += 1
        self.counters["spill_bytes_written"] += written
        self.lru.pop(entry.object_id, None)
        self.arena.free(entry.block_offset)
        entry.state = "spilled"
        entry.spill_path = path
        entry.block_offset = -1
        self.spilled_bytes += entry.size
        self._maybe_free(entry)

    async def _restore(self, entry: Entry) -> None:
        if entry.busy == "restoring":
            assert entry.restored is not None
            await entry.restored.wait()
            return
        assert entry.spill_path is not None
        entry.busy = "restoring"
        entry.restored = trio.Event()
        try:
            hdr = self._spill_header_len(entry)
            length = hdr + self.payload_len(entry)
            offset, size = await self._allocate(length, entry.object_id)
            try:
                dest = self.arena.mapping.view[offset : offset + length]
                try:
                    started = trio.current_time()
                    await trio.to_thread.run_sync(_spill.restore_spill, entry.spill_path, dest)
                    self.restore_seconds += trio.current_time() - started
                finally:
                    dest.release()
            except BaseException:
                self.arena.free(offset)
                raise
            self.arena.set_size(offset, size)
            self.arena.set_state(offset, SEALED)
            self.counters["restores"] += 1
            self.counters["restore_bytes_read"] += length
            self.spilled_bytes -= entry.size
            entry.state = "sealed"  # the spill file stays: a second eviction is free
            entry.block_offset, entry.block_size = offset, size
            entry.payload_offset = offset + hdr
            self.lru[entry.object_id] = None
        finally:
            entry.busy = None
            entry.restored.set()
            entry.restored = None
            if entry.deleted:
                self._maybe_free(entry)

    def _disk_refusal(self, nbytes: int, *, fallback: bool) -> str | None:
        """Why ``nbytes`` may not go to disk (a spill, or with ``fallback`` an object
        created there); ``None`` if they may."""
        if self.spill_dir is None:
            return "the store has no spill directory, so no disk fallback"
        if fallback and not self.disk_fallback:
            return "the disk fallback is disabled"
        return _spill.disk_refusal(self.spill_dir, nbytes, self.disk_threshold)

    def _full_error(self, need: int, object_id: bytes, detail: str = "") -> ObjectStoreFullError:
        return full_error(
            self.entries.values(), self.arena.allocator, self.spill_dir is not None, need,
            object_id, detail,
        )


def _payload_size(block: BlockInfo) -> int:
    return block.meta_len + block.data_len + sum(block.buffer_sizes)


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


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass

