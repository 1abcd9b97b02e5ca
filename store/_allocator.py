"""A best-fit free-list allocator over one arena (pure bookkeeping, no memory).

The arena is a run of blocks, each either used or free; free neighbours are always
coalesced, so the free list never holds two adjacent blocks. Best fit (the smallest
free block that is big enough) keeps the big holes for big objects, and reuses the
same, already faulted pages when an object of the same size comes back — the case
that makes repeated puts of big arrays run at memcpy speed.

Lookup is a bisect over free blocks sorted by ``(size, offset)``; frees look up their
neighbours by start and end offset in dicts. Everything is O(log n) apart from the list
insertions (a memmove of the sorted list).
"""

from __future__ import annotations

import bisect

import attrs

__all__ = ["ALIGNMENT", "Allocator", "align"]

ALIGNMENT = 64
#: A remainder smaller than this is left inside the allocated block (no sliver blocks).
MIN_SPLIT = 4096


def align(n: int, alignment: int = ALIGNMENT) -> int:
    return (n + alignment - 1) // alignment * alignment


@attrs.define(eq=False)
class Allocator:
    """Blocks in ``[start, end)``; offsets and sizes are multiples of `ALIGNMENT`."""

    start: int
    end: int
    _used: dict[int, int] = attrs.field(factory=dict)  # offset -> size
    _free: dict[int, int] = attrs.field(factory=dict)  # offset -> size
    _free_by_end: dict[int, int] = attrs.field(factory=dict)  # end -> offset
    _sorted: list[tuple[int, int]] = attrs.field(factory=list)  # (size, offset)
    used_bytes: int = 0

    def __attrs_post_init__(self) -> None:
        if self.start % ALIGNMENT or self.end % ALIGNMENT or self.end < self.start:
            raise ValueError(f"bad arena bounds [{self.start}, {self.end})")
        if not self._used and not self._free and self.end > self.start:
            self._add_free(self.start, self.end - self.start)

    @classmethod
    def from_blocks(cls, start: int, end: int, blocks: list[tuple[int, int, bool]]) -> Allocator:
        """Rebuild from ``(offset, size, used)`` blocks covering ``[start, end)``."""
        allocator = cls(start, start)
        allocator.end = end
        position = start
        last_free: int | None = None
        for offset, size, used in sorted(blocks):
            if offset != position or size <= 0:
                raise ValueError(f"blocks do not tile the arena at offset {position}")
            if used:
                allocator._used[offset] = size
                allocator.used_bytes += size
                last_free = None
            elif last_free is not None:  # coalesce neighbours
                allocator._insert_free(last_free, allocator._remove_free(last_free) + size)
            else:
                allocator._insert_free(offset, size)
                last_free = offset
            position = offset + size
        if position != end:
            raise ValueError(f"blocks end at {position}, the arena at {end}")
        return allocator

    @property
    def capacity(self) -> int:
        return self.end - self.start

    @property
    def largest_free(self) -> int:
        return self._sorted[-1][0] if self._sorted else 0

    @property
    def free_blocks(self) -> int:
        return len(self._sorted)

    def free_size(self, offset: int) -> int | None:
        """The size of the free block at ``offset`` (``None``: no free block starts there)."""
        return self._free.get(offset)

    def allocate(self, nbytes: int) -> tuple[int, int, int | None] | None:
        """Take a block of at least ``nbytes``.

        Returns ``(offset, size, remainder_offset)`` — ``remainder_offset`` is the start
        of the free block split off behind it, if any — or ``None`` if no free block
        is big enough.
        """
        need = max(align(nbytes), ALIGNMENT)
        index = bisect.bisect_left(self._sorted, (need, -1))
        if index == len(self._sorted):
            return None
        size, offset = self._sorted.pop(index)
        del self._free[offset]
        del self._free_by_end[offset + size]
        remainder = None
        if size - need >= MIN_SPLIT:
            remainder = offset + need
            self._insert_free(remainder, size - need)
            size = need
        self._used[offset] = size
        self.used_bytes += size
        return offset, size, remainder

    def shrink(self, offset: int, nbytes: int) -> tuple[int, tuple[int, int] | None]:
        """Cut the used block at ``offset`` down to ``nbytes`` (aligned), its tail
        freed when that is worth a block of its own. Returns the block's size now
        and the merged free block the tail went into (``None``: kept whole)."""
        size = self._used.get(offset)
        if size is None:
            raise ValueError(f"no used block at offset {offset}")
        need = max(align(nbytes), ALIGNMENT)
        if need > size:
            raise ValueError(f"cannot shrink the block at {offset} of {size} bytes to {need}")
        if size - need < MIN_SPLIT:
            return size, None
        self._used[offset] = need
        self.used_bytes -= size - need
        tail, tail_size = offset + need, size - need
        following = offset + size
        if following in self._free:
            tail_size += self._remove_free(following)
        self._insert_free(tail, tail_size)
        return need, (tail, tail_size)

    def free(self, offset: int) -> tuple[int, int]:
        """Free the used block at ``offset``; returns the merged free ``(offset, size)``."""
        try:
            size = self._used.pop(offset)
        except KeyError:
            raise ValueError(f"no used block at offset {offset}") from None
        self.used_bytes -= size
        following = offset + size
        if following in self._free:
            size += self._remove_free(following)
        previous = self._free_by_end.get(offset)
        if previous is not None:
            size += self._remove_free(previous)
            offset = previous
        self._insert_free(offset, size)
        return offset, size

    def _insert_free(self, offset: int, size: int) -> None:
        self._free[offset] = size
        self._free_by_end[offset + size] = offset
        bisect.insort(self._sorted, (size, offset))

    def _add_free(self, offset: int, size: int) -> None:
        self._insert_free(offset, size)

    def _remove_free(self, offset: int) -> int:
        size = self._free.pop(offset)
        del self._free_by_end[offset + size]
        index = bisect.bisect_left(self._sorted, (size, offset))
        del self._sorted[index]
        return size

    def check(self) -> None:
        """Assert the invariants (tests): blocks tile the arena, no adjacent frees."""
        blocks = sorted([(o, s, True) for o, s in self._used.items()] + [(o, s, False) for o, s in self._free.items()])
        position = self.start
        previous_free = False
        for offset, size, used in blocks:
            assert offset == position, (offset, position)
            assert not (previous_free and not used), "adjacent free blocks"
            previous_free = not used
            position += size
        assert position == self.end
        assert sorted(self._sorted) == self._sorted
        assert len(self._sorted) == len(self._free)
        assert self.used_bytes == sum(self._used.values())
