"""Placement groups: gang reservation of resource bundles across the cluster."""

from typing import TYPE_CHECKING, Any

from ...protocol._placement import bundle_resources, check_bundles, group_of, rewrite

if TYPE_CHECKING:
    from ._manager import PlacementGroups, PlacementGroupsService


def __getattr__(name: str) -> Any:
    # The manager (the node's side) is imported when first named: a process that
    # reaches this package only for ``_policy`` needs none of the node's machinery.
    if name in ("PlacementGroups", "PlacementGroupsService"):
        from . import _manager

        return getattr(_manager, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["PlacementGroups", "PlacementGroupsService", "bundle_resources", "check_bundles",
           "group_of", "rewrite"]
