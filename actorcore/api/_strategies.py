"""The scheduling strategies a user passes as ``scheduling_strategy=`` (Ray's
``ray.util.scheduling_strategies``, which re-exports them from here).

``f.options(scheduling_strategy=...)`` takes ``"DEFAULT"``, ``"SPREAD"``, a
`NodeAffinitySchedulingStrategy` (the strategy travels in the spec; the node's
schedulers read it: ``protocol._strategy``, ``node.global_scheduler._placement``)
or a `PlacementGroupSchedulingStrategy`: bundle ``i`` of placement group ``pg``
(``-1``: any of its bundles), whose resource request is rewritten to the group's
renamed resources where its options are resolved
(``protocol._placement.rewrite``).

They live in the API layer, below the option checks (``_options``) that recognise
them, and import nothing of ours.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NodeAffinitySchedulingStrategy", "PlacementGroupSchedulingStrategy"]


class NodeAffinitySchedulingStrategy:
    """Run on the node ``node_id`` (hex, as ``nodes()`` and
    ``get_runtime_context().get_node_id()`` give it).

    ``soft=False``: only there; the task fails with ``TaskUnschedulableError`` if
    that node is not alive or cannot provide its resources. ``soft=True``: there if
    it can, elsewhere otherwise.
    """

    __slots__ = ("node_id", "soft")

    def __init__(self, node_id: str, soft: bool,
                 _spill_on_unavailable: bool = False, _fail_on_unavailable: bool = False) -> None:
        if isinstance(node_id, bytes):
            node_id = node_id.hex()
        if not isinstance(node_id, str) or not node_id:
            raise TypeError(f"NodeAffinitySchedulingStrategy: node_id={node_id!r} must be a "
                            f"node id (hex str)")
        for name, value in (("_spill_on_unavailable", _spill_on_unavailable),
                            ("_fail_on_unavailable", _fail_on_unavailable)):
            if value:
                raise ValueError(f"NodeAffinitySchedulingStrategy({name}=True) is not "
                                 f"supported by actorcore")
        self.node_id = node_id
        self.soft = bool(soft)

    def __repr__(self) -> str:
        return f"NodeAffinitySchedulingStrategy(node_id={self.node_id!r}, soft={self.soft})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, NodeAffinitySchedulingStrategy)
                and (self.node_id, self.soft) == (other.node_id, other.soft))

    def __hash__(self) -> int:
        return hash((self.node_id, self.soft))


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
