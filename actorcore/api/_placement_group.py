"""A placement group's handle as the option checks see it: its id and its bundles.

``f.options(placement_group=pg)`` and ``PlacementGroupSchedulingStrategy(pg, i)``
are checked where they are written (``_options``): that the group is a group, that
the bundle index is in range, that the request fits a bundle. That needs the id and
the bundles only. ``util.placement_group.PlacementGroup`` is a `PlacementGroupHandle`
that adds ``ready()`` and ``wait()``: they submit a task, so they belong above the
remote functions whose options are checked here.
"""

from __future__ import annotations

from typing import Any

from ..core_worker import _worker_state
from ..protocol._wire import PlacementGroupTable
from ._job import request_node

__all__ = ["PlacementGroupHandle", "PlacementGroupID", "placement_group_table",
           "request_group"]


class PlacementGroupID:
    """A placement group's id (``hex()``, ``binary()``), as Ray's."""

    __slots__ = ("_bytes",)

    def __init__(self, raw: bytes) -> None:
        self._bytes = bytes(raw)

    def hex(self) -> str:
        return self._bytes.hex()

    def binary(self) -> bytes:
        return self._bytes

    def is_nil(self) -> bool:
        return not any(self._bytes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroupID) and other._bytes == self._bytes

    def __hash__(self) -> int:
        return hash(self._bytes)

    def __repr__(self) -> str:
        return f"PlacementGroupID({self.hex()})"


class PlacementGroupHandle:
    """A placement group: its id and (fetched when first needed) its bundles."""

    def __init__(self, id: PlacementGroupID, bundle_cache: list[dict] | None = None) -> None:
        self.id = id
        self.bundle_cache = bundle_cache

    @property
    def is_empty(self) -> bool:
        return self.id.is_nil()

    @property
    def bundle_specs(self) -> list[dict]:
        """The bundles, as given (resource name -> amount)."""
        self._fill_bundle_cache()
        assert self.bundle_cache is not None
        return [dict(b) for b in self.bundle_cache]

    @property
    def bundle_count(self) -> int:
        return len(self.bundle_specs)

    def _fill_bundle_cache(self) -> None:
        if self.bundle_cache is None:
            entry = placement_group_table(self)
            if not entry:
                raise ValueError(f"unknown placement group {self.id.hex()}")
            self.bundle_cache = [dict(b) for _i, b in sorted(entry["bundles"].items())]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PlacementGroupHandle) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    def __repr__(self) -> str:
        return f"PlacementGroup({self.id.hex()})"


def request_group(message: Any) -> Any:
    core = _worker_state.auto_core()
    return request_node(core, message)


def placement_group_table(placement_group: PlacementGroupHandle | None = None) -> dict:
    """The group's state (Ray's keys: placement_group_id, name, bundles,
    bundles_to_node_id, strategy, state, stats), or every group's by id."""
    pg = None if placement_group is None else placement_group.id.hex()
    entry = request_group(PlacementGroupTable(pg))
    if pg is not None and entry:
        return _without_internal(entry)
    return {k: _without_internal(v) for k, v in entry.items()} if pg is None else {}


def _without_internal(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k != "coordinator"}
