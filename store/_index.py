"""The store's index: which objects it has, and who keeps each one alive.

`ObjectIndex` is the one writer of the entries and of what holds them: refs per
client, pins, views, the recovered hold, the LRU order of objects in the arena.
`StoreCore` creates, seals and reads objects through it, and `Spiller` moves
objects between the arena and the disk through it (``spilled``, ``restored``); the
others read ``entries``, ``refs``, ``lru`` and ``views`` but change them only here.
See ``_core`` for who keeps an object alive.
"""

from __future__ import annotations

import collections
import logging
import os
import time
from collections.abc import Sequence

from . import _spill
from ._arena import SEALED, Arena, BlockInfo, header_size, payload_layout
from ._entry import Client, Entry
from ._errors import ObjectNotFoundError
from ._messages import Adopt

__all__ = ["ObjectIndex", "payload_len", "spill_header_len"]

logger = logging.getLogger("store")


class ObjectIndex:
    """The objects of one store and their holders (see the module docstring).

    Built at start from what the arena (``recovered`` blocks) and the spill
    directory hold: sealed objects are kept for the recovery grace (``end_recovery``)
    for their clients to reattach; unsealed blocks are quarantined until then.
    """

    def __init__(self, arena: Arena, *, recovered: Sequence[BlockInfo] = (),
                 spill_dir: str | None, prefix: str) -> None:
        self.arena = arena
        #: object id -> entry
        self.entries: dict[bytes, Entry] = {}
        #: object id -> refs per client
        self.refs: dict[bytes, collections.Counter] = {}
        #: the objects in the arena, least recently used first
        self.lru: collections.OrderedDict[bytes, None] = collections.OrderedDict()
        #: view id -> (entry, client)
        self.views: dict[int, tuple[Entry, Client]] = {}
        self.file_view_ids: set[int] = set()  # the views in ``views`` that map a file
        self.quarantined: list[int] = []  # unsealed blocks found at start
        #: the unsealed blocks found at start, by object id (a writer may claim it
        #: had sealed one: ``claim``)
        self.unsealed_found: dict[bytes, BlockInfo] = {}
        #: payload bytes of the objects on disk
        self.spilled_bytes = 0
        #: objects whose spill file vanished
        self.lost = 0
        # View ids never repeat across restarts of the service (a stale release from
        # before a restart must not release someone else's view).
        self._next_view = time.time_ns()
        for block in recovered:
            if block.state == SEALED:
                entry = _arena_entry(block)
                entry.recovered = True
                self.entries[block.object_id] = entry
                self.lru[block.object_id] = None
            else:  # a writer died before sealing: nothing visible; reuse after grace
                self.quarantined.append(block.offset)
                if block.object_id:
                    self.unsealed_found[block.object_id] = block
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

    def recovering(self) -> bool:
        """Whether objects or blocks found at start still wait for their grace period."""
        return bool(self.quarantined) or any(e.recovered for e in self.entries.values())

    # -- entries coming and going ----------------------------------------------------

    def add(self, entry: Entry) -> None:
        """Record a new (unsealed) entry: its id is taken from now on."""
        self.entries[entry.object_id] = entry

    def discard(self, entry: Entry) -> None:
        """Forget ``entry`` if it is still the one under its id."""
        if self.entries.get(entry.object_id) is entry:
            del self.entries[entry.object_id]

    def sealed(self, entry: Entry) -> None:
        """``entry`` was sealed: in the arena (least recently used order), or on disk
        (created there), from now on a spilled object."""
        if entry.block_offset < 0:
            entry.state = "spilled"
            self.spilled_bytes += entry.size
        else:
            entry.state = "sealed"
            self.lru[entry.object_id] = None

    def touch(self, entry: Entry) -> None:
        """``entry`` was read: the most recently used."""
        self.lru.move_to_end(entry.object_id)

    def free_if_unreferenced(self, object_id: bytes) -> None:
        """Free ``object_id`` now if no client holds a ref on it (just sealed)."""
        if not self.refs.get(object_id):
            self.maybe_free(self.entries[object_id])

    def spilled(self, entry: Entry, path: str) -> None:
        """``entry``'s block was written to ``path``: its arena block is freed."""
        self.lru.pop(entry.object_id, None)
        self.arena.free(entry.block_offset)
        entry.state = "spilled"
        entry.spill_path = path
        entry.block_offset = -1
        self.spilled_bytes += entry.size
        self.maybe_free(entry)

    def spill_kept(self, entry: Entry, path: str) -> None:
        """``entry`` was used while it was written to ``path``: it stays in the arena,
        and the file is kept for its next eviction."""
        entry.spill_path = path
        self.maybe_free(entry)
        if entry.object_id in self.lru:
            self.lru.move_to_end(entry.object_id)

    def restored(self, entry: Entry, offset: int, size: int, header: int) -> None:
        """``entry`` is back in the arena in the block at ``offset`` (its spill file
        stays: a second eviction is free)."""
        self.spilled_bytes -= entry.size
        entry.state = "sealed"
        entry.block_offset, entry.block_size = offset, size
        entry.payload_offset = offset + header
        self.lru[entry.object_id] = None

    # -- queries, views, refs, pins, clients -------------------------------------------

    def visible(self, object_id: bytes) -> Entry | None:
        entry = self.entries.get(object_id)
        if entry is None or entry.state == "unsealed":
            return None
        return entry

    def add_view(self, entry: Entry, client: Client, *, of_file: bool = False) -> int:
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
            self.maybe_free(entry)

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
                self.maybe_free(entry)

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
        self.maybe_free(entry)

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
        self.maybe_free(entry)
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
                self.maybe_free(entry)

    def end_recovery(self) -> None:
        """The grace period is over: unclaimed recovered objects and unsealed blocks go."""
        for block_offset in self.quarantined:
            self.arena.free(block_offset)
        self.quarantined.clear()
        self.unsealed_found.clear()
        for entry in list(self.entries.values()):
            if entry.recovered:
                entry.recovered = False
                self.maybe_free(entry)

    def claim(self, client: Client, refs: dict, pins: dict, views: Sequence[bytes],
              sealed: Sequence[bytes] = (), adopts: Sequence[Adopt] = ()) -> dict:
        """A client (re)attaches what it held before the service restarted, and seals
        the objects it had sent a seal for that the old service never answered
        (``sealed``; those found unsealed in the arena at start), and likewise makes
        the blocks lent to it that it had sent an `Adopt` for those objects
        (``adopts``; found unsealed under their lend ids)."""
        for adopt in adopts:
            block = self.unsealed_found.get(adopt.lend_id)
            sizes = tuple(adopt.buffer_sizes)
            need = header_size(len(adopt.object_id), len(sizes)) + payload_layout(
                adopt.meta_len, adopt.data_len, sizes)[1]
            if block is None or adopt.object_id in self.entries or need > block.size:
                continue
            del self.unsealed_found[adopt.lend_id]
            self.quarantined.remove(block.offset)
            payload = self.arena.write_block(block.offset, block.size, adopt.object_id,
                                             adopt.meta_len, adopt.data_len, sizes)
            self.arena.set_state(block.offset, SEALED)
            self.entries[adopt.object_id] = Entry(
                adopt.object_id, "sealed", adopt.meta_len + adopt.data_len + sum(sizes),
                adopt.meta_len, adopt.data_len, sizes, block_offset=block.offset,
                block_size=block.size, payload_offset=payload)
            self.lru[adopt.object_id] = None
        for object_id in sealed:
            block = self.unsealed_found.pop(object_id, None)
            if block is None or object_id in self.entries:
                continue
            self.quarantined.remove(block.offset)
            self.arena.set_state(block.offset, SEALED)
            self.entries[object_id] = _arena_entry(block)
            self.lru[object_id] = None
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
                new_views[object_id] = self.add_view(entry, client)
        return new_views

    def maybe_free(self, entry: Entry) -> None:
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

    def lose(self, entry: Entry) -> None:
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
        self.lost += 1

def payload_len(entry: Entry) -> int:
    """The bytes of ``entry``'s payload as laid out in its block."""
    return payload_layout(entry.meta_len, entry.data_len, entry.buffer_sizes)[1]


def spill_header_len(entry: Entry) -> int:
    """The bytes of ``entry``'s block header (before its payload in a spill file)."""
    return header_size(len(entry.object_id), len(entry.buffer_sizes))


def _arena_entry(block: BlockInfo) -> Entry:
    return Entry(
        block.object_id, "sealed", _payload_size(block), block.meta_len, block.data_len,
        block.buffer_sizes, block_offset=block.offset, block_size=block.size,
        payload_offset=block.payload_offset,
    )


def _payload_size(block: BlockInfo) -> int:
    return block.meta_len + block.data_len + sum(block.buffer_sizes)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
