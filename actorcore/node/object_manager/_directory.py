"""The node's object directory: every object the node knows, ready or pending.

The directory is the single writer of object state on a node. It holds small values
inline (they arrived in messages) and, for large ones, the store's handle. Each entry
is either *pending* (some task will produce it; waiters queue on it) or *ready*
(value or error). Readers:

- the local scheduler resolves a task's data edges (``when_ready``) and pins the
  dependencies of queued tasks so their owner's ``free`` cannot drop them early;
- ``fetch`` requests from core workers that hold a ref they do not own.

``free`` comes from an object's owner once no ref to it is left there; the entry is
dropped when it is also unpinned (or at once when it becomes ready, if freed while
pending). An owner may free a task's return before this node has any entry for it
(a fire-and-forget ``f.remote()`` whose result is still being computed, here or on
another node): such frees are remembered (``freed_early``, the most recent
``EARLY_FREE_MEMORY``) and the entry is created released when the object comes, so
it is dropped at once instead of staying forever, with its store copy and lineage.
The directory lives in the node, outside any component that can crash, so a
component restart loses no object.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Iterable
from typing import Any

import attrs

from ...protocol._messages import ObjectData

__all__ = ["EARLY_FREE_MEMORY", "DirectoryStatistics", "ObjectDirectory", "ObjectEntry"]

logger = logging.getLogger("actorcore.node")

#: Frees of objects not (yet) in the directory that are remembered (``free``).
EARLY_FREE_MEMORY = 100_000


@attrs.define(slots=True, eq=False)
class ObjectEntry:
    ready: bool = False
    is_error: bool = False
    data: Any = None
    waiters: list[Callable[[ObjectEntry], None]] | None = None
    pins: int = 0
    released: bool = False


@attrs.frozen(kw_only=True)
class DirectoryStatistics:
    """Figures of a node's object directory, from ``ObjectDirectory.statistics()``.

    Attributes:
      objects: entries now, ``ready`` (a value or a store location is known) or
        ``pending`` (awaited: a task's return not produced yet).
      bytes_inline: bytes of the values held in the directory itself (small values,
        not in the shared-memory store).
      created, freed: objects made ready and dropped since the node started.
    """

    objects: int
    ready: int
    pending: int
    bytes_inline: int
    created: int
    freed: int


@attrs.define(eq=False)
class ObjectDirectory:
    entries: dict[bytes, ObjectEntry] = attrs.Factory(dict)
    bytes_inline: int = 0
    objects_created: int = 0
    objects_freed: int = 0
    on_drop: Callable[[bytes, ObjectEntry], None] | None = None
    #: Objects their owner freed before they had an entry here (module docstring).
    freed_early: collections.OrderedDict[bytes, None] = attrs.Factory(collections.OrderedDict)

    def _new(self, oid: bytes) -> ObjectEntry:
        e = self.entries[oid] = ObjectEntry()
        if self.freed_early and self.freed_early.pop(oid, 0) is None:
            e.released = True
        return e

    def entry(self, oid: bytes) -> ObjectEntry:
        e = self.entries.get(oid)
        if e is None:
            e = self._new(oid)
        return e

    def put(self, oid: bytes, is_error: bool, data: Any) -> None:
        """Make ``oid`` ready (first writer wins) and wake its waiters."""
        e = self.entries.get(oid)
        if e is None:
            e = self._new(oid)
        elif e.ready:
            return
        e.ready = True
        e.is_error = is_error
        e.data = data
        self.objects_created += 1
        if isinstance(data, bytes | bytearray | memoryview):
            self.bytes_inline += len(data)
        waiters, e.waiters = e.waiters, None
        if waiters:
            # A waiter may make the entry pending again, and wait on it: the end
            # of a generator's rebuild run ends that rebuild (``_lineage._ended``),
            # which may start the next one for an item found lost meanwhile, from
            # this very call. Then the waiters not called yet wait for the next
            # ``put`` (before those the new run added), and the entry stays: it
            # is pending, and dropping it (freed, unpinned) would lose the new
            # waiter, so that the next run's end, landing in a new entry, would
            # never end its rebuild.
            for i, w in enumerate(waiters):
                try:
                    w(e)
                except Exception:  # one waiter's failure must not strand the others
                    logger.exception("a waiter of object %s failed", oid.hex())
                if not e.ready:
                    rest = waiters[i + 1:]
                    if rest:
                        e.waiters = rest + (e.waiters or [])
                    break
        if e.ready and e.released and e.pins == 0 and self.entries.get(oid) is e:
            self._drop(oid, e)

    def reset(self, oid: bytes) -> ObjectEntry:
        """Make ``oid`` pending again (created pending if absent): every copy of its
        value is gone and its task runs again (``_lineage``). Its pins, waiters and
        the owner's free stand; the re-run's ``put`` makes it ready as usual."""
        e = self.entries.get(oid)
        if e is None:
            e = self._new(oid)
        elif e.ready:
            if isinstance(e.data, bytes | bytearray | memoryview):
                self.bytes_inline -= len(e.data)
            e.ready = False
            e.is_error = False
            e.data = None
        return e

    def put_many(self, items: Iterable[ObjectData]) -> None:
        for oid, is_error, data in items:
            self.put(oid, is_error, data)

    def when_ready(self, oid: bytes, callback: Callable[[ObjectEntry], None]) -> None:
        """Call ``callback(entry)`` once ``oid`` is ready (now, if it is)."""
        e = self.entry(oid)
        if e.ready:
            callback(e)
        elif e.waiters is None:
            e.waiters = [callback]
        else:
            e.waiters.append(callback)

    def pin(self, oids: Iterable[bytes]) -> None:
        for oid in oids:
            self.entry(oid).pins += 1

    def unpin(self, oids: Iterable[bytes]) -> None:
        for oid in oids:
            e = self.entries.get(oid)
            if e is None:
                continue
            e.pins -= 1
            if e.pins <= 0 and e.released and e.ready:
                self._drop(oid, e)

    def free(self, oids: Iterable[bytes]) -> None:
        for oid in oids:
            e = self.entries.get(oid)
            if e is None:
                early = self.freed_early
                early[oid] = None
                if len(early) > EARLY_FREE_MEMORY:
                    early.popitem(last=False)
                continue
            e.released = True
            if e.pins <= 0 and e.ready and not e.waiters:
                self._drop(oid, e)

    def unwanted(self, oid: bytes) -> bool:
        """Whether ``oid`` is pending and nobody wants it: its owner freed it, no
        task here is pinned on it and nobody waits for it (``put`` drops it)."""
        e = self.entries.get(oid)
        if e is None:
            return oid in self.freed_early
        return e.released and not e.ready and e.pins <= 0 and not e.waiters

    def _drop(self, oid: bytes, e: ObjectEntry) -> None:
        self.entries.pop(oid, None)
        self.objects_freed += 1
        if self.on_drop is not None:
            self.on_drop(oid, e)
        if isinstance(e.data, bytes | bytearray | memoryview):
            self.bytes_inline -= len(e.data)

    def statistics(self) -> DirectoryStatistics:
        ready = sum(1 for e in self.entries.values() if e.ready)
        return DirectoryStatistics(
            objects=len(self.entries),
            ready=ready,
            pending=len(self.entries) - ready,
            bytes_inline=self.bytes_inline,
            created=self.objects_created,
            freed=self.objects_freed,
        )
