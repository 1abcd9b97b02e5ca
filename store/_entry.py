"""`Entry`: what the store knows of one object (kept apart from `ObjectIndex`, which
holds them, so that the diagnosis of a full store reads entries without importing
the index)."""

from __future__ import annotations

import collections
from collections.abc import Hashable

import attrs
import trio

from ._messages import Location

__all__ = ["Client", "Entry"]

#: A client of the store: an opaque hashable id (the service uses its connection).
Client = Hashable


@attrs.define(eq=False)
class Entry:
    object_id: bytes
    state: str  # "unsealed" | "sealed" | "spilled" | "freed"
    size: int  # payload bytes (metadata + data + buffers)
    meta_len: int = 0
    data_len: int = 0
    buffer_sizes: tuple[int, ...] = ()
    block_offset: int = -1  # -1: not in the arena (spilled, or created on disk)
    block_size: int = 0
    payload_offset: int = 0
    spill_path: str | None = None  # while unsealed: the file it is being written in
    creator: Client | None = None
    #: Unsealed, and its writer sent the seal without waiting (`Create.seal_follows`):
    #: lookups wait for the seal instead of finding nothing.
    sealing: bool = False
    pins: collections.Counter = attrs.field(factory=collections.Counter)
    views: int = 0  # of its arena block
    file_views: int = 0  # of its file on disk
    recovered: bool = False
    deleted: bool = False
    busy: str | None = None  # "spilling" | "restoring"
    restored: trio.Event | None = None

    @property
    def location(self) -> Location:
        """Where its payload is in the arena."""
        return Location(self.payload_offset, self.meta_len, self.data_len, self.buffer_sizes)
