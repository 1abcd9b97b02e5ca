"""Room in shared memory: allocation that spills least recently used objects to
disk, restoring spilled objects, and objects created on disk when shared memory
cannot take them (see ``_core`` for when each happens).

`Spiller` owns the disk side of the store: the spill directory and its limits,
the lock that makes one allocation at a time spill, and the figures of what it
wrote and read back. It changes the index only through `ObjectIndex`'s methods
(``spilled``, ``spill_kept``, ``restored``, ``add``, ``discard``).
"""

from __future__ import annotations

import collections
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from . import _spill
from ._allocator import align
from ._arena import SEALED, UNSEALED, Arena, header_size, pack_block_header, payload_layout
from ._diagnose import full_error
from ._entry import Client, Entry
from ._errors import ObjectExistsError, ObjectNotFoundError, ObjectStoreFullError, format_id
from ._index import ObjectIndex, payload_len, spill_header_len
from ._messages import OnDisk

__all__ = ["Spiller"]


class Spiller:
    """Allocation under memory pressure, spills and restores (see the module
    docstring).

    ``reclaim(clients)``: asks clients to drop the views they cache, when nothing
    else can be spilled (the service's, or ``None``). ``recall()``: asks writers for
    the blocks lent to them, before anything is spilled; whether any came back
    (`StoreCore.recall_lent`, or ``None``).
    """

    def __init__(self, arena: Arena, index: ObjectIndex, *, prefix: str,
                 spill_dir: str | None, disk_fallback: bool, disk_threshold: float,
                 reclaim: Callable[[set[Client]], Awaitable[Any]] | None = None,
                 recall: Callable[[], Awaitable[bool]] | None = None) -> None:
        self.arena = arena
        self.recall = recall
        self.prefix = prefix
        self.spill_dir = spill_dir
        self.disk_fallback = disk_fallback
        self.disk_threshold = disk_threshold
        self.reclaim = reclaim
        #: spills, restores (and their bytes), objects created on disk (and their bytes)
        self.counters: collections.Counter[str] = collections.Counter()
        self.spill_seconds = 0.0
        self.restore_seconds = 0.0
        self._index = index
        self._alloc_lock = trio.Lock()

    @property
    def capacity(self) -> int:
        return self.arena.allocator.capacity

    async def create_on_disk(
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
        """Create the object in a file of the spill directory (see ``_core``);
        `ObjectStoreFullError` naming the store and the disk if it cannot be
        (``spill_detail``: why spilling did not make room, if the disk was why)."""
        length = header_size(len(object_id), len(buffer_sizes)) + payload_layout(
            meta_len, data_len, buffer_sizes
        )[1]
        refusal = self.disk_refusal(length, fallback=True)
        if refusal is not None:
            if spill_detail and refusal not in spill_detail:
                refusal = f"{spill_detail}; {refusal}"
            elif spill_detail:
                refusal = spill_detail
            raise self.full_error(need, object_id, refusal)
        if object_id in self._index.entries:
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
        self._index.add(entry)  # taken: a second create of the id fails now
        try:
            await trio.to_thread.run_sync(_spill.create_object_file, path, header, length)
        except OSError as exc:
            self._index.discard(entry)
            raise self.full_error(
                need, object_id, f"the disk fallback could not create {length} bytes at {path}: {exc}"
            ) from exc
        if self._index.entries.get(object_id) is not entry:  # its writer went meanwhile
            _unlink(path)
            raise ObjectNotFoundError(object_id, "aborted while it was created on disk")
        self.counters["disk_allocations"] += 1
        self.counters["disk_allocated_bytes"] += length
        if take_ref:
            self._index.add_ref(client, object_id)
        return OnDisk(path, len(header))

    def _spillable(self, entry: Entry) -> bool:
        return (
            self.spill_dir is not None
            and entry.state == "sealed"
            and not entry.busy
            and not entry.views
            and not entry.pins
        )

    async def allocate(self, need: int, object_id: bytes) -> tuple[int, int]:
        got = self.arena.allocate(need)
        if got is not None:
            return got
        if need > self.capacity:  # spilling everything would not make room
            raise self.full_error(need, object_id)
        async with self._alloc_lock:
            asked = recalled = False
            while True:
                got = self.arena.allocate(need)
                if got is not None:
                    return got
                if not recalled and self.recall is not None:
                    # Blocks lent to writers ahead of their puts go back before any
                    # object goes to disk.
                    recalled = True
                    if await self.recall():
                        continue
                entries = self._index.entries
                victim = next(
                    (entries[oid] for oid in self._index.lru if self._spillable(entries[oid])),
                    None,
                )
                if victim is None:
                    viewers = {c for e, c in self._index.views.values() if e.state == "sealed" and not e.pins}
                    if asked or not viewers or self.reclaim is None:
                        raise self.full_error(need, object_id)
                    # Clients cache views of objects they hold refs to; ask them to
                    # let go of the ones nobody uses, then look again (once).
                    asked = True
                    await self.reclaim(viewers)
                    continue
                if victim.spill_path is None:  # the spill writes a file
                    refusal = self.disk_refusal(victim.block_size, fallback=False)
                    if refusal is not None:
                        raise self.full_error(need, object_id, f"nothing can be spilled: {refusal}")
                try:
                    await self.spill(victim)
                except OSError as exc:
                    raise self.full_error(
                        need, object_id, f"spilling {format_id(victim.object_id)} failed: {exc}"
                    ) from exc

    async def spill(self, entry: Entry) -> None:
        """Evict ``entry`` to disk. Objects are immutable: one that was restored still
        has its spill file, and is evicted again without writing anything."""
        assert self.spill_dir is not None
        written = 0
        path = entry.spill_path
        if path is None:
            path = _spill.spill_path(self.spill_dir, self.prefix, entry.object_id)
            start = entry.block_offset
            end = entry.payload_offset + payload_len(entry)
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
                self._index.spill_kept(entry, path)  # the copy is for the next eviction
                return
        self.counters["spills"] += 1
        self.counters["spill_bytes_written"] += written
        self._index.spilled(entry, path)

    async def restore(self, entry: Entry) -> None:
        if entry.busy == "restoring":
            assert entry.restored is not None
            await entry.restored.wait()
            return
        assert entry.spill_path is not None
        entry.busy = "restoring"
        entry.restored = trio.Event()
        try:
            hdr = spill_header_len(entry)
            length = hdr + payload_len(entry)
            offset, size = await self.allocate(length, entry.object_id)
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
            self._index.restored(entry, offset, size, hdr)
        finally:
            entry.busy = None
            entry.restored.set()
            entry.restored = None
            if entry.deleted:
                self._index.maybe_free(entry)

    def disk_refusal(self, nbytes: int, *, fallback: bool) -> str | None:
        """Why ``nbytes`` may not go to disk (a spill, or with ``fallback`` an object
        created there); ``None`` if they may."""
        if self.spill_dir is None:
            return "the store has no spill directory, so no disk fallback"
        if fallback and not self.disk_fallback:
            return "the disk fallback is disabled"
        return _spill.disk_refusal(self.spill_dir, nbytes, self.disk_threshold)

    def full_error(self, need: int, object_id: bytes, detail: str = "") -> ObjectStoreFullError:
        return full_error(
            self._index.entries.values(), self.arena.allocator, self.spill_dir is not None, need,
            object_id, detail,
        )


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
