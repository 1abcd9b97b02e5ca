"""Explaining a full store: what holds the memory, biggest first."""

from __future__ import annotations

import collections
from collections.abc import Iterable

from ._allocator import Allocator
from ._entry import Entry
from ._errors import ObjectStoreFullError, format_id

__all__ = ["full_error"]


def full_error(
    entries: Iterable[Entry],
    allocator: Allocator,
    spilling: bool,
    need: int,
    object_id: bytes,
    detail: str = "",
) -> ObjectStoreFullError:
    """An `ObjectStoreFullError` naming the capacity, the request and the holders;
    ``detail`` (why the disk could not take it either) ends the message."""
    reasons: collections.Counter[str] = collections.Counter()
    holders = []
    for entry in entries:
        if entry.block_offset < 0:
            continue
        if entry.state == "unsealed":
            reason = "being written"
        elif entry.pins:
            reason = "pinned"
        elif entry.views:
            reason = "in use (live zero-copy views)"
        elif entry.busy:
            reason = entry.busy
        else:
            reason = "not spillable (spilling disabled)" if not spilling else "not spillable"
        reasons[reason] += 1
        holders.append((entry.object_id, entry.block_size, reason))
    holders.sort(key=lambda h: -h[1])
    held = ", ".join(f"{n} {r}" for r, n in reasons.most_common()) or "nothing"
    biggest = "; ".join(f"{format_id(o)} {s} B {r}" for o, s, r in holders[:3])
    return ObjectStoreFullError(
        f"object store full: cannot allocate {need} bytes for object {format_id(object_id)} "
        f"(capacity {allocator.capacity} bytes, {allocator.used_bytes} used, largest free "
        f"block {allocator.largest_free}); held by {held}"
        + (f"; biggest: {biggest}" if biggest else "")
        + (f"; {detail}" if detail else ""),
        capacity=allocator.capacity,
        used=allocator.used_bytes,
        requested=need,
        holders=holders[:10],
        detail=detail,
    )
