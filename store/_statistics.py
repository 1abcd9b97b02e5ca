"""`StoreStatistics`: the figures of one node's object store."""

from __future__ import annotations

import attrs

__all__ = ["StoreStatistics"]


@attrs.frozen(kw_only=True)
class StoreStatistics:
    """Figures of one node's object store, from `ObjectStoreService.statistics()`
    (in process) or `StoreClient.store_statistics()` (from a client).

    A service that is not running reports its ``capacity`` and zeros.

    Attributes:
      capacity: the shared-memory budget in bytes (the arena's size).
      used: bytes of the arena allocated to objects, sealed or not; lent: bytes
        lent to writers ahead of their puts (recalled before anything is spilled);
        largest_free: the largest block that could be allocated now without
        spilling.
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
    lent: int = 0
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

