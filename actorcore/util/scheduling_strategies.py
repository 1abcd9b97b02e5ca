"""Scheduling strategies of tasks and actors (Ray's ``ray.util.scheduling_strategies``).

``f.options(scheduling_strategy=PlacementGroupSchedulingStrategy(pg, i))`` runs the
task (or actor) in bundle ``i`` of placement group ``pg`` (``-1``: any of its
bundles): its resource request is rewritten to the group's renamed resources where
its options are resolved (``node.placement_groups._resources.rewrite``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["PlacementGroupSchedulingStrategy"]


class PlacementGroupSchedulingStrategy:
    """Run in a placement group: bundle ``placement_group_bundle_index`` of
    ``placement_group`` (``-1``: any bundle with room).

    ``placement_group_capture_child_tasks=True`` (Ray's: the tasks and actors this
    one submits go into the same group) is refused with an error: it is not built.
    """

    __slots__ = ("placement_group", "placement_group_bundle_index",
                 "placement_group_capture_child_tasks")

    def __init__(self, placement_group: Any, placement_group_bundle_index: int = -1,
                 placement_group_capture_child_tasks: bool | None = None) -> None:
        self.placement_group = placement_group
        self.placement_group_bundle_index = placement_group_bundle_index
        self.placement_group_capture_child_tasks = placement_group_capture_child_tasks

    def __repr__(self) -> str:
        return (f"PlacementGroupSchedulingStrategy({self.placement_group!r}, "
                f"placement_group_bundle_index={self.placement_group_bundle_index})")

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, PlacementGroupSchedulingStrategy)
                and self.placement_group == other.placement_group
                and self.placement_group_bundle_index == other.placement_group_bundle_index)

    def __hash__(self) -> int:
        return hash((self.placement_group, self.placement_group_bundle_index))
